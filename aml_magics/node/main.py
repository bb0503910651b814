"""The node's entry: secrets, the owner's watch, the debug session, then the user's script.

Secrets that came in the environment (an Azure ML job's, the only channel there) stay in
``/proc/self/environ`` whatever ``os.environ.pop`` does, readable by the user's code and its
children: so this process first re-executes itself without them, handing them over on a
pipe (:func:`reexec_without_secrets`). The user's code starts in a process whose initial
environment never held them.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys

from . import markers
from .address import ListenError
from .args import parse_args
from .collectives import patch_collectives
from .driver import ignore_exit_code
from .markers import emit, load_secrets, secret_digest
from .owner import adopt_orphans, kill_descendants, owner_channel, read_first_line, stop_reaper, watch_owner
from .relay import NodeTunnel
from .script import exit_code, line_buffer_output, report_uncaught, run_user_script
from .session import DebugSession, install_breakpointhook
from .shim import cooperate_with_user_debugpy
from .wire import RUNTIME_MODULE, SECRETS_ENV, SECRETS_FD_ENV

AZUREML_CRASH_DIR = os.path.join("outputs", "aml_magics_crash")  # under an Azure ML job's outputs/: uploaded with it


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
    secrets = load_secrets(_secrets_line(channel))
    digests = secret_digests(secrets)  # what a crash capsule must never hold: digests only, never the secrets
    tunnel = _node_tunnel(secrets)
    del secrets
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
    patch_collectives(options, lambda frame, stop_in: session.on_breakpoint(frame, stop_in))  # torch.distributed
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
    preload_capsule(options)
    freeze_node_objects()
    try:
        code = run_user_script(script_path, options.script_args)
    except BaseException as exc:  # uncaught by the script: handled here, then re-raised (see .script)
        crashed(session, exc, digests)
        finish(options, exit_code(exc))
        raise
    finish(options, code)
    if code:
        ignore_exit_code(code)  # a cancel's 130: the client must not stop at our own sys.exit()
    return code


def freeze_node_objects() -> None:
    """Move every object that exists before the script starts (the node's modules, the stdlib
    and debugpy it loaded) out of the cyclic GC's reach, for good.

    Why: the interpreter's exit runs several full collections, and each walked all of these
    (some 10 ms of a crashed run's 25 ms exit, measured); a collection during the run walked
    them too. They are never garbage the script's end should collect. The script's own objects,
    created after this, are collected as under plain ``python`` (a cycle's finalizers still run
    at exit); reference counting frees frozen objects as before."""
    gc.freeze()


def crashed(session: DebugSession, exc: BaseException, digests: frozenset[str]) -> None:
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
        write_capsule(session.options, exc, session.script_path, digests)


def capsule_dir(options: argparse.Namespace) -> str | None:
    """Where this rank's crash capsule goes: the owner's ``--crash-dir``, else an Azure ML job's
    ``outputs/`` (uploaded with the job); None: no capsule (``--no-crash-capsule``, or neither)."""
    if options.no_crash_capsule:
        return None
    if options.crash_dir:
        return options.crash_dir
    if os.environ.get("AZUREML_RUN_ID"):
        return os.path.abspath(AZUREML_CRASH_DIR)
    return None


def preload_capsule(options: argparse.Namespace) -> None:
    """A run that would write a crash capsule loads the capsule's code before its script starts.

    Why not at the crash: loading it then (compiling it, where no bytecode cache may be written)
    was a third of the time from the raise to the exit, and a rank's exit is when a distributed
    launcher ends its other ranks. Loaded now, it costs the start that much instead (about 9 ms
    compiled from source, measured; never in the script's own time), and nothing at all without
    a capsule to write."""
    if capsule_dir(options) is not None:
        from . import capsule

        capsule.prepare()


def write_capsule(options: argparse.Namespace, exc: BaseException, script: str, digests: frozenset[str]) -> None:
    """This rank's crash capsule (unless ``--no-crash-capsule``), announced by a CRASH marker."""
    directory = capsule_dir(options)
    if directory is None:
        return
    from . import capsule  # loaded already (preload_capsule)
    try:
        written = capsule.write(exc, directory, options.rank, script, digests)
    except Exception as error:  # never in the way of the exit
        print(f"aml_magics: no crash capsule: {error!r}", file=sys.stderr, flush=True)
        return
    emit("CRASH", rank=options.rank, pid=os.getpid(), **written)


def secret_digests(secrets: dict) -> frozenset[str]:
    """SHA-256 digests of every string of the run's secrets: what a capsule is checked against.
    Digests, not the strings: nothing user code can walk to holds a secret (the key lives in
    the markers' HMAC state, the TLS key in its context)."""
    found: set[str] = set()

    def walk(value: object) -> None:
        if isinstance(value, str):
            found.add(secret_digest(value))
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(secrets)
    return frozenset(found)


def finish(options, code: int) -> None:  # noqa: ANN001 - the parsed command line
    """The end of every run: no process of the script left behind, the EXIT marker."""
    stop_reaper()
    left = kill_descendants()
    if left:
        print(f"aml_magics: ended {left} process(es) the script left running", file=sys.stderr, flush=True)
    emit("EXIT", code=code, rank=options.rank, pid=os.getpid())
