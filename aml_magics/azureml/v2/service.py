"""The SDK v2 control plane: an ``MLClient``, or the simulator's stand-in with its surface.

Everything the target asks goes through :class:`MLClientBackend`, whose methods call
only what an ``MLClient`` offers: ``compute.get``/``list``, ``environments.get``,
``jobs.create_or_update``/``get``/``begin_cancel``/``show_services``, and the run-history
details ``jobs.stream`` itself reads (status and the SAS URLs of ``user_logs/std_log*.txt``;
``jobs.stream`` backs off to a minute between polls, too slow for an attach window, and
``jobs.download`` waits for the end). The simulator
(:mod:`aml_magics.azureml.v2.simulator`) hands this same class its own client.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from ...errors import TargetError
from ..backend import (
    DEFAULT_POLL,
    AzureMLService,
    backend_for,
    one_instance,
    poll_interval,
    read_file_uri,
    service_errors,
)
from ..settings import WorkspaceRef
from .job import quiet_sdk


class MLClientBackend:
    """The real Azure ML service through azure-ai-ml (``DefaultAzureCredential``)."""

    name = "azureml-v2"
    simulated = False
    label = "Azure ML (SDK v2)"
    detail = ""

    def __init__(self) -> None:
        self._clients: dict[WorkspaceRef, Any] = {}
        self._lock = threading.Lock()
        self._http: AzureMLService | None = None

    @property
    def poll_seconds(self) -> float:
        return poll_interval(DEFAULT_POLL)

    # -- workspace ---------------------------------------------------------------------
    def open_workspace(self, ref: WorkspaceRef) -> Any:
        """An MLClient for the workspace, once per kernel; contacts nothing yet."""
        with self._lock:
            cached = self._clients.get(ref)
        if cached is not None:
            return cached
        if ref.config_path is None and not ref.subscription_id:
            raise TargetError(f"workspace {ref.workspace_name} ({ref.source}): its subscription is not known; give "
                              "--subscription/--resource-group/--workspace or a config.json (--workspace-config)")
        client = self._new_client(ref)
        with self._lock:
            self._clients[ref] = client
        return client

    def credential(self) -> Any:
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential()

    def _new_client(self, ref: WorkspaceRef) -> Any:
        from azure.ai.ml import MLClient

        with service_errors(f"open workspace {ref.workspace_name}"), quiet_sdk():
            credential = self.credential()
            # show_progress=False: no tqdm bar per upload (a big snapshot gets a line of ours, snapshot_notes)
            if ref.config_path is not None:  # MLClient.from_config(): the same config.json the lookup found
                return MLClient.from_config(credential=credential, path=str(ref.config_path), show_progress=False)
            return MLClient(credential=credential, subscription_id=ref.subscription_id,
                            resource_group_name=ref.resource_group, workspace_name=ref.workspace_name,
                            show_progress=False)

    # -- checks ------------------------------------------------------------------------
    def check_compute(self, client: Any, name: str, workspace: str) -> Any:
        """``compute.get``; not found → one line listing the workspace's computes."""
        from azure.core.exceptions import ResourceNotFoundError

        with service_errors(f"get compute {name} of workspace {workspace}"):
            try:
                return client.compute.get(name)
            except ResourceNotFoundError:
                pass
        try:
            known = ", ".join(sorted(c.name for c in client.compute.list())) or "none"
        except Exception:
            known = "could not be listed"
        raise TargetError(f"compute {name!r} not found in workspace {workspace} (computes: {known})")

    def get_environment(self, client: Any, name: str, version: str | None) -> Any:
        with service_errors(f"get environment {name}{':' + version if version else ''}"):
            if version:
                return client.environments.get(name, version=version)
            return client.environments.get(name, label="latest")

    # -- jobs --------------------------------------------------------------------------
    def create_job(self, client: Any, job: Any, experiment: str) -> Any:
        with service_errors(f"submit the job to experiment {experiment}"), quiet_sdk():
            return client.jobs.create_or_update(job, experiment_name=experiment)

    def job_details(self, client: Any, name: str) -> dict:
        """Status, log files (name → URL), tags and error of a job, as the v1 monitor reads them."""
        try:
            runs = client.jobs._runs_operations  # what jobs.stream() reads: run history, with log URLs
        except AttributeError:
            runs = None
        if runs is None:
            job = client.jobs.get(name)
            return {"status": job.status, "logFiles": {}, "tags": dict(job.tags or {})}
        details = runs.get_run_details(name)
        result: dict[str, Any] = {"status": details.status, "logFiles": dict(details.log_files or {}),
                                  "tags": dict(details.tags or {})}
        error = getattr(details, "error", None)
        message = getattr(getattr(error, "error", None), "message", None)
        if message:
            result["error"] = {"error": {"message": message}}
        return result

    def cancel(self, client: Any, name: str) -> None:
        poller = client.jobs.begin_cancel(name)
        try:
            poller.wait(10)  # the service acknowledges; the monitor sees Canceled
        except Exception:
            pass

    def download_outputs(self, client: Any, name: str, dest: Path) -> None:
        """The job's outputs (``./outputs`` of its nodes, uploaded with the job) into ``dest``."""
        client.jobs.download(name, download_path=str(dest), all=True)

    def service_endpoints(self, client: Any, name: str, node_index: int = 0) -> dict[str, str]:
        """The job's interactive services on one node: service name → URL (once running)."""
        instances = client.jobs.show_services(name, node_index)
        return {key: value.endpoint for key, value in (instances or {}).items() if getattr(value, "endpoint", None)}

    def ssh_service(self, client: Any, name: str, node_index: int) -> tuple[str | None, str | None, str | None]:
        """(status, ProxyEndpoint, error) of the job's first SSH service on one node, as
        ``az ml job connect-ssh`` picks it; (None, None, None) while the job lists none."""
        instances = client.jobs.show_services(name, node_index) or {}
        ssh = next((i for i in instances.values() if str(getattr(i, "type", "") or "").upper() == "SSH"), None)
        if ssh is None:
            return None, None, None
        return ssh.status, (ssh.properties or {}).get("ProxyEndpoint"), getattr(ssh, "error", None)

    def access_token(self, client: Any) -> str:
        """A token for the workspace proxy, from the credential the MLClient uses."""
        from ...sshproxy import ARM_SCOPE as PROXY_SCOPE

        credential = getattr(client, "_credential", None) or self.credential()
        return credential.get_token(PROXY_SCOPE).token

    def studio_url(self, job: Any) -> str | None:
        return getattr(job, "studio_url", None)

    def read(self, uri: str, offset: int) -> bytes:
        if uri.startswith("file:"):
            return read_file_uri(uri, offset)
        if self._http is None:
            self._http = AzureMLService()  # its ranged HTTP read of a log blob's SAS URL
        return self._http.read(uri, offset)


class JobRun:
    """One submitted job, with the Run surface RunMonitor follows (get_details, get_tags, cancel)."""

    def __init__(self, backend: MLClientBackend, client: Any, job: Any) -> None:
        self.backend = backend
        self.client = client
        self.job = job
        self.id = job.name
        self._details: dict = {}

    def get_details(self) -> dict:
        self._details = self.backend.job_details(self.client, self.id)
        return self._details

    def get_tags(self) -> dict:
        return dict(self._details.get("tags") or {})

    def cancel(self) -> None:
        self.backend.cancel(self.client, self.id)

    def get_portal_url(self) -> str | None:
        return self.backend.studio_url(self.job)

    def service_endpoints(self, node_index: int = 0) -> dict[str, str]:
        return self.backend.service_endpoints(self.client, self.id, node_index)


_service = one_instance(MLClientBackend)


def get_v2_backend() -> Any:
    """The v2 control plane chosen by ``AML_MAGICS_AZUREML_BACKEND`` (default: the real service)."""
    return backend_for("v2", _service)
