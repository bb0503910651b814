"""pydevd answering a ``variables`` request's ``start`` / ``count`` (the DAP's paging).

debugpy sends every child of a reference whatever ``start`` and ``count`` ask, each with its repr,
type and variables reference computed: a frame with 400 names costs ~4 ms a stop where a client
shows 100 (the panel pages every scope by 100). Patched here, in the run's own pydevd, the
children come in the same order as before and only the asked slice is made, rendered and sent;
a request without ``count`` (VS Code's) is answered as before. Owner-side clients already take
either answer (``aml_magics.dap.service._page``).

The names not sent still cost their listing: pydevd sorts them and sorts functions, classes
and dunders into groups, asking ``inspect`` of every value (0.6 ms for 400 ints), and makes
one variable object per name. A value of an exact builtin data type with a plain name is never
in any group, so that answer is given without asking (the same answer: :func:`_quick_scope`);
a frame's objects are made for the asked slice only (:func:`_frame_children`).

Only the in-process pydevd of this run is patched, once, and only if it looks as expected: any
other debugpy is left alone (it then sends everything, as it always did).
"""

from __future__ import annotations

import sys
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
    _quicken_scopes()
    return True


# values whose type is exactly one of these are no routine, method wrapper or class
_DATA_TYPES = frozenset((int, float, complex, bool, str, bytes, type(None), list, tuple, dict, set, frozenset))


def _quicken_scopes() -> None:
    try:
        from _pydevd_bundle import pydevd_suspended_frames as frames
    except ImportError:
        return
    original = getattr(frames, "get_var_scope", None)
    if callable(original) and not getattr(original, _MARK, False):
        frames.get_var_scope = _quick_scope(original)


def _quick_scope(original: Callable[..., str]) -> Callable[..., str]:
    """pydevd's get_var_scope, answering "" (no group) at once where it would after its checks: a
    name that is no container key ('…'), not private or special (_…, …__), of a plain data value."""
    def get_var_scope(attr_name: Any, attr_value: Any, evaluate_name: Any, handle_return_values: Any) -> str:
        if (type(attr_value) in _DATA_TYPES and isinstance(attr_name, str)
                and not attr_name.startswith(("'", "_")) and not attr_name.endswith("__")):
            return ""
        return original(attr_name, attr_value, evaluate_name, handle_return_values)

    setattr(get_var_scope, _MARK, True)
    return get_var_scope


def _paged(original: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def internal_get_variable_json(py_db: Any, request: Any) -> Any:
        found = _window(py_db, request)
        if found is None:
            return original(py_db, request)
        variable, window = found
        whole = variable.get_children_variables

        def children(fmt: Any = None, scope: Any = None) -> list:
            try:
                chosen = _frame_children(variable, scope, window)
            except Exception:  # a pydevd unlike the one this was written for: its own listing, sliced
                chosen = None
            return chosen if chosen is not None else list(whole(fmt=fmt, scope=scope))[window]

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


def _frame_children(variable: Any, scope: Any, window: slice) -> list | None:
    """``_FrameVariable.get_children_variables(scope=scope)[window]`` as pydevd builds it (groups
    first, then the names sorted, return values expanded), but pydevd's variable objects made for
    the window only (one per name otherwise: a third of a 400-name listing); None: not a frame."""
    frames = sys.modules.get("_pydevd_bundle.pydevd_suspended_frames")
    if frames is None or type(variable) is not getattr(frames, "_FrameVariable", None):
        return None
    make, key, returns = frames._ObjectVariable, frames.sorted_attributes_key, frames.RETURN_VALUES_DICT
    which = getattr(scope, "scope", scope)
    if which not in ("locals", "globals", None):
        return None
    frame = variable.frame
    names = frame.f_globals if which == "globals" else frame.f_locals
    plain, groups = variable._group_entries(
        [(name, value, None) for name, value in list(names.items()) if name != "_pydev_stop_at_break"],
        handle_return_values=True)
    rows: list[tuple[Any, Any, bool, Any, bool]] = []  # name, value, a return value, evaluate name, a group
    for name, value, _evaluate in plain:
        if name == returns:
            rows.extend((inner, result, True, f"{name}[{inner!r}]", False) for inner, result in value.items())
        else:
            rows.append((name, value, False, name, False))
    rows.sort(key=lambda row: key(row[0]))
    chosen = ([(name, grouper, False, name, True) for name, grouper, _evaluate in groups] + rows)[window]
    made = []
    for name, value, returned, evaluate_name, group in chosen:
        if group:  # as pydevd does: a group's contents sorted too
            value.contents_debug_adapter_protocol.sort(key=lambda entry: key(entry[0]))
        made.append(make(variable.py_db, name, value, variable._register_variable, returned, evaluate_name,
                         frame=frame))
    return made
