"""A simulated Azure ML control plane for SDK v2 (azure-ai-ml): an ``MLClient`` stand-in.

Switched on, like the v1 simulator, with ``AML_MAGICS_AZUREML_BACKEND=simulator`` (and
the same ``AML_MAGICS_SIM_*`` settings, see :mod:`.azureml_simulator`). The target's own
backend code (:class:`aml_magics.azureml.v2.service.MLClientBackend`) runs unchanged; only
the client it is handed is this one, with the operations it calls:

- ``compute.get`` / ``compute.list`` (real ``AmlCompute`` entities; unknown names raise
  azure-core's ``ResourceNotFoundError``);
- ``environments.get`` (real ``Environment`` entities: a curated image-only one and a
  conda-file one);
- ``jobs.create_or_update`` takes the real ``command()`` job and executes exactly what it
  holds: its ``code`` folder (captured at submit, as the upload would), its ``command``
  (``python SCRIPT ARGS``), environment variables (unchanged), ``instance_count`` nodes and
  its distribution (``process_count_per_instance`` PyTorch or MPI processes on every node,
  with the variables each launcher sets), on simulated nodes (the v1 simulator's process
  and network machinery: a cluster on a private bridge with ``AML_MAGICS_SIM_NETWORK=bridge``,
  else one node); ``jobs.get``, ``jobs.begin_cancel``,
  ``jobs.show_services`` (the VS Code service's URL once running; the SSH service's status
  and ``ProxyEndpoint``, see :mod:`.simssh`) and the run-history details ``jobs.stream``
  reads (status, ``user_logs/std_log*.txt`` URLs, tags, error);
- ``_credential.get_token`` (what an MLClient holds): the simulated identity's token, the one
  bearer token the simulated workspace proxy lets through.

With ``AML_MAGICS_SIM_AUTH=fail`` the first call fails the way ``DefaultAzureCredential``
does without a login (azure-core's ``ClientAuthenticationError``). What it does not do:
build images (the nodes run this machine's interpreter), authenticate, schedule.
"""

from __future__ import annotations

import itertools
import secrets
import shlex
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backend import one_instance, poll_interval, register_backend
from ..settings import WorkspaceRef
from ..simnet import BridgeCluster
from ..simulator import (
    Shape,
    SimNode,
    SimRun,
    SimWorkspace,
    Submitted,
    _capture,
    _debugpy_notes,
    _env,
    compute_names,
    get_simulator,
    shape_error,
    sim_root,
)
from .job import DEFAULT_IMAGE, dockerfile_packages, pip_list
from .service import MLClientBackend
from .simssh import JobSsh, WorkspaceProxy

# name → (version, image, conda file or None); image-only is what curated environments are
ENVIRONMENTS: dict[str, tuple[str, str, dict | None]] = {
    "AzureML-sklearn-1.5": ("1", "mcr.microsoft.com/azureml/curated/sklearn-1.5:1", None),
    "team-conda-env": ("2", DEFAULT_IMAGE, {"name": "team", "channels": ["conda-forge"],
                                            "dependencies": ["python=3.11", "pip", {"pip": ["pandas"]}]}),
}
RUNNING = {"Running", "Finalizing"}
_ids = itertools.count(1)


def _auth_check() -> None:
    if _env("AML_MAGICS_SIM_AUTH") == "fail":
        from azure.core.exceptions import ClientAuthenticationError

        raise ClientAuthenticationError("(simulated) DefaultAzureCredential failed to retrieve a token from the "
                                        "included credentials.\nAttempted credentials: EnvironmentCredential ...")


def _not_found(what: str) -> Exception:
    from azure.core.exceptions import ResourceNotFoundError

    return ResourceNotFoundError(f"(ResourceNotFound) {what}")


# -- jobs -------------------------------------------------------------------------------


