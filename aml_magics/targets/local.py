"""The embedded default target: a child process on this machine.

Runs in the kernel's own interpreter, or in a cached virtual environment when the
run declares dependencies. debugpy binds loopback unless told otherwise.
"""

from __future__ import annotations

import os
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


def bootstrap_args(spec: RunSpec, bind: str, port: int) -> list[str]:
    """The bootstrap's own options; shared by every target that runs it."""
    debug = spec.debug
    if not debug.enabled:
        return ["--no-debug"]
    args = ["--port", str(port), "--bind", bind, "--timeout", f"{debug.timeout:g}"]
    if debug.stop_on_entry:
        args.append("--stop-on-entry")
    return args


class LocalRun:
    """A RunHandle for a child process group."""

    def __init__(self, events: RunEvents) -> None:
        self.events = events
        self.group: ProcessGroup | None = None
        self.canceled = False
        self._done = threading.Event()
        self._lock = threading.Lock()

    def cancel(self) -> None:
        with self._lock:
            self.canceled = True
            group = self.group
        if group is not None:
            group.stop()
        self._done.wait(10)

    def is_done(self) -> bool:
        return self._done.is_set()

    def map_endpoint(self, endpoint: Endpoint) -> Endpoint:
        return endpoint

    def start(self, spec: RunSpec, python: str, port: int, bind: str) -> None:
        argv = [python, "-X", "frozen_modules=off", str(BOOTSTRAP), *bootstrap_args(spec, bind, port),
                "--", str(spec.script_path), *spec.args]
        env = dict(os.environ)
        env.update(spec.environment.env_vars)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
        env.pop("PYTHONSTARTUP", None)
        with self._lock:
            if self.canceled:
                raise _Canceled
            self.group = ProcessGroup(argv, cwd=spec.source_dir, env=env)
        self.events.state("running")

    def pump(self) -> None:
        assert self.group is not None
        for line in self.group.lines():
            self.events.line(line)
        code = self.group.wait()
        if self.canceled:
            self.events.finished("canceled", code, "canceled by user")
        elif code == 0:
            self.events.finished("completed", code)
        else:
            self.events.finished("failed", code, f"exit code {code}")


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
            port = choose_port(bind, spec.debug.port, spec.debug.port_auto) if spec.debug.enabled else 0
        except PortBusy as exc:
            raise TargetError(str(exc)) from None
        except OSError as exc:
            raise TargetError(f"cannot bind {bind}:{spec.debug.port}: {exc.strerror or exc}") from None
        run = LocalRun(events)
        thread = threading.Thread(target=self._run, args=(run, spec, bind, port), daemon=True,
                                  name=f"aml-local-{spec.name}")
        thread.start()
        return run

    def _run(self, run: LocalRun, spec: RunSpec, bind: str, port: int) -> None:
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
