"""A simulated Azure ML control plane: workspace, experiment and run service.

Switched on with ``AML_MAGICS_AZUREML_BACKEND=simulator`` (the CLI, notebooks, a demo and
the tests reach it the same way). It replaces only the service the azureml target talks
to; what it is given is azureml-core's real ScriptRunConfig / PythonScriptStep objects,
and it executes exactly what was submitted: the snapshot of the source directory, the
entry script, the arguments and the environment variables (plus the ones Azure ML sets,
such as ``AZUREML_RUN_ID``), in a separate process on a simulated node. It writes the
run's logs under either layout (``user_logs/std_log.txt`` or
``azureml-logs/70_driver_log.txt``), moves through the run states, honours cancel, and
runs pipeline steps as child runs.

What it does not do: build the environment's image (the node runs this machine's
interpreter, so the declared packages must already be importable here), authenticate,
or schedule on real machines. The node runs in its own network namespace when
``AML_MAGICS_SIM_NETNS`` names one (see :class:`NodeNamespace`), so the endpoint it
reports is the node's own private address; otherwise on loopback.

Settings (environment variables, read at each use):

``AML_MAGICS_SIM_ROOT``            where runs, node folders and logs are kept
``AML_MAGICS_SIM_LOG_LAYOUT``      ``user_logs`` (default) or ``driver``
``AML_MAGICS_SIM_NETNS``           network namespace the node runs in
``AML_MAGICS_SIM_COMPUTES``        compute names in the workspace (default cpu-cluster,gpu-cluster)
``AML_MAGICS_SIM_AUTH``            ``fail``: opening a workspace fails as an expired login does
``AML_MAGICS_SIM_STATE_SECONDS``   time spent in each state before Running (default 0.2)
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..invocation import rank_environment
from ..processes import ProcessGroup
from ..spec import DistributedSpec
from .backend import poll_interval, read_file_uri, register_backend
from .pipeline import compute_name
from .settings import WorkspaceRef
from .submission import distribution

DEFAULT_COMPUTES = "cpu-cluster,gpu-cluster"
CURATED_ENVIRONMENTS = {  # name → (version, pip packages)
    "AzureML-sklearn-1.5": ("1", ["scikit-learn==1.5.1", "pandas", "azureml-core"]),
    "AzureML-pytorch-2.2-cuda12": ("3", ["torch==2.2.2", "azureml-core"]),
}
TERMINAL = {"Completed", "Failed", "Canceled"}
_ids = itertools.count(1)


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def _state_seconds() -> float:
    try:
        return max(0.0, float(_env("AML_MAGICS_SIM_STATE_SECONDS", "0.2")))
    except ValueError:
        return 0.2


def sim_root() -> Path:
    root = Path(_env("AML_MAGICS_SIM_ROOT") or Path(tempfile.gettempdir()) / f"aml-magics-simulator-{os.getuid()}")
    root.mkdir(parents=True, exist_ok=True)
    return root


# -- workspace ---------------------------------------------------------------------------


@dataclass
class SimWorkspace:
    name: str
    resource_group: str | None
    subscription_id: str | None

    @property
    def compute_targets(self) -> dict[str, dict]:
        return {n: {"name": n, "type": "AmlCompute"} for n in compute_names()}


def compute_names() -> list[str]:
    """The simulated workspace's computes, as ``AML_MAGICS_SIM_COMPUTES`` lists them."""
    return [n.strip() for n in _env("AML_MAGICS_SIM_COMPUTES", DEFAULT_COMPUTES).split(",") if n.strip()]


# -- a step or script as submitted ------------------------------------------------------------


@dataclass
class Submitted:
    """What the service received, captured at submit (the client deletes its snapshot after)."""

    snapshot: Path
    script: str
    arguments: list[str]
    environment_variables: dict[str, str]
    compute: str
    process_count: int = 1
    notes: list[str] = field(default_factory=list)
    pip_packages: list[str] = field(default_factory=list)


