"""Arrays, tensors and frames at a glance: summaries computed in the debuggee, never the data.

debugpy shows an array as its ``repr``; for a tensor of 10⁸ elements that is slow (torch
formats it, on its device) and says nothing a person scans for. Here one ``evaluate`` in the
stopped frame returns, for each chosen name, one line — ``ndarray (3, 4) float64``,
``Tensor (2, 3) torch.float32 cpu``, ``DataFrame (3, 2)`` — read from the object's metadata
only, and on demand the statistics (min/max/mean, NaN/Inf counts, a small preview) computed
where the data lives, on a bounded sample.

The rendering is the crash capsule's (``summary(value) -> str | None`` and
``statistics(value) -> str`` of ``_aml_magics_node.render`` when the run runs the node package,
``aml_magics.node.render`` when it is loaded); this module carries a small fallback of the same
interface, sent as source, for a debuggee that has neither. Nothing is imported into the
debuggee but what it already has (numpy, torch and pandas are only looked up in ``sys.modules``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable

# The type names debugpy reports for values this module summarises (its ``type`` field).
SUMMARISED_TYPES = frozenset({"ndarray", "matrix", "memmap", "Tensor", "Parameter", "DataFrame", "Series", "Index"})
SAMPLE = 10_000_000  # statistics look at no more elements than this (a strided sample beyond)
PREVIEW = 5  # as the node's renderer (node/render.py): one format, whichever renders

# The fallback renderer: stdlib only, metadata only for summary(); statistics() on the device.
FALLBACK = r'''
import sys
def _kind(v):
    root = type(v).__module__.split('.')[0]
    return root if root in ('numpy', 'torch', 'pandas') and hasattr(v, 'shape') else None
def summary(v):
    kind = _kind(v)
    if kind is None:
        return None
    shape = str(tuple(int(n) for n in v.shape))
    if kind == 'torch':
        return f'{type(v).__name__} {shape} {v.dtype} {v.device}'
    if kind == 'pandas' and not hasattr(v, 'dtype'):
        return f'{type(v).__name__} {shape}'
    return f'{type(v).__name__} {shape} {v.dtype}'
def statistics(v, sample=SAMPLE, preview=PREVIEW):
    kind = _kind(v)
    if kind is None:
        text = repr(v)
        return text if len(text) <= 200 else text[:200] + '…'
    if kind == 'pandas':
        v = v.to_numpy() if hasattr(v, 'to_numpy') else v.values
    flat = v.detach().reshape(-1) if kind == 'torch' else v.reshape(-1)
    size = int(flat.shape[0])
    step = max(1, -(-size // sample))
    part = flat[::step]
    note = f'; (statistics over a sample of {int(part.shape[0])} of {size})' if step > 1 else ''
    head = ', '.join(format(x, '.6g') if isinstance(x, float) else repr(x) for x in flat[:preview].tolist())
    if size == 0:
        return 'empty'
    try:
        if kind == 'torch':
            import torch
            f = part if part.is_floating_point() or part.is_complex() else part.double()
            nan, inf = int(torch.isnan(f).sum()), int(torch.isinf(f).sum())
            ok = f[torch.isfinite(f)]
            lo, hi, mean = (ok.min().item(), ok.max().item(), ok.double().mean().item()) if ok.numel() else (None,) * 3
        else:
            np = sys.modules['numpy']
            f = part.astype('float64') if part.dtype.kind in 'biu?' else part
            nan, inf = int(np.isnan(f).sum()), int(np.isinf(f).sum())
            ok = f[np.isfinite(f)]
            lo, hi, mean = (ok.min().item(), ok.max().item(), ok.mean().item()) if ok.size else (None,) * 3
    except Exception as exc:
        return f'no statistics: {type(exc).__name__}: {exc}; first: [{head}]'
    spread = f'; min {lo:.6g} max {hi:.6g} mean {mean:.6g}' if lo is not None else ''
    return f'NaN {nan} Inf {inf}{spread}; first [{head}{", …" if size > preview else ""}]{note}'
def renderer():
    for name in ('_aml_magics_node.render', 'aml_magics.node.render'):
        module = sys.modules.get(name)
        if module is None and name.startswith('_') and '_aml_magics_node' in sys.modules:
            try:
                module = __import__(name, fromlist=['summary'])
            except Exception:
                module = None
        if module is not None and hasattr(module, 'summary') and hasattr(module, 'statistics'):
            return module.summary, module.statistics
    return summary, statistics
'''.replace("SAMPLE", str(SAMPLE)).replace("PREVIEW", str(PREVIEW))


def _call(body: str, values: Iterable[str]) -> str:
    """An expression that defines the renderer in a fresh namespace and applies ``body`` to the values
    (evaluated in the stopped frame's own scope: they are the lambda's arguments)."""
    arguments = ", ".join(f"({value})" for value in values)
    return (f"(lambda _ns, *_vs: (exec({FALLBACK!r}, _ns), {body})[1])"
            f"({{'__builtins__': __builtins__}}{', ' + arguments if arguments else ''})")


def summaries_expression(names: Iterable[str]) -> str:
    """One expression whose value is the ``repr`` of ``[summary or None, ...]`` for ``names``."""
    return _call("[_ns['renderer']()[0](_v) for _v in _vs]", list(names))


def statistics_expression(expression: str) -> str:
    """One expression whose value is the statistics line of ``expression``'s value."""
    return _call("_ns['renderer']()[1](_vs[0])", [expression])


def parse_summaries(text: str, count: int) -> list[str | None]:
    """The evaluate's result (a list's ``repr``) as ``count`` summaries (``None``: not summarised)."""
    try:
        values = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return [None] * count
    if not isinstance(values, list) or len(values) != count:
        return [None] * count
    return [v if isinstance(v, str) else None for v in values]


def parse_text(text: str) -> str:
    """A string result as debugpy shows it (its ``repr``), as the string."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return value if isinstance(value, str) else text
