"""The node's entry: secrets, the owner's watch, the debug session, then the user's script."""

from __future__ import annotations

import os
import sys

from . import markers
from .address import ListenError
from .args import parse_args
from .markers import emit, load_secrets
from .owner import adopt_orphans, kill_descendants, owner_channel, read_first_line, watch_owner
from .script import line_buffer_output, run_user_script
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
    on_crash = session.post_mortem if session.enabled and options.post_mortem else None
    code = run_user_script(script_path, options.script_args, on_crash)
    left = kill_descendants()
    if left:
        print(f"aml_magics: ended {left} process(es) the script left running", file=sys.stderr, flush=True)
    emit("EXIT", code=code, rank=options.rank, pid=os.getpid())
    return code
