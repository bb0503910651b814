"""Following a run from a terminal-like place: print its output as it comes."""

from __future__ import annotations

from collections.abc import Callable

from .run import DebugRun

Print = Callable[[str], None]


def follow(run: DebugRun, *, until_endpoint: bool = False, emit: Print = print,
           on_endpoint: Callable[[DebugRun], None] | None = None, poll: float = 0.2) -> None:
    """Stream lines until the run ends (or, with ``until_endpoint``, can be attached to:
    an endpoint is known, or the run is running with no debugger to wait for yet).

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
        nothing_to_wait_for = not run.spec.debug.listens_at_start and run.state == "running"
        if finished or (until_endpoint and (announced or nothing_to_wait_for)):
            return
        run.wait_for_change(poll)
