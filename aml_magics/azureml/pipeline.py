"""Debugging chosen steps of an Azure ML pipeline (azureml-pipeline-steps, SDK v1).

Takes the user's existing ``PythonScriptStep`` objects (the list given to ``Pipeline``),
switches debugging on for the chosen ones — their script is wrapped by the bootstrap
(copied into a snapshot of the step's source directory), debugpy is added to a copy of
their run configuration, their own arguments are kept after ``--`` — submits, and shows
each chosen step's endpoint, read from its child run. The step objects are changed only
while the pipeline is built and submitted, and restored afterwards.

Scripts written the way Microsoft's guide shows (``--remote_debug``,
``--remote_debug_connection_timeout``, ``--remote_debug_port``, ``--remote_debug_client_ip``)
keep working: those flags choose the step and give the bootstrap its timeout and port, and
are taken off the script's arguments so the script does not start a second debugpy.
"""

from __future__ import annotations

import copy
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import TargetError
from ..invocation import NODE_ENTRY, RUN_ENV, RunSecrets, entry_arguments
from ..protocol import Endpoint, MarkerReader, RunState
from ..spec import DEFAULT_PORT, DEFAULT_TIMEOUT, DebugOptions, RunSpec
from ..target_base import RunContext
from . import settings
from .backend import get_backend, require_sdk, service_errors
from .monitor import TERMINAL, RunMonitor
from .submission import add_debugpy, make_snapshot, pip_packages, snapshot_files

GUIDE_FLAGS = {"--remote_debug": 0, "--remote_debug_connection_timeout": 1, "--remote_debug_client_ip": 1,
               "--remote_debug_port": 1}
_PATCHED = ("_script_name", "_source_directory", "_arguments", "_runconfig", "_allow_reuse")
_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


# -- choosing and wrapping steps ------------------------------------------------------------


def _steps_list(steps: Any) -> list:
    if type(steps).__name__ == "Pipeline":
        raise TargetError("give the list of steps the Pipeline was built from (a built Pipeline's steps cannot be "
                          "changed): debug_pipeline([step1, step2], ...)")
    if isinstance(steps, (list, tuple)):
        return list(steps)
    if hasattr(steps, "_script_name") or hasattr(steps, "create_node"):
        return [steps]
    raise TargetError(f"expected a list of pipeline steps, got {type(steps).__name__}")


def _is_python_script_step(step: Any) -> bool:
    return bool(getattr(step, "_script_name", None)) and not getattr(step, "_command", None)


def guide_flags(arguments: list) -> tuple[list, dict[str, str | bool]]:
    """The script's arguments without the guide's debug flags, and those flags' values."""
    kept: list = []
    found: dict[str, str | bool] = {}
    items = list(arguments or [])
    i = 0
    while i < len(items):
        item = items[i]
        if isinstance(item, str):
            flag, eq, value = item.partition("=")
            if flag in GUIDE_FLAGS:
                if GUIDE_FLAGS[flag] == 0:
                    found[flag] = True
                elif eq:
                    found[flag] = value
                elif i + 1 < len(items):
                    found[flag] = str(items[i + 1])
                    i += 1
                i += 1
                continue
        kept.append(item)
        i += 1
    return kept, found


def choose_steps(steps: list, names: list[str] | None) -> list:
    by_name = {step.name: step for step in steps}
    if names:
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise TargetError(f"no step named {', '.join(map(repr, unknown))} (steps: {', '.join(by_name) or 'none'})")
        chosen = [by_name[n] for n in names]
    else:
        chosen = [s for s in steps if _is_python_script_step(s) and guide_flags(s._arguments)[1].get("--remote_debug")]
        if not chosen:
            raise TargetError(f"which steps? choose them with --steps NAME[,NAME] (steps: {', '.join(by_name)})")
    wrong = [s.name for s in chosen if not _is_python_script_step(s)]
    if wrong:
        raise TargetError(f"step {', '.join(wrong)}: only PythonScriptSteps (a script_name) can be debugged")
    return chosen


