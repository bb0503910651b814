"""Following runs from a terminal-like place: print their output as it comes, and say while a
run waits for a debugger (the wait can last minutes, and the output is silent meanwhile)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, TextIO, TypeVar

from .failure import FrameFilter
from .run import DebugRun
from .views.text import listening_endpoints

Print = Callable[[str], None]
R = TypeVar("R", bound=DebugRun)


def follow(run: R, *, until_endpoint: bool = False, emit: Print = print,
           on_endpoint: Callable[[R], None] | None = None, until: Callable[[R], bool] | None = None,
           on_update: Callable[[R], None] | None = None, poll: float = 0.2) -> None:
    """Stream lines until the run ends, or ``until(run)``, or (with ``until_endpoint``) it can
    be attached to: an endpoint is known, or the run is running with no debugger to wait for yet.
    ``on_endpoint(run)`` once the first endpoint is known; ``on_update(run)`` after each batch
    (at least every ``poll`` seconds).

    Marker lines are left out (their facts are announced in words), and so are the bootstrap's
    own frames in a traceback. KeyboardInterrupt propagates: the caller decides to cancel.
    """
    seen = 0
    announced = False
    keep = FrameFilter().keep
    while True:
        # Decided before reading the lines, so the lines up to that point are all shown.
        finished = run.done or (until is not None and until(run))
        lines, seen = run.lines_since(seen)
        for text in lines:
            if keep(text):
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
    keeps = {name: FrameFilter().keep for name in runs}
    while True:
        finished = all(run.done for run in runs.values())
        for name, run in runs.items():
            lines, seen[name] = run.lines_since(seen[name])
            for text in lines:
                if keeps[name](text):
                    emit(f"[{name}] {text}")
        if finished or (until_endpoint and any(run.endpoints for run in runs.values())):
            return
        time.sleep(poll)


# -- the attach wait, in a terminal ------------------------------------------------------------


def waiting_text(run: DebugRun, left: float) -> str:
    """``waiting for a debugger at 127.0.0.1:5678 — 27 s left — Ctrl-C cancels``."""
    listening = listening_endpoints(run)
    where = f" at {listening[0].address}" if listening else ""
    if listening and listening[0].route_detail:
        where += f" ({listening[0].route_detail})"
    if len(listening) > 1:
        where += f" and {len(listening) - 1} more rank(s)"
    crashed = f"crashed ({run.detail}) — " if run.state == "crashed_waiting_for_debugger" and run.detail else ""
    return f"{crashed}waiting for a debugger{where} — {math.ceil(left)} s left — Ctrl-C cancels"


class AttachWait:
    """Says in a terminal that a run waits for a debugger, and how the wait ended.

    On a TTY: one line rewritten in place as the seconds pass (output lines are printed above it).
    Elsewhere (a pipe, a CI log): one plain line when the wait starts, no carriage returns.
    ``update(run)`` is called often (``follow``'s ``on_update``); ``emit`` wraps the output printer.
    """

    def __init__(self, stream: TextIO, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = _isatty(stream) if tty is None else tty
        self._shown = ""  # the status line on screen (TTY)
        self._waiting = False

    def update(self, run: DebugRun) -> None:
        left = run.seconds_left_to_attach()
        if left is not None and not run.done:
            text = waiting_text(run, left)
            if self.tty:
                if text != self._shown:
                    self._draw(text)
            elif not self._waiting:
                self._write(f"aml-debug: {waiting_text(run, left).replace(' s left', ' s to attach')}\n")
            self._waiting = True
        elif self._waiting:
            self.clear()
            self._waiting = False
            said = _wait_ended(run)
            if said:
                self._write(f"aml-debug: {said}\n")

    def emit(self, printer: Print) -> Print:
        """``printer`` with the status line moved out of the way of each output line."""

        def emit(text: str) -> None:
            shown = self._shown
            if shown:
                self.clear()
            printer(text)
            if shown:
                self._draw(shown)

        return emit

    def clear(self) -> None:
        if self._shown:
            self._write("\r\033[K")
            self._shown = ""

    def _draw(self, text: str) -> None:
        self._write(f"\r\033[K{text}")
        self._shown = text

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed terminal must not break the run's following
            pass


def _wait_ended(run: DebugRun) -> str:
    if run.state == "attached":
        return "debugger attached"
    if run.done:
        return ""
    return ("nobody attached in time: the debugger is off and the script runs on "
            f"(--timeout {run.spec.debug.timeout:g})")


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
