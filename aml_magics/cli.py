"""``aml-debug``: the same runs from a terminal.

    aml-debug run SCRIPT [options] [-- script args]
    aml-debug deploy SCORE_PY [options]      (a scoring script served with debugpy: see deploy.py)

Streams the run's output, prints the endpoint and the launch.json fragment as soon
as they are known, exits with the run's exit code, and cancels the run on Ctrl-C.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from . import engine
from .errors import OptionsError
from .follow import follow
from .options import Defaults, build_request, make_parser, parse_cli
from .run import DebugRun

USAGE = ("usage: aml-debug run SCRIPT [options] [-- script args]   (aml-debug run --help)\n"
         "       aml-debug deploy SCORE_PY [options]              (aml-debug deploy --help)")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "deploy":
        from .deploy.request import cli_main

        return cli_main(rest)
    if command != "run":
        print(f"aml-debug: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        return 2
    if "-h" in rest or "--help" in rest:
        print(make_parser("aml-debug run").format_help())
        return 0
    try:
        ns = parse_cli(rest, "aml-debug run")
        request = build_request(ns, None, Defaults())
        if request.dry_run:
            return print_plan(request, getattr(ns, "output", None) or "text")
        run = engine.start(request)
    except OptionsError as exc:
        print(f"aml-debug: {exc}", file=sys.stderr)
        return 2
    return follow_run(run)


def print_plan(request, output: str) -> int:
    """``--dry-run``: what would be submitted (``--output json`` for machines); nothing starts."""
    from .dryrun import format_text, plan

    data = plan(request)
    print(json.dumps(data, indent=2) if output == "json" else format_text(data), flush=True)
    return 0


def follow_run(run: DebugRun) -> int:
    try:
        follow(run, emit=lambda text: print(text, flush=True), on_endpoint=announce)
    except KeyboardInterrupt:
        run.cancel()
        print(f"aml-debug: run {run.id} canceled", file=sys.stderr)
        return 130
    print(f"aml-debug: run {run.id} {run.state}" + (f" ({run.detail})" if run.detail else ""), file=sys.stderr)
    if run.state == "completed":
        return 0
    return run.exit_code if run.exit_code else 1


def announce(run: DebugRun) -> None:
    for endpoint in run.endpoints:
        print(f"aml-debug: debugpy listening at {endpoint.address} (rank {endpoint.rank})", flush=True)
    print("aml-debug: launch.json attach configuration:", flush=True)
    print(json.dumps(run.launch_json(), indent=4), flush=True)


if __name__ == "__main__":
    sys.exit(main())