@dataclass
class StepPlan:
    step: Any
    spec: RunSpec
    snapshot: Path
    arguments: list
    runconfig: Any
    compute: str | None
    notes: list[str] = field(default_factory=list)
    saved: dict[str, Any] = field(default_factory=dict)

    def apply(self, secrets: RunSecrets) -> None:
        """Put the debugged version into the step object (restored after the submission)."""
        self.saved = {name: getattr(self.step, name) for name in _PATCHED}
        runconfig = copy.deepcopy(self.runconfig)
        runconfig.environment_variables = {**dict(runconfig.environment_variables or {}), **secrets.environment()}
        self.step._script_name = NODE_ENTRY
        self.step._source_directory = str(self.snapshot)
        self.step._arguments = self.arguments
        self.step._runconfig = runconfig
        self.step._allow_reuse = False  # a reused step would not run, and not wait for the debugger

    def restore(self) -> None:
        for name, value in self.saved.items():
            setattr(self.step, name, value)
        self.saved = {}

    def describe(self) -> dict:
        environment = self.runconfig.environment
        return {
            "step": self.step.name,
            "compute": self.compute,
            "source_dir": str(self.spec.source_dir),
            "snapshot_files": snapshot_files(self.snapshot),
            "entry_script": NODE_ENTRY,
            "arguments": [_show(a) for a in self.arguments],
            "user_script": self.spec.script,
            "pip_packages": pip_packages(environment),
            "environment": environment.name,
            "environment_variables": dict(self.runconfig.environment_variables or {}),
            "allow_reuse": False,
            "notes": list(self.notes),
        }


def _show(value: Any) -> str:
    return value if isinstance(value, str) else f"{value} ({type(value).__name__})"


def compute_name(step: Any) -> str | None:
    compute = getattr(step, "_compute_target", None)
    if isinstance(compute, tuple):
        return compute[0]
    if compute is not None and not isinstance(compute, str):
        return getattr(compute, "name", None)
    return compute


def plan_step(step: Any, debug: DebugOptions, cwd: Path, explicit_port: bool, explicit_timeout: bool) -> StepPlan:
    from azureml.core.runconfig import RunConfiguration

    if not step._source_directory:
        raise TargetError(f"step {step.name} has no source_directory: give it one so its folder can be snapshotted")
    source_dir = Path(step._source_directory)
    source_dir = (source_dir if source_dir.is_absolute() else cwd / source_dir).resolve()
    script = step._script_name
    if not (source_dir / script).is_file():
        raise TargetError(f"step {step.name}: script {script} not found in {source_dir}")
    user_args, found = guide_flags(step._arguments)
    notes = []
    if found:
        notes.append(f"step {step.name}: the guide's flags {', '.join(sorted(found))} were taken off the script's "
                     "arguments; the bootstrap debugs it (node address, a real timeout)")
        if "--remote_debug_client_ip" in found:
            notes.append(f"step {step.name}: --remote_debug_client_ip is ignored: debugpy binds the node's own address")
    port, timeout = debug.port, debug.timeout
    try:
        if not explicit_port and "--remote_debug_port" in found:
            port = int(str(found["--remote_debug_port"]))
        if not explicit_timeout and "--remote_debug_connection_timeout" in found:
            timeout = float(str(found["--remote_debug_connection_timeout"]))
    except ValueError as exc:
        raise TargetError(f"step {step.name}: bad --remote_debug_* value: {exc}") from None
    step_debug = DebugOptions(enabled=True, port=port, bind=debug.bind or "node", timeout=timeout,
                              stop_on_entry=debug.stop_on_entry)
    name = _NAME.sub("-", step.name).strip("-.")[:64] or "step"
    spec = RunSpec(name=name, source_dir=source_dir, script=script,
                   args=tuple(a if isinstance(a, str) else str(a) for a in user_args), debug=step_debug)
    runconfig = copy.deepcopy(step._runconfig) if step._runconfig is not None else RunConfiguration()
    if not add_debugpy(runconfig.environment):
        notes.append(f"step {step.name}: its environment manages its own dependencies: debugpy must be in its image")
    runconfig.environment_variables = {**RUN_ENV, **dict(runconfig.environment_variables or {})}
    arguments = entry_arguments(spec, step_debug.bind or "node", port, args=user_args)
    snapshot = make_snapshot(source_dir)
    return StepPlan(step, spec, snapshot, arguments, runconfig, compute_name(step), notes)


