"""The debugger panel: ipywidgets, live, a thin view of a :class:`~.core.Debugger`.

Like the run panel, it never blocks the kernel and never touches the session from a widget
callback: clicks go to one worker thread per panel (DAP requests run there), and a
refresher thread redraws from the debugger's models when they say they changed, only by
setting widget traits (ipywidgets syncs those from any thread).

What it shows (JupyterLab's debugger sidebar where it applies: call stack, variables,
breakpoints, source): the state and the stop reason (an exception's type and message in plain
sight), a selector of the paused processes, Attach / Continue / Pause / Step over / Step in
/ Step out / Detach (Close once ended) enabled by state, where exceptions stop (uncaught by
default; raised and user-uncaught toggles), the whole source file highlighted, the current line
centred (source.py: sent once per file, a step moves only the marks; click a line number to
toggle a breakpoint — plain, conditional or a log point, marked distinctly — go to a line), the breakpoints list (enable/disable, remove), the call stack
(click a frame), the selected frame's variables as a lazy tree (every scope in pages of 100,
each row one line cut with an ellipsis, "show all" for the full text; arrays, tensors and
frames as shape/dtype/device with statistics on demand), an evaluate box with its history,
and watches re-evaluated at every stop (a changed one is marked). An evaluate that does not
return is said, with a Cancel button.
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

from ..dap.models import PAGE_SIZE, BreakpointState, Page, Variable
from ..frontend import Refresher
from .core import ARMED, ENDED_STATE, STOPPED_STATE, Debugger
from .errors import DebuggerError
from .highlight import highlighted_lines
from .paths import short
from .source import STYLE as SOURCE_STYLE
from .source import SourceView
from .summaries import SUMMARISED_TYPES
from .text import status

HISTORY = 20
SHOW_ALL_LIMIT = 1 << 30
CONSOLE_SHOWN = 12
LONG_VALUE = 60  # a value longer than this gets "show all" (the row shows it cut with an ellipsis)
EXCEPTION_TOGGLES = (("uncaught", "uncaught"), ("raised", "raised"), ("user-uncaught", "userUnhandled"))
BREAKPOINT_KINDS = (("breakpoint", "plain"), ("condition", "condition"), ("log point", "log"))
_STYLE = """<style>
.aml-dbg .aml-dbg-var, .aml-dbg .aml-dbg-result, .aml-dbg .aml-dbg-watch {overflow:hidden; flex-wrap:nowrap}
.aml-dbg .aml-dbg-value {flex:1 1 auto; min-width:0; overflow:hidden}
.aml-dbg .aml-dbg-value .widget-html-content, .aml-dbg .aml-dbg-oneline {white-space:nowrap; overflow:hidden;
  text-overflow:ellipsis; display:block}
