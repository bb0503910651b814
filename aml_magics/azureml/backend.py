"""The control plane: the Azure ML service (azureml-core, SDK v1), or its simulator.

Everything the azureml target asks of the service goes through one of these objects:
open a workspace, list its computes, fetch a registered environment, submit a
ScriptRunConfig or a pipeline, read a log file. The run objects they return are the
SDK's own (``Run``/``PipelineRun``) or the simulator's stand-ins with the same methods.
``AML_MAGICS_AZUREML_BACKEND=simulator`` selects the simulator, for the CLI, notebooks
and tests alike.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

from ..errors import TargetError
from ..install import needs
from .settings import WorkspaceRef

T = TypeVar("T")
BACKEND_ENV = "AML_MAGICS_AZUREML_BACKEND"
POLL_ENV = "AML_MAGICS_AZUREML_POLL_SECONDS"
DEFAULT_POLL = 2.0  # the SDK's own streaming backs off 2 s → 60 s: too slow for an attach window
def missing_extra() -> str:
    return needs("target 'azureml' needs azureml-core", "azureml")


def missing_pipeline_extra() -> str:
    return needs("pipelines need azureml-pipeline-steps", "azureml")


def require_sdk(pipelines: bool = False) -> None:
    """One clear line when the extra is missing."""
    try:
        import azureml.core  # noqa: F401
    except ImportError:
        raise TargetError(missing_extra()) from None
    if pipelines:
        try:
            import azureml.pipeline.steps  # noqa: F401
        except ImportError:
            raise TargetError(missing_pipeline_extra()) from None


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", "") or exc).strip()
    for line in text.splitlines():
        line = line.strip().strip("{}").strip()
        if line:
            return line[:300]
    return type(exc).__name__


@contextlib.contextmanager
def service_errors(action: str) -> Iterator[None]:
    """SDK and HTTP exceptions → one TargetError line naming what was being done."""
    try:
        yield
    except TargetError:
        raise
    except Exception as exc:
        kind = type(exc).__name__
        if "Authentication" in kind or "ClientAuthentication" in kind or "Credential" in kind:
            raise TargetError(f"Azure ML: authentication failed while trying to {action}: {first_line(exc)} "
                              "(sign in with `az login`, or use a service principal)") from None
        raise TargetError(f"Azure ML: could not {action}: {first_line(exc)}") from None


def poll_interval(default: float) -> float:
    try:
        value = float(os.environ.get(POLL_ENV, ""))
    except ValueError:
        return default
    return value if value > 0 else default


class AzureMLService:
    """The real Azure ML service, through azureml-core."""

    name = "azureml"
    simulated = False
    label = "Azure ML"

    def __init__(self) -> None:
        self._workspaces: dict[WorkspaceRef, Any] = {}
        self._lock = threading.Lock()
        self._session: Any = None

    @property
    def poll_seconds(self) -> float:
        return poll_interval(DEFAULT_POLL)

    def open_workspace(self, ref: WorkspaceRef) -> Any:
        """Workspace.from_config() (or Workspace.get on a compute instance), once per kernel."""
        with self._lock:
            cached = self._workspaces.get(ref)
        if cached is not None:
            return cached
        from azureml.core import Workspace

        with service_errors(f"open workspace {ref.workspace_name}"):
            if ref.config_path is not None:
                workspace = Workspace.from_config(path=str(ref.config_path))
            else:
                workspace = Workspace.get(name=ref.workspace_name, subscription_id=ref.subscription_id,
                                          resource_group=ref.resource_group)
        with self._lock:
            self._workspaces[ref] = workspace
        return workspace

    def compute_names(self, workspace: Any) -> list[str]:
        with service_errors(f"list the computes of workspace {workspace.name}"):
            return sorted(workspace.compute_targets)

    def get_environment(self, workspace: Any, name: str, version: str | None) -> Any:
        from azureml.core import Environment

        with service_errors(f"get environment {name}{':' + version if version else ''}"):
            return Environment.get(workspace, name, version=version)

    def submit_run(self, workspace: Any, experiment: str, config: Any, tags: dict[str, str]) -> Any:
        from azureml.core import Experiment

        with service_errors(f"submit to experiment {experiment}"):
            return Experiment(workspace, experiment).submit(config, tags=tags)

    def submit_pipeline(self, workspace: Any, experiment: str, steps: list, parameters: dict | None,
                        description: str, tags: dict[str, str]) -> Any:
        from azureml.core import Experiment
        from azureml.pipeline.core import Pipeline

        with service_errors(f"submit the pipeline to experiment {experiment}"):
            pipeline = Pipeline(workspace, steps=steps, description=description)
            return Experiment(workspace, experiment).submit(pipeline, pipeline_parameters=parameters or None,
                                                            regenerate_outputs=False, tags=tags)

    def read(self, uri: str, offset: int) -> bytes:
        """The bytes of a run's log file from ``offset`` on (an HTTP range read of the blob)."""
        if uri.startswith("file:"):
            return read_file_uri(uri, offset)
        import requests

        if self._session is None:
            self._session = requests.Session()
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = self._session.get(uri, headers=headers, timeout=30)
        if response.status_code in (404, 416):
            return b""
        response.raise_for_status()
        content = response.content
        return content if response.status_code == 206 or not offset else content[offset:]


