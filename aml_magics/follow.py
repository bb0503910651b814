"""Following runs from a terminal-like place: print their output as it comes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from .run import DebugRun

Print = Callable[[str], None]
R = TypeVar("R", bound=DebugRun)


def follow(run: R, *, until_endpoint: bool = False, emit: Print = print,
           on_endpoint: Callable[[R], None] | None = None, until: Callable[[R], bool] | None = None,
           on_update: Callable[[R], None] | None = None, poll: float = 0.2) -> None:
    """Stream lines until the run ends, or ``until(run)``, or (with ``until_endpoint``) it can
    be attached to: an endpoint is known, or the run is running with no debugger to wait for yet.
    ``on_endpoint(run)`` once the first endpoint is known; ``on_update(run)`` after each batch.

    Marker lines are left out (their facts are announced in words). KeyboardInterrupt
    propagates: the caller decides to cancel.
    """
    seen = 0
    announced = False
    while True:
        # Decided before reading the lines, so the lines up to that point are all shown.
        finished = run.done or (until is not None and until(run))
        lines, seen = run.lines_since(seen)
        for text in lines:
            emit(text)
        if run.endpoints and not announced:
            announced = True
            if on_endpoint is not None:
                on_endpoint(run)
        if on_update is not None:
            on_update(run)
        nothing_to_wait_for = not run.spec.debug.listens_at_start and run.state == "running"
        if finished or (until_endpoint and (announced or nothing_to_wait_for)):
            return
        run.wait_for_change(poll)


def follow_group(group: Any, until_endpoint: bool, emit: Print = print, poll: float = 0.2) -> None:
    """Print every member's lines (``[name] `` first) as they come, until one member can be
    attached to (``until_endpoint``) or all ended."""
    runs: dict[str, DebugRun] = group.runs
    seen = dict.fromkeys(runs, 0)
    while True:
        finished = all(run.done for run in runs.values())
        for name, run in runs.items():
            lines, seen[name] = run.lines_since(seen[name])
            for text in lines:
                emit(f"[{name}] {text}")
        if finished or (until_endpoint and any(run.endpoints for run in runs.values())):
            return
        time.sleep(poll)
