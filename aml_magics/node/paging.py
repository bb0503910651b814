"""pydevd answering a ``variables`` request's ``start`` / ``count`` (the DAP's paging).

debugpy sends every child of a reference whatever ``start`` and ``count`` ask, each with its repr,
type and variables reference computed: a frame with 400 names costs ~4 ms a stop where a client
shows 100 (the panel pages every scope by 100). Patched here, in the run's own pydevd, the
children are listed and sorted exactly as before and only the asked slice is rendered and sent;
a request without ``count`` (VS Code's) is answered as before. Owner-side clients already take
either answer (``aml_magics.dap.service._page``).

Only the in-process pydevd of this run is patched, once, and only if it looks as expected: any
other debugpy is left alone (it then sends everything, as it always did).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_MARK = "_aml_magics_paged"


def honour_paging() -> bool:
    """Make pydevd's ``variables`` answer honour ``start`` / ``count``; False if it cannot be done."""
    try:
        from _pydevd_bundle import pydevd_api
    except ImportError:
        return False
    original = getattr(pydevd_api, "internal_get_variable_json", None)
    if not callable(original):
        return False
    if getattr(original, _MARK, False):
        return True
    pydevd_api.internal_get_variable_json = _paged(original)
    return True


def _paged(original: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def internal_get_variable_json(py_db: Any, request: Any) -> Any:
        found = _window(py_db, request)
        if found is None:
            return original(py_db, request)
        variable, window = found
        whole = variable.get_children_variables

        def children(fmt: Any = None, scope: Any = None) -> list:
            return list(whole(fmt=fmt, scope=scope))[window]

        variable.get_children_variables = children  # this answer only (requests run one at a time)
        try:
            return original(py_db, request)
        finally:
            variable.__dict__.pop("get_children_variables", None)

    setattr(internal_get_variable_json, _MARK, True)
    return internal_get_variable_json


def _window(py_db: Any, request: Any) -> tuple[Any, slice] | None:
    """The variable a request with a ``count`` asks about, and the slice it asks for."""
    arguments = getattr(request, "arguments", None)
    count = getattr(arguments, "count", None)
    start = getattr(arguments, "start", None) or 0
    if not isinstance(count, int) or count <= 0 or not isinstance(start, int) or start < 0:
        return None
    reference = getattr(arguments, "variablesReference", None)
    reference = getattr(reference, "variable_reference", reference)  # a scope's ScopeRequest
    try:
        variable = py_db.suspended_frames_manager.get_variable(reference)
    except Exception:  # unknown reference: pydevd answers it as it always does
        return None
    if not hasattr(variable, "__dict__") or not callable(getattr(variable, "get_children_variables", None)):
        return None
    return variable, slice(start, start + count)
