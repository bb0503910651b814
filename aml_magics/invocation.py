"""How the bootstrap is started, in one place: its path, its command line, the run's environment.

Every target (local, docker, azureml), the pipeline path and both simulators build the
bootstrap's invocation here, so a new option or variable is added once. The bootstrap's
own options follow ``--`` by the user's script and its arguments, untouched.

:class:`RunSecrets` are what a run needs that nobody else may see: the key that
authenticates its marker lines and (for a tunnelled run) its TLS material. They travel to
the bootstrap out of band — never in a RunSpec, never in ``RunSpec.to_dict()``, never in a
``--dry-run`` — and the bootstrap removes them from its environment before the user's code
runs.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .node.wire import OWNER_ENV, SECRETS_ENV
from .spec import DistributedSpec, RunSpec

NODE_PATH = Path(__file__).resolve().parent / "node"  # the node package, run as a folder
NODE_FOLDER = "aml_magics_node"  # its name beside the user's files (a snapshot, a node)
NODE_ENTRY = f"{NODE_FOLDER}/__main__.py"  # the entry script of a snapshot (Azure ML runs a file)
IMAGE_ROOT = "/aml_magics"  # our folder in images built by the docker target
NODE_IN_IMAGE = f"{IMAGE_ROOT}/node"
PYTHON_FLAGS = ("-X", "frozen_modules=off")  # debugpy's advice for breakpoints in frozen stdlib modules
LOOPBACK = "127.0.0.1"
DEFAULT_MASTER_PORT = 29500  # torchrun's default; free on a node (or in a container) of the run's own
# What every run's process gets: unbuffered output (markers arrive as printed), and no pydevd
# warning about frozen modules.
RUN_ENV = {"PYTHONUNBUFFERED": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
REDACTED = "<redacted>"


def node_files() -> dict[str, bytes]:
    """What ships to a node: the package's modules by name (never caches or stray files)."""
    return {path.name: path.read_bytes() for path in sorted(NODE_PATH.glob("*.py"))}


def is_node_file(path: str | None) -> bool:
    """A file of the node package: here (``aml_magics/node``), in a snapshot or an image."""
    if not path:
        return False
    folder = path.replace("\\", "/").rpartition("/")[0]
    return folder.endswith(("aml_magics/node", NODE_FOLDER))


def is_node_command(argv: Sequence[str]) -> bool:
    """A process running the node package (its command line names the folder or a snapshot's entry)."""
    return any(part.replace("\\", "/").rstrip("/").endswith(("aml_magics/node", NODE_ENTRY)) for part in argv)


def copy_node(dest: Path) -> Path:
    """The node package as ``dest/aml_magics_node/``; returns that folder."""
    folder = dest / NODE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in node_files().items():
        (folder / name).write_bytes(data)
    return folder


# -- command line ------------------------------------------------------------------------------


def bootstrap_options(spec: RunSpec, bind: str, port: int, rank: int | None = None) -> list[str]:
    """The bootstrap's own options.

    ``rank``: the command line of that one rank (a target that starts each process itself;
    a rank outside --debug-ranks gets no debugger at all). None: one command line for
    every process of a distributed run; each reads its rank from the launcher's
    environment, skips the debugger unless in --debug-ranks and, with several processes
    per node, listens on ``port`` + its local rank.
    """
    debug = spec.debug
    if not debug.enabled or (rank is not None and not debug.debugs_rank(rank)):
        return ["--no-debug"]
    args = ["--port", str(port), "--bind", bind, "--timeout", f"{debug.timeout:g}"]
    if debug.port_auto:
        args.append("--port-auto")
    if debug.stop_on_entry:
        args.append("--stop-on-entry")
    if debug.reattach:
        args.append("--reattach")
    if debug.subprocesses:
        args.append("--separate-adapter")  # debugpy's adapter process: what follows child processes
    if debug.post_mortem:
        args.append("--post-mortem")
    if debug.wait_on_breakpoint:
        args.append("--wait-on-breakpoint")
    if debug.post_mortem or debug.wait_on_breakpoint:
        args += ["--post-mortem-timeout", f"{debug.post_mortem_timeout:g}"]
    if rank is None and spec.distributed.world_size > 1:
        if debug.debug_ranks is not None:
            args += ["--debug-ranks", ",".join(str(r) for r in debug.debug_ranks)]
        if spec.distributed.procs_per_node > 1 and port:
            args.append("--port-per-local-rank")
    return args


def entry_arguments(spec: RunSpec, bind: str, port: int, *, rank: int | None = None, script: str | None = None,
                    args: Sequence[Any] | None = None) -> list[Any]:
    """The bootstrap's options, ``--``, then the script and its arguments untouched.

    ``script`` defaults to the spec's (relative to the run's working directory); ``args`` to
    the spec's (a pipeline step passes its own argument objects, which need not be strings).
    """
    return [*bootstrap_options(spec, bind, port, rank), "--", script if script is not None else spec.script,
            *(spec.args if args is None else args)]


