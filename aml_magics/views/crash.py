"""A crash capsule shown as the debugger panel in a read-only snapshot mode.

The debugger panel's layout and look (exception banner, call stack, source with the current
line, variables), with nothing that steps: a capsule is a picture of a process that is gone.
Its own widget (the live panel belongs to :mod:`aml_magics.debugger`); ``aml-dbg`` is the CSS
class both wear. Every value is one line, cut with an ellipsis, its full text in the row's
tooltip; arrays, tensors and frames show their summary first (shape, dtype, NaN/Inf counts).
"""

from __future__ import annotations

import datetime
import html
from typing import TYPE_CHECKING, Any

from ..frontend import widget_frontend

if TYPE_CHECKING:
    from ..crash import Crash, CrashFrame

VALUE_CHARS = 120  # characters of a value on its row
_STYLE = """<style>
.aml-crash .aml-dbg-exception {color:#b00020; font-weight:bold; margin:2px 0}
.aml-crash .aml-crash-snapshot {color:#666; font-style:italic}
.aml-crash .aml-crash-source pre {margin:0; font-size:0.9em; line-height:1.45; white-space:pre}
.aml-crash .aml-crash-source .aml-dbg-current {background:#fff3b0; display:block}
.aml-crash table.aml-crash-vars {border-collapse:collapse; font-size:0.9em; table-layout:fixed; width:100%}
.aml-crash table.aml-crash-vars td {padding:1px 6px; white-space:nowrap; overflow:hidden; text-overflow:ellipsis;
  font-family:monospace}
.aml-crash table.aml-crash-vars td.aml-crash-type {color:#888}
.aml-crash .aml-crash-summary {color:#1565c0}
.aml-crash .aml-crash-dropped {color:#b26a00}
</style>"""


def header_text(crash: Crash) -> str:
    when = datetime.datetime.fromtimestamp(crash.created).strftime("%Y-%m-%d %H:%M:%S") if crash.created else "?"
    host = f" on {crash.host}" if crash.host else ""
    return f"crash capsule · rank {crash.rank}{host} · {when} · snapshot (read-only)"


