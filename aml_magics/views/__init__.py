"""Views of a DebugRun: an ipywidgets panel where a widget front end exists, text elsewhere.

Views only read a DebugRun and call its public methods; they know nothing of targets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..frontend import widget_frontend
from .text import render_text

if TYPE_CHECKING:
    from ..run import DebugRun


def mimebundle(run: "DebugRun", log_lines: int = 0) -> dict:
    """The panel where widgets render, and always a text form (``log_lines``: with the log's last
    lines: what a saved notebook or nbconvert keeps of a run that ended)."""
    text = render_text(run, log_lines)
    if not widget_frontend():
        return {"text/plain": text}
    from .widget import widget_for

    bundle = dict(widget_for(run)._repr_mimebundle_() or {})
    bundle["text/plain"] = text
    return bundle


def group_mimebundle(group: Any) -> dict:
    """Runs submitted together (a pipeline's debugged steps): one panel per run."""
    runs = group.runs
    text = "\n\n".join(render_text(run) for run in runs.values())
    text = f"pipeline run {group.id} ({group.description})\n{text}"
    if not widget_frontend():
        return {"text/plain": text}
    import html

    import ipywidgets as widgets

    from .widget import widget_for

    title = widgets.HTML(f"<b>pipeline run {html.escape(group.id)}</b> <i>{html.escape(group.description)}</i>")
    box = widgets.VBox([title] + [widget_for(run) for run in runs.values()])
    bundle = dict(box._repr_mimebundle_() or {})
    bundle["text/plain"] = text
    return bundle


__all__ = ["group_mimebundle", "mimebundle", "render_text", "widget_frontend"]
