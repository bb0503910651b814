"""The run's reaper: a small process of its own that ends the run's whole tree when the owner goes.

Why a separate process: the bootstrap runs the user's code, so its own watch is a thread that
needs the GIL (a long C call holds it) and a parent-death SIGKILL would end the bootstrap before
that thread could end the tree — its children then run on with ppid 1. The reaper is started
before any user code, from a clean ``python -I -S``; it holds the owner's channel and a pipe
from the bootstrap (EOF: the bootstrap ended by itself, nothing to do).

On the owner's EOF it freezes and kills the tree below the bootstrap until nothing is left (the
bootstrap is the subreaper: every orphan, a double-forked daemon or a fork-and-exit walker,
comes back to it while it is alive and stopped), then the bootstrap itself.

Run as ``python -I -S reaper.py OWNER_FD ALIVE_FD BOOTSTRAP_PID``; stdlib only.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

SWEEP_LIMIT = 30.0  # seconds a sweep may take before it gives up (a tree that keeps growing)


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state letter) of ``pid``, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return (int(fields[1]), fields[0]) if len(fields) > 1 else None


def live_descendants(root: int, skip: frozenset[int] = frozenset()) -> list[int]:
    """Every process below ``root`` that is not a zombie, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = _stat(int(entry))
            if found is not None and found[1] != "Z":
                children.setdefault(found[0], []).append(int(entry))
    result, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in skip:
                result.append(child)
                todo.append(child)
    return result


def sweep(root: int, skip: frozenset[int] = frozenset()) -> int:
    """Stop, then kill, everything below ``root`` until nothing is left; how many were killed.

    A stopped process cannot fork; what a killed one had already forked comes back to ``root``
    (a subreaper) and is found by the next round.
    """
    killed: set[int] = set()
    deadline = time.monotonic() + SWEEP_LIMIT
    while time.monotonic() < deadline:
        pids = live_descendants(root, skip)
        if not pids:
            break
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        killed.update(pids)
        time.sleep(0.01)
    return len(killed)


def main(argv: list[str]) -> int:
    owner_fd, alive_fd, bootstrap = int(argv[0]), int(argv[1]), int(argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a cancel's SIGINT is for the user's code
    poller = select.poll()  # never select(): an fd number may be above 1024
    for fd in (owner_fd, alive_fd):
        poller.register(fd, select.POLLIN)
    while True:
        ready = {fd for fd, _ in poller.poll()}
        if alive_fd in ready and not os.read(alive_fd, 4096):
            return 0  # the bootstrap ended by itself (and ended its tree)
        if owner_fd in ready:
            try:
                if os.read(owner_fd, 4096):
                    continue
            except OSError:
                pass
            break
    if os.getppid() != bootstrap:
        return 0  # the bootstrap is gone already (its pid may be another process's now): nothing is ours
    try:
        os.kill(bootstrap, signal.SIGSTOP)  # it stays alive (the subreaper) but starts nothing more
    except OSError:
        pass
    sweep(bootstrap, frozenset({os.getpid()}))
    try:
        os.kill(bootstrap, signal.SIGKILL)
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