def bootstrap_argv(python: str, spec: RunSpec, bind: str, port: int, *, rank: int | None = None,
                   script: str | None = None, bootstrap: str | None = None) -> list[str]:
    """``python -X frozen_modules=off path/to/node <options> -- <script> <args>``."""
    return [python, *PYTHON_FLAGS, bootstrap or str(NODE_PATH),
            *map(str, entry_arguments(spec, bind, port, rank=rank, script=script))]


# -- environment -------------------------------------------------------------------------------


def run_environment(spec: RunSpec, base: dict[str, str] | None = None) -> dict[str, str]:
    """The run's own variables (``--env-var``) over ``base``, plus what every run gets."""
    env = dict(base or {})
    env.update(spec.environment.env_vars)
    env.update(RUN_ENV)
    return env


def rank_environment(distributed: DistributedSpec, rank: int, master_port: int = DEFAULT_MASTER_PORT,
                     master_addr: str = LOOPBACK) -> dict[str, str]:
    """What torchrun (and Azure ML's PyTorch launcher) sets for a worker, so
    ``torch.distributed``'s env:// init just works."""
    node, local = distributed.placement(rank)
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(local),
        "WORLD_SIZE": str(distributed.world_size),
        "LOCAL_WORLD_SIZE": str(distributed.procs_per_node),
        "NODE_RANK": str(node),
        "GROUP_RANK": str(node),
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
    }


# -- secrets -----------------------------------------------------------------------------------


class RunSecrets:
    """One run's secrets: never printed, pickled, copied into a spec or shown in a dry run."""

    __slots__ = ("marker_key", "tunnel")

    def __init__(self, marker_key: bytes, tunnel: Any = None) -> None:
        self.marker_key = marker_key
        self.tunnel = tunnel  # TunnelCredentials (secure channel), or None

    @classmethod
    def new(cls) -> RunSecrets:
        return cls(secrets.token_bytes(32))

    def payload(self) -> str:
        """What the bootstrap reads (JSON): the marker key, and its side of the tunnel."""
        data: dict[str, Any] = {"marker_key": self.marker_key.hex()}
        if self.tunnel is not None:
            data["tunnel"] = self.tunnel.node_side()
        return json.dumps(data, sort_keys=True)

    def environment(self) -> dict[str, str]:
        """The secrets as the run's environment (for runs no owner channel reaches: Azure ML)."""
        return {SECRETS_ENV: self.payload()}

    def __repr__(self) -> str:
        return "<RunSecrets (hidden)>"

    def __reduce__(self) -> Any:
        raise TypeError("RunSecrets are never serialised")

    def __copy__(self) -> RunSecrets:
        return self

    def __deepcopy__(self, memo: dict) -> RunSecrets:
        return self


def redact(env: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``env`` safe to show (a dry run): secret values replaced."""
    return {k: (REDACTED if k == SECRETS_ENV else v) for k, v in env.items()}


class OwnerPipe:
    """The owner's end of one run process's channel: the run's secrets as its first line, then
    only liveness — the bootstrap ends its whole tree when the pipe closes, i.e. when the owner
    is gone, whatever killed it. One per process; the write end is never inherited (CLOEXEC)."""

    def __init__(self, run_secrets: RunSecrets) -> None:
        self.read_fd, self._write_fd = os.pipe()
        os.write(self._write_fd, run_secrets.payload().encode("utf-8") + b"\n")

    @property
    def environment(self) -> dict[str, str]:
        return {OWNER_ENV: f"fd:{self.read_fd}"}

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return (self.read_fd,)

    def started(self) -> None:
        """The child has its end now (or never will): close ours."""
        if self.read_fd >= 0:
            os.close(self.read_fd)
            self.read_fd = -1

    def close(self) -> None:
        """The owner lets go: the process (if still running) ends its tree."""
        self.started()
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1


_CREDENTIALS = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^\s/@:]*)(?::(?P<password>[^\s/@]*))?@")


def redact_credentials(text: str) -> str:
    """Credentials in URLs hidden as pip hides them: ``user:TOKEN@`` → ``user:****@``, ``TOKEN@`` → ``****@``
    (an ssh user name such as ``git@`` is not a secret)."""
    def hide(match: re.Match[str]) -> str:
        scheme, user, password = match.group("scheme"), match.group("user"), match.group("password")
        if password is not None:
            return f"{scheme}{user}:****@"
        if "ssh" in scheme.lower():
            return match.group(0)
        return f"{scheme}****@"

    return _CREDENTIALS.sub(hide, text)


