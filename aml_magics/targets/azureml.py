"""The ``azureml`` target: a remote Azure Machine Learning run (azureml-core, SDK v1).

The cell or script is submitted as a ScriptRunConfig whose entry script is the bootstrap
(the user's script and its arguments follow ``--`` untouched), in an Environment with
debugpy added; on the node the bootstrap binds the node's own private address. The
endpoint comes back through the run's logs (both layouts) or a run tag. The control
plane is the real service or, with ``AML_MAGICS_AZUREML_BACKEND=simulator``, the
simulator in :mod:`aml_magics.testing.azureml_simulator`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import __version__
from ..azureml import settings
from ..azureml.backend import get_backend, require_sdk, service_errors
from ..azureml.monitor import RunMonitor
from ..azureml.submission import Submission, build_submission
from ..spec import RunSpec
from .base import RunEvents, TargetError


class AzureMLTarget:
    name = "azureml"

    def __init__(self, compute: str | None = None, experiment: str | None = None,
                 workspace_config: str | None = None, environment: str | None = None,
                 subscription: str | None = None, resource_group: str | None = None, workspace: str | None = None,
                 backend: Any = None, cwd: Path | None = None) -> None:
        require_sdk()
        self.backend = backend or get_backend()
        self.compute_option = compute
        self.experiment_option = experiment
        self.workspace_config_option = workspace_config
        self.environment_option = environment
        self.explicit = (subscription, resource_group, workspace)
        self.cwd = cwd
        self.compute: str | None = None
        self.experiment: str | None = None
        self.workspace_ref: settings.WorkspaceRef | None = None
        self.workspace: Any = None
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
            return f"simulated Azure ML ({detail}): {where}" if detail else f"simulated Azure ML: {where}"
        return f"Azure ML: {where}"

    # -- offline part -------------------------------------------------------------------
    def _settings(self) -> None:
        """Everything decided without the service (and the first errors)."""
        self.compute = settings.choose_compute(self.compute_option)
        self.experiment = settings.choose_experiment(self.experiment_option)
        self.environment_choice = settings.parse_environment(self.environment_option)
        explicit = settings.explicit_workspace(*self.explicit)  # Workspace.get(name, subscription, group)
        config = self.workspace_config_option if explicit is not None \
            else settings.choose_workspace_config(self.workspace_config_option)
        self.workspace_ref = settings.locate_workspace(config, self.cwd, explicit=explicit)

    def plan(self, spec: RunSpec, cell: str | None = None) -> dict:
        """``--dry-run``: what would be submitted, built offline; nothing is contacted or written."""
        self._settings()
        registered = None
        registered_name = None
        notes = []
        if self.environment_choice is not None:
            registered_name = ":".join(filter(None, self.environment_choice))
            registered = _placeholder_environment(self.environment_choice[0])
            notes.append(f"registered environment {registered_name} is read at submit (a dry run contacts no "
                         "service): its own packages are not listed, debugpy is added to them")
        if cell is None and not spec.script_path.is_file():
            raise TargetError(f"script not found: {spec.script_path}")
        submission = build_submission(spec, self.compute or "", self.experiment or "", registered=registered,
                                      registered_name=registered_name, script_text=cell)
        try:
            described = submission.describe()
        finally:
            submission.cleanup()
        described["notes"] = notes + described["notes"]
        return {
            "target": self.name,
            "backend": "simulated Azure ML" if getattr(self.backend, "simulated", False) else "Azure ML",
            "workspace": self.workspace_ref.to_dict() if self.workspace_ref else None,
            "run_name": spec.name,
            **described,
            "submitted": False,
        }

    # -- Target -------------------------------------------------------------------------
    def check(self, spec: RunSpec) -> None:
        """Settings, then the workspace, the compute and a registered environment: all
        before anything is submitted, each failure one line."""
        if not spec.script_path.is_file():
            raise TargetError(f"script not found: {spec.script_path}")
        self._settings()
        assert self.workspace_ref is not None
        name = self.workspace_ref.workspace_name
        with service_errors(f"open workspace {name}"):
            self.workspace = self.backend.open_workspace(self.workspace_ref)
        with service_errors(f"list the computes of workspace {name}"):
            computes = self.backend.compute_names(self.workspace)
        if self.compute not in computes:
            known = ", ".join(computes) or "none"
            raise TargetError(f"compute {self.compute!r} not found in workspace "
                              f"{self.workspace_ref.workspace_name} (computes: {known})")
        if self.environment_choice is not None:
            env_name, version = self.environment_choice
            with service_errors(f"get environment {env_name}{':' + version if version else ''}"):
                self.registered = self.backend.get_environment(self.workspace, env_name, version)
        self._checked = spec

    def submit(self, spec: RunSpec, events: RunEvents) -> RunMonitor:
        if self._checked != spec:
            self.check(spec)
        submission = self._build(spec)
        try:
            for note in submission.notes:
                events.line(f"aml_magics: {note}")
            with service_errors(f"submit to experiment {self.experiment}"):
                run = self.backend.submit_run(self.workspace, self.experiment, submission.config, self._tags())
        finally:
            submission.cleanup()
        events.line(f"aml_magics: submitted {self.description}; run id {run.id}")
        try:
            url = run.get_portal_url()
        except Exception:
            url = None
        if url:
            events.line(f"aml_magics: run page: {url}")
        events.state("queued")
        return RunMonitor(self.backend, run, events).start()

    def _build(self, spec: RunSpec) -> Submission:
        registered_name = ":".join(filter(None, self.environment_choice)) if self.environment_choice else None
        return build_submission(spec, self.compute or "", self.experiment or "", registered=self.registered,
                                registered_name=registered_name)

    @staticmethod
    def _tags() -> dict[str, str]:
        return {"aml_magics": __version__, "aml_magics.debug": "true"}


def _placeholder_environment(name: str) -> Any:
    from azureml.core import Environment
    from azureml.core.conda_dependencies import CondaDependencies

    environment = Environment(name)
    environment.python.conda_dependencies = CondaDependencies.create()
    return environment

