"""Where an Azure ML run goes: workspace, compute, experiment, environment.

Stdlib only (no azureml import): the workspace is *located* here (a config file, or a
compute instance's own identity) but opened by a backend. Every mistake is a TargetError
with one line, raised before anything is submitted.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TargetError

CONFIG_DIRS = (".azureml", "aml_config", None)  # the order Workspace.from_config() searches
CONFIG_FILES = ("config.json", "project.json")
NBVM_FILE = Path("/mnt/azmnt/.nbvm")
DEFAULT_EXPERIMENT = "aml-magics-debug"
_EXPERIMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,254}$")
_COMPUTE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,31}$")
_ENV_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")


@dataclass(frozen=True)
class WorkspaceRef:
    """A workspace located without contacting the service."""

    workspace_name: str
    resource_group: str | None
    subscription_id: str | None  # None: found by name among the subscriptions the login sees
    config_path: Path | None = None
    source: str = ""  # how it was found, for messages and --dry-run

    def to_dict(self) -> dict:
        return {
            "workspace_name": self.workspace_name,
            "resource_group": self.resource_group,
            "subscription_id": self.subscription_id,
            "config": str(self.config_path) if self.config_path else None,
            "found_by": self.source,
        }


SIMULATED_WORKSPACE = WorkspaceRef("simulated-workspace", "simulated-resource-group",
                                   "00000000-0000-0000-0000-000000000000", None,
                                   "a simulated workspace (AML_MAGICS_AZUREML_BACKEND=simulator, no config.json found)")


# -- compute instance -------------------------------------------------------------------


def compute_instance() -> dict[str, str]:
    """The compute instance this kernel runs on, if any: name, resource group, workspace."""
    info: dict[str, str] = {}
    try:
        if NBVM_FILE.is_file():
            for line in NBVM_FILE.read_text(errors="replace").splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    info[key.strip()] = value.strip().strip("'\"")
    except OSError:
        pass
    result = {
        "name": os.environ.get("CI_NAME") or info.get("instance", ""),
        "resource_group": os.environ.get("CI_RESOURCE_GROUP", ""),
        "workspace": os.environ.get("CI_WORKSPACE", ""),
    }
    return {k: v for k, v in result.items() if v}


# -- workspace --------------------------------------------------------------------------


def _read_config(path: Path, how: str) -> WorkspaceRef:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise TargetError(f"cannot read workspace config {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise TargetError(f"workspace config {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise TargetError(f"workspace config {path} must be a JSON object")
    scope = data.get("Scope")
    sub: Any
    group: Any
    name: Any
    if isinstance(scope, str) and scope.count("/") >= 8:
        pieces = scope.split("/")
        sub, group, name = pieces[2], pieces[4], pieces[8]
    else:
        sub, group, name = data.get("subscription_id"), data.get("resource_group"), data.get("workspace_name")
    missing = [k for k, v in (("subscription_id", sub), ("resource_group", group), ("workspace_name", name)) if not v]
    if missing:
        raise TargetError(f"workspace config {path} lacks {', '.join(missing)} "
                          "(download config.json from the Azure ML studio: workspace name, top right)")
    return WorkspaceRef(str(name), str(group), str(sub), path, how)


def _search_up(start: Path) -> Path | None:
    """Workspace.from_config()'s search: .azureml/, aml_config/, the directory itself, walking up."""
    start = start.resolve()
    for directory in CONFIG_DIRS:
        for filename in CONFIG_FILES:
            for folder in (start, *start.parents):
                candidate = folder / directory / filename if directory else folder / filename
                if candidate.is_file():
                    return candidate
    return None


_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def explicit_workspace(subscription: str | None, resource_group: str | None,
                       workspace: str | None) -> WorkspaceRef | None:
    """``--subscription/--resource-group/--workspace``: all three or none (None)."""
    given = {"--subscription": subscription, "--resource-group": resource_group, "--workspace": workspace}
    if not any(given.values()):
        return None
    missing = [flag for flag, value in given.items() if not value]
    if missing:
        raise TargetError(f"--subscription, --resource-group and --workspace go together (missing: {', '.join(missing)})")
    assert subscription and resource_group and workspace
    if not _GUID.match(subscription):
        raise TargetError(f"--subscription {subscription!r} is not a subscription id (a GUID such as "
                          "00000000-0000-0000-0000-000000000000)")
    return WorkspaceRef(workspace, resource_group, subscription, None,
                        "--subscription/--resource-group/--workspace")


