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

import argparse
import copy
import re
import shlex
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..spec import DEFAULT_PORT, DEFAULT_TIMEOUT, DebugOptions, RunSpec
from ..targets.base import TargetError
from . import settings
from .backend import get_backend, require_sdk, service_errors
from .monitor import TERMINAL, RunMonitor
from .submission import RUN_ENV_VARS, add_debugpy, entry_arguments, make_snapshot, pip_packages, snapshot_files

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

    def apply(self) -> None:
        self.saved = {name: getattr(self.step, name) for name in _PATCHED}
        self.step._script_name = "aml_magics_bootstrap.py"
        self.step._source_directory = str(self.snapshot)
        self.step._arguments = self.arguments
        self.step._runconfig = self.runconfig
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
            "entry_script": "aml_magics_bootstrap.py",
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


def _compute_name(step: Any) -> str | None:
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
    runconfig.environment_variables = {**RUN_ENV_VARS, **dict(runconfig.environment_variables or {})}
    bootstrap = entry_arguments(spec, step_debug.bind or "node", port)[:-(len(spec.args) + 1)]
    arguments = [*bootstrap, script, *user_args]
    snapshot = make_snapshot(source_dir)
    return StepPlan(step, spec, snapshot, arguments, runconfig, _compute_name(step), notes)


# -- the run --------------------------------------------------------------------------------


class StepHandle:
    """The RunHandle of one debugged step: its child run's monitor once the step started."""

    def __init__(self, pipeline_run: Any) -> None:
        self.pipeline_run = pipeline_run
        self.monitor: RunMonitor | None = None
        self.done = threading.Event()

    def cancel(self) -> None:
        monitor = self.monitor
        if monitor is not None:
            monitor.cancel()
            return
        try:
            self.pipeline_run.cancel()
        except Exception:
            pass
        self.done.wait(10)

    def is_done(self) -> bool:
        return self.done.is_set() or (self.monitor is not None and self.monitor.is_done())

    def map_endpoint(self, endpoint):
        return endpoint


class PipelineDebugRun:
    """A submitted pipeline and one DebugRun per debugged step (``.steps[name]``)."""

    def __init__(self, pipeline_run: Any, steps: dict, backend: Any, description: str) -> None:
        self.pipeline_run = pipeline_run
        self.steps = steps  # step name → DebugRun
        self.backend = backend
        self.description = description
        self._handles: dict[str, StepHandle] = {}
        self._done = threading.Event()

    @property
    def id(self) -> str:
        return self.pipeline_run.id

    @property
    def done(self) -> bool:
        return self._done.is_set() and all(run.done for run in self.steps.values())

    def cancel(self) -> None:
        try:
            self.pipeline_run.cancel()
        except Exception:
            pass
        for run in self.steps.values():
            run.cancel()

    def wait(self, timeout: float | None = None) -> str:
        for run in self.steps.values():
            run.wait(timeout)
        self._done.wait(timeout)
        return self.pipeline_run.get_status()

    def launch_json(self, workspace_folder=None) -> dict:
        from .. import launch

        configs = [c for run in self.steps.values() for c in run.launch_configs(workspace_folder)]
        return launch.fragment(configs)

    def _start(self, poll: float) -> None:
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
                for name, handle in self._handles.items():
                    if handle.monitor is None:
                        try:
                            children = self.pipeline_run.find_step_run(name)
                        except Exception:
                            children = []
                        if children:
                            run = self.steps[name]
                            run.line(f"aml_magics: step {name} started as child run {children[0].id}")
                            handle.monitor = RunMonitor(self.backend, children[0], run.events, poll=poll,
                                                        on_cancel=self.pipeline_run).start()
                if status in TERMINAL:
                    for name, handle in self._handles.items():
                        if handle.monitor is None:
                            state = "canceled" if status == "Canceled" else "failed"
                            self.steps[name].finished(state, None, f"step did not run (pipeline {status})")
                            handle.done.set()
                    return
                wake.wait(poll)
        finally:
            self._done.set()

    def __repr__(self) -> str:
        steps = ", ".join(f"{n}: {r.state}" for n, r in self.steps.items())
        return f"<PipelineDebugRun {self.id} {steps}>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict:
        from ..views import render_text, widget_frontend

        text = "\n\n".join(render_text(run) for run in self.steps.values())
        text = f"pipeline run {self.id} ({self.description})\n{text}"
        if not widget_frontend():
            return {"text/plain": text}
        import ipywidgets as widgets

        from ..views.widget import widget_for

        box = widgets.VBox([widgets.HTML(f"<b>pipeline run {self.id}</b> <i>{self.description}</i>")]
                           + [widget_for(run) for run in self.steps.values()])
        bundle = dict(box._repr_mimebundle_() or {})
        bundle["text/plain"] = text
        return bundle


