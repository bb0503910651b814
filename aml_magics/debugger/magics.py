"""The bodies of ``%aml_attach`` and ``%aml_dbg`` (magics.py keeps only their signatures):
parse, call the debugger, turn its errors into one-line ``UsageError``s."""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError

from .commands import parse_attach, run_command
from .core import Debugger
from .errors import DebuggerError


def attach_magic(magics: Any, line: str) -> Debugger:
    try:
        options = parse_attach(line)
    except DebuggerError as exc:
        raise UsageError(str(exc)) from None
    run = magics._find(options.run)
    try:
        return run.attach(breakpoints=options.breakpoints, rank=options.rank, timeout=options.timeout)
    except DebuggerError as exc:
        raise UsageError(str(exc)) from None


def dbg_magic(line: str) -> None:
    try:
        text = run_command(line)
    except DebuggerError as exc:
        raise UsageError(str(exc)) from None
    print(text)
