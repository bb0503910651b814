"""The debugger as text: its repr, and what ``%aml_dbg`` prints in a terminal.

Plain functions of a :class:`~.core.Debugger`'s public state; nothing here talks to debugpy
except through the Debugger's methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import DebuggerError
from .paths import OUTSIDE_SCRIPT, short, source_lines

if TYPE_CHECKING:
    from .core import Debugger, Frame, Stop

CONTEXT = 2


def describe(debugger: Debugger) -> str:
    """One line: who, where, what state."""
    address = f" {debugger.address[0]}:{debugger.address[1]}" if debugger.address and debugger.run else ""
    return f"<Debugger {debugger.label}{address}: {status(debugger)}>"


def status(debugger: Debugger) -> str:
    state = debugger.state
    if state == "ended":
        return f"ended — {debugger.end_reason}"
    if state == "stopped":
        stop = _current_stop(debugger)
        if stop is not None:
            return f"stopped ({stop.reason}) at {where_text(debugger, stop.path, stop.line)}"
    if state == "armed":
        count = sum(len(v) for v in debugger.breakpoints.by_path.values())
        return f"not attached yet ({count} breakpoint{'s' if count != 1 else ''} to arm)"
    return state


def where_text(debugger: Debugger, path: str | None, line: int) -> str:
    return f"{short(path, debugger.local_root)}:{line}" if path else OUTSIDE_SCRIPT


def stop_text(debugger: Debugger, stop: Stop | None) -> str:
    if stop is None:
        return f"the session ended: {debugger.end_reason}" if debugger.ended else "running"
    text = f"stopped ({stop.reason}) at {where_text(debugger, stop.path, stop.line)}"
    return f"{text}\n{source_context(debugger, stop.path, stop.line)}" if stop.path else text


def source_context(debugger: Debugger, path: str | None, line: int, context: int = CONTEXT) -> str:
    """A few lines around ``line``: ``->`` marks it, ``●`` marks breakpoints."""
    lines = source_lines(path)
    if not lines or not path:
        return ""
    breakpoints = set(debugger.breakpoints.lines(path))
    first, last = max(1, line - context), min(len(lines), line + context)
    rows = []
    for number in range(first, last + 1):
        mark = "->" if number == line else "  "
        dot = "●" if number in breakpoints else " "
        rows.append(f"{dot}{number:>5} {mark} {lines[number - 1]}")
    return "\n".join(rows)


def stack_text(debugger: Debugger, frames: list[Frame]) -> str:
    rows = []
    for index, frame in enumerate(frames):
        mark = ">" if index == debugger.frame_index else " "
        rows.append(f"{mark} #{index} {frame.name} at {where_text(debugger, frame.path, frame.line)}")
    return "\n".join(rows)


def variables_text(values: dict[str, str]) -> str:
    if not values:
        return "(no locals)"
    width = min(24, max(len(name) for name in values))
    return "\n".join(f"{name:<{width}} = {value}" for name, value in values.items())


def render(debugger: Debugger) -> str:
    """The whole text view: the state, the stop with its source, an exception, the paused processes."""
    lines = [describe(debugger)]
    if debugger.state == "stopped":
        stop = _current_stop(debugger)
        if stop is not None and stop.path:
            lines.append(source_context(debugger, stop.path, stop.line))
        if stop is not None and stop.reason == "exception":
            try:
                info = debugger.exception()
                lines.append(f"exception: {info.type}: {info.message}")
            except DebuggerError as exc:
                lines.append(f"exception: ({exc})")
        paused = debugger.paused
        if len(debugger.processes) > 1:
            lines.append("paused processes: " + (", ".join(p.label for p in paused) or "none"))
    return "\n".join(line for line in lines if line)


def _current_stop(debugger: Debugger) -> Stop | None:
    return debugger.current_stop