def _cut(text: str, limit: int = VALUE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def source_html(crash: Crash, frame: CrashFrame) -> str:
    """The frame's source lines, the crashing line marked (and highlighted with Pygments if present)."""
    lines = list(frame.source_lines)
    first = frame.source_first
    if not lines:
        return "<i>no source in the capsule</i>"
    try:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer

        formatter = HtmlFormatter(nowrap=True, noclasses=True)
        rendered = [highlight(text or " ", PythonLexer(), formatter).rstrip("\n") for text in lines]
    except ImportError:
        rendered = [html.escape(text) for text in lines]
    rows = []
    for offset, text in enumerate(rendered):
        number = first + offset
        row = f"{number:5d}  {text}"
        if number == frame.line:
            row = f'<span class="aml-dbg-current">{row}</span>'
        else:
            row += "\n"
        rows.append(row)
    return f'<div class="aml-crash-source"><pre>{"".join(rows)}</pre></div>'


def variables_html(frame: CrashFrame) -> str:
    if not frame.locals:
        more = " (dropped to keep the capsule small)" if frame.locals_total else ""
        return f"<i>no locals{more}</i>"
    rows = []
    for name, value in frame.locals.items():
        full = str(value)
        shown = html.escape(_cut(value.text))
        if value.summary:
            shown = f'<span class="aml-crash-summary">{html.escape(value.summary)}</span> · {shown}'
        rows.append(f'<tr title="{html.escape(full, quote=True)}"><td>{html.escape(name)}</td>'
                    f'<td class="aml-crash-type">{html.escape(value.type)}</td><td>{shown}</td></tr>')
    missing = frame.locals_total - len(frame.locals)
    tail = f"<i>… {missing} more locals not kept</i>" if missing > 0 else ""
    columns = '<colgroup><col style="width:9em"><col style="width:8em"><col></colgroup>'
    return f'<table class="aml-crash-vars">{columns}{"".join(rows)}</table>{tail}'


def stack_labels(crash: Crash) -> list[tuple[str, int]]:
    """(label, index into crash.frames), innermost first as a debugger's call stack shows it."""
    out = []
    for index in range(len(crash.frames) - 1, -1, -1):
        frame = crash.frames[index]
        mark = " · library" if frame.library else ""
        out.append((f"{frame.name}  {frame.path.rsplit('/', 1)[-1]}:{frame.line}{mark}", index))
    return out


def exception_html(crash: Crash) -> str:
    parts = [f'<div class="aml-dbg-exception">{html.escape(str(crash.exception))}</div>']
    for entry in crash.exception.chain:
        relation = "caused by" if entry.get("relation") == "cause" else "while handling"
        parts.append(f"<div>{relation} {html.escape(str(entry.get('type')))}: "
                     f"{html.escape(_cut(str(entry.get('message', '')), 300))}</div>")
    return "".join(parts)


def snapshot_html(crash: Crash) -> str:
    """The whole snapshot as static HTML (nbconvert, a front end without widgets)."""
    frame = crash.frames[-1] if crash.frames else None
    stack = "<br>".join(html.escape(label) for label, _ in stack_labels(crash))
    body = [_STYLE, '<div class="aml-dbg aml-crash">', f"<b>{html.escape(header_text(crash))}</b>",
            exception_html(crash), "<b>call stack</b><div>" + stack + "</div>"]
    if frame is not None:
        body += [f"<b>{html.escape(frame.path)}</b>", source_html(crash, frame), "<b>variables</b>",
                 variables_html(frame)]
    body += [f'<div class="aml-crash-dropped">dropped: {html.escape(note)}</div>' for note in crash.dropped]
    return "".join(body) + "</div>"


def crash_panel(crash: Crash) -> Any:
    """The snapshot as a widget: choosing a frame shows its source and variables."""
    import ipywidgets as widgets

    labels = stack_labels(crash)
    stack = widgets.Select(options=labels, value=labels[0][1] if labels else None, rows=min(8, max(2, len(labels))),
                           layout=widgets.Layout(width="26em"))
    stack.add_class("aml-dbg-stack")
    title = widgets.HTML()
    source = widgets.HTML()
    source.add_class("aml-dbg-source")
    variables = widgets.HTML()
    variables.add_class("aml-dbg-variables")

    def show(index: int | None) -> None:
        if index is None or not crash.frames:
            return
        frame = crash.frames[index]
        title.value = f"<b>{html.escape(frame.path)}</b>{' <i>(library)</i>' if frame.library else ''}"
        source.value = source_html(crash, frame)
        variables.value = variables_html(frame)

    stack.observe(lambda change: show(change["new"]), "value")
    show(stack.value)
    dropped = widgets.HTML("".join(f'<div class="aml-crash-dropped">dropped: {html.escape(n)}</div>'
                                   for n in crash.dropped))
    snapshot = widgets.HTML(f'<b>{html.escape(header_text(crash))}</b> '
                            '<span class="aml-crash-snapshot">(no stepping: the process is gone)</span>')
    inspect = widgets.VBox([widgets.HTML("<b>call stack</b>"), stack])
    right = widgets.VBox([widgets.HTML("<b>variables</b>"), variables], layout=widgets.Layout(width="100%"))
    panel = widgets.VBox([widgets.HTML(_STYLE), snapshot, widgets.HTML(exception_html(crash)), title, source,
                          widgets.HBox([inspect, right]), dropped])
    panel.add_class("aml-dbg")
    panel.add_class("aml-crash")
    return panel


def mimebundle(crash: Crash) -> dict:
    text = crash.text()
    if not widget_frontend():
        return {"text/plain": text, "text/html": snapshot_html(crash)}
    bundle = dict(crash_panel(crash)._repr_mimebundle_() or {})
    bundle["text/plain"] = text
    return bundle
