"""``aml-debug``: the same runs from a terminal.

    aml-debug run [options] SCRIPT [-- ARGS ...]
    aml-debug deploy [options] SCORE_PY      (a scoring script served with debugpy: see deploy/)

Streams the run's output, prints the endpoint and the launch.json fragment as soon
as they are known, shows the attach countdown while the run waits for a debugger (a live
line on a terminal, one plain line in a log), exits with the run's exit code, and cancels
the run on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from . import engine
from ._version import __version__
from .errors import AmlMagicsError, OptionsError, one_line
from .follow import AttachWait, follow
from .options import Defaults, build_request, make_parser, parse_cli
from .run import DebugRun
from .views.text import LISTENING, attach_hint, can_attach, endpoint_now, shown_launch_json

PROG = "aml-debug run"
RUN_USAGE = f"{PROG} [options] SCRIPT [-- ARGS ...]"
USAGE = (f"usage: {RUN_USAGE}   (aml-debug run --help)\n"
         "       aml-debug deploy [options] SCORE_PY         (aml-debug deploy --help)")
EPILOG = """examples:
  aml-debug run examples/train.py --timeout 30 -- --epochs 5
  aml-debug run train.py --target docker --pip torch -- --lr 0.1

Everything after -- goes to the script untouched. Ctrl-C cancels the run (its whole process
tree, container or Azure ML run)."""
HELP = f"""{USAGE}
       aml-debug --version

Debug code that runs somewhere else (a child process, a Docker container, an Azure ML node)
with debugpy: the run starts with the debugger listening, the endpoint and a ready VS Code
launch.json attach configuration are printed as soon as they are known, and the terminal counts
down the attach window.

commands:
  run      run a script with debugpy listening, on a target (--target: see aml-debug run --help)
  deploy   serve a scoring script (init()/run()) with the Azure ML inference server and debugpy

options:
  -h, --help  show this help and exit
  --version   show the version and exit

{EPILOG}"""


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; a reader that leaves early (``aml-debug run --help | head``) ends it quietly."""
    try:
        return _main(argv)
    except BrokenPipeError:
        _quiet_stdout()
        return 0


def _quiet_stdout() -> None:
    """Python flushes stdout again at exit: point it at /dev/null so that flush cannot fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(HELP if argv else USAGE, file=sys.stdout if argv else sys.stderr, flush=True)
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"aml-debug (aml_magics) {__version__}", flush=True)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "deploy":
        from .deploy.request import cli_main

        return cli_main(rest)
    if command != "run":
        print(f"aml-debug: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        return 2
    ours = rest[:rest.index("--")] if "--" in rest else rest  # a script's own --help is the script's
    if "-h" in ours or "--help" in ours:
        print(run_parser().format_help(), flush=True)
        return 0
    try:
        ns = parse_cli(rest, PROG)
        if not ns.script_path and not ns.script:
            raise OptionsError(f"no script to run: {RUN_USAGE}  (e.g. aml-debug run examples/train.py)")
        request = build_request(ns, None, Defaults())
        if request.dry_run:
            return print_plan(request, getattr(ns, "output", None) or "text")
        run = engine.start(request)
    except AmlMagicsError as exc:  # the one door: a user error is one line and exit code 2
        print(f"aml-debug: {one_line(exc)}", file=sys.stderr)
        return 2
    return follow_run(run)


def run_parser():  # noqa: ANN201 - an argparse parser
    return make_parser(PROG, usage="%(prog)s [options] SCRIPT [-- ARGS ...]", epilog=EPILOG)


def print_plan(request, output: str) -> int:
    """``--dry-run``: what would be submitted (``--output json`` for machines); nothing starts."""
    from .dryrun import format_text, plan

    data = plan(request)
    print(json.dumps(data, indent=2) if output == "json" else format_text(data), flush=True)
    return 0


def follow_run(run: DebugRun) -> int:
    wait = AttachWait(sys.stderr)
    try:
        follow(run, emit=wait.emit(_say), on_endpoint=announce, on_update=wait.update)
    except KeyboardInterrupt:
        wait.clear()
        run.cancel()
        try:
            run.wait(10)
        except TimeoutError:
            pass
        print(f"aml-debug: run {run.id} " + (run.detail if run.detail.startswith("canceled") else "canceled"),
              file=sys.stderr)
        return 130
    wait.clear()
    print(f"aml-debug: run {run.id} {run.state}" + (f": {run.detail}" if run.detail else ""), file=sys.stderr)
    if run.state == "completed":
        return 0
    return run.exit_code if run.exit_code else 1


def announce(run: DebugRun) -> None:
    """The endpoints as they are now; while a client could attach, the configuration and how."""
    for status in run.ranks:
        if status.endpoint is None:
            continue
        now = endpoint_now(run, status)
        _say(f"aml-debug: debugpy listening at {status.endpoint.address} (rank {status.rank})" if now.kind == LISTENING
             else f"aml-debug: debugpy at {status.endpoint.address} (rank {status.rank}): {now.words}")
    if can_attach(run):
        _say("aml-debug: launch.json attach configuration:")
        _say(json.dumps(shown_launch_json(run), indent=4))
        _say(f"aml-debug: {attach_hint(run)}")


def _say(text: str) -> None:
    print(text, flush=True)


if __name__ == "__main__":
    sys.exit(main())
