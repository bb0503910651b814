"""``%aml_dbg`` and ``%aml_attach``: the debugger for people who type faster than they click.

Each command is one short call on the current :class:`~.core.Debugger` and returns the text
to print; a bad command is a :class:`DebuggerError` with one line (the magic shows it as a
``UsageError``). The commands follow pdb's names::

    break FILE:LINE [if COND] | clear [FILE[:LINE]] | where | up | down | locals | p EXPR |
    next | step | return | continue [SECONDS] | pause | detach | stats EXPR | cancel |
    exceptions [uncaught] [raised] [user-uncaught] | exceptions none
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from typing import Any

from .core import Debugger, current
from .errors import DebuggerError
from .paths import parse_breakpoint
from .text import source_context, stack_text, stop_text, variables_text, where_text

USAGE = ("usage: %aml_dbg break FILE:LINE [if COND] | clear [FILE[:LINE]] | where | up | down | locals | p EXPR | "
         "next | step | return | continue [SECONDS] | pause | detach | stats EXPR | cancel | "
         "exceptions [uncaught|raised|user-uncaught|none]")
CONTINUE_WAIT = 10.0
_FILTER_WORDS = {"userUnhandled": "user-uncaught"}
ATTACH_USAGE = "usage: %aml_attach RUN [--rank R] [--break FILE:LINE ...] [--timeout S]"


def run_command(line: str, debugger: Debugger | None = None) -> str:
    """Execute one ``%aml_dbg`` command line; the text to show."""
    word, _, rest = line.strip().partition(" ")
    rest = rest.strip()
    if not word or word in ("-h", "--help", "help"):
        return USAGE
    handler = _COMMANDS.get(word)
    if handler is None:
        raise DebuggerError(f"unknown command {word!r}; {USAGE}")
    target = debugger or current()
    if target is None:
        raise DebuggerError("no debugger attached in this kernel: use %aml_attach RUN or run.attach()")
    return handler(target, rest)


def _break(debugger: Debugger, rest: str) -> str:
    if not rest:
        raise DebuggerError("usage: %aml_dbg break FILE:LINE [if COND]")
    path, line, condition = parse_breakpoint(rest)
    state = debugger.break_at(path, line, condition)
    where = where_text(debugger, _local(debugger, path), line)
    verdict = "" if state is None or state.verified is None else (
        " (verified)" if state.verified else f" (not verified{': ' + state.message if state.message else ''})")
    return f"breakpoint at {where}{' if ' + condition if condition else ''}{verdict}"


def _local(debugger: Debugger, path: str) -> str:
    from .paths import local_path

    return local_path(path, debugger.local_root)


def _clear(debugger: Debugger, rest: str) -> str:
    if not rest:
        debugger.clear()
        return "cleared every breakpoint"
    path, colon, line = rest.rpartition(":")
    if colon and line.strip().isdigit():
        debugger.clear(path, int(line))
        return f"cleared {where_text(debugger, _local(debugger, path), int(line))}"
    debugger.clear(rest)
    return f"cleared the breakpoints of {rest}"


def _where(debugger: Debugger, rest: str) -> str:
    return stack_text(debugger, debugger.stack())


def _move(step: int) -> Callable[[Debugger, str], str]:
    def move(debugger: Debugger, rest: str) -> str:
        index = debugger.frame_index + step
        if index < 0:
            raise DebuggerError("already at the innermost frame")
        frames = debugger.stack()
        if index >= len(frames):
            raise DebuggerError("already at the outermost frame")
        frame = debugger.select_frame(index)
        return f"#{index} {frame.name} at {where_text(debugger, frame.path, frame.line)}\n" + \
            source_context(debugger, frame.path, frame.line)

    return move


def _locals(debugger: Debugger, rest: str) -> str:
    return variables_text(debugger.locals())


def _print(debugger: Debugger, rest: str) -> str:
    if not rest:
        raise DebuggerError("usage: %aml_dbg p EXPR")
    return debugger.evaluate(rest)


def _stepper(name: str) -> Callable[[Debugger, str], str]:
    def step(debugger: Debugger, rest: str) -> str:
        stop = getattr(debugger, name)()
        return stop_text(debugger, stop)

    return step


def _continue(debugger: Debugger, rest: str) -> str:
    """Continue, and show the next stop when it comes within ``[SECONDS]`` (default 10)."""
    try:
        wait = float(rest) if rest else CONTINUE_WAIT
    except ValueError:
        raise DebuggerError("usage: %aml_dbg continue [SECONDS to wait for the next stop]") from None
    debugger.continue_()
    try:
        stop = debugger.wait_stopped(wait)
    except DebuggerError:
        if debugger.ended:
            return stop_text(debugger, None)
        return f"running (no stop in {wait:g}s; %aml_dbg where once it stops, or the panel)"
    return stop_text(debugger, stop)


def _cancel(debugger: Debugger, rest: str) -> str:
    busy = debugger.busy
    debugger.cancel_evaluate()
    return f"interrupted {busy}" if busy else "no evaluate is running"


def _stats(debugger: Debugger, rest: str) -> str:
    if not rest:
        raise DebuggerError("usage: %aml_dbg stats EXPR")
    return debugger.statistics(rest)


def _exceptions(debugger: Debugger, rest: str) -> str:
    words = rest.replace(",", " ").split()
    if words:
        debugger.set_exceptions([] if words == ["none"] else words)
    chosen = [_FILTER_WORDS.get(f, f) for f in debugger.exception_filters]
    return "stop on exceptions: " + (", ".join(chosen) or "none")


def _detach(debugger: Debugger, rest: str) -> str:
    debugger.detach()
    return f"detached from {debugger.label}; the run goes on"


_COMMANDS: dict[str, Callable[[Debugger, str], str]] = {
    "break": _break, "b": _break,
    "clear": _clear, "cl": _clear,
    "where": _where, "w": _where, "bt": _where,
    "up": _move(+1), "u": _move(+1),
    "down": _move(-1), "d": _move(-1),
    "locals": _locals,
    "p": _print, "print": _print,
    "next": _stepper("step_over"), "n": _stepper("step_over"),
    "step": _stepper("step_in"), "s": _stepper("step_in"),
    "return": _stepper("step_out"), "r": _stepper("step_out"),
    "continue": _continue, "c": _continue, "cont": _continue,
    "pause": _stepper("pause"),
    "cancel": _cancel,
    "stats": _stats,
    "exceptions": _exceptions,
    "detach": _detach,
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, never SystemExit
        raise DebuggerError(f"{message}; {ATTACH_USAGE}")


def parse_attach(line: str) -> argparse.Namespace:
    """``RUN [--rank R] [--break FILE:LINE ...] [--timeout S]``."""
    parser = _Parser(prog="%aml_attach", add_help=False)
    parser.add_argument("run")
    parser.add_argument("--rank", type=int, default=None)
    parser.add_argument("--break", dest="breakpoints", action="append", default=[], metavar="FILE:LINE")
    parser.add_argument("--timeout", type=float, default=30.0)
    try:
        argv = shlex.split(line)
    except ValueError as exc:
        raise DebuggerError(f"cannot parse {line!r}: {exc}") from None
    if not argv:
        raise DebuggerError(ATTACH_USAGE)
    options = parser.parse_args(argv)
    if options.timeout <= 0:
        raise DebuggerError(f"--timeout must be positive; {ATTACH_USAGE}")
    for spec in options.breakpoints:
        parse_breakpoint(spec)
    return options
