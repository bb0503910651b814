"""The ``azureml`` target with SDK v2 (azure-ai-ml): the run is a ``command()`` job.

Same options and flow as the v1 target (:mod:`.azureml`): settings and every check
before anything is submitted, each failure one line; the job runs the bootstrap with the
user's script after ``--``; the endpoint comes back through the job's
``user_logs/std_log*.txt``. The control plane is an ``MLClient`` or, with
``AML_MAGICS_AZUREML_BACKEND=simulator``, :mod:`aml_magics.testing.azureml_v2_simulator`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import __version__
from ..azureml import settings
from ..azureml.sdk import require_v2
from ..azureml.v2.job import VSCODE_SERVICE, JobSubmission, build_job
from ..azureml.v2.monitor import JobMonitor
from ..azureml.v2.service import JobRun, get_v2_backend
from ..spec import RunSpec
from .base import RunEvents, TargetError


class AzureMLV2Target:
    name = "azureml"
    sdk = "v2"

    def __init__(self, compute: str | None = None, experiment: str | None = None,
                 workspace_config: str | None = None, environment: str | None = None,
                 subscription: str | None = None, resource_group: str | None = None, workspace: str | None = None,
                 vscode_service: bool | None = None, distribution: str | None = None,
                 backend: Any = None, cwd: Path | None = None) -> None:
        require_v2()
        self.backend = backend or get_v2_backend()
        self.compute_option = compute
        self.experiment_option = experiment
        self.workspace_config_option = workspace_config
        self.environment_option = environment
        self.explicit = (subscription, resource_group, workspace)
        self.vscode_service = bool(vscode_service)
        self.distribution = distribution
        self.cwd = cwd
        self.compute: str | None = None
        self.experiment: str | None = None
        self.workspace_ref: settings.WorkspaceRef | None = None
        self.client: Any = None
        self.registered: Any = None
        self.environment_choice: tuple[str, str | None] | None = None
        self._checked: RunSpec | None = None

    # -- what the views show ------------------------------------------------------------
    @property
    def description(self) -> str:
        where = f"experiment {self.experiment or '?'} on compute {self.compute or '?'}"
        if self.workspace_ref is not None:
            where = f"workspace {self.workspace_ref.workspace_name}, {where}"
        if getattr(self.backend, "simulated", False):
            detail = getattr(self.backend, "detail", "")
            label = f"simulated Azure ML, SDK v2 ({detail})" if detail else "simulated Azure ML, SDK v2"
            return f"{label}: {where}"
        return f"Azure ML (SDK v2 command job): {where}"

    # -- offline part -------------------------------------------------------------------
    def _settings(self) -> None:
        self.compute = settings.choose_compute(self.compute_option)
        self.experiment = settings.choose_experiment(self.experiment_option)
        self.environment_choice = settings.parse_environment(self.environment_option)
        explicit = settings.explicit_workspace(*self.explicit)
        config = self.workspace_config_option if explicit is not None \
            else settings.choose_workspace_config(self.workspace_config_option)
        self.workspace_ref = settings.locate_workspace(config, self.cwd, explicit=explicit)

    def plan(self, spec: RunSpec, cell: str | None = None) -> dict:
        """``--dry-run``: the job as azure-ai-ml would submit it; nothing is contacted or written."""
        self._settings()
        if cell is None and not spec.script_path.is_file():
            raise TargetError(f"script not found: {spec.script_path}")
        registered = None
        notes = []
        if self.environment_choice is not None:
            name, version = self.environment_choice
            registered = _reference(name, version)
            notes.append(f"registered environment {':'.join(filter(None, self.environment_choice))} is read at "
                         "submit (a dry run contacts no service); debugpy is added to it then (to its conda file, "
                         "or by a Docker build FROM its image)")
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
        return {
            "target": self.name,
            "backend": "simulated Azure ML (SDK v2)" if getattr(self.backend, "simulated", False)
            else "Azure ML (SDK v2)",
            "workspace": self.workspace_ref.to_dict() if self.workspace_ref else None,
            "run_name": spec.name,
            **described,
            "submitted": False,
        }

    # -- Target -------------------------------------------------------------------------
    def check(self, spec: RunSpec) -> None:
        """Settings, the workspace (credentials), the compute and a registered environment:
        all before anything is submitted, each failure one line."""
        if not spec.script_path.is_file():
            raise TargetError(f"script not found: {spec.script_path}")
        self._settings()
        assert self.workspace_ref is not None and self.compute is not None
        name = self.workspace_ref.workspace_name
        self.client = self.backend.open_workspace(self.workspace_ref)
        self.backend.check_compute(self.client, self.compute, name)
        if self.environment_choice is not None:
            env_name, version = self.environment_choice
            self.registered = self.backend.get_environment(self.client, env_name, version)
        self._checked = spec

    def submit(self, spec: RunSpec, events: RunEvents) -> JobMonitor:
        if self._checked != spec:
            self.check(spec)
        submission = self._build(spec)
        try:
            for note in submission.notes:
                events.line(f"aml_magics: {note}")
            job = self.backend.create_job(self.client, submission.job, self.experiment or "")
        finally:
            submission.cleanup()
        run = JobRun(self.backend, self.client, job)
        events.line(f"aml_magics: submitted {self.description}; job {run.id}")
        try:
            url = run.get_portal_url()
        except Exception:
            url = None
        if url:
            events.line(f"aml_magics: job page: {url}")
        events.state("queued")
        services = (VSCODE_SERVICE,) if self.vscode_service else ()
        monitor = JobMonitor(self.backend, run, events, services=services, nodes=spec.distributed.nodes,
                             description=self.description)
        monitor.start()
        return monitor

    def _build(self, spec: RunSpec) -> JobSubmission:
        label = ":".join(filter(None, self.environment_choice)) if self.environment_choice else None
        return build_job(spec, self.compute or "", self.experiment or "", registered=self.registered,
                         registered_name=label, vscode_service=self.vscode_service, distribution=self.distribution,
                         tags=self._tags())

    @staticmethod
    def _tags() -> dict[str, str]:
        return {"aml_magics": __version__, "aml_magics.debug": "true"}


def _reference(name: str, version: str | None) -> Any:
    """A dry run's stand-in for a registered environment (no service is asked what it holds)."""
    from azure.ai.ml.entities import Environment

    return Environment(name=name, version=version or "latest", image=f"<image of {name}, read at submit>")
