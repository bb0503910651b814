"""The node's entry: secrets, the owner's watch, the debug session, then the user's script."""

from __future__ import annotations

import argparse
import os
import sys

from . import markers
from .address import ListenError
from .args import parse_args
from .driver import ignore_exit_code
from .markers import emit, load_secrets
from .owner import adopt_orphans, kill_descendants, owner_channel, read_first_line, watch_owner
from .script import exit_code, line_buffer_output, report_uncaught, run_user_script
from .session import DebugSession, install_breakpointhook
from .shim import cooperate_with_user_debugpy
from .wire import RUNTIME_MODULE


def main(argv: list[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    sys.modules.setdefault(RUNTIME_MODULE, markers)  # the deployment server emits through it
    channel = owner_channel()
    secrets = load_secrets(read_first_line(channel) if channel is not None else "")
    if channel is not None:
        watch_owner(channel)
    adopt_orphans()
    line_buffer_output()
    script_path = os.path.abspath(options.script)
    if not os.path.isfile(script_path):
        print(f"aml_magics: script not found: {script_path}", file=sys.stderr, flush=True)
        return 2
    session = DebugSession(options, script_path, secrets.get("tunnel"))
    install_breakpointhook(session)
    cooperate_with_user_debugpy(session)  # the script's own debugpy calls use this run's debugger
    if not session.enabled and not options.no_debug:
        print(f"aml_magics: rank {options.rank} runs without a debugger (not in --debug-ranks)", flush=True)
    try:
        session.start()
    except KeyboardInterrupt:  # canceled while waiting for a debugger: one line, not pydevd's traceback
        print("aml_magics: canceled while waiting for a debugger", file=sys.stderr, flush=True)
        emit("EXIT", code=130, rank=options.rank, pid=os.getpid())
        return 130
    except ListenError as exc:
        print(f"aml_magics: {exc}", file=sys.stderr, flush=True)
        emit("ERROR", message=str(exc), rank=options.rank, pid=os.getpid())
        emit("EXIT", code=2, rank=options.rank, pid=os.getpid())
        return 2
    try:
        code = run_user_script(script_path, options.script_args)
    except BaseException as exc:  # uncaught by the script: handled here, then re-raised (see .script)
        crashed(session, exc, secret_texts(secrets))
        finish(options, exit_code(exc))
        raise
    finish(options, code)
    if code:
        ignore_exit_code(code)  # a cancel's 130: the client must not stop at our own sys.exit()
    return code


def crashed(session: DebugSession, exc: BaseException, secrets: list[str]) -> None:
    """The script's uncaught exception: its traceback now, then the post-mortem window, then
    (nobody attached) the crash capsule."""
    report_uncaught(exc)
    if isinstance(exc, (SystemExit, KeyboardInterrupt)):
        return
    attached = session.client_connected()
    if session.enabled and session.options.post_mortem:
        try:
            attached = session.post_mortem((type(exc), exc, exc.__traceback__))
        except KeyboardInterrupt:  # canceled while waiting for a debugger
            print("aml_magics: post-mortem wait interrupted", file=sys.stderr, flush=True)
        except Exception as error:  # the original failure is what the run reports
            print(f"aml_magics: post-mortem failed: {error!r}", file=sys.stderr, flush=True)
    if not attached:
        write_capsule(session.options, exc, session.script_path, secrets)


def write_capsule(options: argparse.Namespace, exc: BaseException, script: str, secrets: list[str]) -> None:
    """This rank's crash capsule (unless ``--no-crash-capsule``), announced by a CRASH marker.
    Imported only now: a run that does not crash never pays for it."""
    from . import capsule

    directory = options.crash_dir or capsule.default_dir()
    if options.no_crash_capsule or directory is None:
        return
    try:
        written = capsule.write(exc, directory, options.rank, script, secrets)
    except Exception as error:  # never in the way of the exit
        print(f"aml_magics: no crash capsule: {error!r}", file=sys.stderr, flush=True)
        return
    emit("CRASH", rank=options.rank, pid=os.getpid(), **written)


def secret_texts(secrets: dict) -> list[str]:
    """Every string of the run's secrets: none of them may appear in a capsule."""
    found: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(secrets)
    return found


def finish(options, code: int) -> None:  # noqa: ANN001 - the parsed command line
    """The end of every run: no process of the script left behind, the EXIT marker."""
    left = kill_descendants()
    if left:
        print(f"aml_magics: ended {left} process(es) the script left running", file=sys.stderr, flush=True)
    emit("EXIT", code=code, rank=options.rank, pid=os.getpid())