# -- the plan -------------------------------------------------------------------------------


@dataclass
class PipelinePlan:
    """A pipeline with debugging on for chosen steps, built offline; submitted by the engine as a
    group of runs (one per debugged step), see :meth:`submit`."""

    all_steps: list
    plans: list[StepPlan]
    backend: Any
    ref: settings.WorkspaceRef
    experiment: str
    parameters: dict

    @property
    def label(self) -> str:
        return "simulated Azure ML" if getattr(self.backend, "simulated", False) else "Azure ML"

    @property
    def members(self) -> list[tuple[str, RunSpec]]:
        """(step name, the step's RunSpec) of each debugged step."""
        return [(plan.step.name, plan.spec) for plan in self.plans]

    def describe(self) -> dict:
        chosen = [plan.step for plan in self.plans]
        return {"backend": self.label, "workspace": self.ref.to_dict(), "experiment": self.experiment,
                "steps": [p.describe() for p in self.plans],
                "other_steps": [s.name for s in self.all_steps if all(s is not c for c in chosen)],
                "pipeline_parameters": dict(self.parameters), "submitted": False}

    def cleanup(self) -> None:
        for plan in self.plans:
            shutil.rmtree(plan.snapshot, ignore_errors=True)

    def submit(self, contexts: dict[str, RunContext]) -> PipelineHandle:
        """Check the computes, submit the pipeline (each debugged step with its own run's secrets),
        restore the step objects; the handle follows each step's child run."""
        try:
            with service_errors(f"open workspace {self.ref.workspace_name}"):
                workspace = self.backend.open_workspace(self.ref)
                computes = self.backend.compute_names(workspace)
            for plan in self.plans:
                if plan.compute and plan.compute not in computes:
                    raise TargetError(f"step {plan.step.name}: compute {plan.compute!r} not found in workspace "
                                      f"{self.ref.workspace_name} (computes: {', '.join(computes) or 'none'})")
            for plan in self.plans:
                plan.apply(contexts[plan.step.name].secrets)
            try:
                with service_errors(f"submit the pipeline to experiment {self.experiment}"):
                    pipeline_run = self.backend.submit_pipeline(
                        workspace, self.experiment, self.all_steps, self.parameters or None,
                        f"aml_magics debug: {', '.join(p.step.name for p in self.plans)}",
                        {"aml_magics": __version__, "aml_magics.debug": "true"})
            finally:
                for plan in self.plans:
                    plan.restore()
        finally:
            self.cleanup()
        detail = getattr(self.backend, "detail", "")
        description = (f"{self.label}" + (f" ({detail})" if detail else "") +
                       f": pipeline run {pipeline_run.id}, workspace {self.ref.workspace_name}, "
                       f"experiment {self.experiment}")
        handle = PipelineHandle(pipeline_run, self.backend, description)
        for plan in self.plans:
            ctx = contexts[plan.step.name]
            for note in plan.notes:
                ctx.events.line(f"aml_magics: {note}")
            ctx.events.line(f"aml_magics: submitted pipeline run {pipeline_run.id}; "
                            f"waiting for step {plan.step.name} to start")
            ctx.events.state(RunState.QUEUED)
            handle.steps[plan.step.name] = StepHandle(pipeline_run, ctx)
        handle.start(self.backend.poll_seconds)
        return handle


# -- the run --------------------------------------------------------------------------------


