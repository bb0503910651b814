"""The ipywidgets panel of a DebugRun, updated live from a background thread.

Updates only set widget traits (ipywidgets syncs them from any thread); no
``with output:`` from threads. A single refresher thread per panel coalesces
bursts of log lines and ticks the attach countdown.

What the panel says is what is true now: the state as a badge with why (the exception of a
failed run, the seconds left to attach, when it was canceled); each endpoint as listening,
attached or closed; Copy and Write only while a client could attach; how to attach in one line.
The launch.json stays folded behind a toggle, and the log box keeps its newest line in view
(a column-reverse scroll box: pinned to the bottom unless the user scrolled up).
"""

from __future__ import annotations

import html
import json
import os
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

import ipywidgets as widgets

from .. import launch
from ..failure import user_lines
from ..frontend import Refresher
from .text import (
    STATE_LABELS,
    attach_hint,
    by_node,
    can_attach,
    debugger_words,
    endpoint_now,
    rank_row,
    roster_order,
    route_line,
    seconds_words,
    state_detail,
)

if TYPE_CHECKING:
    from ..run import DebugRun, RankStatus

LOG_TAIL = 200  # lines kept in the log box (it scrolls; about 12 are in view)
_panels: "weakref.WeakValueDictionary[str, DebugRunPanel]" = weakref.WeakValueDictionary()

_STYLE = """<style>
.aml-debug-run .aml-badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:0.9em;
  color:#fff;background:#6e7781;line-height:1.5em;vertical-align:baseline}
.aml-debug-run .aml-badge[data-state=waiting_for_debugger]{background:#9a6700}
.aml-debug-run .aml-badge[data-state=crashed_waiting_for_debugger],
.aml-debug-run .aml-badge[data-state=failed]{background:#cf222e}
.aml-debug-run .aml-badge[data-state=attached]{background:#8250df}
.aml-debug-run .aml-badge[data-state=running],.aml-debug-run .aml-badge[data-state=starting],
.aml-debug-run .aml-badge[data-state=serving]{background:#0969da}
.aml-debug-run .aml-badge[data-state=completed]{background:#1a7f37}
.aml-debug-run .aml-detail{margin-left:0.5em}
.aml-debug-run .aml-run-id{color:var(--jp-ui-font-color2,#666)}
.aml-debug-run [data-endpoint=listening]{color:#9a6700;font-weight:600}
.aml-debug-run [data-endpoint=attached]{color:#8250df;font-weight:600}
.aml-debug-run [data-endpoint=closed]{color:var(--jp-ui-font-color2,#666)}
.aml-debug-run table.aml-endpoints{border-collapse:collapse}
.aml-debug-run table.aml-endpoints td,.aml-debug-run table.aml-endpoints th{padding:1px 10px 1px 0;text-align:left}
.aml-debug-run tr.aml-node td{font-weight:600;padding-top:4px}
.aml-debug-run .aml-message{animation:aml-fade 6s ease-in forwards}
@keyframes aml-fade{0%,60%{opacity:1}100%{opacity:0}}
.aml-debug-run pre.aml-log{margin:0;white-space:pre-wrap;word-break:break-word}
.aml-debug-run textarea.aml-launch-json{box-sizing:border-box;width:100%;font-family:monospace;resize:vertical}
</style>"""

_COPY_BUTTON = """<button class="aml-copy jupyter-button" title="Copy the launch.json fragment" {disabled}
onclick="(function(b){{var t=document.getElementById('{area}');var s=t?t.value:'';
var done=function(){{b.textContent='Copied';setTimeout(function(){{b.textContent='Copy'}},1500)}};
if(navigator.clipboard&&window.isSecureContext){{navigator.clipboard.writeText(s).then(done,function(){{t.select();document.execCommand('copy');done()}})}}
else{{t.select();document.execCommand('copy');done()}}}})(this)">Copy</button>"""


