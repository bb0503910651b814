"""Running the user's script as ``python SCRIPT ARGS`` would: ``__main__``, its own argv and path.

An exception the script does not catch is not caught here either: it must leave the process
uncaught, as under a plain ``python -m debugpy SCRIPT``, so that a client's ``uncaught``
exception filter stops at the raising line (a handler of ours would make debugpy see only the
``SystemExit`` that followed, and stop in our file). What the node does about a crash runs
in :func:`main.main`'s ``except`` clause, which re-raises.
"""

from __future__ import annotations

import os
import runpy
import sys
from types import TracebackType


def line_buffer_output() -> None:
    """Whole lines out, each as it ends: ``print("result", 30)`` is four writes, and unbuffered
    (``PYTHONUNBUFFERED``) each went out alone, so a line of the node's own from another thread
    could land in the middle of it. Buffered up to its newline, a line leaves in one write."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(line_buffering=True, write_through=False)
            except ValueError:
                pass


def run_user_script(script_path: str, script_args: list[str]) -> int:
    """Run the script as ``python SCRIPT ARGS`` would (its dir first on sys.path); its exit code.

    A ``KeyboardInterrupt`` (a cancel) is 130 and a ``sys.exit(0)`` is 0; any other exception,
    a non-zero ``SystemExit`` included, propagates to the caller, untouched.
    """
    sys.argv = [script_path, *script_args]
    sys.path[0] = os.path.dirname(script_path)
    try:
        runpy.run_path(script_path, run_name="__main__")
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:
        if exc.code is None or exc.code == 0:
            return 0
        raise
    return 0


def exit_code(exc: BaseException) -> int:
    """The status Python exits with when ``exc`` leaves the main module uncaught."""
    if isinstance(exc, SystemExit):
        if exc.code is None:
            return 0
        return exc.code if isinstance(exc.code, int) else 1
    return 1


def report_uncaught(exc: BaseException) -> None:
    """Print the traceback now (through the script's own ``sys.excepthook``, as Python would),
    and keep Python from printing it a second time when the exception leaves the process."""
    if isinstance(exc, SystemExit):
        return  # Python prints a non-int code itself, as it always does
    hook = sys.excepthook
    try:
        hook(type(exc), exc, exc.__traceback__)
    except Exception:
        sys.__excepthook__(type(exc), exc, exc.__traceback__)
    sys.stderr.flush()

    def already_reported(exc_type: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if value is not exc:  # printed when it happened (before any post-mortem wait)
            hook(exc_type, value, tb)

    sys.excepthook = already_reported
