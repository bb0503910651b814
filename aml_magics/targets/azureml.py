"""The ``azureml`` target: a remote Azure Machine Learning run (azureml-core, SDK v1).

The cell or script is submitted as a ScriptRunConfig whose entry script is the bootstrap
(the user's script and its arguments follow ``--`` untouched), in an Environment with
debugpy added; on the node the bootstrap binds the node's own private address. The
endpoint comes back through the run's logs (both layouts) or a run tag. The control
plane is the real service or, with ``AML_MAGICS_AZUREML_BACKEND=simulator``, the
simulator in :mod:`aml_magics.azureml.simulator`.

:class:`AzureMLTargetBase` is what this target and the SDK v2 one (:mod:`.azureml_v2`)
share: the options, the settings decided offline, the order of the checks and of a
submission, and the words the views show.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from .._version import __version__
from ..azureml import settings
from ..azureml.backend import get_backend, require_sdk, service_errors
from ..azureml.monitor import RunMonitor
from ..azureml.submission import Submission, build_submission
from ..invocation import RunSecrets
from ..protocol import MarkerReader, RunState
from ..spec import RunSpec
from ..target_base import Capabilities, RunContext, TargetError, option
from . import register_target


class AzureMLTargetBase:
    """The flow both SDKs' targets follow; a subclass brings the service calls
    (``_check_service``, ``_described``, ``_build``, ``_send``, ``_follow``) and its words."""

    name = "azureml"
    capabilities: ClassVar[Capabilities] = Capabilities(dry_run=True)
    label = "Azure ML"  # the description's, for the real service and the simulator
    simulated_label = "simulated Azure ML"
    backend_label = "Azure ML"  # a dry run's "backend"
    simulated_backend_label = "simulated Azure ML"
    run_id_label = "run id"  # "submitted ...; run id X"
    page_label = "run page"  # "run page: URL"

    def __init__(self, backend: Any, compute: str | None, experiment: str | None, workspace_config: str | None,
                 environment: str | None, subscription: str | None, resource_group: str | None,
                 workspace: str | None, cwd: Path | None) -> None:
        self.backend = backend
        self.compute_option = compute
        self.experiment_option = experiment
        self.workspace_config_option = workspace_config
        self.environment_option = environment
        self.explicit = (subscription, resource_group, workspace)
        self.cwd = cwd
        self.compute: str | None = None
        self.experiment: str | None = None
        self.workspace_ref: settings.WorkspaceRef | None = None
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
            label = f"{self.simulated_label} ({detail})" if detail else self.simulated_label
        else:
            label = self.label
        return f"{label}: {where}"

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

    def _environment_label(self) -> str | None:
        """``NAME`` or ``NAME:VERSION`` of ``--environment``, None without one."""
        return ":".join(filter(None, self.environment_choice)) if self.environment_choice else None

    def plan(self, spec: RunSpec, cell: str | None = None) -> dict:
        """``--dry-run``: what would be submitted, built offline; nothing is contacted or written."""
        self._settings()
        if cell is None and not spec.script_path.is_file():
            raise TargetError(f"script not found: {spec.script_path}")
        described = self._described(spec, cell)
        simulated = getattr(self.backend, "simulated", False)
        return {
            "target": self.name,
            "backend": self.simulated_backend_label if simulated else self.backend_label,
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
        self._check_service()
        self._checked = spec

    def submit(self, spec: RunSpec, ctx: RunContext) -> RunMonitor:
        if self._checked != spec:
            self.check(spec)
        events = ctx.events
        if self.workspace_ref == settings.SIMULATED_WORKSPACE:
            events.line(f"aml_magics: using {self.workspace_ref.source}: workspace {self.workspace_ref.workspace_name}")
        submission = self._build(spec, ctx.secrets)
        try:
            for note in submission.notes:
                events.line(f"aml_magics: {note}")
            run = self._send(submission)
        finally:
            submission.cleanup()
        events.line(f"aml_magics: submitted {self.description}; {self.run_id_label} {run.id}")
        try:
            url = run.get_portal_url()
        except Exception:
            url = None
        if url:
            events.line(f"aml_magics: {self.page_label}: {url}")
        events.state(RunState.QUEUED)
        return self._follow(spec, run, ctx)

    @staticmethod
    def _tags() -> dict[str, str]:
        return {"aml_magics": __version__, "aml_magics.debug": "true"}

    # -- what each SDK does ---------------------------------------------------------------
    def _check_service(self) -> None:
        raise NotImplementedError

    def _described(self, spec: RunSpec, cell: str | None) -> dict:
        """The dry run's submission, described (everything built is deleted again)."""
        raise NotImplementedError

    def _build(self, spec: RunSpec, secrets: RunSecrets) -> Any:
        raise NotImplementedError

    def _send(self, submission: Any) -> Any:
        """Submit; the run (with ``id`` and ``get_portal_url``)."""
        raise NotImplementedError

    def _follow(self, spec: RunSpec, run: Any, ctx: RunContext) -> RunMonitor:
        raise NotImplementedError


