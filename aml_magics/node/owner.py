"""The owner's watch and the process tree: a run lives as long as the kernel or CLI that started it.

The owner holds a pipe (or a container's stdin) whose end means "gone"; this process is the
subreaper of everything the user's code starts, so an orphan stays in the tree a stop ends.
Two watch the owner: a thread here (which says why the run ends) and the reaper
(:mod:`.reaper`), a process of its own that needs no GIL of ours, so the tree is ended even
while the user's code holds it. No parent-death SIGKILL: it would end this process, the
subreaper, before the tree, and orphan every child.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from .reaper import sweep
from .wire import OWNER_ENV, OWNER_GONE_EXIT, service_thread

_PR_SET_CHILD_SUBREAPER = 36
_WALL = 0x40000000  # waitid's __WALL: children of every kind (a clone() with another exit signal too)
_reaper: subprocess.Popen | None = None
_reaper_alive_fd = -1  # our end of the pipe whose EOF tells the reaper we ended by ourselves


def _prctl(option: int, value: int) -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def owner_channel() -> int | None:
    """The fd of the owner's channel (``AML_MAGICS_OWNER``), moved off stdin; None without one."""
    spec = os.environ.pop(OWNER_ENV, "")
    if spec.startswith("fd:"):
        try:
            fd = int(spec[3:])
            os.fstat(fd)
        except (ValueError, OSError):
            return None
        os.set_inheritable(fd, False)
        return fd
    if spec == "stdin":
        fd = os.dup(0)  # not inheritable; the user's code gets an empty stdin, never the channel
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        return fd
    return None


def read_first_line(fd: int, limit: int = 1 << 20) -> str:
    """The owner's first line (the run's secrets), read byte-wise so nothing after it is consumed."""
    data = bytearray()
    while len(data) < limit:
        chunk = os.read(fd, 1)
        if not chunk or chunk == b"\n":
            break
        data += chunk
    return data.decode("utf-8", "replace")


def start_reaper(fd: int) -> None:
    """The reaper process (:mod:`.reaper`), watching the owner's channel ``fd`` beside us."""
    global _reaper, _reaper_alive_fd
    read_end, _reaper_alive_fd = os.pipe()
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reaper.py")
    try:
        _reaper = subprocess.Popen([sys.executable, "-I", "-S", path, str(fd), str(read_end), str(os.getpid())],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=(fd, read_end),
                                   start_new_session=True, env={})
    except OSError as exc:
        print(f"aml_magics: no reaper for this run ({exc}); the owner's watch is a thread only", file=sys.stderr,
              flush=True)
    finally:
        os.close(read_end)


def stop_reaper() -> None:
    """We end by ourselves: the reaper leaves (it sees its pipe close)."""
    global _reaper_alive_fd
    if _reaper_alive_fd >= 0:
        os.close(_reaper_alive_fd)
        _reaper_alive_fd = -1


def _ours() -> frozenset[int]:
    return frozenset({_reaper.pid}) if _reaper is not None else frozenset()


def watch_owner(fd: int) -> None:
    """End this run (its whole tree) when the owner's channel closes: the owner is gone, whatever
    killed it (SIGKILL included). The reaper does the same from outside this process."""
    start_reaper(fd)

    def wait_for_eof() -> None:
        try:
            while os.read(fd, 4096):
                pass
        except OSError:
            pass
        end_tree(OWNER_GONE_EXIT, "the owner of this run is gone")

    service_thread(wait_for_eof, name="aml-magics-owner")


def adopt_orphans() -> None:
    """Become the subreaper of what the user's code starts: a descendant that leaves the process
    group (``setsid``) and is orphaned stays in this tree, where a stop can still find it."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read().decode("ascii", "replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(pid: int | None = None) -> list[int]:
    """Every process below ``pid`` (default: this one), from /proc (stdlib only)."""
    tree, found, todo = _children(), [], [pid or os.getpid()]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _left_running(pid: int) -> bool:
    """A process the script left behind: not debugpy's adapter (``--separate-adapter``: ours), not
    a zombie (it ended; only its exit status is left to collect)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read().split(b"\0")
    except OSError:
        return False
    if stat[stat.rfind(b")") + 2:].startswith(b"Z"):
        return False
    return not any(part.replace(b"\\", b"/").endswith(b"debugpy/adapter") for part in argv)


def _has_children() -> bool:
    """Has this process a child of any kind, running or ended and not yet collected? Without one
    it has no descendant at all (each one's line of parents runs through a child of ours), and
    nothing needs a walk of /proc. Asked without collecting anything (``WNOWAIT``)."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT | _WALL)
    except ChildProcessError:
        return False
    except OSError:  # a kernel that refuses the question: walk, as if there were children
        return True
    return True


def kill_descendants() -> int:
    """Stop and kill whatever is left below this process until nothing is (a process started
    meanwhile, a fork-and-exit walker: every orphan comes back to us, the subreaper), and collect
    it; how many of those the script had left running. The reaper is ours, not the script's.

    One walk of /proc when nothing is below us but the reaper (a run's usual end), none when
    nothing at all is."""
    if not _has_children():
        return 0
    skip = _ours()
    below = [pid for pid in descendants() if pid not in skip]
    left = sum(1 for pid in below if _left_running(pid))
    if below:
        sweep(os.getpid(), skip)
    _collect()
    return left


def _collect() -> None:
    """Collect our ended children (the reaper's included once it left)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def end_tree(code: int, why: str) -> None:
    """End the whole run now: every descendant, this process group, this process."""
    try:
        print(f"aml_magics: {why}; ending the run", file=sys.__stderr__, flush=True)
    except Exception:
        pass
    kill_descendants()
    stop_reaper()
    try:
        os.killpg(os.getpgid(0), signal.SIGKILL)
    except OSError:
        pass
    os._exit(code)