class SimJobRun(SimRun):
    """A command job on a simulated node: the v1 machinery, logs under ``user_logs/``."""

    def __init__(self, *args: Any, distribution: str | None = None, services: dict | None = None,
                 proxy: WorkspaceProxy | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.layout = "user_logs"  # SDK v2 jobs write user_logs/std_log*.txt
        self.distribution = distribution
        self.services = dict(services or {})
        self.command: str = ""
        self.proxy = proxy
        self.ssh: JobSsh | None = None

    def service_url(self, service: str, node: int) -> str:
        return f"https://{self.id.replace('_', '-')}-{node}.{service.replace('_', '-')}.simulated.invalid/"

    def ssh_services(self) -> dict[str, Any]:
        return {k: v for k, v in self.services.items() if getattr(v, "type", None) == "ssh"}

    def _nodes_up(self, nodes: list[SimNode], cluster: BridgeCluster | None) -> None:
        """The job's SSH service: sshd on its nodes (every node with ``nodes="all"``), behind the proxy."""
        services = self.ssh_services()
        if not services or self.proxy is None:
            return
        keys = "\n".join(str(getattr(s, "ssh_public_keys", "") or "") for s in services.values())
        every = any(getattr(s, "nodes", None) == "all" for s in services.values())
        chosen = nodes if every else nodes[:1]
        ssh = JobSsh(self.id, self.dir / "ssh", keys)
        if cluster is not None:  # elsewhere the service fails (a one-line reason): no node address to serve
            self.proxy.start().jobs[self.id] = ssh
        self.ssh = ssh
        ssh.start([(n.index, n.address or "", cluster.proxy_address if cluster else None) for n in chosen],
                  {n.index: n.prefix for n in chosen})

    def _nodes_down(self) -> None:
        ssh, self.ssh = self.ssh, None
        if ssh is not None:
            ssh.stop()
            if self.proxy is not None:
                self.proxy.jobs.pop(self.id, None)

    def service_instances(self, node_index: int) -> dict[str, Any]:
        """``show_services``: each service's instance on one node."""
        from azure.ai.ml.entities import ServiceInstance

        instances = {}
        for key, service in self.services.items():
            if getattr(service, "type", None) != "ssh":
                instances[key] = ServiceInstance(type="VSCode", status="Running",
                                                 endpoint=self.service_url(key, node_index))
                continue
            ssh = self.ssh
            node = ssh.nodes.get(node_index) if ssh is not None else None
            if node is None:
                status, error = ("Starting", None) if ssh is None else ("Failed", f"no SSH service on node {node_index}")
            else:
                status, error = node.status, node.error
            endpoint = self.proxy.endpoint(self.id) if self.proxy is not None else None
            instances[key] = ServiceInstance(type="SSH", status=status, error=error, port=22,
                                             properties={"ProxyEndpoint": endpoint} if endpoint else {})
        return instances


@dataclass
class SimJob:
    """What ``jobs.get`` returns: the attributes of azure-ai-ml's Job the client reads."""

    name: str
    display_name: str
    experiment_name: str
    status: str
    compute: str
    studio_url: str
    tags: dict[str, str] = field(default_factory=dict)
    services: dict[str, Any] = field(default_factory=dict)
    type: str = "command"


class _Poller:
    """An LROPoller's face for ``begin_cancel``."""

    def __init__(self, thread: threading.Thread) -> None:
        self._thread = thread

    def wait(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def result(self, timeout: float | None = None) -> None:
        self.wait(timeout)

    def done(self) -> bool:
        return not self._thread.is_alive()

    def status(self) -> str:
        return "Succeeded" if self.done() else "InProgress"


class _RunOperations:
    """The run-history details ``jobs.stream`` reads (a real ``RunDetails`` model)."""

    def __init__(self, client: SimMLClient) -> None:
        self.client = client

    def get_run_details(self, name: str) -> Any:
        from azure.ai.ml._restclient.runhistory.models import RootError, RunDetails, RunHistoryErrorResponse

        _auth_check()
        run = self.client.simulator.get_run(name)
        details = run.get_details()
        error = None
        message = ((details.get("error") or {}).get("error") or {}).get("message")
        if message:
            error = RunHistoryErrorResponse(error=RootError(code="UserError", message=message))
        return RunDetails(run_id=run.id, status=details["status"], log_files=details["logFiles"],
                          tags=run.get_tags(), target=details.get("target"), error=error)


class _Jobs:
    def __init__(self, client: SimMLClient) -> None:
        self.client = client
        self._runs_operations = _RunOperations(client)

    def create_or_update(self, job: Any, *, experiment_name: str | None = None, **kwargs: Any) -> SimJob:
        _auth_check()
        return self.client.simulator.submit(self.client, job, experiment_name)

    def get(self, name: str) -> SimJob:
        _auth_check()
        return self.client.simulator.job_view(name)

    def begin_cancel(self, name: str, **kwargs: Any) -> _Poller:
        _auth_check()
        run = self.client.simulator.get_run(name)
        thread = threading.Thread(target=run.cancel, daemon=True, name=f"aml-sim-cancel-{name}")
        thread.start()
        return _Poller(thread)

    def download(self, name: str, download_path: str | Path = ".", output_name: str | None = None,
                 all: bool = False) -> None:  # noqa: A002 - azure-ai-ml's own keyword
        """As ``jobs.download``: the job's default outputs land in ``download_path/artifacts/outputs``
        (read from the service's store on disk: a job of an earlier session is found too)."""
        import shutil

        from azure.core.exceptions import ResourceNotFoundError

        _auth_check()
        run_dir = sim_root() / "runs" / name
        if not run_dir.is_dir():
            raise ResourceNotFoundError(f"Job {name!r} not found (simulated Azure ML)")
        outputs = run_dir / "outputs"
        dest = Path(download_path) / "artifacts" / "outputs"
        dest.mkdir(parents=True, exist_ok=True)
        if outputs.is_dir():
            shutil.copytree(outputs, dest, dirs_exist_ok=True)

    def show_services(self, name: str, node_index: int = 0) -> dict[str, Any] | None:
        _auth_check()
        run = self.client.simulator.get_run(name)
        if run.get_status() not in RUNNING or not run.services:
            return None
        return run.service_instances(node_index)


class _Computes:
    def __init__(self, client: SimMLClient) -> None:
        self.client = client

    def get(self, name: str) -> Any:
        from azure.ai.ml.entities import AmlCompute

        _auth_check()
        if name not in compute_names():
            raise _not_found(f"Compute {name} was not found in workspace {self.client.workspace_name}")
        return AmlCompute(name=name, size="STANDARD_DS3_V2", max_instances=4)

    def list(self) -> list:
        from azure.ai.ml.entities import AmlCompute

        _auth_check()
        return [AmlCompute(name=n, size="STANDARD_DS3_V2", max_instances=4) for n in sorted(compute_names())]


class _Environments:
    def __init__(self, client: SimMLClient) -> None:
        self.client = client

    def get(self, name: str, version: str | None = None, label: str | None = None) -> Any:
        from azure.ai.ml.entities import Environment

        _auth_check()
        known = ENVIRONMENTS.get(name)
        if known is None or (version and version != known[0]):
            raise _not_found(f"Environment {name}{':' + version if version else ''} was not found in workspace "
                             f"{self.client.workspace_name}")
        env_version, image, conda = known
        return Environment(name=name, version=env_version, image=image, conda_file=conda)


class _SimCredential:
    """The credential an MLClient holds (``_credential``): the simulated identity's tokens."""

    def __init__(self, simulator: SimV2Backend) -> None:
        self.simulator = simulator

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        _auth_check()
        if _env("AML_MAGICS_SIM_TOKEN") == "stale":  # an expired login's token: the proxy answers 401
            return AccessToken("stale-" + self.simulator.token[:8], int(time.time()) - 60)
        return AccessToken(self.simulator.token, int(time.time()) + 3600)


class SimMLClient:
    """The ``MLClient`` surface the v2 backend uses; constructing it contacts nothing (as MLClient)."""

    def __init__(self, simulator: SimV2Backend, ref: WorkspaceRef) -> None:
        self.simulator = simulator
        self._credential = _SimCredential(simulator)
        self.subscription_id = ref.subscription_id or "sim-subscription"
        self.resource_group_name = ref.resource_group
        self.workspace_name = ref.workspace_name
        self.jobs = _Jobs(self)
        self.compute = _Computes(self)
        self.environments = _Environments(self)


# -- the backend --------------------------------------------------------------------------


class SimV2Backend(MLClientBackend):
    """The v2 backend with a simulated client: every call the target makes is the real backend's."""

    name = "simulator-v2"
    simulated = True
    label = "simulated Azure ML (SDK v2)"

    def __init__(self) -> None:
        super().__init__()
        self.runs: dict[str, SimJobRun] = {}
        self._runs_lock = threading.Lock()
        self.token = secrets.token_urlsafe(32)  # the simulated identity's bearer token
        self.proxy = WorkspaceProxy(self.token)  # started with the first job that has an SSH service

    @property
    def detail(self) -> str:  # type: ignore[override]
        return get_simulator().detail

    @property
    def poll_seconds(self) -> float:
        return poll_interval(0.25)

    def open_workspace(self, ref: WorkspaceRef) -> Any:
        if ref.config_path is None and not ref.subscription_id:
            return super().open_workspace(ref)  # the same one-line error
        return SimMLClient(self, ref)

    # -- the service side ----------------------------------------------------------------
    def get_run(self, name: str) -> SimJobRun:
        with self._runs_lock:
            run = self.runs.get(name)
        if run is None:
            raise _not_found(f"Job {name} was not found")
        return run

    def submit(self, client: SimMLClient, job: Any, experiment_name: str | None) -> SimJob:
        if getattr(job, "type", None) != "command":
            raise ValueError(f"the simulator runs command jobs only, not {getattr(job, 'type', type(job).__name__)}")
        compute = str(job.compute or "").removeprefix("azureml:")
        if compute not in compute_names():
            raise _not_found(f"Compute {compute or '(none)'} was not found in workspace {client.workspace_name}")
        argv = shlex.split(job.command or "")
        if len(argv) < 2 or argv[0] not in ("python", "python3"):
            raise ValueError(f"the simulator runs 'python SCRIPT ARGS' commands only, not {job.command!r}")
        instances = (job.resources.instance_count if job.resources is not None else None) or 1
        problem = shape_error(instances, "instance_count")
        if problem:
            raise ValueError(problem)
        distribution = job.distribution
        processes = getattr(distribution, "process_count_per_instance", None) or 1
        kind = getattr(distribution, "type", None)
        shape = Shape(instances, int(processes), kind if kind in ("pytorch", "mpi") else None)
        code = job.code
        if not code or not Path(str(code)).is_dir():
            raise ValueError(f"the simulator needs the job's code as a local folder, not {code!r}")
        name = job.name or f"sim_job_{next(_ids)}_{uuid.uuid4().hex[:8]}"
        staged = _capture(str(code), sim_root() / "snapshots" / name)
        packages = _environment_packages(job.environment)
        submitted = Submitted(staged, argv[1], argv[2:], {str(k): str(v) for k, v in
                                                          (job.environment_variables or {}).items()},
                              compute, shape, _debugpy_notes(packages, False), packages)
        experiment = experiment_name or job.experiment_name or "Default"
        workspace = SimWorkspace(client.workspace_name, client.resource_group_name, client.subscription_id)
        run = SimJobRun(get_simulator(), workspace, experiment, name, submitted, dict(job.tags or {}),
                        name=job.display_name or name, distribution=kind,
                        services=dict(job.services or {}), proxy=self.proxy)
        run.command = job.command
        with self._runs_lock:
            self.runs[name] = run
        run.start()
        return self.job_view(name)

    def job_view(self, name: str) -> SimJob:
        from azure.ai.ml.entities import SshJobService, VsCodeJobService

        run = self.get_run(name)
        status = run.get_status()
        services: dict[str, Any] = {}
        for key, service in run.services.items():
            if getattr(service, "type", None) == "ssh":
                services[key] = SshJobService(ssh_public_keys=service.ssh_public_keys, nodes=service.nodes)
                continue
            url = run.service_url(key, 0) if status in RUNNING else None
            services[key] = VsCodeJobService(endpoint=url, status="Running" if url else None)
        return SimJob(name=run.id, display_name=run.name, experiment_name=run.experiment, status=status,
                      compute=run.submitted.compute if run.submitted else "",
                      studio_url=f"{run.dir.as_uri()} (simulated Azure ML: no studio)", tags=run.get_tags(),
                      services=services)

    def cancel_all(self) -> None:
        for run in list(self.runs.values()):
            run.cancel()


def _environment_packages(environment: Any) -> list[str]:
    """The pip packages the job's environment declares (conda file or Docker build)."""
    if isinstance(environment, str):
        name = environment.removeprefix("azureml:").split(":")[0].split("@")[0]
        known = ENVIRONMENTS.get(name)
        return pip_list(known[2]) if known and known[2] else []
    conda = getattr(environment, "conda_file", None)
    if isinstance(conda, dict):
        return pip_list(conda)
    build = getattr(environment, "build", None)
    if build is not None and getattr(build, "path", None):
        dockerfile = Path(build.path) / (getattr(build, "dockerfile_path", None) or "Dockerfile")
        if dockerfile.is_file():
            return dockerfile_packages(dockerfile.read_text())
    return []


get_v2_simulator = one_instance(SimV2Backend)


register_backend("v2", "simulator", get_v2_simulator)
