"""The Python API: ``aml_magics.submit(...)`` builds the same request as the magic."""

from __future__ import annotations

import argparse
from typing import Any

from . import engine
from .options import Defaults, build_request, make_parser, options_argv
from .run import DebugRun


def submit(script: str | None = None, *, code: str | None = None, **options: Any) -> DebugRun:
    """Start a run; ``options`` are the magic's long options with ``_`` for ``-``.

    ``port`` takes an int or "auto", ``pip`` and ``env_var`` lists (``env_var=["K=V"]``
    or ``env={"K": "V"}``), ``args`` a list or a string. Raises OptionsError (a ValueError)
    for bad input.
    """
    ns = _namespace(script, options)
    request = build_request(ns, code, Defaults())
    run = engine.start(request)
    if request.wait:
        try:
            run.wait()
        except KeyboardInterrupt:
            run.cancel()
            raise
    return run


def _namespace(script: str | None, options: dict[str, Any]) -> argparse.Namespace:
    env = options.pop("env", None) or {}
    args = options.pop("args", None)
    argv = options_argv(options)
    for key, value in env.items():
        argv += ["--env-var", f"{key}={value}"]
    if script is not None:
        argv.append(script)
    ns = make_parser("aml_magics.submit").parse_args(argv)
    if isinstance(args, str):
        ns.args = args
        ns.script_args = []
    else:
        ns.script_args = [str(a) for a in (args or ())]
    return ns
