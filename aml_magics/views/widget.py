"""The ipywidgets panel of a DebugRun, updated live from a background thread.

Updates only set widget traits (ipywidgets syncs them from any thread); no
``with output:`` from threads. A single refresher thread per panel coalesces
bursts of log lines and ticks the attach countdown.
"""

from __future__ import annotations

import html
import json
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

import ipywidgets as widgets

from .text import rank_address, rank_state_label, state_label

if TYPE_CHECKING:
    from ..run import DebugRun

DEFAULT_LAUNCH_JSON = Path(".vscode") / "launch.json"
LOG_TAIL = 12
_panels: "weakref.WeakValueDictionary[str, DebugRunPanel]" = weakref.WeakValueDictionary()

_COPY_BUTTON = """<button class="aml-copy jupyter-button" title="Copy the launch.json fragment"
onclick="(function(b){{var t=document.getElementById('{area}');var s=t?t.value:'';
var done=function(){{b.textContent='Copied';setTimeout(function(){{b.textContent='Copy launch.json'}},1500)}};
if(navigator.clipboard&&window.isSecureContext){{navigator.clipboard.writeText(s).then(done,function(){{t.select();document.execCommand('copy');done()}})}}
else{{t.select();document.execCommand('copy');done()}}}})(this)">Copy launch.json</button>"""


def widget_for(run: "DebugRun") -> "DebugRunPanel":
    panel = _panels.get(run.id)
    if panel is None:
        panel = DebugRunPanel(run)
        _panels[run.id] = panel
    return panel


