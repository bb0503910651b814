"""The ``azureml`` target with SDK v2 (azure-ai-ml): the run is a ``command()`` job.

Same options and flow as the v1 target (:mod:`.azureml`, whose :class:`AzureMLTargetBase`
this one shares): settings and every check before anything is submitted, each failure
one line; the job runs the bootstrap with the user's script after ``--``; the endpoint
comes back through the job's ``user_logs/std_log*.txt``. The control plane is an
``MLClient`` or, with ``AML_MAGICS_AZUREML_BACKEND=simulator``,
:mod:`aml_magics.azureml.v2.simulator`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..azureml.sdk import require_v2
from ..azureml.v2.job import VSCODE_SERVICE, JobSubmission, build_job
from ..azureml.v2.monitor import JobMonitor
from ..azureml.v2.routes import CONNECT_MODES, JobRoutes
from ..azureml.v2.service import JobRun, get_v2_backend
from ..invocation import RunSecrets
from ..protocol import MarkerReader
from ..spec import RunSpec
from ..sshproxy import SshKeyPair
from ..target_base import RunContext, TargetError
from .azureml import AzureMLTargetBase


class AzureMLV2Target(AzureMLTargetBase):
    sdk = "v2"
    label = "Azure ML (SDK v2 command job)"
    simulated_label = "simulated Azure ML, SDK v2"
    backend_label = "Azure ML (SDK v2)"
    simulated_backend_label = "simulated Azure ML (SDK v2)"
    run_id_label = "job"
    page_label = "job page"

    def __init__(self, compute: str | None = None, experiment: str | None = None,
                 workspace_config: str | None = None, environment: str | None = None,
                 subscription: str | None = None, resource_group: str | None = None, workspace: str | None = None,
                 vscode_service: bool | None = None, distribution: str | None = None, connect: str | None = None,
                 backend: Any = None, cwd: Path | None = None) -> None:
        require_v2()
        super().__init__(backend or get_v2_backend(), compute, experiment, workspace_config, environment,
                         subscription, resource_group, workspace, cwd)
        self.vscode_service = bool(vscode_service)
        self.distribution = distribution
        self.connect = connect or "auto"
        if self.connect not in CONNECT_MODES:
            raise TargetError(f"--connect {connect!r}: expected auto, direct or proxy")
        self.client: Any = None
        self.ssh_key: SshKeyPair | None = None  # this run's, when the job carries the SSH service

    def _wants_ssh(self, spec: RunSpec) -> bool:
        """The job carries the SSH service: a debugged, tunnelled run whose route may be the proxy."""
        if self.connect == "direct" or not spec.debug.enabled:
            return False
        if not spec.debug.secure:
            if self.connect == "proxy":
                raise TargetError("--connect proxy carries the authenticated tunnel; it cannot be used with --insecure")
            return False
        return True

    def check(self, spec: RunSpec) -> None:
        self._wants_ssh(spec)  # a refused combination, before the service is asked anything
        super().check(spec)

    def _described(self, spec: RunSpec, cell: str | None) -> dict:
        """The job as azure-ai-ml would submit it."""
        registered = None
        notes = []
        if self.environment_choice is not None:
            name, version = self.environment_choice
            registered = _reference(name, version)
            notes.append(f"registered environment {self._environment_label()} is read at submit (a dry run contacts "
                         "no service); debugpy is added to it then (to its conda file, or by a Docker build FROM its "
                         "image)")
        key = SshKeyPair.new() if self._wants_ssh(spec) else None  # a dry run's own: its public half is shown
        submission = build_job(spec, self.compute or "", self.experiment or "", registered=registered,
                               script_text=cell, vscode_service=self.vscode_service, distribution=self.distribution,
                               tags=self._tags(), ssh_public_key=key.public if key else None)
        try:
            described = submission.describe()
        finally:
            submission.cleanup()
        if registered is not None:  # what the stand-in led to says nothing about the real environment
            described["notes"] = [n for n in described["notes"] if n not in submission.environment.notes]
            described["environment"]["kind"] = "registered, read at submit"
        notes.append("code: a snapshot of the source dir plus the bootstrap, made at submit (this one is deleted)")
        described["notes"] = notes + described["notes"]
        return described

    def _check_service(self) -> None:
        """The workspace (credentials), the compute and a registered environment."""
        assert self.workspace_ref is not None and self.compute is not None
        self.client = self.backend.open_workspace(self.workspace_ref)
        self.backend.check_compute(self.client, self.compute, self.workspace_ref.workspace_name)
        if self.environment_choice is not None:
            env_name, version = self.environment_choice
            self.registered = self.backend.get_environment(self.client, env_name, version)

    def _build(self, spec: RunSpec, secrets: RunSecrets) -> JobSubmission:
        self.ssh_key = SshKeyPair.new() if self._wants_ssh(spec) and secrets.tunnel is not None else None
        return build_job(spec, self.compute or "", self.experiment or "", registered=self.registered,
                         registered_name=self._environment_label(), vscode_service=self.vscode_service,
                         distribution=self.distribution, tags=self._tags(), secrets=secrets,
                         ssh_public_key=self.ssh_key.public if self.ssh_key else None)

    def _send(self, submission: JobSubmission) -> JobRun:
        job = self.backend.create_job(self.client, submission.job, self.experiment or "")
        return JobRun(self.backend, self.client, job)

    def _follow(self, spec: RunSpec, run: Any, ctx: RunContext) -> JobMonitor:
        services = (VSCODE_SERVICE,) if self.vscode_service else ()
        routes = None
        if self.ssh_key is not None:
            routes = JobRoutes(self.backend, self.client, run.id, self.ssh_key, self.connect,
                               spec.distributed.placement, ctx.events.line)
            ctx.scope.callback(routes.close)
        monitor = JobMonitor(self.backend, run, ctx.events, reader=MarkerReader(ctx.secrets.marker_key),
                             scope=ctx.scope, services=services, nodes=spec.distributed.nodes,
                             description=self.description, routes=routes)
        monitor.start()
        return monitor


def _reference(name: str, version: str | None) -> Any:
    """A dry run's stand-in for a registered environment (no service is asked what it holds)."""
    from azure.ai.ml.entities import Environment

    return Environment(name=name, version=version or "latest", image=f"<image of {name}, read at submit>")