class AzureMLTarget(AzureMLTargetBase):
    def __init__(self, compute: str | None = None, experiment: str | None = None,
                 workspace_config: str | None = None, environment: str | None = None,
                 subscription: str | None = None, resource_group: str | None = None, workspace: str | None = None,
                 backend: Any = None, cwd: Path | None = None) -> None:
        require_sdk()
        super().__init__(backend or get_backend(), compute, experiment, workspace_config, environment,
                         subscription, resource_group, workspace, cwd)
        self.workspace: Any = None

    def _described(self, spec: RunSpec, cell: str | None) -> dict:
        registered = None
        notes = []
        if self.environment_choice is not None:
            registered = _placeholder_environment(self.environment_choice[0])
            notes.append(f"registered environment {self._environment_label()} is read at submit (a dry run contacts "
                         "no service): its own packages are not listed, debugpy is added to them")
        submission = build_submission(spec, self.compute or "", self.experiment or "", registered=registered,
                                      registered_name=self._environment_label(), script_text=cell)
        try:
            described = submission.describe()
        finally:
            submission.cleanup()
        described["notes"] = notes + described["notes"]
        return described

    def _check_service(self) -> None:
        assert self.workspace_ref is not None
        name = self.workspace_ref.workspace_name
        with service_errors(f"open workspace {name}"):
            self.workspace = self.backend.open_workspace(self.workspace_ref)
        with service_errors(f"list the computes of workspace {name}"):
            computes = self.backend.compute_names(self.workspace)
        if self.compute not in computes:
            known = ", ".join(computes) or "none"
            raise TargetError(f"compute {self.compute!r} not found in workspace {name} (computes: {known})")
        if self.environment_choice is not None:
            env_name, version = self.environment_choice
            with service_errors(f"get environment {env_name}{':' + version if version else ''}"):
                self.registered = self.backend.get_environment(self.workspace, env_name, version)

    def _build(self, spec: RunSpec, secrets: RunSecrets) -> Submission:
        return build_submission(spec, self.compute or "", self.experiment or "", registered=self.registered,
                                registered_name=self._environment_label(), secrets=secrets)

    def _send(self, submission: Submission) -> Any:
        with service_errors(f"submit to experiment {self.experiment}"):
            return self.backend.submit_run(self.workspace, self.experiment, submission.config, self._tags())

    def _follow(self, spec: RunSpec, run: Any, ctx: RunContext) -> RunMonitor:
        return RunMonitor(self.backend, run, ctx.events, reader=MarkerReader(ctx.secrets.marker_key),
                          scope=ctx.scope).start()


def _placeholder_environment(name: str) -> Any:
    from azureml.core import Environment
    from azureml.core.conda_dependencies import CondaDependencies

    environment = Environment(name)
    environment.python.conda_dependencies = CondaDependencies.create()
    return environment


OPTIONS = (
    option("--compute", default=None, config="compute", help="azureml: compute target name (default: %%config, or this compute instance)"),
    option("--experiment", default=None, config="experiment", help="azureml: experiment name (default: the notebook's name)"),
    option("--workspace-config", default=None, config="workspace_config",
           help="azureml: workspace config.json, or a folder to search (default: Workspace.from_config() lookup)"),
    option("--environment", default=None, metavar="NAME[:VERSION]",
           help="azureml: an existing/curated Azure ML environment to use, with debugpy added"),
    option("--sdk", choices=("v1", "v2"), default=None, config="azureml_sdk",
           help="azureml: submit with azureml-core (v1) or azure-ai-ml (v2); default: %%config "
                "AmlDebugMagics.azureml_sdk, else the one installed (v2 when both are)"),
    option("--subscription", default=None, help="azureml: subscription id (with --resource-group, --workspace)"),
    option("--resource-group", default=None, help="azureml: resource group of the workspace"),
    option("--workspace", default=None, help="azureml: workspace name (instead of a config.json)"),
    option("--vscode-service", action="store_true", default=None,
           help="azureml v2: add a VS Code job service (reach the node from outside its network)"),
    option("--distribution", choices=("pytorch", "mpi"), default=None,
           help="azureml v2: launcher of a distributed job (--nodes/--procs-per-node; default pytorch)"),
    option("--connect", choices=("auto", "direct", "proxy"), default=None, config="connect",
           help="azureml: how this machine reaches the node's debug relay: direct (its address: the same virtual "
                "network), proxy (v2: the job's SSH service through the workspace proxy), auto (default: direct "
                "if the address answers within 3 s, else the proxy)"),
)


def _factory(**options: Any) -> AzureMLTargetBase:
    """Lazy: the SDK (azureml-core v1 or azure-ai-ml v2, see azureml.sdk) is imported only when used."""
    from ..azureml.sdk import choose_sdk, v1_options

    if choose_sdk(options.pop("sdk", None)) == "v2":  # missing extras: one line naming them
        from .azureml_v2 import AzureMLV2Target

        return AzureMLV2Target(**options)
    options = v1_options(options)
    require_sdk()
    return AzureMLTarget(**options)


register_target("azureml", _factory, options=OPTIONS, capabilities=AzureMLTargetBase.capabilities)
