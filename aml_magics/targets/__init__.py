"""Target registry: adding a target never touches the magic, the CLI or the views.

A target registers a factory, the options it takes (composed into every parser by
:mod:`..options`) and its capabilities (what the options layer checks before anything
starts). The built-in targets are described here and imported only when used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import TargetError
from ..target_base import Capabilities, Option, RunContext, RunEvents, RunHandle, Target


@dataclass(frozen=True)
class TargetInfo:
    name: str
    factory: Callable[..., Target]
    options: tuple[Option, ...] = ()
    capabilities: Capabilities = field(default_factory=Capabilities)
    listed: bool = True  # offered as --target NAME (a target for deployments only is not)


_REGISTRY: dict[str, TargetInfo] = {}
# Built-in targets whose module registers them when first asked for.
_BUILT_IN = {"local": "aml_magics.targets.local", "docker": "aml_magics.targets.docker",
             "azureml": "aml_magics.targets.azureml"}


def register_target(name: str, factory: Callable[..., Target], *, options: tuple[Option, ...] = (),
                    capabilities: Capabilities | None = None, listed: bool = True) -> None:
    _REGISTRY[name] = TargetInfo(name, factory, tuple(options), capabilities or Capabilities(), listed)


def target_info(name: str) -> TargetInfo:
    if name not in _REGISTRY and name in _BUILT_IN:
        importlib.import_module(_BUILT_IN[name])
    try:
        return _REGISTRY[name]
    except KeyError:
        raise TargetError(f"unknown target '{name}' (known: {', '.join(target_names())})") from None


def target_names() -> list[str]:
    return sorted({*(n for n, i in _REGISTRY.items() if i.listed), *_BUILT_IN})


def all_targets() -> list[TargetInfo]:
    return [target_info(name) for name in target_names()]


def make_target(name: str, **options: Any) -> Target:
    return target_info(name).factory(**options)


__all__ = ["Capabilities", "Option", "RunContext", "RunEvents", "RunHandle", "Target", "TargetError", "TargetInfo",
           "all_targets", "make_target", "register_target", "target_info", "target_names"]
