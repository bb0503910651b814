"""Rendering a debuggee's values safely: one implementation for the crash capsule and the
notebook debugger (which calls it inside the debuggee by evaluate, as
``_aml_magics_node.render`` on a node or ``aml_magics.node.render``).

Why its own code and not ``repr()``: a value met in a crashed or stopped process may be a
10⁸-element tensor on a GPU, a dict of a million items, or an object whose ``__repr__``
raises, hangs or returns megabytes. Nothing here may stop a capsule or an exit, or pull the
data to where it is shown:

- :func:`summary` is the one-line at-a-glance text of an array, tensor, frame or series
  (``ndarray (3, 4) float64``, ``Tensor (2, 3) torch.float32 cpu``, ``DataFrame (100, 3)``):
  metadata only, never the data, so its cost never scales with the data;
- :func:`statistics` is asked for: min/max/mean, NaN and Inf counts and the first few values,
  computed where the data lives (on the device for a tensor), over at most
  :data:`STATISTICS_LIMIT` elements (a strided sample past that, said so);
- :func:`safe_repr` bounds any other ``repr`` in time (a worker thread and a deadline) and in
  size; :func:`render` walks containers to a bounded depth and width and masks the values of
  names that look like secrets (:func:`is_secret_name`).

Stdlib only: numpy, torch and pandas are recognised by duck typing and their modules are used
only when already imported (a value of theirs exists, so they are in ``sys.modules``).
"""

from __future__ import annotations

import atexit
import queue
import re
import sys
import threading
from collections.abc import Callable
from typing import Any

REPR_LIMIT = 200  # characters of one value's text
REPR_TIMEOUT = 0.5  # seconds a __repr__ may take
DEPTH = 2  # containers inside containers shown
WIDTH = 8  # items of a container shown
PREVIEW = 5  # first values in statistics
STATISTICS_LIMIT = 10_000_000  # elements statistics read; a strided sample past that
MASK = "****** (masked: the name looks like a secret)"
ELLIPSIS = "…"

_SECRET = re.compile(
    r"(token|passw|secret|credential|connection_?str|conn_?str|api_?key|private_?key|access_?key"
    r"|account_?key|(^|_)sas(_|$)|(^|_)keys?$|^keys?_|signature|(^|_)auth(_|$)|authorization)",
    re.IGNORECASE,
)


def is_secret_name(name: object) -> bool:
    """Does ``name`` look like it holds a secret (token, password, secret, key, credential,
    connection string)? Then its value is never shown."""
    return isinstance(name, str) and bool(_SECRET.search(name))


def cut(text: str, limit: int = REPR_LIMIT) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 1)] + ELLIPSIS


def type_name(value: object) -> str:
    kind = type(value)
    module = getattr(kind, "__module__", "") or ""
    name = getattr(kind, "__qualname__", None) or kind.__name__
    return name if module in ("builtins", "__main__", "") else f"{module}.{name}"


# The builtin types whose repr is Python's own and bounded by the value: shown at once (a crash
# capsule renders thousands of them, and each went through the array checks first).
_SCALARS = frozenset({int, float, bool, complex, type(None)})
_BYTES = frozenset({str, bytes, bytearray})
_PLAIN = _SCALARS | _BYTES | {dict, list, tuple, set, frozenset}


# -- arrays, tensors, frames --------------------------------------------------------
def _kind(value: object) -> str | None:
    """``ndarray``, ``tensor``, ``frame`` or ``series`` by the type's home, else None (no import)."""
    kind = type(value)
    if kind in _PLAIN:
        return None
    module = getattr(kind, "__module__", "") or ""
    root = module.split(".", 1)[0]
    if root == "numpy" and hasattr(value, "shape") and hasattr(value, "dtype") and kind.__name__ != "dtype":
        return "ndarray" if hasattr(value, "ndim") and not _is_numpy_scalar(value) else None
    if root == "torch" and hasattr(value, "shape") and hasattr(value, "device") and hasattr(value, "dtype"):
        return "tensor"
    if root == "pandas":
        if kind.__name__ == "DataFrame" or (hasattr(value, "columns") and hasattr(value, "iloc")):
            return "frame"
        if kind.__name__ == "Series" or (hasattr(value, "dtype") and hasattr(value, "iloc")):
            return "series"
    return None


