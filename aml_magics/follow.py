"""Following a run from a terminal-like place: print its output as it comes."""

from __future__ import annotations

from typing import Callable

from .run import DebugRun

Print = Callable[[str], None]


def follow(run: DebugRun, *, until_endpoint: bool = False, emit: Print = print,
           on_endpoint: Callable[[DebugRun], None] | None = None, poll: float = 0.2) -> None:
    """Stream lines until the run ends (or, with ``until_endpoint``, can be attached to).

    KeyboardInterrupt propagates: the caller decides to cancel.
    """
    seen = 0
    announced = False
    while True:
        finished = run.done
        lines, seen = run.lines_since(seen)
        for text in lines:
            emit(text)
        if run.endpoints and not announced:
            announced = True
            if on_endpoint is not None:
                on_endpoint(run)
        if finished or (until_endpoint and (announced or not run.spec.debug.enabled)):
            return
        run.wait_for_change(poll)
