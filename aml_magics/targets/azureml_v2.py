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
from ..azureml.v2.service import JobRun, get_v2_backend
from ..invocation import RunSecrets
from ..protocol import MarkerReader
from ..spec import RunSpec
from ..target_base import RunContext
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
                 vscode_service: bool | None = None, distribution: str | None = None,
                 backend: Any = None, cwd: Path | None = None) -> None:
        require_v2()
        super().__init__(backend or get_v2_backend(), compute, experiment, workspace_config, environment,
                         subscription, resource_group, workspace, cwd)
        self.vscode_service = bool(vscode_service)
        self.distribution = distribution
        self.client: Any = None

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
        submission = build_job(spec, self.compute or "", self.experiment or "", registered=registered,
                               script_text=cell, vscode_service=self.vscode_service, distribution=self.distribution,
                               tags=self._tags())
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
        return build_job(spec, self.compute or "", self.experiment or "", registered=self.registered,
                         registered_name=self._environment_label(), vscode_service=self.vscode_service,
                         distribution=self.distribution, tags=self._tags(), secrets=secrets)

    def _send(self, submission: JobSubmission) -> JobRun:
        job = self.backend.create_job(self.client, submission.job, self.experiment or "")
        return JobRun(self.backend, self.client, job)

    def _follow(self, spec: RunSpec, run: Any, ctx: RunContext) -> JobMonitor:
        services = (VSCODE_SERVICE,) if self.vscode_service else ()
        monitor = JobMonitor(self.backend, run, ctx.events, reader=MarkerReader(ctx.secrets.marker_key),
                             scope=ctx.scope, services=services, nodes=spec.distributed.nodes,
                             description=self.description)
        monitor.start()
        return monitor


def _reference(name: str, version: str | None) -> Any:
    """A dry run's stand-in for a registered environment (no service is asked what it holds)."""
    from azure.ai.ml.entities import Environment

    return Environment(name=name, version=version or "latest", image=f"<image of {name}, read at submit>")