def _is_numpy_scalar(value: object) -> bool:
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, numpy.generic)


def _shape(value: Any) -> str:
    try:
        dims = tuple(int(d) for d in value.shape)
    except Exception:
        return "(?)"
    return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def summary(value: object) -> str | None:
    """One line for an array, tensor, frame or series (type, shape, dtype, device); never
    touches the data. None for any other value."""
    kind = _kind(value)
    if kind is None:
        return None
    try:
        name = type(value).__name__
        value_: Any = value
        if kind == "tensor":
            return f"{name} {_shape(value_)} {value_.dtype} {value_.device}"
        if kind == "frame":
            return f"{name} {_shape(value_)}"
        return f"{name} {_shape(value_)} {value_.dtype}"
    except Exception as exc:  # a broken object still gets a line
        return f"{type(value).__name__} (unreadable: {type(exc).__name__})"


def _number(x: object) -> str:
    try:
        f = float(x)  # type: ignore[arg-type]
    except Exception:
        return cut(str(x), 40)
    if f.is_integer() and abs(f) < 1e15:
        return str(int(f))
    return f"{f:.6g}"


def _numpy_statistics(array: Any) -> str:
    numpy = sys.modules["numpy"]
    flat = array.reshape(-1)
    total = int(flat.shape[0])
    if total == 0:
        return "empty"
    sampled = total > STATISTICS_LIMIT
    if sampled:
        flat = flat[:: -(-total // STATISTICS_LIMIT)]
    first = ", ".join(_number(x) if array.dtype.kind in "biuf" else cut(repr(x), 40)
                      for x in array.reshape(-1)[:PREVIEW].tolist())
    parts: list[str] = []
    if array.dtype.kind in "biuf":
        data = flat.astype(numpy.float64) if array.dtype.kind == "b" else flat
        if array.dtype.kind == "f":
            nan = int(numpy.isnan(data).sum())
            inf = int(numpy.isinf(data).sum())
            finite = data[numpy.isfinite(data)]
        else:
            nan = inf = 0
            finite = data
        if finite.shape[0]:
            parts.append(f"min {_number(finite.min())} max {_number(finite.max())} "
                         f"mean {_number(finite.mean(dtype=numpy.float64))}")
        parts.insert(0, f"NaN {nan} Inf {inf}")  # first: what a cut line must still show
    parts.append(f"first [{first}{', …' if total > PREVIEW else ''}]")
    if sampled:
        parts.append(f"(statistics over a sample of {int(flat.shape[0])} of {total})")
    return "; ".join(parts)


def _torch_statistics(tensor: Any) -> str:
    torch = sys.modules["torch"]
    t = tensor.detach().reshape(-1)
    total = int(t.numel())
    if total == 0:
        return "empty"
    sampled = total > STATISTICS_LIMIT
    if sampled:
        t = t[:: -(-total // STATISTICS_LIMIT)]
    head = tensor.detach().reshape(-1)[:PREVIEW]
    parts: list[str] = []
    if t.is_complex():
        pass
    elif t.dtype == torch.bool:
        parts.append(f"true {int(t.sum().item())}")
    else:
        data = t if t.is_floating_point() else t.to(torch.float64)
        if t.is_floating_point():
            nan = int(torch.isnan(data).sum().item())
            inf = int(torch.isinf(data).sum().item())
            finite = data[torch.isfinite(data)]
        else:
            nan = inf = 0
            finite = data
        if finite.numel():  # on the tensor's device; only the three numbers leave it
            stats = torch.stack([finite.min().to(torch.float64), finite.max().to(torch.float64),
                                 finite.to(torch.float64).mean()]).tolist()
            parts.append(f"min {_number(stats[0])} max {_number(stats[1])} mean {_number(stats[2])}")
        parts.insert(0, f"NaN {nan} Inf {inf}")  # first: what a cut line must still show
    first = ", ".join(_number(x) if not isinstance(x, complex) else str(x) for x in head.cpu().tolist())
    parts.append(f"first [{first}{', …' if total > PREVIEW else ''}]")
    if sampled:
        parts.append(f"(statistics over a sample of {int(t.numel())} of {total})")
    return "; ".join(parts)


def _pandas_statistics(value: Any, kind: str) -> str:
    rows = int(value.shape[0])
    head = value.iloc[: min(rows, STATISTICS_LIMIT)] if rows > STATISTICS_LIMIT else value
    parts: list[str] = []
    if kind == "series":
        nan = int(head.isna().sum())
        try:
            numeric = head.dtype.kind in "biuf"
        except Exception:
            numeric = False
        if numeric and rows and nan < rows:
            parts.append(f"min {_number(head.min())} max {_number(head.max())} mean {_number(head.mean())}")
        parts.insert(0, f"NaN {nan}")
        first = ", ".join(cut(repr(x), 40) for x in head.iloc[:PREVIEW].tolist())
        parts.append(f"first [{first}{', …' if rows > PREVIEW else ''}]")
    else:
        nan = int(head.isna().sum().sum())
        numeric = head.select_dtypes(include="number")
        if numeric.shape[1] and rows:
            parts.append(f"min {_number(numeric.min().min())} max {_number(numeric.max().max())} "
                         f"mean {_number(numeric.stack().mean())}")
        parts.insert(0, f"NaN {nan}")
        columns = [str(c) for c in list(value.columns[:WIDTH])]
        parts.append("columns [" + ", ".join(cut(c, 30) for c in columns)
                     + (", …" if value.shape[1] > WIDTH else "") + "]")
        if rows:
            row = {str(k): cut(repr(v), 30) for k, v in list(value.iloc[0].items())[:WIDTH]}
            parts.append(f"first row {row}")
    if rows > STATISTICS_LIMIT:
        parts.append(f"(statistics over the first {STATISTICS_LIMIT} of {rows} rows)")
    return "; ".join(parts)


def statistics(value: object) -> str:
    """min/max/mean, NaN and Inf counts and the first few values of an array, tensor, frame
    or series, computed where the data lives and over a bounded number of elements; for any
    other value, its safe repr."""
    kind = _kind(value)
    try:
        if kind == "ndarray":
            return _numpy_statistics(value)
        if kind == "tensor":
            return _torch_statistics(value)
        if kind in ("frame", "series"):
            return _pandas_statistics(value, kind)
    except Exception as exc:
        return f"statistics unavailable ({type(exc).__name__}: {cut(str(exc), 80)})"
    return safe_repr(value)


# -- any other value: a repr bounded in time and size --------------------------------
class _ReprWorker:
    """One thread that runs ``repr`` calls one at a time: a call past its deadline is given
    up (the thread is left to it, a daemon; a new worker takes the next call)."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name="aml-magics-repr", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:  # stop(): the interpreter is ending
                return
            call, box, done = job
            del job
            try:
                box.append((True, call()))
            except BaseException as exc:  # noqa: BLE001 - a raising __repr__ is a value to show
                box.append((False, exc))
            done.set()
            # not held while waiting for the next call: this thread lives to the interpreter's end,
            # and the last value it rendered (a capsule's local, say) would never be collected
            del call, box, done

    def stop(self, timeout: float = 0.5) -> None:
        """End the thread (not one stuck in a call). A daemon thread alive at the interpreter's end
        keeps the script's cyclic garbage from its last collection: a file held by such a cycle
        would never be flushed (seen after a crash capsule rendered the script's locals)."""
        self.jobs.put(None)
        self.thread.join(timeout)

    def run(self, call: Callable[[], str], timeout: float) -> tuple[bool, object] | None:
        box: list = []
        done = threading.Event()
        self.jobs.put((call, box, done))
        if not done.wait(timeout):
            return None
        return box[0]


_worker: _ReprWorker | None = None
_worker_lock = threading.Lock()


def _call_with_deadline(call: Callable[[], str], timeout: float) -> tuple[bool, object] | None:
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = _ReprWorker()
            atexit.register(_worker.stop)
        worker = _worker
        outcome = worker.run(call, timeout)
        if outcome is None:
            _worker = None  # stuck in that call: the next one gets a fresh thread
        return outcome


def safe_repr(value: object, limit: int = REPR_LIMIT, timeout: float = REPR_TIMEOUT) -> str:
    """``repr(value)`` cut to ``limit`` characters; one line saying so when it raised or took
    longer than ``timeout`` seconds (the call is then abandoned, not waited for)."""
    if type(value) not in _SCALARS and type(value) not in _BYTES:  # those have no summary: not asked
        text = summary(value)
        if text is not None:
            return text
    if isinstance(value, (int, float, bool, complex, type(None))) and not isinstance(value, type):
        return _scalar(value, limit)
    if isinstance(value, (str, bytes, bytearray)):
        return cut(repr(value[: limit + 1]), limit)
    outcome = _call_with_deadline(lambda: repr(value)[: limit + 1], timeout)
    if outcome is None:
        return f"<{type_name(value)}: repr took longer than {timeout:g}s>"
    ok, result = outcome
    if not ok:
        return f"<{type_name(value)}: repr raised {type(result).__name__}: {cut(_text(result), 80)}>"
    return cut(result if isinstance(result, str) else str(result), limit)


def _scalar(value: object, limit: int) -> str:
    try:
        return cut(repr(value), limit)
    except Exception:  # an int of too many digits
        return f"<{type_name(value)}>"


def _text(exc: object) -> str:
    try:
        return str(exc)
    except Exception:
        return "?"


def render(value: object, name: object = None, depth: int = DEPTH, width: int = WIDTH,
           limit: int = REPR_LIMIT) -> str:
    """The text shown for ``value`` (bound to ``name``): masked when the name looks secret,
    containers to ``depth`` levels of ``width`` items, everything else :func:`safe_repr`."""
    if is_secret_name(name):
        return MASK
    return cut(_render(value, depth, width, limit), limit)


def _render(value: object, depth: int, width: int, limit: int) -> str:
    kind = type(value)
    if kind in _SCALARS:
        return _scalar(value, limit)
    if kind in (dict, list, tuple, set, frozenset) or (
        isinstance(value, (dict, list, tuple)) and kind.__repr__ in (dict.__repr__, list.__repr__, tuple.__repr__)
    ):
        return _container(value, depth, width, limit)
    return safe_repr(value, limit)


def _container(value: Any, depth: int, width: int, limit: int) -> str:
    size = len(value)
    if isinstance(value, dict):
        opening, closing = "{", "}"
    elif isinstance(value, list):
        opening, closing = "[", "]"
    elif isinstance(value, tuple):
        opening, closing = "(", ",)" if size == 1 else ")"
    else:
        opening, closing = type(value).__name__ + "({", "})"
        if size == 0:
            return f"{type(value).__name__}()"
    if size == 0:
        return opening + closing
    if depth <= 0:
        return f"{opening}{ELLIPSIS}{closing} ({size} items)"
    parts: list[str] = []
    used = 0
    mapping = isinstance(value, dict)
    items = iter(value.items()) if mapping else iter(value)
    for _ in range(min(size, width)):
        try:
            item = next(items)
        except (StopIteration, RuntimeError):  # changed while read
            break
        if mapping:
            key, val = item
            key_text = safe_repr(key, 40)
            shown = MASK if is_secret_name(key) else _render(val, depth - 1, width, limit)
            text = f"{key_text}: {shown}"
        else:
            text = _render(item, depth - 1, width, limit)
        parts.append(text)
        used += len(text) + 2
        if used > limit:
            break
    more = size - len(parts)
    tail = f", {ELLIPSIS}" if more > 0 else ""
    note = f" ({size} items)" if more > 0 else ""
    body = opening + ", ".join(parts) + tail + closing
    if len(body) + len(note) > limit:  # the count survives the cut
        body = body[: max(0, limit - len(note) - len(closing) - 1)] + ELLIPSIS + closing
    return body + note