def _shown(path: Path) -> str:
    """A path as short as it can be said: relative to the kernel's folder when inside it."""
    try:
        return str(Path(path).absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class DebugRunPanel(widgets.VBox):
    def __init__(self, run: "DebugRun", launch_json_path: Path | None = None) -> None:
        self.run = run
        # --launch-json / %config AmlDebugMagics.launch_json, else the workspace's .vscode/launch.json
        self.launch_json_path = launch_json_path or run.launch_json_path or DEFAULT_LAUNCH_JSON
        self.area_id = f"aml-launch-{run.id}"
        self.header_html = widgets.HTML()
        self.endpoints_html = widgets.HTML()
        self.launch_html = widgets.HTML()
        self.copy_button = widgets.HTML(_COPY_BUTTON.format(area=self.area_id))
        self.write_button = widgets.Button(description=f"Write to {_shown(self.launch_json_path)}", icon="save",
                                           tooltip=str(Path(self.launch_json_path).absolute()),
                                           layout=widgets.Layout(width="auto"))
        self.cancel_button = widgets.Button(description="Cancel run", icon="stop", button_style="danger")
        self.debug_button = widgets.Button(description="Debug here", icon="bug", tooltip="open the in-notebook debugger")
        self.debug_button.add_class("aml-debug-here")
        self.debug_button.on_click(self._on_debug_here)
        self.message_html = widgets.HTML()
        self.log_html = widgets.HTML()
        self.write_button.on_click(self._on_write)
        self.cancel_button.on_click(self._on_cancel)
        buttons = widgets.HBox([self.copy_button, self.write_button, self.debug_button, self.cancel_button])
        super().__init__([self.header_html, self.endpoints_html, self.launch_html, buttons, self.message_html, self.log_html])
        self.add_class("aml-debug-run")
        self._dirty = threading.Event()
        self.refresh()
        run.subscribe(self._on_run_event)
        self._thread = threading.Thread(target=self._refresher, daemon=True, name=f"aml-widget-{run.id}")
        self._thread.start()

    # -- rendering ---------------------------------------------------------------
    def refresh(self) -> None:
        run = self.run
        # Buttons, endpoints and log first, the header (with the state) last: a reader that
        # sees a new state in the header finds everything else already matching it.
        has_endpoint = bool(run.endpoints)
        self.cancel_button.disabled = run.done
        self.debug_button.disabled = run.done or not has_endpoint
        self.write_button.disabled = not has_endpoint
        self.copy_button.layout.display = None if has_endpoint else "none"
        self.endpoints_html.value = self._endpoints_html()
        self.launch_html.value = self._launch_json_html() if has_endpoint else ""
        tail = "\n".join(run.log_tail(LOG_TAIL))
        self.log_html.value = f"<pre class='aml-log' style='max-height:14em;overflow:auto;margin:0'>{html.escape(tail)}</pre>"
        self.header_html.value = (
            f"<b>{html.escape(run.name)}</b> <span class='aml-run-id'>({html.escape(run.id)})</span> "
            f"on <b>{html.escape(run.target)}</b> — state: "
            f"<span class='aml-state' data-state='{run.state}'>{html.escape(state_label(run))}</span>"
            + (f"<br><i>{html.escape(run.description)}</i>" if run.description else "")
            + "".join(facet.html() for facet in run.facets)
        )

    def _endpoints_html(self) -> str:
        endpoints = self.run.endpoints
        ranks = self.run.ranks
        if not endpoints and len(ranks) <= 1:
            return "<span class='aml-endpoint'>debug endpoint: not known yet</span>" if self.run.spec.debug.enabled \
                else "<span>debugger off (--no-debug)</span>"
        rows = "".join(
            f"<tr class='aml-rank' data-rank='{s.rank}'><td>{s.rank}</td>"
            + (f"<td class='aml-endpoint'><code>{html.escape(s.endpoint.address)}</code></td>" if s.endpoint
               else f"<td class='aml-no-endpoint'>{html.escape(rank_address(self.run, s))}</td>")
            + f"<td class='aml-rank-state' data-state='{s.state}'>{html.escape(rank_state_label(s))}</td></tr>"
            for s in ranks
        )
        return ("<table class='aml-endpoints'><tr><th>rank</th><th>debugpy listening at</th><th>state</th></tr>"
                f"{rows}</table>")

    def _launch_json_html(self) -> str:
        text = json.dumps(self.run.launch_json(), indent=4)
        rows = min(24, text.count("\n") + 1)
        return (f"<textarea id='{self.area_id}' class='aml-launch-json' readonly rows='{rows}' "
                f"style='width:100%;font-family:monospace'>{html.escape(text)}</textarea>")

    # -- events ------------------------------------------------------------------
    def _on_run_event(self, run: "DebugRun", what: str) -> None:
        self._dirty.set()

    def _refresher(self) -> None:
        while True:
            # Wake on changes, and every second for the countdown.
            self._dirty.wait(1.0)
            self._dirty.clear()
            try:
                self.refresh()
            except Exception:
                pass
            if self.run.done:
                self.run.unsubscribe(self._on_run_event)
                return

    def _on_write(self, _button: widgets.Button) -> None:
        try:
            result = self.run.write_launch_json(self.launch_json_path)
        except Exception as exc:
            self.message_html.value = f"<span class='aml-message' style='color:#b00'>{html.escape(str(exc))}</span>"
            return
        names = ", ".join(result.added + result.replaced)
        self.message_html.value = (f"<span class='aml-message'>wrote {html.escape(names)} to "
                              f"{html.escape(str(result.path))}</span>")

    def _on_debug_here(self, _button: widgets.Button) -> None:
        """Open the in-notebook debugger's panel under this one, not attached yet (the run makes it)."""
        shown = tuple(self.children)  # type: ignore[has-type]
        current = getattr(self, "debugger_panel", None)
        if current is not None and not current.debugger.ended and current in shown:
            return
        self.debugger_panel = self.run.attach(connect=False).panel()
        self.children = (*(w for w in shown if w is not current), self.debugger_panel)

    def _on_cancel(self, _button: widgets.Button) -> None:
        self.cancel_button.disabled = True
        threading.Thread(target=self.run.cancel, daemon=True).start()
