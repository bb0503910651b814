"""Which Azure ML SDK the ``azureml`` target submits with: v1 (azureml-core) or v2 (azure-ai-ml).

Stdlib only: whether a library is installed is found without importing it, so loading
the extension never imports either SDK.

- ``--sdk v1|v2``, else ``%config AmlDebugMagics.azureml_sdk``, else ``AML_MAGICS_AZUREML_SDK``;
- else the one SDK that is installed; with both, v2 (azureml-core, SDK v1, reached end of support
  on 2026-06-30; ``--sdk v1`` still selects it);
- with none, one line naming both extras.
"""

from __future__ import annotations

import importlib.util
import os

from ..errors import TargetError
from ..install import install_command, needs
from .backend import missing_extra

SDK_ENV = "AML_MAGICS_AZUREML_SDK"
SDKS = ("v1", "v2")
V1_MODULES = ("azureml.core",)
V2_MODULES = ("azure.ai.ml", "azure.identity")  # azure-ai-ml does not bring azure-identity itself

def missing_v2() -> str:
    return needs("--sdk v2 needs azure-ai-ml and azure-identity", "azureml-v2")


def missing_both() -> str:
    return (f"target 'azureml' needs an Azure ML SDK: {install_command('azureml-v2')} (azure-ai-ml, SDK v2) "
            f"or {install_command('azureml')} (azureml-core, SDK v1)")


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (its parents may be)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError, AttributeError):
        return False


def available() -> dict[str, bool]:
    return {"v1": all(map(installed, V1_MODULES)), "v2": all(map(installed, V2_MODULES))}


def choose_sdk(option: str | None = None) -> str:
    """``v1`` or ``v2``, or TargetError with one line."""
    value = option or os.environ.get(SDK_ENV, "").strip() or None
    have = available()
    if value:
        sdk = str(value).strip().lower()
        if sdk in ("1", "2"):
            sdk = "v" + sdk
        if sdk not in SDKS:
            raise TargetError(f"--sdk {value!r}: expected v1 (azureml-core) or v2 (azure-ai-ml)")
        if not have[sdk]:
            raise TargetError(missing_extra() if sdk == "v1" else missing_v2())
        return sdk
    if have["v2"]:
        return "v2"
    if have["v1"]:
        return "v1"
    raise TargetError(missing_both())


def require_v2() -> None:
    if not available()["v2"]:
        raise TargetError(missing_v2())


def v1_options(options: dict) -> dict:
    """The options for the v1 target: v2-only ones refused with one line."""
    options = dict(options)
    distribution = options.pop("distribution", None)
    if distribution not in (None, "pytorch"):
        raise TargetError(f"--distribution {distribution} needs --sdk v2 (SDK v1 runs use PyTorchConfiguration)")
    if options.pop("vscode_service", None):
        raise TargetError("--vscode-service needs --sdk v2 (interactive job services are an azure-ai-ml feature)")
    if options.pop("connect", None) == "proxy":
        raise TargetError("--connect proxy needs --sdk v2: SDK v1 runs have no job services, so no SSH service "
                          "to reach the node through the workspace proxy")
    return options
