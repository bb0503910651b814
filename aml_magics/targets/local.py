"""The embedded default target: a child process on this machine.

Runs in the kernel's own interpreter, or in a cached virtual environment when the
run declares dependencies. debugpy binds loopback unless told otherwise.

Distributed runs (``--nodes N --procs-per-node M``) start N×M bootstrap processes with
the environment torchrun gives its workers (RANK, LOCAL_RANK, WORLD_SIZE,
LOCAL_WORLD_SIZE, NODE_RANK, MASTER_ADDR, MASTER_PORT), each in its own process group,
each debugged rank on its own free port; their output lines carry a ``[rank r] `` prefix.
A failing rank does not stop the others (one of them may be in a debugger); the run
fails once all have ended, naming the rank.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from pathlib import Path

from .. import venvs
from ..markers import Endpoint
from ..ports import PortBusy, choose_port
from ..processes import ProcessGroup
from ..spec import RunSpec
from .base import RunEvents, TargetError

BOOTSTRAP = Path(__file__).resolve().parent.parent / "bootstrap.py"
LOOPBACK = "127.0.0.1"


def bootstrap_args(spec: RunSpec, bind: str, port: int, rank: int | None = None) -> list[str]:
    """The bootstrap's own options; shared by every target that runs it.

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
    if debug.stop_on_entry:
        args.append("--stop-on-entry")
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


def rank_environment(spec: RunSpec, rank: int, master_port: int, master_addr: str = LOOPBACK) -> dict[str, str]:
    """What torchrun sets for a worker (so torch.distributed's env:// init just works)."""
    dist = spec.distributed
    node, local = dist.placement(rank)
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(local),
        "WORLD_SIZE": str(dist.world_size),
        "LOCAL_WORLD_SIZE": str(dist.procs_per_node),
        "NODE_RANK": str(node),
        "GROUP_RANK": str(node),
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
    }


def _free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class LocalRun:
    """A RunHandle for a child process group."""

    def __init__(self, events: RunEvents) -> None:
        self.events = events
        self.groups: dict[int, ProcessGroup] = {}  # rank → its process group
        self.world_size = 1
        self.canceled = False
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._line_lock = threading.Lock()

    @property
    def group(self) -> ProcessGroup | None:
        """Rank 0's process group (the only one of a one-process run)."""
        return self.groups.get(0)

    def cancel(self) -> None:
        with self._lock:
            self.canceled = True
            groups = list(self.groups.values())
        _stop_all(groups)
        self._done.wait(10)

    def is_done(self) -> bool:
        return self._done.is_set()

    def map_endpoint(self, endpoint: Endpoint) -> Endpoint:
        return endpoint

    def start(self, spec: RunSpec, python: str, port: int | dict[int, int], bind: str) -> None:
        """Start every rank; ``port`` is the one port, or each debugged rank's."""
        world = spec.distributed.world_size
        ports = port if isinstance(port, dict) else {0: port}
        env = dict(os.environ)
        env.update(spec.environment.env_vars)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
        env.pop("PYTHONSTARTUP", None)
        master_port = _free_port() if world > 1 else 0
        with self._lock:
            if self.canceled:
                raise _Canceled
            self.world_size = world
            try:
                for rank in range(world):
                    args = bootstrap_args(spec, bind, ports.get(rank, 0), rank=rank if world > 1 else None)
                    argv = [python, "-X", "frozen_modules=off", str(BOOTSTRAP), *args,
                            "--", str(spec.script_path), *spec.args]
                    rank_env = dict(env, **rank_environment(spec, rank, master_port)) if world > 1 else env
                    self.groups[rank] = ProcessGroup(argv, cwd=spec.source_dir, env=rank_env)
            except BaseException:
                _stop_all(list(self.groups.values()))
                raise
        self.events.state("running")

    def pump(self) -> None:
        assert self.groups
        if self.world_size == 1:
            group = self.groups[0]
            for line in group.lines():
                self.events.line(line)
            codes = {0: group.wait()}
        else:
            codes = self._pump_ranks()
        failed = [rank for rank, code in sorted(codes.items()) if code != 0]
        if self.canceled:
            self.events.finished("canceled", codes.get(0), "canceled by user")
        elif not failed:
            self.events.finished("completed", 0)
        elif self.world_size == 1:
            self.events.finished("failed", codes[0], f"exit code {codes[0]}")
        else:
            first = failed[0]
            detail = f"rank {first} failed (exit code {codes[first]})"
            if len(failed) > 1:
                detail += f"; ranks that failed: {', '.join(map(str, failed))}"
            self.events.finished("failed", codes[first], detail)

    def _pump_ranks(self) -> dict[int, int]:
        """Read every rank's output on its own thread, each line tagged with the rank."""
        codes: dict[int, int] = {}

        def read(rank: int, group: ProcessGroup) -> None:
            prefix = f"[rank {rank}] "
            for line in group.lines():
                self._line(prefix + line)
            code = codes[rank] = group.wait()
            if code != 0 and not self.canceled:
                self._line(f"aml_magics: rank {rank} exited with code {code}; the other ranks keep running "
                           "(cancel the run to stop them)")

        readers = [threading.Thread(target=read, args=(rank, group), daemon=True, name=f"aml-local-rank-{rank}")
                   for rank, group in sorted(self.groups.items())]
        for thread in readers:
            thread.start()
        for thread in readers:
            thread.join()
        return codes

    def _line(self, text: str) -> None:
        with self._line_lock:
            self.events.line(text)