class StepHandle:
    """The RunHandle of one debugged step: its child run's monitor once the step started."""

    def __init__(self, pipeline_run: Any, ctx: RunContext) -> None:
        self.pipeline_run = pipeline_run
        self.ctx = ctx
        self.monitor: RunMonitor | None = None
        self.done = threading.Event()
        ctx.scope.token.on_cancel(self._cancel_pipeline)

    def _cancel_pipeline(self) -> None:
        if self.monitor is None:
            try:
                self.pipeline_run.cancel()
            except Exception:
                pass

    def follow(self, child: Any, backend: Any, poll: float) -> None:
        self.ctx.events.line(f"aml_magics: step started as child run {child.id}")
        self.monitor = RunMonitor(backend, child, self.ctx.events, reader=MarkerReader(self.ctx.secrets.marker_key),
                                  scope=self.ctx.scope, poll=poll, on_cancel=self.pipeline_run).start()

    def never_ran(self, status: str) -> None:
        state = RunState.CANCELED if status == "Canceled" else RunState.FAILED
        self.ctx.scope.close()
        self.ctx.events.finished(state, None, f"step did not run (pipeline {status})")
        self.done.set()

    def cancel(self) -> None:
        monitor = self.monitor
        if monitor is not None:
            monitor.cancel()
            return
        self.ctx.scope.cancel()
        self.done.wait(10)

    def is_done(self) -> bool:
        return self.done.is_set() or (self.monitor is not None and self.monitor.is_done())

    def map_endpoint(self, endpoint: Endpoint) -> Endpoint:
        return endpoint


class PipelineHandle:
    """A submitted pipeline: follows it, and starts each debugged step's monitor when it runs."""

    def __init__(self, pipeline_run: Any, backend: Any, description: str) -> None:
        self.pipeline_run = pipeline_run
        self.backend = backend
        self.description = description
        self.steps: dict[str, StepHandle] = {}
        self._done = threading.Event()

    @property
    def id(self) -> str:
        return self.pipeline_run.id

    def is_done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def status(self) -> str:
        return self.pipeline_run.get_status()

    def cancel(self) -> None:
        try:
            self.pipeline_run.cancel()
        except Exception:
            pass

    def start(self, poll: float) -> None:
        threading.Thread(target=self._follow, args=(poll,), daemon=True, name=f"aml-pipeline-{self.id}").start()

    def _follow(self, poll: float) -> None:
        wake = threading.Event()
        try:
            while True:
                try:
                    status = self.pipeline_run.get_status()
                except Exception:
                    wake.wait(poll)
                    continue
                for name, handle in self.steps.items():
                    if handle.monitor is None:
                        try:
                            children = self.pipeline_run.find_step_run(name)
                        except Exception:
                            children = []
                        if children:
                            handle.follow(children[0], self.backend, poll)
                if status in TERMINAL:
                    for handle in self.steps.values():
                        if handle.monitor is None:
                            handle.never_ran(status)
                    return
                wake.wait(poll)
        finally:
            self._done.set()


def plan_pipeline(steps: Any, debug_steps: list[str] | str | None = None, *, experiment: str | None = None,
                  workspace_config: str | None = None, port: int | None = None, bind: str | None = None,
                  timeout: float | None = None, stop_on_entry: bool = False,
                  pipeline_parameters: dict | None = None, cwd: Path | None = None,
                  default_port: int = DEFAULT_PORT, default_timeout: float = DEFAULT_TIMEOUT) -> PipelinePlan:
    """The pipeline made of ``steps`` with debugging on for the steps named in ``debug_steps``
    (default: those whose arguments carry the guide's ``--remote_debug``), built offline.

    TargetError (one line) for every problem found before submitting; then nothing was submitted.
    """
    require_sdk(pipelines=True)
    cwd = cwd or Path.cwd()
    if isinstance(debug_steps, str):
        debug_steps = [s.strip() for s in debug_steps.split(",") if s.strip()]
    all_steps = _steps_list(steps)
    chosen = choose_steps(all_steps, debug_steps)
    backend = get_backend()
    experiment = settings.choose_experiment(experiment)
    ref = settings.locate_workspace(settings.choose_workspace_config(workspace_config), cwd)
    # default_*: what %config set; a step's own --remote_debug_* flags still win over them.
    debug = DebugOptions(port=default_port if port is None else int(port), bind=bind or "node",
                         timeout=default_timeout if timeout is None else float(timeout), stop_on_entry=stop_on_entry)
    plans: list[StepPlan] = []
    try:
        for step in chosen:
            plans.append(plan_step(step, debug, cwd, port is not None, timeout is not None))
    except BaseException:
        for plan in plans:
            shutil.rmtree(plan.snapshot, ignore_errors=True)
        raise
    return PipelinePlan(all_steps, plans, backend, ref, experiment, dict(pipeline_parameters or {}))