def debug_pipeline(steps: Any, debug_steps: list[str] | str | None = None, *, experiment: str | None = None,
                   workspace_config: str | None = None, port: int | None = None, bind: str | None = None,
                   timeout: float | None = None, stop_on_entry: bool = False,
                   pipeline_parameters: dict | None = None, dry_run: bool = False,
                   launch_json: str | Path | None = None, registry: Any = None, cwd: Path | None = None,
                   default_port: int = DEFAULT_PORT, default_timeout: float = DEFAULT_TIMEOUT):
    """Submit the pipeline made of ``steps`` with debugging on for the steps named in
    ``debug_steps`` (default: those whose arguments carry the guide's ``--remote_debug``).

    Returns a PipelineDebugRun (``.steps[name]`` is each step's DebugRun), or with
    ``dry_run=True`` a dict of what would be submitted, built offline. TargetError (one
    line) for every problem found before submitting; then nothing was submitted.
    """
    require_sdk(pipelines=True)
    from ..engine import REGISTRY, _launch_json_writer
    from ..run import DebugRun

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
        label = "simulated Azure ML" if getattr(backend, "simulated", False) else "Azure ML"
        if dry_run:
            return {"backend": label, "workspace": ref.to_dict(), "experiment": experiment,
                    "steps": [p.describe() for p in plans], "other_steps": [s.name for s in all_steps if s not in chosen],
                    "pipeline_parameters": dict(pipeline_parameters or {}), "submitted": False}
        with service_errors(f"open workspace {ref.workspace_name}"):
            workspace = backend.open_workspace(ref)
            computes = backend.compute_names(workspace)
        for plan in plans:
            if plan.compute and plan.compute not in computes:
                raise TargetError(f"step {plan.step.name}: compute {plan.compute!r} not found in workspace "
                                  f"{ref.workspace_name} (computes: {', '.join(computes) or 'none'})")
        for plan in plans:
            plan.apply()
        try:
            with service_errors(f"submit the pipeline to experiment {experiment}"):
                pipeline_run = backend.submit_pipeline(workspace, experiment, all_steps, pipeline_parameters,
                    f"aml_magics debug: {', '.join(p.step.name for p in plans)}",
                    {"aml_magics": __version__, "aml_magics.debug": "true"})
        finally:
            for plan in plans:
                plan.restore()
    finally:
        for plan in plans:
            import shutil

            shutil.rmtree(plan.snapshot, ignore_errors=True)
    registry = registry or REGISTRY
    detail = getattr(backend, "detail", "")
    description = (f"{label}" + (f" ({detail})" if detail else "") +
                   f": pipeline run {pipeline_run.id}, workspace {ref.workspace_name}, experiment {experiment}")
    runs: dict[str, DebugRun] = {}
    result = PipelineDebugRun(pipeline_run, runs, backend, description)
    for plan in plans:
        run = DebugRun(registry.new_id(plan.spec.name), plan.spec, "azureml",
                       description=f"{description}, step {plan.step.name}")
        for note in plan.notes:
            run.line(f"aml_magics: {note}")
        run.line(f"aml_magics: submitted pipeline run {pipeline_run.id}; waiting for step {plan.step.name} to start")
        run.set_state("queued")
        if launch_json is not None:
            run.subscribe(_launch_json_writer(Path(launch_json)))
        handle = StepHandle(pipeline_run)
        run.bind(handle)
        result._handles[plan.step.name] = handle
        registry.add(run)
        runs[plan.step.name] = run
    result._start(backend.poll_seconds)
    return result