.aml-dbg .aml-dbg-columns {width:100%; flex-wrap:nowrap}
.aml-dbg .aml-dbg-columns > .widget-vbox {flex:1 1 50%; min-width:0; overflow:hidden}
.aml-dbg .aml-dbg-history .widget-html-content, .aml-dbg .aml-dbg-watches .widget-html-content {overflow:hidden}
.aml-dbg .aml-dbg-watch.aml-dbg-changed {background:#fff3b0}
.aml-dbg .aml-dbg-summary {color:#0b5394}
.aml-dbg .aml-dbg-bplist .aml-dbg-bprow {height:1.8em; align-items:center; width:100%; max-width:100%}
.aml-dbg .aml-dbg-bplist .aml-dbg-bp-remove {flex:0 0 auto; min-width:2em}
.aml-dbg .aml-dbg-bplist .aml-dbg-value {flex:1 1 0; width:auto; min-width:0}
.aml-dbg .aml-dbg-bplist, .aml-dbg .aml-dbg-bplist .aml-dbg-bprow {box-sizing:border-box; padding-right:4px}
.aml-dbg .aml-dbg-var .widget-button {flex:0 0 auto}
.aml-dbg .aml-dbg-busy {color:#9a6700}
.aml-dbg .aml-dbg-plain-rows, .aml-dbg .aml-dbg-plain-rows .widget-html-content {display:block; min-width:0;
  overflow:hidden; line-height:1.7em}
.aml-dbg .aml-dbg-plain {height:1.7em; white-space:nowrap; overflow:hidden; text-overflow:ellipsis}
.aml-dbg .aml-dbg-plain code {background:transparent}
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
        self._watch_changed: set[str] = set()
        self._summaries: dict[str, str | None] = {}  # evaluate name -> one-line summary (arrays, tensors)
        self._drawn_breakpoints: list[tuple] = []
        self._summarised: Page | None = None
        self._seen_stop: tuple[int, int | None] = (0, None)
        self._source_path: str | None = None
        self._current: int | None = None
        self._followed: tuple = ()  # the stop and frame the source view last centred
        self._updating = False
        self._tree_widgets: list[tuple[widgets.Widget, tuple]] = []  # (row widget, its key) as drawn
        self._reusable: dict[tuple, widgets.Widget] = {}
        self._drawn: list[tuple[widgets.Widget, tuple]] = []
        self._row_html: dict[tuple, str] = {}  # the plain rows' HTML as last drawn: (name, value, type, depth)
        self._row_html_drawn: dict[tuple, str] = {}  # ... as this draw makes them

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
        self.exception_boxes = {}
        for label, name in EXCEPTION_TOGGLES:
            box = widgets.Checkbox(value=name in debugger.exception_filters, description=label, indent=False,
                                   layout=widgets.Layout(width="auto", margin="0 1em 0 0"))
            box.add_class(f"aml-dbg-exc-{label}")
            box.observe(self._on_exceptions, "value")
            self.exception_boxes[name] = box
        self.exceptions = widgets.HBox([widgets.HTML("stop on exceptions:&nbsp;"), *self.exception_boxes.values()])
        self.exceptions.add_class("aml-dbg-exceptions")
        self.source_title = widgets.HTML()
        self.kind = widgets.Dropdown(options=[label for label, _kind in BREAKPOINT_KINDS], value="breakpoint",
                                     layout=widgets.Layout(width="9em"))
        self.kind.add_class("aml-dbg-kind")
        self.condition = widgets.Text(placeholder="condition / log message ({expr} works) for the next click",
                                      layout=widgets.Layout(width="24em"))
        self.condition.add_class("aml-dbg-condition")
        self.goto = widgets.BoundedIntText(value=1, min=1, max=1 << 30, description="go to line",
                                           layout=widgets.Layout(width="11em"))
        self.goto.add_class("aml-dbg-goto")
        self.source_view = SourceView(self._toggle_breakpoint)
        self.source = widgets.VBox([widgets.HBox([self.source_title, self.goto, self.kind, self.condition]),
                                    self.source_view])
        self.source.add_class("aml-dbg-source")
        self.breakpoint_rows = widgets.VBox()
        self.breakpoint_rows.add_class("aml-dbg-bplist")
        self.busy_html = widgets.HTML()
        self.cancel_button = _button("Cancel evaluate", "cancel", "stop", "danger")
        self.cancel_button.layout.display = "none"
        self.busy_row = widgets.HBox([self.busy_html, self.cancel_button])
        self.stack = widgets.Select(options=[], rows=4, layout=widgets.Layout(width="22em"))
        self.stack.add_class("aml-dbg-stack")
        self.tree = widgets.VBox()
        self.tree.add_class("aml-dbg-variables")
        self._tree_note = widgets.HTML()  # shown instead of rows: one widget, its text set
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
        self.console_html = widgets.HTML()
        self.console_html.add_class("aml-dbg-console")
        inspect = widgets.VBox([widgets.HTML("<b>call stack</b>"), self.stack, widgets.HTML("<b>variables</b>"),
                                self.tree, self.full_value])
        evaluate = widgets.VBox([widgets.HTML("<b>evaluate</b>"), self.expression, self.busy_row, self.history_html,
                                 widgets.HTML("<b>watch</b>"), self.watch_input, self.watches_html,
                                 widgets.HTML("<b>breakpoints</b>"), self.breakpoint_rows,
                                 widgets.HTML("<b>debug console</b> (log points)"), self.console_html])
        columns = widgets.HBox([inspect, evaluate])
        columns.add_class("aml-dbg-columns")
        super().__init__([widgets.HTML(_STYLE + SOURCE_STYLE), self.header, self.exception_html, self.toolbar, self.exceptions,
                          self.source, columns, self.message])
        self.add_class("aml-dbg")

        self.attach_button.on_click(lambda _b: self._do(self._attach))
        self.continue_button.on_click(lambda _b: self._do(debugger.continue_))
        self.pause_button.on_click(lambda _b: self._do(debugger.pause))
        self.over_button.on_click(lambda _b: self._do(debugger.step_over))
        self.in_button.on_click(lambda _b: self._do(debugger.step_in))
        self.out_button.on_click(lambda _b: self._do(debugger.step_out))
        self.detach_button.on_click(self._on_detach)
        self.cancel_button.on_click(lambda _b: self._do(debugger.cancel_evaluate))
        self.goto.observe(self._on_goto, "value")
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

    def _on_detach(self, _button: Any) -> None:
        if self.debugger.ended:  # Close: the panel goes away
            self.layout.display = "none"
            self.close()
            return
        self._do(self.debugger.detach)

    def _on_exceptions(self, _change: dict) -> None:
        if self._updating:
            return
        chosen = [name for name, box in self.exception_boxes.items() if box.value]
        self._do(lambda: self.debugger.set_exceptions(chosen))

    def _toggle_breakpoint(self, line: int) -> None:
        """A click on a line number: remove its breakpoint, or set one of the chosen kind (the text is
        used once, then cleared: it never applies silently to later clicks)."""
        path = self._source_path
        if not path:
            return
        text = self.condition.value.strip() or None
        kind = dict(BREAKPOINT_KINDS)[self.kind.value]
        if kind != "plain" and not text:
            self._say(f"type the {self.kind.value}'s text first (or choose 'breakpoint')")
            return

        def toggle() -> None:
            if line in self.debugger.breakpoints.lines(path):
                self.debugger.clear(path, line)
            elif kind == "log":
                self.debugger.break_at(path, line, log_message=text)
            else:
                self.debugger.break_at(path, line, text if kind == "condition" else None)

        self._updating = True
        try:
            self.condition.value = ""
            self.kind.value = "breakpoint"
        finally:
            self._updating = False
        self._do(toggle)

    def _on_goto(self, change: dict) -> None:
        if self._updating or not change.get("new"):
            return
        self.source_view.go_to(int(change["new"]))

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
                result = self.debugger.inspect(expression)
            except DebuggerError as exc:
                return str(exc), False
            if result.type in SUMMARISED_TYPES:  # an array, a tensor, a frame: its summary, not its repr
                try:
                    return self.debugger.summaries([expression]).get(expression) or result.value, True
                except DebuggerError:
                    pass
            return result.value, True

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

    def _evaluate_watches(self, new_stop: bool = False) -> None:
        """Evaluate every watch; at a new stop, mark those whose value changed since the last one."""
        if self.debugger.state != STOPPED_STATE:
            return
        values = {}
        for expression in list(self._watches):
            try:
                values[expression] = self.debugger.inspect(expression).value
            except DebuggerError as exc:
                values[expression] = f"({exc})"
        with self._lock:
            if new_stop:
                self._watch_changed = {w for w, v in values.items()
                                       if w in self._watch_values and self._watch_values[w] != v}
            self._watch_values = values

    def _summarise(self, page: Page | None = None) -> None:
        """One evaluate for the shown arrays/tensors/frames of a page (the stop's first page of locals,
        or one just loaded): their one-line summaries."""
        page = page if page is not None else self.debugger.locals_page
        if page is None:
            return
        names = [v.evaluate_name or v.name for v in page.variables if v.type in SUMMARISED_TYPES]
        if not names:
            return
        summaries = self.debugger.summaries(names)
        with self._lock:
            self._summaries.update(summaries)
            self._tree_dirty = True

    def _statistics(self, variable: Variable) -> None:
        expression = variable.evaluate_name or variable.name

        def show(text: str) -> None:
            self.full_value.value = f"{expression}: {text}"
            self.full_value.layout.display = None

        self._do(lambda: self.debugger.statistics(expression), show)

    def _expand(self, reference: int, start: int = 0) -> None:
        def load() -> Page:
            return self.debugger.load_page(reference, start)

        def remember(page: Page) -> None:
            with self._lock:
                starts = self._expanded.setdefault(reference, [])
                if start not in starts:
                    starts.append(start)
                self._tree_dirty = True
            if any(v.type in SUMMARISED_TYPES for v in page.variables):
                self._do(lambda: self._summarise(page))

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
                self._do(lambda: self._evaluate_watches(new_stop=True))
        page = debugger.locals_page
        if page is not None and page is not self._summarised:
            self._summarised = page
            with self._lock:
                self._summaries = {}
            if any(v.type in SUMMARISED_TYPES for v in page.variables):
                self._do(self._summarise)
        self._draw_buttons(state)
        self._draw_exceptions()
        self._draw_processes()
        self._draw_source(stop)
        self._draw_stack(state)
        with self._lock:
            tree_dirty, self._tree_dirty = self._tree_dirty, False
        if tree_dirty:
            self._draw_tree(state)
        self._draw_evaluate()
        self._draw_breakpoints()
        self._draw_console()
        self._draw_busy()
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
        self.detach_button.disabled = False
        self.detach_button.description = "Close" if state in (ARMED, ENDED_STATE) else "Detach"
        self.detach_button.tooltip = "close this panel" if state == ENDED_STATE else self.detach_button.description

    def _draw_exceptions(self) -> None:
        chosen = set(self.debugger.exception_filters)
        self._updating = True
        try:
            for name, box in self.exception_boxes.items():
                if box.value != (name in chosen):
                    box.value = name in chosen
        finally:
            self._updating = False

    def _draw_console(self) -> None:
        lines = self.debugger.console[-CONSOLE_SHOWN:]
        text = "".join(f"<code class='aml-dbg-oneline'>{html.escape(line)}</code>" for line in lines)
        if self.console_html.value != text:
            self.console_html.value = text

    def _draw_busy(self) -> None:
        busy = self.debugger.busy if self.debugger.state == STOPPED_STATE else None
        self.busy_html.value = (f"<span class='aml-dbg-busy'>{html.escape(busy)} is still running in the debuggee "
                                f"(it holds the stopped thread)</span>") if busy else ""
        self.cancel_button.layout.display = None if busy else "none"

    def _draw_breakpoints(self) -> None:
        """The breakpoints list: file:line, its condition or log message, enabled, remove."""
        listed = self.debugger.breakpoint_list()
        key = [(path, state.line, state.condition, state.log_message, state.verified, enabled)
               for path, state, enabled in listed]
        if key == self._drawn_breakpoints:
            return
        self._drawn_breakpoints = key
        old = list(self.breakpoint_rows.children)
        rows = [self._breakpoint_row(path, state, enabled) for path, state, enabled in listed]
        self.breakpoint_rows.children = rows or [widgets.HTML("<i>none (click a line number)</i>")]
        for widget in old:
            widget.close()

    def _breakpoint_row(self, path: str, state: BreakpointState, enabled: bool) -> widgets.HBox:
        where = f"{os.path.basename(short(path, self.debugger.local_root))}:{state.line}"
        detail = (f" log “{state.log_message}”" if state.log_message else
                  f" if {state.condition}" if state.condition else "")
        verdict = "" if state.verified is not False else f" (not verified{': ' + state.message if state.message else ''})"
        box = widgets.Checkbox(value=enabled, indent=False, layout=widgets.Layout(width="1.6em"), tooltip="enabled")
        box.add_class("aml-dbg-bp-enabled")
        box.observe(lambda change, p=path, n=state.line: self._do(
            lambda: self.debugger.enable(p, n, bool(change["new"]))), "value")
        remove = widgets.Button(description="✕", tooltip="remove", layout=widgets.Layout(width="2em"))
        remove.add_class("aml-dbg-bp-remove")
        remove.on_click(lambda _b, p=path, n=state.line: self._do(lambda: self.debugger.clear(p, n)))
        text = widgets.HTML(f"<span class='aml-dbg-oneline aml-dbg-bp-{state.kind}'><code>{html.escape(where)}</code>"
                            f"{html.escape(detail + verdict)}</span>")
        text.add_class("aml-dbg-value")
        row = widgets.HBox([box, text, remove])
        row.add_class("aml-dbg-bprow")
        row.add_class(f"aml-dbg-bprow-{state.line}")
        return row

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
        """The file is sent once (SourceView.load); a step moves only the marks and the scroll."""
        debugger = self.debugger
        path, line = None, None
        frame = self._selected_frame()
        if frame is not None:
            path, line = frame.path, frame.line
        elif self._source_path is None and debugger.run is not None:
            path = str(debugger.run.spec.script_path)
        if path is not None and (path != self._source_path or line != self._current):
            self._source_path, self._current = path, line
        if frame is None and self._current is not None and debugger.state != STOPPED_STATE:
            self._current = None  # running or ended: no line is current
        view = self.source_view
        if self._source_path != view.path:
            view.load(self._source_path, highlighted_lines(self._source_path))
        kinds = {s.line: s.kind for s in debugger.breakpoints.by_path.get(self._source_path or "", ())}
        followed = (debugger.stop_serial, debugger.selected_pid, debugger.frame_index, self._source_path)
        follow = self._current is not None and followed != self._followed
        if follow:
            self._followed = followed
        view.show(self._current, kinds, follow)
        where = short(self._source_path, debugger.local_root) if self._source_path else "no source"
        missing = "" if view.line_count or not self._source_path else " (not a local file)"
        title = f"<b class='aml-dbg-file'>{html.escape(where)}</b>{missing}"
        if self.source_title.value != title:
            self.source_title.value = title

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
        """Redraw the variables: a row whose look did not change is the same widget (no new comm), a
        block of plain rows or a "more…" button is reused with new contents; the rest is closed.

        While no rows show (running between two stops, the locals loading) the last stop's rows are
        kept, hidden, for the next stop to reuse: a step then makes no widget, it sets values."""
        old = self._tree_widgets
        self._reusable = {key: widget for widget, key in old}
        self._drawn = []
        self._row_html_drawn = {}
        if state == STOPPED_STATE:
            page = self.debugger.locals_page
            if page is not None:
                self._tree_rows(page, 0, [], self.debugger.loaded_page)
        rows = [widget for widget, _key in self._drawn]
        if not rows:
            self._draw_tree_note(state)
            if state != ENDED_STATE:
                return  # the rows wait (unshown) for the next stop
        self._tree_widgets = self._drawn
        self._row_html = self._row_html_drawn
        self.tree.children = rows or [self._tree_note]
        kept = {id(widget) for widget in rows}
        for widget, _key in old:
            if id(widget) not in kept:
                widget.close()

    def _draw_tree_note(self, state: str) -> None:
        """Why no variables show: the locals' note (loading, not answered) or not stopped."""
        note = self.debugger.locals_note if state == STOPPED_STATE else ""
        empty = f"<i>{html.escape(note)}</i>" if note else "<i>no variables (not stopped)</i>"
        if self._tree_note.value != empty:
            self._tree_note.value = empty
        if list(self.tree.children) != [self._tree_note]:
            self.tree.children = [self._tree_note]

    def _reuse(self, key: tuple) -> widgets.Widget | None:
        return self._reusable.pop(key, None)

    def _tree_rows(self, page: Page, depth: int, rows: list[widgets.Widget],
                   lookup: Callable[[int, int], Page | None]) -> None:
        """The locals (first page, and the pages asked for with "more…"), children under expanded rows."""
        with self._lock:
            starts = [0, *self._expanded.get(page.reference, [])]
        self._children_rows(page.reference, depth, rows, lookup, starts)

    def _children_rows(self, reference: int, depth: int, rows: list[widgets.Widget],
                       lookup: Callable[[int, int], Page | None], starts: list[int]) -> None:
        last: Page | None = None
        plain: list[str] = []  # rows with nothing to click: one HTML widget for a run of them (cheap to redraw)
        for start in sorted(set(starts)):
            page = lookup(reference, start)
            if page is None:
                continue
            for variable in page.variables:
                row = self._plain_row(variable, depth)
                if row is not None:
                    plain.append(row)
                    continue
                self._flush(plain)
                self._add_variable_row(variable, depth)
                with self._lock:
                    inner = list(self._expanded.get(variable.reference, [])) if variable.reference else []
                if inner:
                    self._children_rows(variable.reference, depth + 1, rows, lookup, inner)
            last = page
        self._flush(plain)
        if last is not None and last.more and last.start + PAGE_SIZE not in starts:
            start = last.start + PAGE_SIZE
            key = ("more", depth, start, len(self._drawn))
            row = self._reuse(key)
            if row is None:
                more = widgets.Button(description=f"more… (from {start})", layout=widgets.Layout(width="auto"))
                more.add_class("aml-dbg-more")
                more.on_click(lambda b: self._expand(*b.aml_target))
                row = widgets.HBox([_spacer(1.4 * depth + 1.8), more])
            row.children[1].aml_target = (reference, start)  # type: ignore[attr-defined]
            self._drawn.append((row, key))

    def _flush(self, plain: list[str]) -> None:
        """A run of plain rows as one HTML block (the block at this position is reused)."""
        if not plain:
            return
        key = ("plain", len(self._drawn))
        block = self._reuse(key)
        if block is None:
            block = widgets.HTML()
            block.add_class("aml-dbg-plain-rows")
        text = "".join(plain)
        if block.value != text:  # type: ignore[attr-defined]
            block.value = text  # type: ignore[attr-defined]
        self._drawn.append((block, key))
        plain.clear()

    def _add_variable_row(self, variable: Variable, depth: int) -> None:
        with self._lock:
            summary = self._summaries.get(variable.evaluate_name or variable.name)
            open_ = variable.reference in self._expanded
        key = ("var", depth, variable.name, variable.value, variable.type, variable.cut, variable.expandable,
               summary, open_)
        row = self._reuse(key)
        if row is None:
            row = self._variable_row(variable, depth)
        for child in row.children:  # type: ignore[attr-defined]
            child.aml_variable = variable  # what its buttons act on (the reference is new at every stop)
        self._drawn.append((row, key))

    def _plain_row(self, variable: Variable, depth: int) -> str | None:
        """A row with no button (not expandable, short, not summarised) as HTML; ``None`` otherwise."""
        with self._lock:
            summarised = (variable.evaluate_name or variable.name) in self._summaries
        if variable.expandable or variable.cut or len(variable.value) > LONG_VALUE or summarised \
                or variable.type in SUMMARISED_TYPES:
            return None
        key = (variable.name, variable.value, variable.type, depth)
        row = self._row_html.get(key)
        if row is None:  # a row not drawn at the last stop (most names keep their values from step to step)
            kind = f" <i style='color:#888'>{html.escape(variable.type)}</i>" if variable.type else ""
            value = f" = {html.escape(variable.value)}" if variable.value else ""
            row = (f"<div class='aml-dbg-var aml-dbg-plain aml-dbg-var-{_css(variable.name)}' "
                   f"style='padding-left:{1.4 * depth + 1.8:g}em' title='{html.escape(variable.value, quote=True)}'>"
                   f"<code><b>{html.escape(variable.name)}</b>{value}</code>{kind}</div>")
        self._row_html_drawn[key] = row
        return row

    def _variable_row(self, variable: Variable, depth: int) -> widgets.HBox:
        """One line, whatever the value: cut with an ellipsis, the full text on demand."""
        parts: list[widgets.Widget] = [_spacer(1.4 * depth)] if depth else []
        if variable.expandable:
            with self._lock:
                open_ = variable.reference in self._expanded
            toggle = widgets.Button(description="▾" if open_ else "▸", tooltip="collapse" if open_ else "expand",
                                    layout=widgets.Layout(width="1.8em", min_width="1.8em"))
            toggle.add_class("aml-dbg-toggle")
            toggle.on_click(lambda b, o=open_: self._collapse(b.aml_variable.reference) if o
                            else self._expand(b.aml_variable.reference))
            parts.append(toggle)
        else:
            parts.append(_spacer(1.8))
        with self._lock:
            summary = self._summaries.get(variable.evaluate_name or variable.name)
        kind = f" <i style='color:#888'>{html.escape(variable.type)}</i>" if variable.type and not summary else ""
        if summary:
            value = f" = <span class='aml-dbg-summary'>{html.escape(summary)}</span>"
        else:
            value = f" = {html.escape(variable.value)}" if variable.value else ""
        title = html.escape(summary or variable.value[:2000], quote=True)
        text = widgets.HTML(f"<span class='aml-dbg-oneline' title='{title}'><code><b>{html.escape(variable.name)}"
                            f"</b>{value}</code>{kind}</span>")
        text.add_class("aml-dbg-value")
        parts.append(text)
        if summary:
            stats = widgets.Button(description="stats", tooltip="min/max/mean, NaN/Inf, a preview (computed in the run)",
                                   layout=widgets.Layout(width="auto", min_width="3.5em"))
            stats.add_class("aml-dbg-stats")
            stats.on_click(lambda b: self._statistics(b.aml_variable))
            parts.append(stats)
        elif variable.cut or len(variable.value) > LONG_VALUE:
            show_all = widgets.Button(description="show all", layout=widgets.Layout(width="auto", min_width="5em"))
            show_all.add_class("aml-dbg-show-all")
            show_all.on_click(lambda b: self._show_all(b.aml_variable))
            parts.append(show_all)
        row = widgets.HBox(parts)
        row.add_class("aml-dbg-var")
        row.add_class(f"aml-dbg-var-{_css(variable.name)}")
        return row

    def _draw_evaluate(self) -> None:
        with self._lock:
            history = list(self._history)
            watches = [(w, self._watch_values.get(w, ""), w in self._watch_changed) for w in self._watches]
        self.history_html.value = "".join(
            f"<div class='aml-dbg-result'><code class='aml-dbg-oneline'>&gt; {html.escape(expression)}</code>"
            f"<code class='aml-dbg-oneline' title='{html.escape(value[:2000], quote=True)}'"
            f"{'' if ok else ' style=color:#b00020'}>{html.escape(value)}</code></div>"
            for expression, value, ok in reversed(history))
        self.watches_html.value = "".join(
            f"<div class='aml-dbg-watch{' aml-dbg-changed' if changed else ''}'"
            f"{' title=' + chr(39) + 'changed since the last stop' + chr(39) if changed else ''}>"
            f"<code class='aml-dbg-oneline'>{'● ' if changed else ''}{html.escape(expression)} = {html.escape(value)}"
            f"</code></div>" for expression, value, changed in watches)

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
