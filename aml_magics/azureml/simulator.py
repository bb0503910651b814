"""A simulated Azure ML control plane: workspace, experiment and run service.

Switched on with ``AML_MAGICS_AZUREML_BACKEND=simulator`` (the CLI, notebooks, a demo and
the tests reach it the same way). It replaces only the service the azureml target talks
to; what it is given is azureml-core's real ScriptRunConfig / PythonScriptStep objects,
and it executes exactly what was submitted: the snapshot of the source directory, the
entry script, the arguments and the environment variables (passed through unchanged,
plus the ones Azure ML sets, such as ``AZUREML_RUN_ID``), in separate processes on
simulated nodes. It writes the run's logs under either layout (``user_logs/std_log.txt``
or ``azureml-logs/70_driver_log.txt``; one log per process, ``std_log_process_<rank>.txt``,
for a distributed run), moves through the run states, honours cancel, and runs pipeline
steps as child runs.

Where the nodes are (:mod:`.simnet`):

- ``AML_MAGICS_SIM_NETWORK=bridge``: a cluster. Every node of a job runs in its own network
  namespace on a private bridge, with its own address; what the service would start on
  each node is started there — the PyTorch launcher's processes (``RANK``, ``LOCAL_RANK``,
  ``WORLD_SIZE``, ``NODE_RANK``, ``MASTER_ADDR`` = node 0's address, ``MASTER_PORT``) or
  mpirun's (Open MPI's ``OMPI_COMM_WORLD_*``, Azure ML's ``AZ_BATCH_MASTER_NODE``), so ranks
  reach each other as on real nodes. The namespaces go when the job ends or is canceled.
- ``AML_MAGICS_SIM_NETNS=NAME``: the one node of a job runs in that (existing) namespace.
- neither: the one node is this machine's loopback. A job of several nodes is then refused
  ("not simulated").

What it does not do: build the environment's image (the node runs this machine's
interpreter, or ``AML_MAGICS_SIM_PYTHON``, so the declared packages must already be
importable there), authenticate, or schedule on real machines.

Settings (environment variables, read at each use):

``AML_MAGICS_SIM_ROOT``            where runs, node folders and logs are kept
``AML_MAGICS_SIM_LOG_LAYOUT``      ``user_logs`` (default) or ``driver``
``AML_MAGICS_SIM_NETWORK``         ``bridge``: each node of a job in its own namespace, on a bridge
``AML_MAGICS_SIM_NETNS``           network namespace a one-node job runs in
``AML_MAGICS_SIM_PYTHON``          the interpreter the nodes run (default this one): the "image's"
``AML_MAGICS_SIM_COMPUTES``        compute names in the workspace (default cpu-cluster,gpu-cluster)
``AML_MAGICS_SIM_AUTH``            ``fail``: opening a workspace fails as an expired login does
``AML_MAGICS_SIM_STATE_SECONDS``   time spent in each state before Running (default 0.2)
``AML_MAGICS_SIM_INBOUND``         ``proxy`` (with ``bridge``): the nodes accept no connection from this
                                 machine's address; only the workspace proxy reaches them (SDK v2's
                                 SSH service, :mod:`.v2.simssh`)
``AML_MAGICS_SIM_SSH``             ``fail``: a job's SSH service fails to start; ``other-key``: it lets in
                                 another key than the job's
``AML_MAGICS_SIM_TOKEN``           ``stale``: the credential's token is expired (the proxy answers 401)
``AML_MAGICS_SIM_SSH_DELAY``       seconds a job's SSH service takes to start after Running (default 0)
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fileio import private_folder
from ..invocation import DEFAULT_MASTER_PORT, LOOPBACK, rank_environment
from ..processes import ProcessGroup
from ..spec import DistributedSpec
from .backend import one_instance, poll_interval, read_file_uri, register_backend
from .pipeline import compute_name
from .settings import WorkspaceRef
from .simnet import (  # NamespaceUnavailable, NodeNamespace: re-exported (their home before simnet)
    BridgeCluster,
    NamespaceUnavailable,  # noqa: F401
    NodeNamespace,  # noqa: F401
    unavailable_reason,
)
from .submission import distribution

DEFAULT_COMPUTES = "cpu-cluster,gpu-cluster"
CURATED_ENVIRONMENTS = {  # name → (version, pip packages)
    "AzureML-sklearn-1.5": ("1", ["scikit-learn==1.5.1", "pandas", "azureml-core"]),
    "AzureML-pytorch-2.2-cuda12": ("3", ["torch==2.2.2", "azureml-core"]),
}
TERMINAL = {"Completed", "Failed", "Canceled"}
NETWORKS = ("", "bridge")
_ids = itertools.count(1)


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def _state_seconds() -> float:
    try:
        return max(0.0, float(_env("AML_MAGICS_SIM_STATE_SECONDS", "0.2")))
    except ValueError:
        return 0.2


def node_python() -> str:
    """The interpreter the nodes run: the "image" (``AML_MAGICS_SIM_PYTHON``, default this one)."""
    return _env("AML_MAGICS_SIM_PYTHON").strip() or sys.executable


def sim_root() -> Path:
    """Where the simulated service keeps runs (their environments hold the runs' secrets): the
    folder ``AML_MAGICS_SIM_ROOT`` names, or a private folder of this user's in the temp dir."""
    chosen = _env("AML_MAGICS_SIM_ROOT")
    if chosen:
        Path(chosen).mkdir(parents=True, exist_ok=True)
        return Path(chosen)
    return private_folder(Path(tempfile.gettempdir()) / f"aml-magics-simulator-{os.getuid()}")


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


@dataclass(frozen=True)
class Shape:
    """How many nodes, how many processes on each, and the launcher that starts them
    (``pytorch``: Azure ML's PyTorch launcher, torchrun's variables; ``mpi``: mpirun)."""

    nodes: int = 1
    per_node: int = 1
    launcher: str | None = None

    @property
    def world(self) -> int:
        return self.nodes * self.per_node

    @property
    def distributed(self) -> DistributedSpec:
        return DistributedSpec(self.nodes, self.per_node)


@dataclass
class Submitted:
    """What the service received, captured at submit (the client deletes its snapshot after)."""

    snapshot: Path
    script: str
    arguments: list[str]
    environment_variables: dict[str, str]
    compute: str
    shape: Shape = field(default_factory=Shape)
    notes: list[str] = field(default_factory=list)
    pip_packages: list[str] = field(default_factory=list)


def launcher_environment(shape: Shape, rank: int, master_addr: str, master_port: int = DEFAULT_MASTER_PORT
                         ) -> dict[str, str]:
    """What the service's launcher sets for one process of a distributed run (none for one process).

    PyTorch: torchrun's variables (:func:`aml_magics.invocation.rank_environment`). MPI: what
    Open MPI's mpirun sets, plus Azure ML's ``AZ_BATCHAI_MPI_MASTER_NODE`` (the address) and, on
    a job of several nodes, ``AZ_BATCH_MASTER_NODE`` (``address:port``)."""
    if shape.world <= 1 or shape.launcher is None:  # no launcher: the command itself on every node
        return {}
    if shape.launcher == "pytorch":
        return rank_environment(shape.distributed, rank, master_port, master_addr)
    node, local = shape.distributed.placement(rank)
    env = {"OMPI_COMM_WORLD_RANK": str(rank), "OMPI_COMM_WORLD_SIZE": str(shape.world),
           "OMPI_COMM_WORLD_LOCAL_RANK": str(local), "OMPI_COMM_WORLD_LOCAL_SIZE": str(shape.per_node),
           "OMPI_COMM_WORLD_NODE_RANK": str(node), "AZ_BATCHAI_MPI_MASTER_NODE": master_addr}
    if shape.nodes > 1:
        env["AZ_BATCH_MASTER_NODE"] = f"{master_addr}:{master_port}"
    return env


def shape_error(nodes: int, what: str) -> str | None:
    """Why a job of ``nodes`` nodes cannot be simulated here (None: it can)."""
    network = _env("AML_MAGICS_SIM_NETWORK").strip()
    if network not in NETWORKS:
        return f"AML_MAGICS_SIM_NETWORK={network!r}: expected bridge (or unset)"
    inbound = _env("AML_MAGICS_SIM_INBOUND").strip()
    if inbound and (inbound != "proxy" or network != "bridge"):
        return f"AML_MAGICS_SIM_INBOUND={inbound!r}: expected proxy, with AML_MAGICS_SIM_NETWORK=bridge"
    if network == "bridge":
        reason = unavailable_reason()
        return f"AML_MAGICS_SIM_NETWORK=bridge: {reason}" if reason else None
    if nodes > 1:
        return (f"the simulator runs one node; {what} {nodes} is not simulated "
                "(AML_MAGICS_SIM_NETWORK=bridge simulates a cluster)")
    return None


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


@dataclass
class SimNode:
    """One node of a run: how to run a program there, its copy of the snapshot, its address
    (None: the namespace's own, found by the bootstrap), and whether it is only loopback."""

    index: int
    prefix: list[str]
    workdir: Path
    address: str | None
    loopback: bool = False


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
        """Where a process's output goes, as the service lays it out: one log per process of
        the whole job (every node's), numbered by global rank."""
        if self.layout == "driver":
            path = self.dir / "azureml-logs" / ("70_driver_log.txt" if world == 1 else f"70_driver_log_{rank}.txt")
        else:
            path = self.dir / "user_logs" / ("std_log.txt" if world == 1 else f"std_log_process_{rank}.txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

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
                 f"(simulated Azure ML: the nodes run {node_python()}; nothing is installed)"]
        lines += submitted.notes
        path.write_text("\n".join(lines) + "\n")

    def _node_env(self, rank: int, node: SimNode, master_addr: str) -> dict[str, str]:
        """The process's environment: this machine's (less our own settings), the submitted
        variables unchanged, what Azure ML sets, and what the launcher sets for ``rank``."""
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
            "AZUREML_CR_EXECUTION_WORKING_DIR_PATH": str(node.workdir),
            "PYTHONUNBUFFERED": "1",
        })
        env.update(launcher_environment(submitted.shape, rank, master_addr))
        env.pop("AZUREML_SERVICE_ENDPOINT", None)  # no run-history service to reach: Run.get_context() is offline
        if node.loopback:
            env["AML_MAGICS_NODE_ADDRESS"] = LOOPBACK  # no namespace: the "node" is this machine's loopback
        return env

    def _nodes(self, shape: Shape, cluster: BridgeCluster | None) -> list[SimNode]:
        """Where each node runs: a namespace of the cluster, the AML_MAGICS_SIM_NETNS one, or loopback;
        each with its own copy of the snapshot (node 0 of a one-node job: ``exe/wd`` as before)."""
        if cluster is not None:
            return [SimNode(i, cluster.exec_prefix(i), self._workdir(i, shape.nodes), cluster.node_address(i))
                    for i in range(shape.nodes)]
        netns = self.simulator.netns
        prefix = ["ip", "netns", "exec", netns] if netns else []
        return [SimNode(0, prefix, self._workdir(0, 1), None, loopback=not netns)]

    def _workdir(self, node: int, nodes: int) -> Path:
        return self.node_dir / ("" if nodes == 1 else f"node-{node}") / "exe" / "wd"

    def _run_processes(self, submitted: Submitted) -> list[int] | None:
        shape = submitted.shape
        cluster = BridgeCluster(shape.nodes, self.simulator.inbound) if self.simulator.network == "bridge" else None
        try:
            if cluster is not None:
                cluster.create()
            nodes = self._nodes(shape, cluster)
            master = nodes[0].address or LOOPBACK
            for node in nodes:
                if node.workdir.exists():
                    shutil.rmtree(node.workdir)
                shutil.copytree(submitted.snapshot, node.workdir)
                self._link_outputs(node.workdir)
            self._nodes_up(nodes, cluster)
            return self._start_and_wait(submitted, nodes, master)
        finally:
            self._nodes_down()
            if cluster is not None:
                cluster.remove()  # with whatever still runs on its nodes

    def _link_outputs(self, workdir: Path) -> None:
        """``./outputs`` of every node is the job's outputs (``runs/ID/outputs``): what the service
        uploads, there even when nobody (no owner, no simulator) is left to collect it."""
        outputs = self.dir / "outputs"
        outputs.mkdir(parents=True, exist_ok=True)
        if not (workdir / "outputs").exists():
            (workdir / "outputs").symlink_to(outputs, target_is_directory=True)

    def _nodes_up(self, nodes: list[SimNode], cluster: BridgeCluster | None) -> None:
        """The nodes are there, the job's processes not yet: what the service starts beside them
        (SDK v2: the job's SSH service)."""

    def _nodes_down(self) -> None:
        """Before the nodes go: stop what :meth:`_nodes_up` started."""

    def _start_and_wait(self, submitted: Submitted, nodes: list[SimNode], master: str) -> list[int] | None:
        shape = submitted.shape
        python = node_python()
        logs = []
        try:
            with self._lock:
                if self._cancel.is_set():
                    return None
                for rank in range(shape.world):
                    node = nodes[shape.distributed.placement(rank)[0]]
                    log = open(self._log_path(rank, shape.world), "ab")
                    logs.append(log)
                    if self.layout == "driver":
                        log.write(f"[{time.strftime('%Y-%m-%dT%H:%M:%S')}] Entering context manager injector.\n"
                                  .encode())
                        log.flush()
                    argv = [*node.prefix, python, submitted.script, *submitted.arguments]
                    self._processes.append(ProcessGroup(argv, cwd=node.workdir, env=self._node_env(rank, node, master),
                                                        stdout=log))
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
    def network(self) -> str:
        return _env("AML_MAGICS_SIM_NETWORK").strip()

    @property
    def inbound(self) -> str:
        return _env("AML_MAGICS_SIM_INBOUND").strip()

    @property
    def detail(self) -> str:
        if self.network == "bridge":
            closed = "; nodes reachable only through the workspace proxy" if self.inbound == "proxy" else ""
            return f"each node in its own network namespace, on a private bridge{closed}"
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
        shape = _v1_shape(distribution(config.run_config))
        problem = shape_error(shape.nodes, "node_count")
        if problem:
            raise UserErrorException(problem)
        run_id = self._new_id(experiment)
        staged = _capture(config.source_directory, sim_root() / "snapshots" / run_id)
        packages, user_managed = _packages(config.run_config.environment)
        variables = dict(getattr(config.run_config.environment, "environment_variables", None) or {})
        variables.update(config.run_config.environment_variables or {})
        submitted = Submitted(staged, config.script, [str(a) for a in (config.arguments or [])], variables,
                              compute, shape, _debugpy_notes(packages, user_managed), packages)
        run = SimRun(self, workspace, experiment, run_id, submitted, tags)
        self.runs[run_id] = run
        return run.start()

    def submit_pipeline(self, workspace: SimWorkspace, experiment: str, steps: list, parameters: dict | None,
                        description: str, tags: dict[str, str]) -> SimPipelineRun:
        problem = shape_error(1, "node_count")
        if problem:
            from azureml.exceptions import UserErrorException

            raise UserErrorException(problem)
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
            captured.append((step.name, Submitted(staged, step._script_name, arguments, variables, compute or "", Shape(),
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


def _v1_shape(distributed: dict | None) -> Shape:
    """Nodes and processes of a v1 run configuration (PyTorchConfiguration counts processes in
    all, MpiConfiguration per node)."""
    from azureml.exceptions import UserErrorException

    if not distributed:
        return Shape()
    nodes = int(distributed.get("node_count") or 1)
    if distributed.get("type") == "MpiConfiguration":
        return Shape(nodes, int(distributed.get("process_count_per_node") or 1), "mpi")
    total = int(distributed.get("process_count") or nodes)
    if total % nodes:
        raise UserErrorException(f"process_count {total} is not a multiple of node_count {nodes}")
    return Shape(nodes, total // nodes, "pytorch")


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


get_simulator = one_instance(Simulator)


register_backend("v1", "simulator", get_simulator)


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
