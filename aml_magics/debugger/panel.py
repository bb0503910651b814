"""The debugger panel: ipywidgets, live, a thin view of a :class:`~.core.Debugger`.

Like the run panel, it never blocks the kernel and never touches the session from a widget
callback: clicks go to one worker thread per panel (DAP requests run there), and a
refresher thread redraws from the debugger's models when they say they changed, only by
setting widget traits (ipywidgets syncs those from any thread).

What it shows: the state and the stop reason (an exception's type and message in plain
sight), a selector of the paused processes, Attach / Continue / Pause / Step over / Step in
/ Step out / Detach enabled by state, the source around the current line (click a line
number to toggle a breakpoint, with the condition in the box beside), the call stack (click
a frame), the selected frame's variables as a lazy tree (pages of 100, long values cut with
"show all"), an evaluate box with its history, and watches re-evaluated at every stop.
"""

from __future__ import annotations

import html
import os
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ipywidgets as widgets

from ..dap.models import PAGE_SIZE, Page, Variable
from ..frontend import Refresher
from .core import ARMED, ENDED_STATE, STOPPED_STATE, Debugger
from .errors import DebuggerError
from .paths import short, source_lines
from .text import status

WINDOW = 15  # source lines shown
HISTORY = 20
SHOW_ALL_LIMIT = 1 << 30
_STYLE = """<style>
.aml-dbg .aml-dbg-row {margin:0; min-height:0; height:1.7em; align-items:center}
.aml-dbg .aml-dbg-row .widget-button {width:3.6em; height:1.6em; margin:0 4px 0 0; padding:0;
  font-family:monospace; font-size:0.85em; text-align:right; background:transparent; color:#888; box-shadow:none}
.aml-dbg .aml-dbg-row.aml-dbg-bp .widget-button {color:#fff; background:#d32f2f; border-radius:0.8em;
  font-weight:bold; text-align:center}
.aml-dbg .aml-dbg-row.aml-dbg-current {background:#fff3b0}
.aml-dbg .aml-dbg-code code {white-space:pre; font-size:0.9em; background:transparent}
.aml-dbg .aml-dbg-exception {color:#b00020; font-weight:bold}
.aml-dbg .aml-dbg-var {margin:0; min-height:0; height:1.7em; align-items:center}
.aml-dbg .aml-dbg-var .widget-button {height:1.5em; margin:0 2px; padding:0 4px}
.aml-dbg .aml-dbg-var .aml-dbg-toggle {width:1.8em; background:transparent; box-shadow:none}
.aml-dbg .aml-dbg-var .aml-dbg-show-all {width:auto}
.aml-dbg .aml-dbg-var code {white-space:pre; background:transparent}
.aml-dbg .aml-dbg-message {color:#b00020}
</style>"""

_panels: weakref.WeakValueDictionary[int, DebuggerPanel] = weakref.WeakValueDictionary()


def panel_for(debugger: Debugger) -> DebuggerPanel:
    panel = _panels.get(id(debugger))
    if panel is None or panel.debugger is not debugger:
        panel = DebuggerPanel(debugger)
        _panels[id(debugger)] = panel
    return panel


def _button(description: str, name: str, icon: str = "", style: str = "") -> widgets.Button:
    button = widgets.Button(description=description, icon=icon, button_style=style, tooltip=description,
                            layout=widgets.Layout(width="auto"))
    button.add_class(f"aml-dbg-{name}")
    return button


class _Row(widgets.HBox):
    """One source line: its number (a button that toggles a breakpoint) and its text."""

    def __init__(self, on_click: Callable[[int], None]) -> None:
        self.number = 0
        self.lineno = widgets.Button(description="", tooltip="toggle a breakpoint")
        self.lineno.add_class("aml-dbg-lineno")
        self.code = widgets.HTML()
        self.code.add_class("aml-dbg-code")
        self.lineno.on_click(lambda _b: on_click(self.number) if self.number else None)
        super().__init__([self.lineno, self.code])
        self.add_class("aml-dbg-row")

    def show(self, number: int, text: str, current: bool, breakpoint: bool) -> None:
        if self.number != number:
            self._swap_class(f"aml-dbg-line-{self.number}", f"aml-dbg-line-{number}")
            self.number = number
        self.lineno.description = str(number) if number else ""
        self.code.value = f"<code>{html.escape(text) or ' '}</code>"
        self._toggle_class("aml-dbg-current", current)
        self._toggle_class("aml-dbg-bp", breakpoint)
        self.layout.display = None if number else "none"

    def _swap_class(self, old: str, new: str) -> None:
        if old in self._dom_classes:
            self.remove_class(old)
        self.add_class(new)

    def _toggle_class(self, name: str, on: bool) -> None:
        if on and name not in self._dom_classes:
            self.add_class(name)
        elif not on and name in self._dom_classes:
            self.remove_class(name)


