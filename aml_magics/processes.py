"""Child processes in their own process group, ended as a whole, never left behind.

Modelled on IPython's script magics: a registry of live processes cleaned up at
exit, and an escalating stop (SIGINT, then SIGTERM, then SIGKILL) for the whole group.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping

_live: set["ProcessGroup"] = set()
_live_lock = threading.Lock()


class ProcessGroup:
    def __init__(self, argv: list[str], cwd: str | os.PathLike, env: Mapping[str, str]) -> None:
        self.argv = argv
        self.process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: a stop reaches every descendant
            bufsize=1,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        with _live_lock:
            _live.add(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    def lines(self) -> Iterable[str]:
        assert self.process.stdout is not None
        yield from self.process.stdout

    def wait(self) -> int:
        code = self.process.wait()
        self._reap_group()
        return code

    def stop(self, grace: float = 2.0) -> None:
        """SIGINT, then SIGTERM, then SIGKILL to the whole group, each after a grace period."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            if not self._signal(sig):
                break
            try:
                self.process.wait(grace)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            self._signal(signal.SIGKILL)
            self.process.wait()
        self._reap_group()

    def _signal(self, sig: int) -> bool:
        try:
            os.killpg(self.process.pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def _reap_group(self) -> None:
        """The leader is gone; kill whatever it left in its group (daemonised children)."""
        self._signal(signal.SIGKILL)
        with _live_lock:
            _live.discard(self)


_exit_hooks: list[Callable[[], object]] = []


def on_exit(hook: Callable[[], object]) -> None:
    """Run ``hook`` when the interpreter exits (targets register container cleanup here)."""
    _exit_hooks.append(hook)


@atexit.register
def _cleanup() -> None:
    for hook in reversed(_exit_hooks):
        try:
            hook()
        except Exception:
            pass
    with _live_lock:
        groups = list(_live)
    for group in groups:
        group.stop(grace=0.5)