# -- the magic ---------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from ..options import _Parser, port_value, timeout_value

    parser = _Parser(prog="%aml_debug_pipeline", add_help=False, allow_abbrev=False)
    parser.add_argument("steps_expr", metavar="STEPS", help="the list of pipeline steps (a variable or expression)")
    parser.add_argument("--steps", default=None, help="names of the steps to debug, comma-separated")
    parser.add_argument("--experiment", default=None)
    parser.add_argument("--workspace-config", default=None)
    parser.add_argument("--port", type=port_value, default=None)
    parser.add_argument("--bind", default=None)
    parser.add_argument("--timeout", type=timeout_value, default=None)
    parser.add_argument("--stop-on-entry", action="store_true")
    parser.add_argument("--parameter", action="append", default=[], help="pipeline parameter NAME=VALUE (repeatable)")
    parser.add_argument("--launch-json", default=None)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--wait", action="store_true")
    # the guide's own flags
    parser.add_argument("--remote_debug", action="store_true", help="(the guide's flag) debugging on: the default")
    parser.add_argument("--remote_debug_connection_timeout", type=timeout_value, default=None)
    parser.add_argument("--remote_debug_port", type=port_value, default=None)
    parser.add_argument("--remote_debug_client_ip", default=None, help="(the guide's flag) ignored: the node's "
                        "own address is bound")
    return parser


USAGE = "usage: %aml_debug_pipeline STEPS [--steps a,b] [--experiment E] [--timeout S] [--port N] [--dry-run] [--wait]"


def follow_steps(result: PipelineDebugRun, until_endpoint: bool, emit: Any = print) -> None:
    """Print every step's lines as they come, until one step can be attached to (or all ended)."""
    import time

    seen = dict.fromkeys(result.steps, 0)
    while True:
        finished = all(run.done for run in result.steps.values())
        for name, run in result.steps.items():
            lines, seen[name] = run.lines_since(seen[name])
            for text in lines:
                emit(f"[{name}] {text}")
        if finished or (until_endpoint and any(run.endpoints for run in result.steps.values())):
            return
        time.sleep(0.2)


def pipeline_magic(magics: Any, line: str) -> Any:
    """``%aml_debug_pipeline STEPS [--steps a,b] ...``: the implementation behind the magic."""
    from IPython.core.error import UsageError

    from ..options import OptionsError

    if line.strip() in ("", "-h", "--help"):
        print(_parser().format_help() if line.strip() else USAGE)
        return None
    try:
        ns = _parser().parse_args(shlex.split(line))
    except (OptionsError, ValueError) as exc:
        raise UsageError(f"{exc}; {USAGE}") from None
    try:
        steps = magics.shell.ev(ns.steps_expr)
    except Exception as exc:
        raise UsageError(f"cannot evaluate {ns.steps_expr!r}: {type(exc).__name__}: {exc}") from None
    parameters = {}
    for item in ns.parameter:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--parameter takes NAME=VALUE, not {item!r}")
        parameters[key] = value
    port = ns.port if ns.port is not None else ns.remote_debug_port
    timeout = ns.timeout if ns.timeout is not None else ns.remote_debug_connection_timeout
    try:
        result = debug_pipeline(
            steps, ns.steps, experiment=ns.experiment or getattr(magics, "experiment", None),
            workspace_config=ns.workspace_config or getattr(magics, "workspace_config", None),
            port=None if port in (None, "auto") else int(port), bind=ns.bind, timeout=timeout,
            stop_on_entry=ns.stop_on_entry, pipeline_parameters=parameters or None, dry_run=ns.dry_run,
            launch_json=ns.launch_json, registry=getattr(magics, "registry", None),
            default_port=getattr(magics, "port", DEFAULT_PORT), default_timeout=getattr(magics, "timeout", DEFAULT_TIMEOUT))
    except TargetError as exc:
        raise UsageError(str(exc)) from None
    if ns.dry_run:
        return result
    from ..views import widget_frontend

    try:
        if ns.wait or not widget_frontend():
            follow_steps(result, until_endpoint=not ns.wait)
    except KeyboardInterrupt:
        result.cancel()
        print(f"aml_magics: pipeline run {result.id} canceled (interrupted)")
    return result
