"""The one way this package writes a file the user sees (launch.json, its backup, a cell's script).

Why: these files live in the user's project, which may be a cloned repository carrying links
planted to redirect a write (``.vscode/launch.json.bak -> ~/.bashrc``), and several writers (runs
of one kernel, several kernels or terminals) may merge into one launch.json at the same moment.
The rules:

- **New files only.** Data is first written to a temp file created fresh in the target's own
  folder: a random name, ``O_CREAT|O_EXCL|O_NOFOLLOW``, mode 0600 while it is written; then it
  gets its final mode (the replaced file's mode and owner, or ``0666 & ~umask`` for a new file),
  is fsynced, and ``os.replace`` moves it onto the target; the folder is fsynced. Nothing is ever
  opened for writing through a name that already exists, so no planted link or hard link is
  followed, and a reader sees the old file or the new one, never half of one. ``rename`` replaces
  a link at the destination instead of following it, which is what a backup or a cell file wants.
- **Symbolic links at the target** (``follow=True``, launch.json): a link to an existing regular
  file is written *through* — VS Code users keep dotfiles in linked folders and link shared
  launch.json files on purpose; the real file is replaced in its own folder and the link stays.
  A *dangling* link is refused: creating a file wherever a link points is exactly how a planted
  link writes outside the project. With ``follow=False`` (backups, cell scripts: names this
  package owns) a link is replaced by a regular file, never followed.
- **Refused in one line** (``FileRefused``, an OSError whose ``str`` is ``<path>: <reason>``): a
  dangling link, a target that is not a regular file, a read-only target (no write bit, or no
  write access for us: ``rename`` would otherwise quietly replace a file the user protected).
- **Read-modify-write is serialised** by ``locked(path)``: an exclusive ``flock`` on a sibling lock
  file ``.<name>.lock``, opened without following links and removed on release (a waiter that then
  wins the lock checks it still holds the file at that name, and tries again otherwise), so a
  project is not left with stray lock files. Where the file system has no locks (some network
  mounts) the write goes ahead unserialised, still atomic.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import AmlMagicsError

try:
    import fcntl
except ImportError:  # not POSIX: writes stay atomic, but are not serialised
    fcntl = None  # type: ignore[assignment]

__all__ = ["FileRefused", "describe", "locked", "private_folder", "resolve_target", "write_atomic"]

LOCK_TIMEOUT = 60.0  # seconds a writer waits for another one (a merge takes milliseconds)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BINARY = getattr(os, "O_BINARY", 0)
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.EBADF}


class FileRefused(AmlMagicsError, OSError):
    """A write this module will not do; ``str()`` is one line, ``<path>: <reason>``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(errno.EPERM, reason, os.fspath(path))

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def describe(exc: OSError, path: str | os.PathLike, doing: str = "write") -> str:
    """One line for an OSError met while writing (``doing``) ``path``: the path and the OS's reason."""
    if isinstance(exc, FileRefused):
        return str(exc)
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = f" ({exc.filename})" if exc.filename and os.fspath(exc.filename) != os.fspath(path) else ""
    return f"cannot {doing} {os.fspath(path)}: {reason}{where}"


# -- the target ------------------------------------------------------------------------------------


def resolve_target(path: str | os.PathLike, *, follow: bool = True) -> Path:
    """The absolute path that will be replaced when writing ``path``; refuses what must not be written.

    ``follow``: a link to an existing file is resolved to that file (a dangling one is refused);
    otherwise a link is the target itself (it will be replaced by a regular file).
    """
    target = Path(os.path.abspath(os.fspath(path)))
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return target  # a new file (its folder may not exist yet)
    if stat.S_ISLNK(info.st_mode):
        if not follow:
            return target
        real = Path(os.path.realpath(target))
        try:
            info = os.stat(real)
        except FileNotFoundError:
            raise FileRefused(target, f"is a symbolic link to a missing file ({os.readlink(target)}); "
                                      "refusing to create a file through it") from None
        target = real
    if not stat.S_ISREG(info.st_mode):
        raise FileRefused(target, "is not a regular file; refusing to replace it")
    if not info.st_mode & 0o222 or not os.access(target, os.W_OK):
        raise FileRefused(target, f"is read-only (mode {stat.S_IMODE(info.st_mode):04o}); "
                                  "make it writable or write elsewhere (left untouched)")
    return target