def locate_workspace(workspace_config: str | os.PathLike | None, cwd: Path | None = None,
                     explicit: WorkspaceRef | None = None) -> WorkspaceRef:
    """``--subscription/--resource-group/--workspace`` (``explicit``), else ``--workspace-config
    PATH`` (a file or a folder to search from), else the config file Workspace.from_config()
    (and MLClient.from_config(), the same search) would find from ``cwd``, else this compute
    instance's workspace."""
    cwd = cwd or Path.cwd()
    if explicit is not None:
        if workspace_config:
            raise TargetError("give either --workspace-config or --subscription/--resource-group/--workspace, not both")
        return explicit
    if workspace_config:
        given = Path(workspace_config).expanduser()
        given = given if given.is_absolute() else cwd / given
        if given.is_file():
            return _read_config(given, "--workspace-config")
        if given.is_dir():
            found = _search_up(given)
            if found is None:
                raise TargetError(f"--workspace-config {given}: no config.json in it, its .azureml/ or aml_config/ "
                                  "folders, or above")
            return _read_config(found, "--workspace-config search")
        raise TargetError(f"--workspace-config {given}: no such file or directory")
    found = _search_up(cwd)
    if found is not None:
        return _read_config(found, "Workspace.from_config() search")
    ci = compute_instance()
    if ci.get("workspace") and ci.get("resource_group"):
        return WorkspaceRef(ci["workspace"], ci["resource_group"], None, None,
                            f"compute instance {ci.get('name', '?')} (CI_WORKSPACE/CI_RESOURCE_GROUP)")
    from .backend import chosen_backend

    if chosen_backend() == "simulator":  # the simulator needs no real workspace: one of its own, said so
        return SIMULATED_WORKSPACE
    raise TargetError(f"no Azure ML workspace config: none in .azureml/, aml_config/ or the folder itself, from {cwd} "
                      "up; give --workspace-config PATH (config.json from the Azure ML studio)")


# -- compute, experiment, environment ----------------------------------------------------------


def choose_compute(compute: str | None) -> str:
    name = compute or os.environ.get("AML_MAGICS_COMPUTE") or compute_instance().get("name")
    if not name:
        raise TargetError("--compute NAME is required for --target azureml "
                          "(or set a default: %config AmlDebugMagics.compute = 'NAME')")
    if not _COMPUTE.match(name):
        raise TargetError(f"--compute {name!r} is not a valid compute name (2-32 letters, digits, '-')")
    return name


def default_experiment() -> str:
    """The notebook's name where Jupyter tells it, else a fixed name."""
    session = os.environ.get("JPY_SESSION_NAME", "")
    if session:
        stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(session).stem).strip("-_")
        if stem and _EXPERIMENT.match(stem):
            return stem
    return DEFAULT_EXPERIMENT


def choose_experiment(experiment: str | None) -> str:
    name = experiment or os.environ.get("AML_MAGICS_EXPERIMENT") or default_experiment()
    if not _EXPERIMENT.match(name):
        raise TargetError(f"--experiment {name!r}: use letters, digits, '-' or '_' (start with a letter or digit)")
    return name


def choose_workspace_config(workspace_config: str | None) -> str | None:
    return workspace_config or os.environ.get("AML_MAGICS_WORKSPACE_CONFIG")


def parse_environment(text: str | None) -> tuple[str, str | None] | None:
    """``--environment NAME[:VERSION]`` → (name, version or None for the latest)."""
    if not text:
        return None
    name, _, version = text.partition(":")
    if not _ENV_NAME.match(name) or (version and not re.match(r"^[A-Za-z0-9_.-]+$", version)):
        raise TargetError(f"--environment {text!r}: expected NAME or NAME:VERSION of an Azure ML environment")
    return name, version or None
