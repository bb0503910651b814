"""The node's entry: secrets, the owner's watch, the debug session, then the user's script.

Secrets that came in the environment (an Azure ML job's, the only channel there) stay in
``/proc/self/environ`` whatever ``os.environ.pop`` does, readable by the user's code and its
children: so this process first re-executes itself without them, handing them over on a
pipe (:func:`reexec_without_secrets`). The user's code starts in a process whose initial
environment never held them.
"""

from __future__ import annotations

import os
import sys

from . import markers
from .address import ListenError
from .args import parse_args
from .markers import emit, load_secrets
from .owner import adopt_orphans, kill_descendants, owner_channel, read_first_line, stop_reaper, watch_owner
from .relay import NodeTunnel
from .script import line_buffer_output, run_user_script
from .session import DebugSession, install_breakpointhook
from .shim import cooperate_with_user_debugpy
from .wire import RUNTIME_MODULE, SECRETS_ENV, SECRETS_FD_ENV


def reexec_without_secrets() -> None:
    """Secrets in the environment: start again (same pid, same argv) without them, the secrets on
    a pipe's first line (``AML_MAGICS_SECRETS_FD``). Returns only when there is nothing to do."""
    raw = os.environ.get(SECRETS_ENV)
    if raw is None:
        return
    read_end, write_end = os.pipe()
    os.write(write_end, raw.encode("utf-8") + b"\n")  # a few KiB: fits the pipe's buffer
    os.close(write_end)
    os.set_inheritable(read_end, True)
    env = {k: v for k, v in os.environ.items() if k != SECRETS_ENV}
    env[SECRETS_FD_ENV] = str(read_end)
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], env)


def _secrets_line(channel: int | None) -> str:
    """The secrets: the owner channel's first line, or the pipe the re-execution left."""
    fd = os.environ.pop(SECRETS_FD_ENV, "")
    if fd.isdigit():
        try:
            os.set_inheritable(int(fd), False)
            return read_first_line(int(fd))
        except OSError:
            return ""
        finally:
            try:
                os.close(int(fd))
            except OSError:
                pass
    return read_first_line(channel) if channel is not None else ""


def _node_tunnel(secrets: dict) -> NodeTunnel | None:
    """The tunnel's node side as a built TLS context: no key left in a dict user code can reach."""
    tunnel = secrets.pop("tunnel", None)
    return NodeTunnel(tunnel) if tunnel else None


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        reexec_without_secrets()
    options = parse_args(sys.argv[1:] if argv is None else argv)
    sys.modules.setdefault(RUNTIME_MODULE, markers)  # the deployment server emits through it
    channel = owner_channel()
    tunnel = _node_tunnel(load_secrets(_secrets_line(channel)))
    if channel is not None:
        watch_owner(channel)
    adopt_orphans()
    line_buffer_output()
    script_path = os.path.abspath(options.script)
    if not os.path.isfile(script_path):
        print(f"aml_magics: script not found: {script_path}", file=sys.stderr, flush=True)
        return 2
    session = DebugSession(options, script_path, tunnel)  # type: ignore[arg-type]
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
    stop_reaper()
    left = kill_descendants()
    if left:
        print(f"aml_magics: ended {left} process(es) the script left running", file=sys.stderr, flush=True)
    emit("EXIT", code=code, rank=options.rank, pid=os.getpid())
    return code
