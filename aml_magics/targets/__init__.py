"""Target registry: adding a target never touches the magic or the views."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import RunEvents, RunHandle, Target, TargetError

TARGET_NAMES = ("local", "docker", "azureml")


def _local(**options: Any) -> Target:
    from .local import LocalTarget

    return LocalTarget(**options)


def _docker(**options: Any) -> Target:
    try:
        import docker  # noqa: F401 - the SDK is an extra
    except ImportError:
        raise TargetError("target 'docker' needs the docker SDK: install aml-magics[docker] "
                          "(pip install 'aml-magics[docker]')") from None
    from .docker import DockerTarget

    return DockerTarget(**options)


def _azureml(**options: Any) -> Target:
    """Lazy: the SDK (azureml-core v1 or azure-ai-ml v2, see azureml.sdk) is imported only when used."""
    from ..azureml.sdk import choose_sdk, v1_options

    if choose_sdk(options.pop("sdk", None)) == "v2":  # missing extras: one line naming them
        from .azureml_v2 import AzureMLV2Target

        return AzureMLV2Target(**options)
    from ..azureml.backend import require_sdk

    options = v1_options(options)
    require_sdk()
    from .azureml import AzureMLTarget

    return AzureMLTarget(**options)


def _not_yet(name: str, extra: str) -> Callable[..., Target]:
    def factory(**options: Any) -> Target:
        raise TargetError(
            f"target '{name}' is not available yet in this version of aml_magics "
            f"(it will need: pip install 'aml-magics[{extra}]'); use --target local"
        )

    return factory


_FACTORIES: dict[str, Callable[..., Target]] = {
    "local": _local,
    "docker": _docker,
    "azureml": _azureml,
}


def register_target(name: str, factory: Callable[..., Target]) -> None:
    _FACTORIES[name] = factory


def make_target(name: str, **options: Any) -> Target:
    try:
        factory = _FACTORIES[name]
    except KeyError:
        known = ", ".join(sorted(_FACTORIES))
        raise TargetError(f"unknown target '{name}' (known: {known})") from None
    return factory(**options)


__all__ = ["RunEvents", "RunHandle", "Target", "TargetError", "make_target", "register_target"]
