"""The embedded default target: a child process on this machine.

Runs in the kernel's own interpreter, or in a cached virtual environment when the run
declares dependencies (its pip build is a process of the run like any other: cancel stops
it). debugpy binds loopback unless told otherwise.

Distributed runs (``--nodes N --procs-per-node M``) start N×M bootstrap processes with the
environment torchrun gives its workers, each in its own process group, each debugged rank
on its own port; their output lines carry a ``[rank r] `` prefix. A failing rank does not
stop the others (one of them may be in a debugger); the run fails once all have ended,
naming the rank.

A run's state follows its processes' exits, not their output pipes: a descendant that keeps
a pipe open after the bootstrap exited does not keep the run alive (it is ended with it).
"""

from __future__ import annotations

import os
import sys
import threading
from typing import ClassVar

from .. import venvs
from ..invocation import LOOPBACK, OwnerPipe, bootstrap_argv, rank_environment, run_environment
from ..node.wire import OWNER_ENV, SECRETS_ENV
from ..output import read_lines
from ..ports import PortBusy, choose_port, free_port
from ..processes import ProcessGroup
from ..protocol import RunState
from ..spec import RunSpec
from ..target_base import Capabilities, Outcome, RunContext, TargetError, ThreadedRun
from . import register_target

PIPE_GRACE = 1.0  # seconds the output may lag behind a process's exit before its tree is ended
MAX_LOCAL_PROCESSES = 64


class LocalRun(ThreadedRun):
    """A RunHandle for child process groups (one per rank)."""

    def __init__(self, ctx: RunContext, name: str) -> None:
        super().__init__(ctx, name)
        self.groups: dict[int, ProcessGroup] = {}  # rank → its process group
        self._line_lock = threading.Lock()

    @property
    def group(self) -> ProcessGroup | None:
        """Rank 0's process group (the only one of a one-process run)."""
        return self.groups.get(0)

    def launch(self, spec: RunSpec, python: str, ports: dict[int, int], bind: str) -> None:
        """Start every rank; ``ports``: each debugged rank's port (0: any)."""
        world = spec.distributed.world_size
        env = run_environment(spec, dict(os.environ))
        for name in ("PYTHONSTARTUP", SECRETS_ENV, OWNER_ENV):
            env.pop(name, None)
        master_port = free_port() if world > 1 else 0
        with self.scope.step():
            for rank in range(world):
                argv = bootstrap_argv(python, spec, bind, ports.get(rank, 0), rank=rank if world > 1 else None,
                                      script=str(spec.script_path))
                rank_env = dict(env, **rank_environment(spec.distributed, rank, master_port)) if world > 1 else env
                owner = OwnerPipe(self.ctx.secrets)  # its secrets, then: it ends when we do
                self.scope.callback(owner.close)
                try:
                    group = ProcessGroup(argv, cwd=spec.source_dir, env={**rank_env, **owner.environment},
                                         text=False, pass_fds=owner.pass_fds)
                finally:
                    owner.started()
                self.groups[rank] = self.scope.owned(group, ProcessGroup.stop)
        self.events.state(RunState.RUNNING)

    def follow(self) -> Outcome:
        """Stream every rank's output until each process has exited; the run's outcome."""
        codes: dict[int, int] = {}
        several = len(self.groups) > 1
        threads = [threading.Thread(target=self._follow_rank, args=(rank, group, several, codes), daemon=True,
                                    name=f"aml-local-rank-{rank}") for rank, group in sorted(self.groups.items())]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return self._outcome(codes)

    def _follow_rank(self, rank: int, group: ProcessGroup, several: bool, codes: dict[int, int]) -> None:
        prefix = f"[rank {rank}] " if several else ""
        reader = threading.Thread(target=self._read, args=(group, prefix), daemon=True, name=f"aml-out-{rank}")
        reader.start()
        code = codes[rank] = group.process.wait()
        reader.join(PIPE_GRACE)
        group.stop(grace=0.2)  # whatever it left behind, holding the pipe or not
        reader.join(PIPE_GRACE)
        if code != 0 and several and not self.canceled:
            self._line(f"aml_magics: rank {rank} exited with code {code}; the other ranks keep running "
                       "(cancel the run to stop them)")

    def _read(self, group: ProcessGroup, prefix: str) -> None:
        assert group.process.stdout is not None
        try:
            for text in read_lines(group.process.stdout):
                self._line(prefix + text)
        except (OSError, ValueError):
            pass  # the pipe was closed under us: the process tree is gone

    def _line(self, text: str) -> None:
        with self._line_lock:
            self.events.line(text)

    def _outcome(self, codes: dict[int, int]) -> Outcome:
        failed = [rank for rank, code in sorted(codes.items()) if code != 0]
        if not failed:
            return Outcome(RunState.COMPLETED, 0)
        if len(codes) == 1:
            return Outcome(RunState.FAILED, codes[0], f"exit code {codes[0]}")
        first = failed[0]
        detail = f"rank {first} failed (exit code {codes[first]})"
        if len(failed) > 1:
            detail += f"; ranks that failed: {', '.join(map(str, failed))}"
        return Outcome(RunState.FAILED, codes[first], detail)


class LocalTarget:
    name = "local"
    capabilities: ClassVar[Capabilities] = Capabilities(max_processes=MAX_LOCAL_PROCESSES, subprocesses=True,
                                                        leaves_machine=False)

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable

    def check(self, spec: RunSpec) -> None:
        if not spec.script_path.is_file():
            raise TargetError(f"script not found: {spec.script_path}")

    def submit(self, spec: RunSpec, ctx: RunContext) -> LocalRun:
        self.check(spec)
        bind = spec.debug.bind or LOOPBACK
        ports = self._ports(spec, bind)
        run = LocalRun(ctx, f"local-{spec.name}")
        run.start(lambda: self._run(run, spec, bind, ports))
        return run

    @staticmethod
    def _ports(spec: RunSpec, bind: str) -> dict[int, int]:
        """A port per debugged rank: 0 (each picks a free one), ``--port auto`` (each bootstrap
        takes the first free one from its start value), or free ports from --port up."""
        debug = spec.debug
        world = spec.distributed.world_size
        ranks = [r for r in range(world) if debug.debugs_rank(r)]
        if not debug.enabled or debug.port == 0:
            return {rank: 0 for rank in ranks}
        if debug.port_auto:  # race-free: the bootstrap binds, and reports what it got
            return {rank: debug.port + 100 * i for i, rank in enumerate(ranks)}
        ports: dict[int, int] = {}
        next_port = debug.port
        try:
            for rank in ranks:
                ports[rank] = choose_port(bind, next_port, bool(ports))
                next_port = ports[rank] + 1
        except PortBusy as exc:
            raise TargetError(str(exc)) from None
        except OSError as exc:
            raise TargetError(f"cannot bind {bind}:{debug.port}: {exc.strerror or exc}") from None
        return ports

    def _run(self, run: LocalRun, spec: RunSpec, bind: str, ports: dict[int, int]) -> Outcome:
        python = self.python
        if spec.environment.has_dependencies:
            run.events.state(RunState.BUILDING)
            python = str(venvs.ensure_venv(spec.environment, run.events.line, self.python, scope=run.scope))
        run.launch(spec, python, ports, bind)
        return run.follow()


register_target("local", LocalTarget, capabilities=LocalTarget.capabilities)