def read_file_uri(uri: str, offset: int) -> bytes:
    path = Path(unquote(urlparse(uri).path))
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read()
    except FileNotFoundError:
        return b""


# The control planes, by SDK and name: "service" (the real one) and whatever registers itself
# (the simulator does, in :mod:`.simulator` and :mod:`.v2.simulator`). A name maps to a factory,
# or to the module that registers it when imported.
_BACKENDS: dict[tuple[str, str], Any] = {
    ("v1", "simulator"): "aml_magics.azureml.simulator",
    ("v2", "simulator"): "aml_magics.azureml.v2.simulator",
}
_backends_lock = threading.Lock()


def one_instance(factory: Callable[[], T]) -> Callable[[], T]:
    """A getter that makes ``factory()`` on its first call (once, whichever thread asks first) and
    returns that same object ever after: a control plane per process, made only when used."""
    made: list[T] = []
    lock = threading.Lock()

    def get() -> T:
        with lock:
            if not made:
                made.append(factory())
            return made[0]

    return get


def register_backend(sdk: str, name: str, factory: Any) -> None:
    """Make a control plane available as ``AML_MAGICS_AZUREML_BACKEND=<name>`` for ``sdk``."""
    with _backends_lock:
        _BACKENDS[(sdk, name)] = factory


def chosen_backend() -> str:
    """The name ``AML_MAGICS_AZUREML_BACKEND`` asks for: "service" (the default) or a registered one."""
    choice = os.environ.get(BACKEND_ENV, "").strip().lower()
    if choice in ("", "azureml", "service", "real"):
        return "service"
    if choice in ("sim", "simulated"):
        return "simulator"
    known = sorted({name for _, name in _BACKENDS})
    if choice not in known:
        names = " or ".join(repr(name) for name in known)
        raise TargetError(f"{BACKEND_ENV}={choice!r}: expected {names}, or nothing (the real service)")
    return choice


def backend_for(sdk: str, service: Any) -> Any:
    """The control plane for ``sdk``: ``service()`` for the real one, else a registered one."""
    name = chosen_backend()
    if name == "service":
        return service()
    with _backends_lock:
        factory = _BACKENDS.get((sdk, name))
    if isinstance(factory, str):
        import importlib

        importlib.import_module(factory)  # registers itself
        with _backends_lock:
            factory = _BACKENDS.get((sdk, name))
    if not callable(factory):
        raise TargetError(f"{BACKEND_ENV}={name!r} has no control plane for SDK {sdk}")
    return factory()


_service = one_instance(AzureMLService)


def get_backend() -> Any:
    """The v1 control plane chosen by ``AML_MAGICS_AZUREML_BACKEND`` (default: the real service)."""
    return backend_for("v1", _service)