def _packages(environment: Any) -> tuple[list[str], bool]:
    try:
        python = environment.python
        return list(python.conda_dependencies.pip_packages), bool(python.user_managed_dependencies)
    except Exception:
        return [], False


def _capture(source_dir: str | os.PathLike, dest: Path) -> Path:
    shutil.copytree(source_dir, dest, ignore=shutil.ignore_patterns(".git", "__pycache__"), dirs_exist_ok=True)
    return dest


# -- runs --------------------------------------------------------------------------------------


class SimRun:
    """A run as the service keeps it: status, tags, log files; executed on a simulated node."""

    def __init__(self, simulator: Simulator, workspace: SimWorkspace, experiment: str, run_id: str,
                 submitted: Submitted | None, tags: dict[str, str] | None = None, name: str | None = None,
                 parent: SimRun | None = None) -> None:
        self.simulator = simulator
        self.workspace = workspace
        self.experiment = experiment
        self.id = run_id
        self.name = name or run_id
        self.parent = parent
        self.submitted = submitted
        self.layout = _env("AML_MAGICS_SIM_LOG_LAYOUT", "user_logs").strip() or "user_logs"
        if self.layout not in ("user_logs", "driver"):
            raise ValueError(f"AML_MAGICS_SIM_LOG_LAYOUT={self.layout!r}: expected user_logs or driver")
        self.dir = sim_root() / "runs" / run_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.node_dir = sim_root() / "nodes" / run_id
        self._status = "NotStarted"
        self._tags = dict(tags or {})
        self._error: str | None = None
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._processes: list[ProcessGroup] = []
        self.history: list[str] = ["NotStarted"]

    # -- the SDK's Run surface the client uses ----------------------------------------------
    def get_status(self) -> str:
        return self._status

    def get_details(self) -> dict:
        with self._lock:
            status = self._status
            error = self._error
        logs = {p.relative_to(self.dir).as_posix(): p.resolve().as_uri()
                for p in sorted(self.dir.rglob("*.txt")) if p.is_file()}
        details: dict[str, Any] = {"runId": self.id, "status": status, "logFiles": logs,
                                   "target": self.submitted.compute if self.submitted else None,
                                   "properties": {"azureml.simulated": "true"}}
        if error:
            details["error"] = {"error": {"code": "UserError", "message": error}}
        return details

    def get_tags(self) -> dict[str, str]:
        with self._lock:
            return dict(self._tags)

    def tag(self, key: str, value: str | None = None) -> None:
        with self._lock:
            self._tags[key] = value  # type: ignore[assignment]

    def get_portal_url(self) -> str:
        return f"{self.dir.as_uri()} (simulated Azure ML: no portal)"

    def cancel(self) -> None:
        with self._lock:
            if self._status in TERMINAL:
                return
            if self._status != "NotStarted" or self.submitted is not None:
                self._set_locked("CancelRequested")
        self._cancel.set()
        self._stop_processes()

    def wait_for_completion(self, show_output: bool = False, timeout: float | None = None) -> dict:
        self._done.wait(timeout)
        return self.get_details()

    def get_children(self) -> list:
        return []

    # -- the service side ---------------------------------------------------------------------
    def _set_locked(self, status: str) -> None:
        self._status = status
        self.history.append(status)

    def _set(self, status: str) -> bool:
        """Move to ``status`` unless cancel came first; False when canceled."""
        with self._lock:
            if self._cancel.is_set() or self._status in TERMINAL:
                return False
            self._set_locked(status)
            return True

    def _end(self, status: str, error: str | None = None) -> None:
        with self._lock:
            if self._status in TERMINAL:
                return
            if self._cancel.is_set():
                status, error = "Canceled", None
            self._error = error
            self._set_locked(status)
        self._done.set()

    def _log_path(self, rank: int, world: int) -> Path:
        if self.layout == "driver":
            name = "70_driver_log.txt" if world == 1 else f"70_driver_log_{rank}.txt"
            return self.dir / "azureml-logs" / name
        name = "std_log.txt" if world == 1 else f"std_log_process_{rank}.txt"
        return self.dir / "user_logs" / name

    def _pause(self) -> bool:
        return not self._cancel.wait(_state_seconds())

    def start(self) -> SimRun:
        threading.Thread(target=self._execute, daemon=True, name=f"aml-sim-{self.id}").start()
        return self

    def _execute(self) -> None:
        try:
            code = self._execute_steps()
        except Exception as exc:  # the service fails the run, it does not crash
            self._end("Failed", f"simulator error: {exc}")
            return
        if code is None:
            self._end("Canceled")
        elif code == 0:
            self._end("Completed")
        else:
            self._end("Failed", self._error or f"Execution failed. User process 'python' exited with status code "
                                               f"{code}. Please check the run's logs for error details.")

    def _execute_steps(self) -> int | None:
        submitted = self.submitted
        assert submitted is not None
        for status in ("Preparing", "Queued", "Starting"):
            if not self._set(status) or not self._pause():
                return None
            if status == "Preparing":
                self._write_build_log(submitted)
        if not self._set("Running"):
            return None
        codes = self._run_processes(submitted)
        if codes is None:
            return None
        self._set("Finalizing")
        return next((c for c in codes if c != 0), 0)

    def _write_build_log(self, submitted: Submitted) -> None:
        path = self.dir / "azureml-logs" / "20_image_build_log.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"simulated image build for run {self.id}: pip packages {submitted.pip_packages}",
                 f"(simulated Azure ML: the node runs {sys.executable}; nothing is installed)"]
        lines += submitted.notes
        path.write_text("\n".join(lines) + "\n")

    def _node_env(self, rank: int, world: int) -> dict[str, str]:
        submitted = self.submitted
        assert submitted is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("AML_MAGICS_")}
        env.update({k: str(v) for k, v in submitted.environment_variables.items()})
        ws = self.workspace
        env.update({
            "AZUREML_RUN_ID": self.id,
            "AZUREML_ROOT_RUN_ID": self.parent.id if self.parent else self.id,
            "AZUREML_ARM_SUBSCRIPTION": ws.subscription_id or "",
            "AZUREML_ARM_RESOURCEGROUP": ws.resource_group or "",
            "AZUREML_ARM_WORKSPACE_NAME": ws.name,
            "AZUREML_ARM_PROJECT_NAME": self.experiment,
            "AZUREML_EXPERIMENT_NAME": self.experiment,
            "AZUREML_CR_EXECUTION_WORKING_DIR_PATH": str(self.node_dir / "exe" / "wd"),
            "PYTHONUNBUFFERED": "1",
        })
        if world > 1:
            env.update(rank_environment(DistributedSpec(1, world), rank))
        env.pop("AZUREML_SERVICE_ENDPOINT", None)  # no run-history service to reach: Run.get_context() is offline
        if not self.simulator.netns:
            env["AML_MAGICS_NODE_ADDRESS"] = "127.0.0.1"  # no namespace: the "node" is this machine's loopback
        return env

    def _run_processes(self, submitted: Submitted) -> list[int] | None:
        workdir = self.node_dir / "exe" / "wd"
        if workdir.exists():
            shutil.rmtree(workdir)
        shutil.copytree(submitted.snapshot, workdir)
        world = max(1, submitted.process_count)
        prefix = ["ip", "netns", "exec", self.simulator.netns] if self.simulator.netns else []
        logs = []
        with self._lock:
            if self._cancel.is_set():
                return None
            for rank in range(world):
                log_path = self._log_path(rank, world)
                log_path.parent.mkdir(parents=True, exist_ok=True)
                log = open(log_path, "ab")
                logs.append(log)
                if self.layout == "driver":
                    log.write(f"[{time.strftime('%Y-%m-%dT%H:%M:%S')}] Entering context manager injector.\n"
                              .encode())
                    log.flush()
                argv = [*prefix, sys.executable, submitted.script, *submitted.arguments]
                self._processes.append(ProcessGroup(argv, cwd=workdir, env=self._node_env(rank, world), stdout=log))
        try:
            codes = [p.wait() for p in self._processes]
        finally:
            for log in logs:
                log.close()
        return None if self._cancel.is_set() else codes

    def _stop_processes(self) -> None:
        """The service ends a canceled run's processes (SIGTERM, then SIGKILL after 5 s)."""
        with self._lock:
            processes = list(self._processes)
        threads = [threading.Thread(target=p.stop, args=(5.0,), daemon=True) for p in processes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


class SimPipelineRun(SimRun):
    """A pipeline run: its steps run one after the other as child runs."""

    def __init__(self, simulator: Simulator, workspace: SimWorkspace, experiment: str, run_id: str,
                 steps: list[tuple[str, Submitted]], tags: dict[str, str] | None = None) -> None:
        super().__init__(simulator, workspace, experiment, run_id, None, tags)
        self.steps = steps
        self.children: list[SimRun] = []
        self._current: SimRun | None = None

    def get_children(self) -> list[SimRun]:
        with self._lock:
            return list(self.children)

    def find_step_run(self, name: str) -> list[SimRun]:
        return [c for c in self.get_children() if c.name == name]

    def cancel(self) -> None:
        super().cancel()
        with self._lock:
            current = self._current
        if current is not None:
            current.cancel()

    def _execute_steps(self) -> int | None:
        if not self._set("Running"):
            return None
        for step_name, submitted in self.steps:
            child = SimRun(self.simulator, self.workspace, self.experiment, f"{self.id}_{len(self.children) + 1}",
                           submitted, name=step_name, parent=self)
            with self._lock:
                if self._cancel.is_set():
                    return None
                self.children.append(child)
                self._current = child
            child._execute()
            if child.get_status() == "Canceled" or self._cancel.is_set():
                return None
            if child.get_status() != "Completed":
                self._error = f"step {step_name} failed"
                return 1
        return 0


# -- the backend ---------------------------------------------------------------------------


class Simulator:
    """The simulated control plane; same methods as aml_magics.azureml.backend.AzureMLService."""

    name = "simulator"
    simulated = True
    label = "simulated Azure ML"

    def __init__(self) -> None:
        self.runs: dict[str, SimRun] = {}

    @property
    def netns(self) -> str:
        return _env("AML_MAGICS_SIM_NETNS").strip()

    @property
    def detail(self) -> str:
        ns = self.netns
        return f"node in network namespace {ns}" if ns else "node on loopback, no network namespace"

    @property
    def poll_seconds(self) -> float:
        return poll_interval(0.25)

    def open_workspace(self, ref: WorkspaceRef) -> SimWorkspace:
        if _env("AML_MAGICS_SIM_AUTH") == "fail":
            from azureml.exceptions import AuthenticationException

            raise AuthenticationException("(simulated) AADSTS700082: The refresh token has expired due to "
                                          "inactivity. Run az login again.")
        return SimWorkspace(ref.workspace_name, ref.resource_group, ref.subscription_id or "sim-subscription")

    def compute_names(self, workspace: SimWorkspace) -> list[str]:
        return sorted(workspace.compute_targets)

    def get_environment(self, workspace: SimWorkspace, name: str, version: str | None) -> Any:
        from azureml.core import Environment
        from azureml.core.conda_dependencies import CondaDependencies
        from azureml.exceptions import UserErrorException

        known = CURATED_ENVIRONMENTS.get(name)
        if known is None or (version and version != known[0]):
            raise UserErrorException(f"Environment {name}{':' + version if version else ''} was not found "
                                     f"in workspace {workspace.name}")
        environment = Environment(name)
        environment.version = known[0]
        environment.python.conda_dependencies = CondaDependencies.create(pip_packages=list(known[1]))
        return environment

    def _new_id(self, experiment: str) -> str:
        return f"{experiment}_{int(time.time())}_{next(_ids)}_{uuid.uuid4().hex[:6]}"

    def _check_compute(self, workspace: SimWorkspace, compute: str | None) -> None:
        from azureml.exceptions import UserErrorException

        if not compute or compute not in workspace.compute_targets:
            raise UserErrorException(f"Compute target {compute!r} not found in workspace {workspace.name}")

    def submit_run(self, workspace: SimWorkspace, experiment: str, config: Any, tags: dict[str, str]) -> SimRun:
        from azureml.exceptions import UserErrorException

        compute = config.run_config.target
        self._check_compute(workspace, compute)
        distributed = distribution(config.run_config) or {}
        nodes = distributed.get("node_count") or 1
        if nodes > 1:
            raise UserErrorException(f"the simulator runs one node; node_count {nodes} is not simulated")
        run_id = self._new_id(experiment)
        staged = _capture(config.source_directory, sim_root() / "snapshots" / run_id)
        packages, user_managed = _packages(config.run_config.environment)
        variables = dict(getattr(config.run_config.environment, "environment_variables", None) or {})
        variables.update(config.run_config.environment_variables or {})
        submitted = Submitted(staged, config.script, [str(a) for a in (config.arguments or [])], variables,
                              compute, int(distributed.get("process_count") or 1),
                              _debugpy_notes(packages, user_managed), packages)
        run = SimRun(self, workspace, experiment, run_id, submitted, tags)
        self.runs[run_id] = run
        return run.start()

    def submit_pipeline(self, workspace: SimWorkspace, experiment: str, steps: list, parameters: dict | None,
                        description: str, tags: dict[str, str]) -> SimPipelineRun:
        run_id = self._new_id(experiment)
        data_root = sim_root() / "datastore" / run_id
        captured = []
        for index, step in enumerate(_ordered(steps)):
            compute = compute_name(step)
            self._check_compute(workspace, compute)
            if getattr(step, "_command", None) or not getattr(step, "_script_name", None):
                raise ValueError(f"step {step.name}: the simulator runs PythonScriptSteps only")
            staged = _capture(step._source_directory or ".", sim_root() / "snapshots" / f"{run_id}_{index + 1}")
            runconfig = step._runconfig
            packages, user_managed = _packages(runconfig.environment) if runconfig is not None else ([], False)
            variables = dict(runconfig.environment_variables or {}) if runconfig is not None else {}
            arguments = [_resolve_argument(a, data_root, parameters or {}) for a in (step._arguments or [])]
            captured.append((step.name, Submitted(staged, step._script_name, arguments, variables, compute or "", 1,
                                                  _debugpy_notes(packages, user_managed), packages)))
        run = SimPipelineRun(self, workspace, experiment, run_id, captured, tags)
        self.runs[run_id] = run
        run.start()
        return run

    def read(self, uri: str, offset: int) -> bytes:
        return read_file_uri(uri, offset)

    def cancel_all(self) -> None:
        for run in list(self.runs.values()):
            run.cancel()


def _debugpy_notes(packages: list[str], user_managed: bool) -> list[str]:
    if user_managed or any(p.lower().startswith("debugpy") for p in packages):
        return []
    return ["WARNING: debugpy is not among the environment's pip packages; on Azure ML the run could not import it"]


def _resolve_argument(value: Any, data_root: Path, parameters: dict) -> str:
    """What the runtime puts in place of an argument object on the node."""
    kind = type(value).__name__
    if kind in ("PipelineData", "OutputPortBinding", "InputPortBinding", "PipelineOutputFileDataset"):
        path = data_root / str(getattr(value, "_output_name", None) or getattr(value, "name", "data"))
        path.mkdir(parents=True, exist_ok=True)
        return str(path)
    if kind == "PipelineParameter":
        return str(parameters.get(value.name, value.default_value))
    return str(value)


def _ordered(steps: list) -> list:
    """Steps in an order that respects run_after() and data dependencies (stable otherwise)."""
    remaining = list(steps)
    done: list = []

    def deps(step: Any) -> list:
        found = list(getattr(step, "run_after_steps", None) or [])
        for item in getattr(step, "_inputs", None) or []:
            producer = getattr(item, "_producer", None)
            if producer is not None:
                found.append(producer)
        return [d for d in found if any(d is s for s in steps)]

    while remaining:
        ready = next((s for s in remaining if all(any(d is x for x in done) for d in deps(s))), None)
        if ready is None:
            raise ValueError("the pipeline's steps depend on each other in a cycle")
        done.append(ready)
        remaining = [s for s in remaining if s is not ready]
    return done


_simulator: Simulator | None = None
_lock = threading.Lock()


def get_simulator() -> Simulator:
    global _simulator
    with _lock:
        if _simulator is None:
            _simulator = Simulator()
        return _simulator


register_backend("v1", "simulator", get_simulator)


# -- a node with its own address ----------------------------------------------------------------


class NamespaceUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no iproute2, no CAP_NET_ADMIN)."""


class NodeNamespace:
    """A network namespace "node" joined to this machine by a veth pair, on a /30 of 10.211.0.0/16.

    The node's address is ``10.211.N.2``, this machine's end ``10.211.N.1``: traffic between
    them never leaves the machine. Use as a context manager; everything is removed on exit.
    """

    _counter = itertools.count(1)

    def __init__(self, index: int | None = None) -> None:
        n = index if index is not None else (os.getpid() + next(self._counter)) % 250 + 1
        self.index = n
        self.name = f"amlsim{os.getpid()}x{n}"
        self.host_if = f"amlh{n}x{os.getpid() % 10000}"[:15]
        self.node_if = f"amln{n}x{os.getpid() % 10000}"[:15]
        self.host_address = f"10.211.{n}.1"
        self.node_address = f"10.211.{n}.2"

    @staticmethod
    def unavailable_reason() -> str | None:
        if os.geteuid() != 0:
            return "network namespaces need root"
        if shutil.which("ip") is None:
            return "iproute2 ('ip') is not installed (apt-get install -y iproute2)"
        return None

    def _ip(self, *args: str) -> None:
        result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
        if result.returncode != 0:
            raise NamespaceUnavailable(f"ip {' '.join(args)}: {result.stderr.strip() or result.returncode}")

    def create(self) -> NodeNamespace:
        reason = self.unavailable_reason()
        if reason:
            raise NamespaceUnavailable(reason)
        try:
            self._ip("netns", "add", self.name)
            self._ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.node_if)
            self._ip("link", "set", self.node_if, "netns", self.name)
            self._ip("addr", "add", f"{self.host_address}/30", "dev", self.host_if)
            self._ip("link", "set", self.host_if, "up")
            self._ip("-n", self.name, "addr", "add", f"{self.node_address}/30", "dev", self.node_if)
            self._ip("-n", self.name, "link", "set", self.node_if, "up")
            self._ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        for args in (["netns", "del", self.name], ["link", "del", self.host_if]):
            subprocess.run(["ip", *args], capture_output=True, timeout=20)

    def __enter__(self) -> NodeNamespace:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.remove()


@contextlib.contextmanager
def simulated_azureml(root: str | os.PathLike, *, layout: str = "user_logs", netns: str | None = None,
                      computes: str = DEFAULT_COMPUTES) -> Iterator[Simulator]:
    """Switch the simulator on for a block (sets and restores the environment variables)."""
    values = {"AML_MAGICS_AZUREML_BACKEND": "simulator", "AML_MAGICS_SIM_ROOT": str(root),
              "AML_MAGICS_SIM_LOG_LAYOUT": layout, "AML_MAGICS_SIM_COMPUTES": computes,
              "AML_MAGICS_SIM_NETNS": netns or ""}
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield get_simulator()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def describe_run(run: SimRun) -> str:
    """One JSON line about a simulated run (for demos and debugging the simulator)."""
    return json.dumps({"id": run.id, "status": run.get_status(), "history": run.history, "layout": run.layout,
                       "node_dir": str(run.node_dir)})