class DebuggerPanel(widgets.VBox):
    def __init__(self, debugger: Debugger) -> None:
        self.debugger = debugger
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aml-dbg-panel")
        self._refresher = Refresher(self.refresh, lambda: self.debugger.ended, self._finish,
                                    on_error=lambda exc: self._say(f"panel: {exc!r}"), name="aml-dbg-panel-refresh")
        self._tree_dirty = True
        self._lock = threading.Lock()
        self._expanded: dict[int, list[int]] = {}  # reference -> the page starts loaded
        self._history: list[tuple[str, str, bool]] = []
        self._watches: list[str] = []
        self._watch_values: dict[str, str] = {}
        self._seen_stop: tuple[int, int | None] = (0, None)
        self._source_path: str | None = None
        self._top = 1  # first line of the source window
        self._current: int | None = None
        self._updating = False
        self._tree_widgets: list[widgets.Widget] = []

        self.header = widgets.HTML()
        self.exception_html = widgets.HTML()
        self.processes = widgets.Dropdown(description="paused:", layout=widgets.Layout(width="auto"))
        self.processes.add_class("aml-dbg-processes")
        self.attach_button = _button("Attach", "attach", "plug", "success")
        self.continue_button = _button("Continue", "continue", "play")
        self.pause_button = _button("Pause", "pause", "pause")
        self.over_button = _button("Step over", "step-over", "arrow-right")
        self.in_button = _button("Step in", "step-in", "arrow-down")
        self.out_button = _button("Step out", "step-out", "arrow-up")
        self.detach_button = _button("Detach", "detach", "sign-out", "warning")
        self.toolbar = widgets.HBox([self.processes, self.attach_button, self.continue_button, self.pause_button,
                                     self.over_button, self.in_button, self.out_button, self.detach_button])
        self.source_title = widgets.HTML()
        self.condition = widgets.Text(placeholder="condition for new breakpoints (optional)",
                                      layout=widgets.Layout(width="22em"))
        self.condition.add_class("aml-dbg-condition")
        self.up_button = _button("▲", "scroll-up")
        self.down_button = _button("▼", "scroll-down")
        self.rows = [_Row(self._toggle_breakpoint) for _ in range(WINDOW)]
        self.source = widgets.VBox([widgets.HBox([self.source_title, self.up_button, self.down_button,
                                                  self.condition]), *self.rows])
        self.source.add_class("aml-dbg-source")
        self.stack = widgets.Select(options=[], rows=4, layout=widgets.Layout(width="22em"))
        self.stack.add_class("aml-dbg-stack")
        self.tree = widgets.VBox()
        self.tree.add_class("aml-dbg-variables")
        self.expression = widgets.Text(placeholder="evaluate in the selected frame (Enter)", continuous_update=False,
                                       layout=widgets.Layout(width="28em"))
        self.expression.add_class("aml-dbg-expression")
        self.history_html = widgets.HTML()
        self.history_html.add_class("aml-dbg-history")
        self.watch_input = widgets.Text(placeholder="add a watch expression (Enter)", continuous_update=False,
                                        layout=widgets.Layout(width="28em"))
        self.watch_input.add_class("aml-dbg-watch-input")
        self.watches_html = widgets.HTML()
        self.watches_html.add_class("aml-dbg-watches")
        self.full_value = widgets.Textarea(layout=widgets.Layout(width="100%", display="none"))
        self.full_value.add_class("aml-dbg-full-value")
        self.message = widgets.HTML()
        inspect = widgets.VBox([widgets.HTML("<b>call stack</b>"), self.stack, widgets.HTML("<b>variables</b>"),
                                self.tree, self.full_value])
        evaluate = widgets.VBox([widgets.HTML("<b>evaluate</b>"), self.expression, self.history_html,
                                 widgets.HTML("<b>watch</b>"), self.watch_input, self.watches_html])
        super().__init__([widgets.HTML(_STYLE), self.header, self.exception_html, self.toolbar, self.source,
                          widgets.HBox([inspect, evaluate]), self.message])
        self.add_class("aml-dbg")

        self.attach_button.on_click(lambda _b: self._do(self._attach))
        self.continue_button.on_click(lambda _b: self._do(debugger.continue_))
        self.pause_button.on_click(lambda _b: self._do(debugger.pause))
        self.over_button.on_click(lambda _b: self._do(debugger.step_over))
        self.in_button.on_click(lambda _b: self._do(debugger.step_in))
        self.out_button.on_click(lambda _b: self._do(debugger.step_out))
        self.detach_button.on_click(lambda _b: self._do(debugger.detach))
        self.up_button.on_click(lambda _b: self._scroll(-(WINDOW - 3)))
        self.down_button.on_click(lambda _b: self._scroll(WINDOW - 3))
        self.stack.observe(self._on_frame_selected, "index")
        self.processes.observe(self._on_process_selected, "value")
        self.expression.observe(self._on_expression, "value")
        self.watch_input.observe(self._on_watch, "value")

        self._unsubscribe = debugger.subscribe(self._on_change)
        self.refresh()
        self._refresher.start()

    # -- actions (worker thread) -----------------------------------------------------------
    def _do(self, action: Callable[[], Any], then: Callable[[Any], None] | None = None) -> None:
        self.message.value = ""

        def run() -> None:
            try:
                result = action()
            except DebuggerError as exc:
                self._say(str(exc))
                return
            except Exception as exc:  # a view must not die of a failed request
                self._say(f"{type(exc).__name__}: {exc}")
                return
            if then is not None:
                then(result)
            self._refresher.poke()

        try:
            self._executor.submit(run)
        except RuntimeError:  # the worker is gone with the session
            self._say(f"{self.debugger.label}: the debug session ended: {self.debugger.end_reason}")

    def _say(self, text: str) -> None:
        self.message.value = f"<span class='aml-dbg-message'>{html.escape(text)}</span>"

    def _attach(self) -> None:
        self.debugger.connect()

    def _toggle_breakpoint(self, line: int) -> None:
        path = self._source_path
        if not path:
            return
        condition = self.condition.value.strip() or None

        def toggle() -> None:
            if line in self.debugger.breakpoints.lines(path):
                self.debugger.clear(path, line)
            else:
                self.debugger.break_at(path, line, condition)

        self._do(toggle)

    def _scroll(self, delta: int) -> None:
        self._top = max(1, self._top + delta)
        self._refresher.poke()

    def _on_frame_selected(self, change: dict) -> None:
        index = change.get("new")
        if self._updating or index is None or index == self.debugger.frame_index:
            return
        self._do(lambda: self.debugger.select_frame(int(index)))

    def _on_process_selected(self, change: dict) -> None:
        pid = change.get("new")
        if self._updating or pid is None:
            return
        self._do(lambda: self.debugger.select(int(pid)))

    def _on_expression(self, change: dict) -> None:
        expression = str(change.get("new") or "").strip()
        if self._updating or not expression:
            return

        def evaluate() -> tuple[str, bool]:
            try:
                return self.debugger.inspect(expression).value, True
            except DebuggerError as exc:
                return str(exc), False

        def record(result: tuple[str, bool]) -> None:
            with self._lock:
                self._history.append((expression, *result))
                del self._history[:-HISTORY]
            self._updating = True
            try:
                self.expression.value = ""
            finally:
                self._updating = False

        self._do(evaluate, record)

    def _on_watch(self, change: dict) -> None:
        expression = str(change.get("new") or "").strip()
        if self._updating or not expression:
            return
        with self._lock:
            if expression not in self._watches:
                self._watches.append(expression)
        self._updating = True
        try:
            self.watch_input.value = ""
        finally:
            self._updating = False
        self._do(self._evaluate_watches)

    def _evaluate_watches(self) -> None:
        if self.debugger.state != STOPPED_STATE:
            return
        values = {}
        for expression in list(self._watches):
            try:
                values[expression] = self.debugger.inspect(expression).value
            except DebuggerError as exc:
                values[expression] = f"({exc})"
        with self._lock:
            self._watch_values = values

    def _expand(self, reference: int, start: int = 0) -> None:
        def load() -> Page:
            return self.debugger.load_page(reference, start)

        def remember(_page: Page) -> None:
            with self._lock:
                starts = self._expanded.setdefault(reference, [])
                if start not in starts:
                    starts.append(start)
                self._tree_dirty = True

        self._do(load, remember)

    def _collapse(self, reference: int) -> None:
        with self._lock:
            self._expanded.pop(reference, None)
            self._tree_dirty = True
        self._refresher.poke()

    def _show_all(self, variable: Variable) -> None:
        expression = variable.evaluate_name or variable.name

        def load() -> str:
            return self.debugger.inspect(expression, limit=SHOW_ALL_LIMIT, context="clipboard").value

        def show(value: str) -> None:
            self.full_value.value = value
            self.full_value.layout.display = None

        self._do(load, show)

    # -- drawing (refresher thread) --------------------------------------------------------
    def _on_change(self, _debugger: Any, change: str) -> None:
        if change.startswith("variables.") or change in ("frame", "state", "processes"):
            with self._lock:
                self._tree_dirty = True
        self._refresher.poke()

    def _finish(self) -> None:
        """The session ended: draw what it ended with, then let go of it."""
        try:
            self.refresh()
        except Exception:
            pass
        self._unsubscribe()
        self._executor.shutdown(wait=False)

    def refresh(self) -> None:
        debugger = self.debugger
        state = debugger.state
        stop = debugger.current_stop
        seen = (debugger.stop_serial, debugger.selected_pid)
        if stop is not None and seen != self._seen_stop:
            self._seen_stop = seen
            with self._lock:
                self._expanded.clear()
                self._tree_dirty = True
            if self._watches:
                self._do(self._evaluate_watches)
        self._draw_buttons(state)
        self._draw_processes()
        self._draw_source(stop)
        self._draw_stack(state)
        with self._lock:
            tree_dirty, self._tree_dirty = self._tree_dirty, False
        if tree_dirty:
            self._draw_tree(state)
        self._draw_evaluate()
        self._draw_exception(stop)
        self.header.value = (f"<b>debugger</b> {html.escape(debugger.label)} — <span class='aml-dbg-state' "
                             f"data-state='{state}'>{html.escape(status(debugger))}</span>")

    def _draw_buttons(self, state: str) -> None:
        stopped = state == STOPPED_STATE
        attached = state in ("running", STOPPED_STATE)
        self.attach_button.layout.display = None if state in (ARMED, "connecting") else "none"
        self.attach_button.disabled = state != ARMED
        for button in (self.continue_button, self.over_button, self.in_button, self.out_button):
            button.disabled = not stopped
        self.pause_button.disabled = not attached or stopped
        self.detach_button.disabled = state == ENDED_STATE
        self.detach_button.description = "Close" if state == ARMED else "Detach"

    def _draw_processes(self) -> None:
        processes = self.debugger.processes
        paused = [p for p in processes if p.state == "stopped" and p.pid is not None]
        self.processes.layout.display = None if len(processes) > 1 else "none"
        options = [(p.label, p.pid) for p in paused]
        if options != list(self.processes.options):
            self._updating = True
            try:
                self.processes.options = options
                selected = self._selected_pid()
                if selected in [pid for _label, pid in options]:
                    self.processes.value = selected
            finally:
                self._updating = False

    def _selected_pid(self) -> int | None:
        return self.debugger.selected_pid

    def _draw_source(self, stop: Any) -> None:
        debugger = self.debugger
        path, line = None, None
        frame = self._selected_frame()
        if frame is not None:
            path, line = frame.path, frame.line
        elif self._source_path is None and debugger.run is not None:
            path = str(debugger.run.spec.script_path)
        if path is not None and (path != self._source_path or line != self._current):
            self._source_path, self._current = path, line
            if line is not None:
                self._top = max(1, line - WINDOW // 2)
        lines = source_lines(self._source_path)
        if lines:
            self._top = min(self._top, max(1, len(lines) - WINDOW + 1))
        marks = set(debugger.breakpoints.lines(self._source_path)) if self._source_path else set()
        for offset, row in enumerate(self.rows):
            number = self._top + offset
            if number <= len(lines):
                row.show(number, lines[number - 1], number == self._current, number in marks)
            else:
                row.show(0, "", False, False)
        where = short(self._source_path, debugger.local_root) if self._source_path else "no source"
        missing = "" if lines or not self._source_path else " (not a local file)"
        self.source_title.value = f"<b class='aml-dbg-file'>{html.escape(where)}</b>{missing}"

    def _selected_frame(self) -> Any:
        frames = self.debugger.frames
        index = self.debugger.frame_index
        return frames[index] if 0 <= index < len(frames) else None

    def _draw_stack(self, state: str) -> None:
        options: list[tuple[str, int]] = []
        if state == STOPPED_STATE:
            for index, frame in enumerate(self.debugger.frames):
                where = short(frame.path, self.debugger.local_root)
                options.append((f"{frame.name} — {os.path.basename(where)}:{frame.line}", index))
        if options != list(self.stack.options) or (options and self.stack.index != self.debugger.frame_index):
            self._updating = True
            try:
                self.stack.options = options
                if options:
                    self.stack.index = min(self.debugger.frame_index, len(options) - 1)
            finally:
                self._updating = False

    def _draw_tree(self, state: str) -> None:
        old = self._tree_widgets
        rows: list[widgets.Widget] = []
        if state == STOPPED_STATE:
            page = self.debugger.locals_page
            if page is not None:
                self._tree_rows(page, 0, rows, self.debugger.loaded_page)
        self._tree_widgets = rows
        self.tree.children = rows or [widgets.HTML("<i>no variables (not stopped)</i>")]
        for widget in old:
            widget.close()

    def _tree_rows(self, page: Page, depth: int, rows: list[widgets.Widget],
                   lookup: Callable[[int, int], Page | None]) -> None:
        for variable in page.variables:
            rows.append(self._variable_row(variable, depth))
            with self._lock:
                starts = list(self._expanded.get(variable.reference, [])) if variable.reference else []
            for start in starts:
                child = lookup(variable.reference, start)
                if child is not None:
                    self._tree_rows(child, depth + 1, rows, lookup)
                    if child.more and start + PAGE_SIZE not in starts:
                        more = widgets.Button(description=f"more… (from {start + PAGE_SIZE})",
                                              layout=widgets.Layout(width="auto"))
                        more.add_class("aml-dbg-more")
                        more.on_click(lambda _b, r=variable.reference, s=start + PAGE_SIZE: self._expand(r, s))
                        rows.append(widgets.HBox([_spacer(1.4 * (depth + 1)), more]))
        if depth == 0 and page.more:
            rows.append(widgets.HTML(f"<i>… more than {PAGE_SIZE} locals</i>"))

    def _variable_row(self, variable: Variable, depth: int) -> widgets.HBox:
        parts: list[widgets.Widget] = [_spacer(1.4 * depth)] if depth else []
        if variable.expandable:
            with self._lock:
                open_ = variable.reference in self._expanded
            toggle = widgets.Button(description="▾" if open_ else "▸", tooltip="collapse" if open_ else "expand",
                                    layout=widgets.Layout(width="1.8em"))
            toggle.add_class("aml-dbg-toggle")
            toggle.on_click(lambda _b, r=variable.reference, o=open_: self._collapse(r) if o else self._expand(r))
            parts.append(toggle)
        else:
            parts.append(_spacer(1.8))
        kind = f" <i style='color:#888'>{html.escape(variable.type)}</i>" if variable.type else ""
        value = f" = {html.escape(variable.value)}" if variable.value else ""
        parts.append(widgets.HTML(f"<code><b>{html.escape(variable.name)}</b>{value}</code>{kind}"))
        if variable.cut:
            show_all = widgets.Button(description="show all", layout=widgets.Layout(width="auto"))
            show_all.add_class("aml-dbg-show-all")
            show_all.on_click(lambda _b, v=variable: self._show_all(v))
            parts.append(show_all)
        row = widgets.HBox(parts)
        row.add_class("aml-dbg-var")
        row.add_class(f"aml-dbg-var-{_css(variable.name)}")
        return row

    def _draw_evaluate(self) -> None:
        with self._lock:
            history = list(self._history)
            watches = [(w, self._watch_values.get(w, "")) for w in self._watches]
        self.history_html.value = "".join(
            f"<div class='aml-dbg-result'><code>&gt; {html.escape(expression)}</code><br><code"
            f"{'' if ok else ' style=color:#b00020'}>{html.escape(value)}</code></div>"
            for expression, value, ok in reversed(history))
        self.watches_html.value = "".join(
            f"<div class='aml-dbg-watch'><code>{html.escape(expression)} = {html.escape(value)}</code></div>"
            for expression, value in watches)

    def _draw_exception(self, stop: Any) -> None:
        if stop is None or stop.reason != "exception":
            self.exception_html.value = ""
            return
        try:
            info = self.debugger.exception()
        except DebuggerError:
            return
        self.exception_html.value = (f"<div class='aml-dbg-exception'>{html.escape(info.type)}: "
                                     f"{html.escape(info.message)}</div>")


def _spacer(em: float) -> widgets.HTML:
    return widgets.HTML("", layout=widgets.Layout(width=f"{em:g}em", min_width=f"{em:g}em"))


def _css(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)
