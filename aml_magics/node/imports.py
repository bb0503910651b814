"""Patching a module when it is first imported, by anyone: a meta path finder in front of the others.

The node changes what two modules do inside a run — ``debugpy`` (the user's own calls cooperate
with the run's debugger, :mod:`.shim`) and ``torch.distributed`` (collective timeouts,
:mod:`.collectives`) — without importing either itself: a run that never imports them pays
nothing, and the module the user gets is the real one, patched once it has run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class PatchingLoader:
    """The module's own loader, plus the patch once the module has run."""

    def __init__(self, loader, patch: Callable[[object], None]) -> None:
        self._loader, self._patch = loader, patch

    def create_module(self, spec):
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        self._patch(module)

    def __getattr__(self, name: str) -> object:
        return getattr(self._loader, name)


class PatchOnImport:
    """A meta path finder: ``import NAME`` (the first, by anyone) yields the patched module."""

    def __init__(self, name: str, patch: Callable[[object], None]) -> None:
        self._name = name
        self._patch = patch

    def find_spec(self, name: str, path=None, target=None):
        if name != self._name:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = PatchingLoader(spec.loader, self._patch)
                return spec
        return None


def patch_on_import(name: str, patch: Callable[[object], None]) -> None:
    """``patch(module)`` once ``name`` is imported (at once when it already is)."""
    if name in sys.modules:
        patch(sys.modules[name])
    sys.meta_path.insert(0, PatchOnImport(name, patch))
