"""Child processes in their own process group, ended as a whole, never left behind.

Modelled on IPython's script magics: a registry of live processes cleaned up at exit, and
an escalating stop (SIGINT, then SIGTERM, then SIGKILL) for the whole group. Every
subprocess aml_magics starts goes through :class:`ProcessGroup` — the user's code, a pip
build, a simulated node — so every one of them is stopped the same way.

A process group is not the whole tree: a descendant may call ``setsid()``
(``subprocess.Popen(..., start_new_session=True)``). So a stop also ends every descendant
found in the process tree (psutil), whatever group it moved to; the bootstrap makes itself
the subreaper of what it starts, so orphans stay in that tree while it lives. The tree is read
again at every step, and a leader that outlived the escalation is stopped (still alive, still the
subreaper) while everything below it is stopped and killed until nothing is left: a process
started meanwhile, a fork-and-exit walker, are all found.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Any

import psutil

# Run in front of a program that cannot watch an owner pipe itself (pip): it takes the kernel's
# parent-death signal and ends its whole process group (the program and what it started, e.g.
# pip's build backends) when the owner is gone; it does not start the program if it already is.
_DIE_WITH_OWNER = """
import ctypes, os, signal, subprocess, sys
def end(*_):
    os.killpg(0, signal.SIGKILL)
signal.signal(signal.SIGTERM, end)
signal.signal(signal.SIGINT, lambda *_: None)  # the group's SIGINT reaches the program itself
ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)
if os.getppid() != int(sys.argv[1]):
    end()
code = subprocess.Popen(sys.argv[2:]).wait()
sys.exit(code if code >= 0 else 128 - code)
"""

_live: set[ProcessGroup] = set()
_live_lock = threading.Lock()


class ProcessGroup:
    """A child process leading its own process group (its whole tree, when stopped)."""

    def __init__(self, argv: Sequence[str], cwd: str | os.PathLike | None = None,
                 env: Mapping[str, str] | None = None, *, stdout: int | IO[Any] | None = subprocess.PIPE,
                 pass_fds: Sequence[int] = (), text: bool = True, die_with_owner: bool = False) -> None:
        """``die_with_owner``: the process gets the kernel's parent-death signal (SIGKILL when the
        thread that started it, and so the owner, is gone) — for a program that cannot watch an owner
        pipe itself (pip). The bootstrap watches its owner on its own."""
        self.argv = list(argv)
        if die_with_owner and sys.platform.startswith("linux"):
            argv = [sys.executable, "-c", _DIE_WITH_OWNER, str(os.getpid()), *self.argv]
        options: dict[str, Any] = {"bufsize": 1, "text": True, "encoding": "utf-8", "errors": "replace"} if text else {}
        self.process: subprocess.Popen[Any] = subprocess.Popen(  # type: ignore[call-overload]
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: a stop reaches every descendant
            pass_fds=tuple(pass_fds),
            **options,
        )
        self._stopped = threading.Event()
        with _live_lock:
            _live.add(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    def lines(self) -> Iterable[str]:
        assert self.process.stdout is not None
        yield from self.process.stdout

    def poll(self) -> int | None:
        return self.process.poll()

    def wait(self, timeout: float | None = None) -> int:
        """The leader's exit code; then whatever it left in its group (and tree) is ended."""
        code = self.process.wait(timeout)
        self._reap_group()
        return code

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            return []

    def stop(self, grace: float = 2.0) -> None:
        """SIGINT, then SIGTERM, then SIGKILL to the whole group and tree, each after ``grace``."""
        tree = {p.pid: p for p in self.descendants()}
        for sig in (signal.SIGINT, signal.SIGTERM):
            tree.update((p.pid, p) for p in self.descendants())  # what started since
            if not self._signal(sig):
                break
            try:
                self.process.wait(grace)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            self._sweep_below_leader(tree)
            self._signal(signal.SIGKILL)
            self.process.wait()
        self._reap_group(list(tree.values()))

    def _sweep_below_leader(self, seen: dict[int, psutil.Process]) -> None:
        """The leader outlived SIGTERM: stop it (it stays the subreaper: every orphan comes back
        to it), then stop and kill everything below it until nothing is left."""
        try:
            os.kill(self.process.pid, signal.SIGSTOP)
        except OSError:
            return
        sweep(self.descendants(), seen, lambda: self.descendants())

    def _signal(self, sig: int) -> bool:
        try:
            os.killpg(self.process.pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def _reap_group(self, tree: list[psutil.Process] | None = None) -> None:
        """The leader is gone; kill what it left in its group and in its tree (and what those
        started meanwhile)."""
        self._signal(signal.SIGKILL)
        known = {p.pid: p for p in tree or []}
        sweep(list(known.values()), known, lambda: _below(known.values()))
        self._stopped.set()
        with _live_lock:
            _live.discard(self)


def kill_processes(processes: Iterable[psutil.Process]) -> None:
    """SIGKILL each process still alive (same start time: never a recycled pid)."""
    for proc in processes:
        try:
            if proc.is_running():
                proc.kill()
        except psutil.Error:
            pass


SWEEP_LIMIT = 30.0  # seconds a sweep may take (a tree that outgrows SIGKILL)


def _below(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    """The live descendants of each live process in ``processes``."""
    found: list[psutil.Process] = []
    for proc in list(processes):
        try:
            if proc.is_running():
                found.extend(proc.children(recursive=True))
        except psutil.Error:
            pass
    return found


def _alive(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    live = []
    for proc in processes:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                live.append(proc)
        except psutil.Error:
            pass
    return live


def sweep(first: list[psutil.Process], seen: dict[int, psutil.Process],
          more: Callable[[], list[psutil.Process]]) -> None:
    """Stop, then kill, ``first`` and what ``more()`` finds next, until nothing is left alive (a
    stopped process forks no more; a killed one's last child is found by the next round)."""
    batch, deadline = first, time.monotonic() + SWEEP_LIMIT
    while time.monotonic() < deadline:
        seen.update((p.pid, p) for p in batch)
        live = _alive(batch)
        if not live:
            return
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for proc in live:
                try:
                    proc.send_signal(sig)
                except psutil.Error:
                    pass
        time.sleep(0.01)
        batch = _alive([*more(), *seen.values()])


def live_groups() -> list[ProcessGroup]:
    with _live_lock:
        return list(_live)


def stop_all(grace: float = 0.5) -> None:
    for group in live_groups():
        group.stop(grace=grace)