def widget_for(run: "DebugRun") -> "DebugRunPanel":
    panel = _panels.get(run.id)
    if panel is None:
        panel = DebugRunPanel(run)
        _panels[run.id] = panel
    return panel


def _shown(path: Path) -> str:
    """A path as short as it can be said: relative to the kernel's folder when near it."""
    absolute = os.path.abspath(path)
    try:
        relative = os.path.relpath(absolute)
    except ValueError:  # another drive
        return absolute
    return relative if relative.count("..") <= 2 else absolute


class DebugRunPanel(widgets.VBox):
    def __init__(self, run: "DebugRun", launch_json_path: Path | None = None) -> None:
        self.run = run
        # --launch-json / %config AmlDebugMagics.launch_json, else the workspace root's .vscode/launch.json
        self.launch_json_path = Path(launch_json_path or run.launch_json_path
                                     or launch.default_launch_json(Path.cwd()))
        self.area_id = f"aml-launch-{run.id}"
        self._writes = 0
        self.header_html = widgets.HTML()
        self.endpoints_html = widgets.HTML()
        self.hint_html = widgets.HTML()
        self.launch_toggle = widgets.ToggleButton(value=False, description="launch.json", icon="chevron-right",
                                                  tooltip="Show the VS Code attach configuration",
                                                  layout=widgets.Layout(width="auto"))
        self.launch_toggle.add_class("aml-launch-toggle")
        self.copy_button = widgets.HTML()
        self.write_button = widgets.Button(description=f"Write to {_shown(self.launch_json_path)}", icon="save",
                                           tooltip=f"Merge it into {os.path.abspath(self.launch_json_path)}",
                                           layout=widgets.Layout(width="auto"))
        self.cancel_button = widgets.Button(description="Cancel run", icon="stop", button_style="danger",
                                            layout=widgets.Layout(width="auto"))
        self.debug_button = widgets.Button(description="Debug here", icon="bug", tooltip="open the in-notebook debugger",
                                           layout=widgets.Layout(width="auto"))
        self.debug_button.add_class("aml-debug-here")
        self.debug_button.on_click(self._on_debug_here)
        self.message_html = widgets.HTML()
        self.launch_html = widgets.HTML(layout=widgets.Layout(display="none"))
        self.log_html = widgets.HTML()
        # A scroll box whose start is its bottom: it shows the newest line and stays there while
        # lines come in, unless the user scrolled up (the box itself persists across updates).
        self.log_box = widgets.Box([self.log_html], layout=widgets.Layout(
            max_height="15em", overflow="auto", flex_flow="column-reverse", display="flex"))
        self.log_box.add_class("aml-log-box")
        self.write_button.on_click(self._on_write)
        self.cancel_button.on_click(self._on_cancel)
        self.launch_toggle.observe(self._on_toggle, names="value")
        # The run's actions: the launch.json ones, the in-notebook debugger, cancel; add_action() adds one more.
        self.actions = widgets.HBox([self.launch_toggle, self.copy_button, self.write_button, self.debug_button,
                                     self.cancel_button, self.message_html],
                                    layout=widgets.Layout(align_items="center", flex_flow="row wrap"))
        # A crashed rank left a capsule: "crash capsule: open" shows it below (views/crash.py).
        self.crash_button = widgets.Button(description="open", icon="folder-open", tooltip="open the crash capsule "
                                           "(a read-only snapshot of the stack and locals)",
                                           layout=widgets.Layout(width="auto"))
        self.crash_button.add_class("aml-crash-open")
        self.crash_button.on_click(self._on_open_crash)
        self.crash_row = widgets.HBox([widgets.HTML("<b>crash capsule:</b>"), self.crash_button],
                                      layout=widgets.Layout(display="none", align_items="center"))
        self.crash_row.add_class("aml-crash-row")
        super().__init__([self.header_html, self.endpoints_html, self.hint_html, self.actions, self.crash_row,
                          self.launch_html, self.log_box])
        self.add_class("aml-debug-run")
        self._refresher = Refresher(self.refresh, lambda: run.done, lambda: run.unsubscribe(self._on_run_event),
                                    name=f"aml-widget-{run.id}")
        self.refresh()
        run.subscribe(self._on_run_event)
        self._refresher.start()

    def add_action(self, widget: widgets.Widget) -> None:
        """One more button beside the others (before Cancel)."""
        children = list(self.actions.children)
        children.insert(children.index(self.cancel_button), widget)
        self.actions.children = tuple(children)

    # -- rendering ---------------------------------------------------------------
    def refresh(self) -> None:
        run = self.run
        # Buttons, endpoints and log first, the header (with the state) last: a reader that
        # sees a new state in the header finds everything else already matching it.
        attachable = can_attach(run)
        has_endpoint = bool(run.endpoints)
        self.cancel_button.disabled = run.done
        self.actions.layout.display = "none" if run.done else None  # nothing left to do with the run
        self.write_button.disabled = not attachable
        self.debug_button.disabled = not attachable  # the in-notebook debugger attaches like VS Code
        self.copy_button.value = _COPY_BUTTON.format(area=self.area_id, disabled="" if attachable else "disabled")
        self.launch_toggle.layout.display = None if has_endpoint else "none"
        self.copy_button.layout.display = self.write_button.layout.display = None if has_endpoint else "none"
        self.endpoints_html.value = self._endpoints_html()
        self.hint_html.value = (f"<span class='aml-hint'>{html.escape(attach_hint(run))}</span>" if attachable
                                else "")
        self.launch_html.value = self._launch_json_html() if has_endpoint else ""
        tail = user_lines(run.log_tail(LOG_TAIL))
        self.log_html.value = ("<pre class='aml-log'>" + "".join(
            f"<span class='aml-log-line' style='display:block'>{html.escape(line) or ' '}</span>" for line in tail)
            + "</pre>")
        self.crash_row.layout.display = None if getattr(run, "crashes", None) else "none"
        self.header_html.value = self._header_html()

    def _header_html(self) -> str:
        run = self.run
        detail = state_detail(run)
        return (
            _STYLE + "<div class='aml-header'>"
            f"<b>{html.escape(run.name)}</b> <span class='aml-run-id'>({html.escape(run.id)})</span> "
            f"on <b>{html.escape(run.target)}</b> "
            f"<span class='aml-state aml-badge' data-state='{html.escape(run.state)}'>"
            f"{html.escape(STATE_LABELS.get(run.state, run.state))}</span>"
            + (f"<span class='aml-detail'>{html.escape(detail)}</span>" if detail else "")
            + "</div>"
            + (f"<i>{html.escape(run.description)}</i>" if run.description else "")
            + (f"<div class='aml-route'>debuggers reached {html.escape(route_line(run))}</div>"
               if route_line(run) else "")
            + "".join(facet.html() for facet in run.facets)
        )

    def _endpoints_html(self) -> str:
        run = self.run
        ranks = run.ranks
        if len(ranks) <= 1:
            status = ranks[0] if ranks else None
            if status is not None and status.endpoint is not None:
                now = endpoint_now(run, status)
                return (f"<span class='aml-endpoint'>debugpy <code>{html.escape(status.endpoint.address)}</code></span>"
                        f" — <span class='aml-endpoint-state' data-endpoint='{now.kind}'>{html.escape(now.words)}</span>")
            if not run.spec.debug.enabled:
                return "<span>debugger off (--no-debug)</span>"
            return ("<span class='aml-endpoint-pending'>" + ("no debug endpoint: the run ended before one was known"
                                                               if run.done else "debug endpoint: not known yet")
                    + "</span>")
        grouped = by_node(run)
        rows = []
        for node, host, statuses in grouped:
            if len(grouped) > 1:
                rows.append(f"<tr class='aml-node' data-node='{node}'><td colspan='6'>node {node}"
                            + (f" · {html.escape(host)}" if host else "") + "</td></tr>")
            rows.extend(self._rank_row(s) for s in roster_order(statuses))  # the stopped ranks first
        return ("<table class='aml-endpoints'><tr><th>rank</th><th>debugpy at</th><th>endpoint</th><th>debugger</th>"
                "<th>for</th><th>state</th></tr>"
                f"{''.join(rows)}</table>")

    def _rank_row(self, status: "RankStatus") -> str:
        row = rank_row(self.run, status)
        if row.now is not None:
            where = f"<td class='aml-endpoint'><code>{html.escape(row.address)}</code></td>"
            debugger = f"<td class='aml-endpoint-state' data-endpoint='{row.now.kind}'>{html.escape(row.now.words)}</td>"
        else:
            where = f"<td class='aml-no-endpoint'>{html.escape(row.address)}</td>"
            debugger = "<td></td>"
        roster = (f"<td class='aml-rank-debugger' data-debugger='{status.debugger}'>"
                  f"{html.escape(debugger_words(status))}</td>"
                  f"<td class='aml-rank-since'>{html.escape(seconds_words(status.seconds))}</td>")
        return (f"<tr class='aml-rank' data-rank='{row.rank}'><td>{row.rank}</td>{where}{debugger}{roster}"
                f"<td class='aml-rank-state' data-state='{row.state}'>{html.escape(row.state_label)}</td></tr>")

    def _launch_json_html(self) -> str:
        text = json.dumps(self.run.launch_json(launch.workspace_folder_for(self.launch_json_path)), indent=4)
        rows = min(24, text.count("\n") + 1)
        return (f"<textarea id='{self.area_id}' class='aml-launch-json' readonly rows='{rows}'>"
                f"{html.escape(text)}</textarea>")

    # -- events ------------------------------------------------------------------
    def _on_run_event(self, run: "DebugRun", what: str) -> None:
        self._refresher.poke()

    def _on_toggle(self, change: dict) -> None:
        shown = bool(change["new"])
        self.launch_html.layout.display = None if shown else "none"
        self.launch_toggle.icon = "chevron-down" if shown else "chevron-right"

    def _on_write(self, _button: widgets.Button) -> None:
        self._writes += 1  # a new value each time, so the message shows (and fades) again
        try:
            result = self.run.write_launch_json(self.launch_json_path)
        except Exception as exc:
            self.message_html.value = (f"<span class='aml-error' data-n='{self._writes}' style='color:#cf222e'>"
                                       f"{html.escape(str(exc))}</span>")
            return
        names = ", ".join(result.added + result.replaced)
        self.message_html.value = (f"<span class='aml-message' data-n='{self._writes}'>wrote {html.escape(names)} "
                                   f"to {html.escape(os.path.abspath(result.path))}</span>")

    def _on_debug_here(self, _button: widgets.Button) -> None:
        """Open the in-notebook debugger's panel under this one, not attached yet (the run makes it)."""
        shown = tuple(self.children)  # type: ignore[has-type]
        current = getattr(self, "debugger_panel", None)
        if current is not None and not current.debugger.ended and current in shown:
            return
        self.debugger_panel = self.run.attach(connect=False).panel()
        self.children = (*(w for w in shown if w is not current), self.debugger_panel)

    def _on_open_crash(self, _button: widgets.Button) -> None:
        from .crash import crash_panel

        found = self.run.crash()
        if found is None:
            self.message_html.value = "<span class='aml-message'>the crash capsule is not there (yet)</span>"
            return
        shown = tuple(self.children)  # type: ignore[has-type]
        current = getattr(self, "crash_panel", None)
        self.crash_panel = crash_panel(found)
        self.children = (*(w for w in shown if w is not current), self.crash_panel)

    def _on_cancel(self, _button: widgets.Button) -> None:
        self.cancel_button.disabled = True
        threading.Thread(target=self.run.cancel, daemon=True).start()


__all__ = ["DebugRunPanel", "LOG_TAIL", "widget_for"]