def write_atomic(path: str | os.PathLike, data: bytes, *, follow: bool = True,
                 like: os.stat_result | None = None) -> Path:
    """Make ``path`` hold ``data`` atomically, by the rules above; returns the path replaced.

    The new file takes ``like``'s mode and owner when given, else the replaced file's, else the
    mode a new file gets (``0666 & ~umask``). Missing folders are created.
    """
    target = resolve_target(path, follow=follow)
    target.parent.mkdir(parents=True, exist_ok=True)
    if like is None:
        with contextlib.suppress(FileNotFoundError):
            existing = os.lstat(target)
            like = existing if stat.S_ISREG(existing.st_mode) else None
    tmp = _write_temp(target, data, like)
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)
    return target


def _write_temp(target: Path, data: bytes, like: os.stat_result | None) -> Path:
    """A new file next to ``target`` holding ``data`` with its final mode, synced; never an existing name."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC | _BINARY
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o600)
            break
        except FileExistsError:  # a leftover or a planted name: never reuse it, pick another
            continue
    else:
        raise FileExistsError(errno.EEXIST, "no free temporary name", os.fspath(target.parent))
    try:
        try:
            _write_all(fd, data)
            _set_owner_and_mode(fd, tmp, like)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _set_owner_and_mode(fd: int, tmp: Path, like: os.stat_result | None) -> None:
    if like is not None and hasattr(os, "fchown"):
        current = os.fstat(fd)
        if (current.st_uid, current.st_gid) != (like.st_uid, like.st_gid):
            with contextlib.suppress(OSError):  # only root may give a file away; keep ours then
                os.fchown(fd, like.st_uid, like.st_gid)
    mode = stat.S_IMODE(like.st_mode) if like is not None else 0o666 & ~_umask()
    if hasattr(os, "fchmod"):
        os.fchmod(fd, mode)  # after chown, which may clear set-id bits
    else:
        os.chmod(tmp, mode)


def _umask() -> int:
    """The process umask, read without changing it where the OS says it (Linux)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- a folder of our own in a shared place ---------------------------------------------------------


def private_folder(path: str | os.PathLike) -> Path:
    """``path`` as a folder only this user can enter (mode 0700), made if missing.

    For a well-known name in a shared place (``/tmp``): whoever made it first owns it, so a
    folder that is a link, is not a folder, or is another user's is refused, never used; a
    looser mode of our own folder is tightened.
    """
    folder = Path(os.path.abspath(os.fspath(path)))
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, 0o700)
    info = os.lstat(folder)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise FileRefused(folder, "is not a folder (a link, or a file); refusing to use it")
    if info.st_uid != os.getuid():
        raise FileRefused(folder, f"belongs to another user (uid {info.st_uid}); refusing to use it")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(folder, 0o700)
    return folder


# -- serialising read-modify-write ---------------------------------------------------------------


@contextlib.contextmanager
def locked(path: str | os.PathLike, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold an exclusive advisory lock for ``path`` (its folder must exist) while the block runs.

    Lock the *resolved* target (``resolve_target``): writers reaching one file through different
    links then share one lock.
    """
    lock_path = Path(path).with_name(f".{Path(path).name}.lock")
    fd = _acquire(lock_path, timeout) if fcntl is not None else None
    try:
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(lock_path)  # while still holding it: see _acquire
            os.close(fd)


def _acquire(lock_path: Path, timeout: float) -> int | None:
    """An fd holding the lock on the file now at ``lock_path``; None where locks are unsupported."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o600)
        try:
            if _try_lock(fd):
                if _is_at(fd, lock_path):
                    return fd
                # the holder removed it before releasing: lock the new one
            elif time.monotonic() > deadline:
                raise FileRefused(lock_path, f"another writer has held this lock for over {timeout:.0f} s")
        except OSError as exc:
            if exc.errno in _NO_LOCKS:
                return fd  # no locks on this file system: go ahead unserialised
            os.close(fd)
            raise
        os.close(fd)
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _is_at(fd: int, path: Path) -> bool:
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)