def _stop_all(groups: list[ProcessGroup]) -> None:
    """Stop process groups at once (each stop escalates on its own)."""
    if len(groups) == 1:
        groups[0].stop()
        return
    stoppers = [threading.Thread(target=group.stop, daemon=True) for group in groups]
    for thread in stoppers:
        thread.start()
    for thread in stoppers:
        thread.join()


class _Canceled(Exception):
    pass


class LocalTarget:
    name = "local"

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable

    def check(self, spec: RunSpec) -> None:
        if not spec.script_path.is_file():
            raise TargetError(f"script not found: {spec.script_path}")

    def submit(self, spec: RunSpec, events: RunEvents) -> LocalRun:
        self.check(spec)
        bind = spec.debug.bind or LOOPBACK
        try:
            port = self._ports(spec, bind) if spec.distributed.world_size > 1 else (
                choose_port(bind, spec.debug.port, spec.debug.port_auto) if spec.debug.enabled else 0)
        except PortBusy as exc:
            raise TargetError(str(exc)) from None
        except OSError as exc:
            raise TargetError(f"cannot bind {bind}:{spec.debug.port}: {exc.strerror or exc}") from None
        run = LocalRun(events)
        thread = threading.Thread(target=self._run, args=(run, spec, bind, port), daemon=True,
                                  name=f"aml-local-{spec.name}")
        thread.start()
        return run

    @staticmethod
    def _ports(spec: RunSpec, bind: str) -> dict[int, int]:
        """A port per debugged rank: 0 (each picks a free one) or free ports from --port up."""
        debug = spec.debug
        ranks = [r for r in range(spec.distributed.world_size) if debug.debugs_rank(r)]
        if debug.port == 0:
            return {rank: 0 for rank in ranks}
        ports: dict[int, int] = {}
        next_port = debug.port
        for rank in ranks:
            ports[rank] = choose_port(bind, next_port, debug.port_auto or bool(ports))
            next_port = ports[rank] + 1
        return ports

    def _run(self, run: LocalRun, spec: RunSpec, bind: str, port: int | dict[int, int]) -> None:
        try:
            python = self.python
            if spec.environment.has_dependencies:
                run.events.state("building")
                python = str(venvs.ensure_venv(spec.environment, run.events.line, self.python))
            run.start(spec, python, port, bind)
            run.pump()
        except _Canceled:
            run.events.finished("canceled", None, "canceled by user")
        except Exception as exc:  # surfaced as the run's failure, not a thread traceback
            run.events.line(f"aml_magics: {exc}")
            run.events.finished("failed", None, str(exc))
        finally:
            run._done.set()
