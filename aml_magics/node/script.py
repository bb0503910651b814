"""Running the user's script as ``python SCRIPT ARGS`` would: ``__main__``, its own argv and path."""

from __future__ import annotations

import os
import runpy
import sys
import traceback


def line_buffer_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(line_buffering=True)
            except ValueError:
                pass


def run_user_script(script_path: str, script_args: list[str], on_crash=None) -> int:
    """Run the script as ``python SCRIPT ARGS`` would: its dir first on sys.path.

    ``on_crash(exc_info)`` runs after the traceback of an uncaught exception is printed
    (post-mortem); the exit code stays 1.
    """
    sys.argv = [script_path, *script_args]
    sys.path[0] = os.path.dirname(script_path)
    try:
        runpy.run_path(script_path, run_name="__main__")
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr, flush=True)
        return 1
    except BaseException:
        traceback.print_exc()
        if on_crash is not None:
            try:
                on_crash(sys.exc_info())
            except KeyboardInterrupt:  # canceled while waiting for a debugger
                print("aml_magics: post-mortem wait interrupted", file=sys.stderr, flush=True)
            except Exception as exc:  # the original failure is what the run reports
                print(f"aml_magics: post-mortem failed: {exc!r}", file=sys.stderr, flush=True)
        return 1
    return 0
