"""Target registry: adding a target never touches the magic or the views."""

from __future__ import annotations

from typing import Any, Callable

from .base import RunEvents, RunHandle, Target, TargetError

TARGET_NAMES = ("local", "docker", "azureml")


def _local(**options: Any) -> Target:
    from .local import LocalTarget

    return LocalTarget(**options)


def _not_yet(name: str, extra: str) -> Callable[..., Target]:
    def factory(**options: Any) -> Target:
        raise TargetError(
            f"target '{name}' is not available yet in this version of aml_magics "
            f"(it will need: pip install 'aml-magics[{extra}]'); use --target local"
        )

    return factory


_FACTORIES: dict[str, Callable[..., Target]] = {
    "local": _local,
    "docker": _not_yet("docker", "docker"),
    "azureml": _not_yet("azureml", "azureml"),
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
