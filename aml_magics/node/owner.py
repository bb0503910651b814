"""The owner's watch and the process tree: a run lives as long as the kernel or CLI that started it.

The owner holds a pipe (or a container's stdin) whose end means "gone"; this process is the
subreaper of everything the user's code starts, so an orphan stays in the tree a stop ends.
"""

from __future__ import annotations

import os
import signal
import sys

from .wire import OWNER_ENV, OWNER_GONE_EXIT, service_thread

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


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


def watch_owner(fd: int) -> None:
    """End this run (its whole tree) when the owner's channel closes: the owner is gone, whatever
    killed it (SIGKILL included). Plus the kernel's parent-death signal where there is one."""
    if os.getppid() != 1:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

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


def kill_descendants() -> int:
    """SIGKILL whatever is left below this process (and collect it); how many of those the
    script had left running."""
    pids = descendants()
    left = sum(1 for pid in pids if _left_running(pid))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except OSError:
            pass
    return left


def end_tree(code: int, why: str) -> None:
    """End the whole run now: every descendant, this process group, this process."""
    try:
        print(f"aml_magics: {why}; ending the run", file=sys.__stderr__, flush=True)
    except Exception:
        pass
    kill_descendants()
    try:
        os.killpg(os.getpgid(0), signal.SIGKILL)
    except OSError:
        pass
    os._exit(code)
