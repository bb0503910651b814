"""The debugger panel's widgets, driven as a user would (button clicks, text entered, a frame
chosen) against a real run, outside a browser: what the page would show is in the widgets'
traits. The run panel's *Debug here* opens it unattached; a breakpoint clicked in it is armed
before the run is released. (tests/test_browser.py does the same in JupyterLab.)"""

from __future__ import annotations

import re

import ipywidgets as widgets
import pytest
from conftest import wait_for

import aml_magics

pytest.importorskip("ipywidgets")

from aml_magics.debugger.panel import DebuggerPanel  # noqa: E402
from aml_magics.debugger.paths import OUTSIDE_SCRIPT  # noqa: E402
from aml_magics.views.widget import DebugRunPanel  # noqa: E402

SCRIPT = """\
import os
def scale(value, factor):
    scaled = value * factor
    return scaled
values = list(range(250))
text = "z" * 5000
total = sum(values[:5])
result = scale(total, 3)
print("result", result, flush=True)
"""
TOTAL_LINE = 7
CALL_LINE = 8


def _click(panel: DebuggerPanel, line: int) -> None:
    """A click on line ``line``'s number in the source view's gutter."""
    panel.source_view.gutter.value = line


def _mark(panel: DebuggerPanel, line: int) -> str | None:
    """Line ``line``'s breakpoint mark (plain, condition, log) as the view's style rules draw it."""
    view = panel.source_view
    kind = view.kinds.get(line)
    if kind is not None:
        assert f"label:nth-child({line}) {{" in view.marks.value
    return kind


def _current(panel: DebuggerPanel) -> int | None:
    view = panel.source_view
    if view.current is not None:
        assert f".aml-dbg-lines > div:nth-child({view.current})," in view.marks.value
    return view.current


def _var(panel: DebuggerPanel, name: str):
    return next(w for w in panel.tree.children if f"aml-dbg-var-{name}" in w._dom_classes)


def _has(panel: DebuggerPanel, name: str) -> bool:
    """A row for ``name``: a widget row, or a plain row inside a block of them."""
    return any(f"aml-dbg-var-{name}" in w._dom_classes or f"aml-dbg-var-{name}'" in getattr(w, "value", "")
               for w in panel.tree.children)


def _text(panel: DebuggerPanel, name: str) -> str:
    """The HTML of ``name``'s row (either kind)."""
    for w in panel.tree.children:
        if f"aml-dbg-var-{name}" in w._dom_classes:
            return " ".join(c.value for c in w.children if hasattr(c, "value") and isinstance(c.value, str))
        value = getattr(w, "value", "")
        marker = f"aml-dbg-var-{name}'"
        if marker in value:
            return value[value.index(marker):].split("</div>", 1)[0]
    return ""


def _debug_here(run) -> tuple[DebugRunPanel, DebuggerPanel]:
    """The run panel's *Debug here*, clicked once it is enabled: the run panel and the debugger panel it opened."""
    run_panel = DebugRunPanel(run)
    wait_for(lambda: not run_panel.debug_button.disabled, 10, "Debug here enabled")
    run_panel.debug_button.click()
    return run_panel, run_panel.children[-1]


def test_debug_here_breakpoint_attach_inspect_step_continue(workdir):
    run = aml_magics.submit(code=SCRIPT, name="panel", port=0, timeout=60)
    run.wait_for_endpoint(30)
    run_panel, panel = _debug_here(run)
    assert isinstance(panel, DebuggerPanel)
    dbg = panel.debugger
    try:
        assert dbg.state == "armed" and run.state == "waiting_for_debugger"
        assert "panel.py" in panel.source_title.value  # the run's script, to click breakpoints in
        assert not panel.attach_button.disabled and panel.continue_button.disabled
        _click(panel, TOTAL_LINE)
        wait_for(lambda: _mark(panel, TOTAL_LINE) == "plain", 10, "breakpoint mark")
        assert dbg.breakpoints.lines(str(run.spec.script_path)) == [TOTAL_LINE]

        panel.attach_button.click()
        wait_for(lambda: dbg.state != "armed", 10, "attaching")
        stop = dbg.wait_stopped(30)
        assert stop.line == TOTAL_LINE  # armed before release: the short script could not run past it
        wait_for(lambda: _current(panel) == TOTAL_LINE, 10, "current line")
        wait_for(lambda: "data-state='stopped'" in panel.header.value, 10, "stopped header")
        assert "stopped (breakpoint) at panel.py:7" in panel.header.value
        assert panel.attach_button.layout.display == "none" and not panel.over_button.disabled
        assert panel.stack.options[0][0].startswith("<module> — panel.py:7")

        # the variables tree: lazy, paged, long values cut with "show all"
        wait_for(lambda: any("aml-dbg-var-values" in w._dom_classes for w in panel.tree.children), 10, "locals")
        values_row = _var(panel, "values")
        toggle = next(w for w in values_row.children if "aml-dbg-toggle" in getattr(w, "_dom_classes", ()))
        toggle.click()
        wait_for(lambda: _has(panel, "097"), 10, "children")  # after debugpy's two groups: one page of 100
        assert not _has(panel, "098")
        more = next(w.children[1] for w in panel.tree.children if isinstance(w, type(values_row))
                    and len(w.children) > 1 and "aml-dbg-more" in getattr(w.children[1], "_dom_classes", ()))
        more.click()
        wait_for(lambda: _has(panel, "099") and _has(panel, "len__"), 10, "the next page")
        text_row = _var(panel, "text")
        assert any("<code><b>text</b> = &#x27;zzz" in w.value and "…" in w.value
                   for w in text_row.children if hasattr(w, "value"))
        show_all = next(w for w in text_row.children if "aml-dbg-show-all" in getattr(w, "_dom_classes", ()))
        show_all.click()
        wait_for(lambda: len(panel.full_value.value) == 5002, 10, "the whole value")

        # evaluate with history; a watch re-evaluated at every stop
        panel.expression.value = "len(values) * 2"
        wait_for(lambda: "len(values) * 2" in panel.history_html.value and ">500<" in panel.history_html.value,
                 10, "evaluated")
        panel.expression.value = "nope"
        wait_for(lambda: "NameError: name &#x27;nope&#x27; is not defined" in panel.history_html.value, 10, "error")
        panel.watch_input.value = "total"
        wait_for(lambda: "total = (NameError" in panel.watches_html.value, 10, "watch before the line ran")

        sent: list[str] = []  # the file's lines go to the page once: a step moves only the marks
        panel.source_view.code.observe(lambda change: sent.append(change["new"]), "value")
        panel.over_button.click()
        wait_for(lambda: _current(panel) == CALL_LINE, 10, "stepped")
        wait_for(lambda: "total = 10" in panel.watches_html.value, 10, "watch re-evaluated at the stop")
        panel.in_button.click()
        wait_for(lambda: panel.stack.options and panel.stack.options[0][0].startswith("scale"), 10, "stepped in")
        panel.stack.index = 1  # click the caller's frame
        wait_for(lambda: dbg.frame_index == 1 and _current(panel) == CALL_LINE, 10,
                 "caller frame selected")
        wait_for(lambda: _has(panel, "total"), 10, "its locals")

        assert sent == [] and panel.source_view.follows >= 3  # three stops centred, the file never resent
        _click(panel, TOTAL_LINE)  # toggle the breakpoint off while attached
        wait_for(lambda: dbg.breakpoints.lines(str(run.spec.script_path)) == [], 10, "breakpoint cleared")
        panel.continue_button.click()
        assert run.wait(30) == "completed"
        wait_for(lambda: "data-state='ended'" in panel.header.value, 10, "ended header")
        assert "the run ended (completed)" in panel.header.value
        assert panel.continue_button.disabled and panel.detach_button.description == "Close"
        assert _current(panel) is None and "background:#fff3b0" not in panel.source_view.marks.value  # none once ended
        panel.detach_button.click()  # Close
        assert panel.layout.display == "none"
    finally:
        dbg.detach()
    assert "result 30" in run.logs


def test_post_mortem_panel_shows_the_exception(workdir, monkeypatch):
    run = aml_magics.submit(code="items = []\nfirst = items[0]\n", name="pmpanel", port=0, timeout=0,
                            post_mortem=True)
    wait_for(lambda: run.state == "crashed_waiting_for_debugger", 30, "crashed")
    dbg = run.attach()
    assert f"<Debugger run {run.id} rank 0 " in dbg._repr_mimebundle_()["text/plain"]  # text outside Jupyter
    monkeypatch.setenv("AML_MAGICS_VIEW", "widget")
    bundle = dbg._repr_mimebundle_()  # in Jupyter: the panel, with the text beside it
    assert "application/vnd.jupyter.widget-view+json" in bundle and "text/plain" in bundle
    panel = DebuggerPanel(dbg)
    try:
        dbg.wait_stopped(30)
        wait_for(lambda: "IndexError: list index out of range" in panel.exception_html.value, 10, "exception shown")
        assert "stopped (exception) at pmpanel.py:2" in panel.header.value
        panel.detach_button.click()
        assert run.wait(30) == "failed"
        wait_for(lambda: "detached" in panel.header.value, 10, "detached")
    finally:
        dbg.detach()


def test_debug_here_on_two_ranks_lists_the_paused_processes(workdir):
    code = "import os\nrank = int(os.environ['RANK'])\nvalue = rank * 10\nprint('rank', rank, value)\n"
    run = aml_magics.submit(code=code, name="twor", port=0, timeout=60, procs_per_node=2)
    wait_for(lambda: len(run.endpoints) == 2, 30, "both endpoints")
    run_panel, panel = _debug_here(run)
    dbg = panel.debugger
    try:
        _click(panel, 4)
        wait_for(lambda: dbg.breakpoints.lines(str(run.spec.script_path)) == [4], 10, "breakpoint")
        panel.attach_button.click()
        wait_for(lambda: len(dbg.paused) == 2, 30, "both ranks paused")
        assert dbg.label == f"run {run.id} ranks 0,1"
        assert sorted(p.rank for p in dbg.paused) == [0, 1]
        # all-stop: the first rank at the breakpoint paused the other wherever it was (a line
        # before 4, or still in the node before the script: never a runpy frame)
        stops = {p.rank: p.stop for p in dbg.paused}
        assert any(s.reason == "breakpoint" and s.place == "twor.py:4" for s in stops.values()), stops
        for stop in stops.values():
            assert stop.place == OUTSIDE_SCRIPT or re.fullmatch(r"twor\.py:[1-4]", stop.place), stops
        for process in dbg.paused:  # the paused one runs on to the breakpoint: the selector follows
            if process.stop.place != "twor.py:4":
                panel.processes.value = process.pid
                wait_for(lambda p=process: dbg.selected_pid == p.pid, 10, "the paused rank selected")
                panel.continue_button.click()
                wait_for(lambda p=process: any(q.pid == p.pid and q.stop.place == "twor.py:4" for q in dbg.paused),
                         30, "the paused rank at the breakpoint")
        wait_for(lambda: len(panel.processes.options) == 2
                 and all("twor.py:4" in label for label, _pid in panel.processes.options), 10, "the selector")
        assert panel.processes.layout.display is None
        labels = [label for label, _pid in panel.processes.options]
        assert labels[0].startswith("rank 0 · pid ") and labels[1].startswith("rank 1 · pid ")
        rank1 = next(p for p in dbg.paused if p.rank == 1)
        panel.processes.value = rank1.pid  # choose rank 1 in the selector
        wait_for(lambda: dbg.service.process.get("systemProcessId") == rank1.pid, 10, "rank 1 selected")
        wait_for(lambda: "= 10" in _text(panel, "value"), 10, "rank 1's locals")
        assert dbg.locals()["value"] == "10"
        panel.continue_button.click()
        wait_for(lambda: [p.rank for p in dbg.paused] == [0], 30, "rank 0 still paused")
        assert dbg.wait_stopped(5).pid != rank1.pid and dbg.locals()["value"] == "0"
        panel.continue_button.click()
        assert run.wait(30) == "completed"
        wait_for(lambda: dbg.ended, 10, "ended")
    finally:
        dbg.detach()


WIDE = """\
import numpy as np
def watched(n):
    step = n * 2
    return step
big = list(range(1000))
s = "x" * 100000
grid = np.arange(12, dtype="float64").reshape(3, 4)
""" + "".join(f"name_{i:03d} = {i}\n" for i in range(400)) + """\
for k in range(3):
    watched(k)
print("done", flush=True)
"""
WATCHED_LINE = 4  # return step
LOOP_LINE = 408  # for k in range(3)


def _button(panel: DebuggerPanel, css: str):
    found = [w for row in panel.tree.children for w in getattr(row, "children", ()) if css in getattr(w, "_dom_classes", ())]
    return found[0] if found else widgets.Button()


def test_panel_pages_400_names_cuts_long_values_summarises_arrays_and_lists_breakpoints(workdir):
    pytest.importorskip("numpy")
    run = aml_magics.submit(code=WIDE, name="wide", port=0, timeout=60)
    dbg = run.attach(connect=False)
    panel = DebuggerPanel(dbg)
    try:
        assert [name for name, box in panel.exception_boxes.items() if box.value] == ["uncaught"]
        panel.exception_boxes["raised"].value = True  # armed with the attach
        wait_for(lambda: dbg.exception_filters == ("uncaught", "raised"), 10, "raised toggled on")
        panel.exception_boxes["raised"].value = False
        wait_for(lambda: dbg.exception_filters == ("uncaught",), 10, "raised toggled off")

        panel.goto.value = LOOP_LINE  # go to a line far down: one step, not 33 clicks
        wait_for(lambda: panel.source_view.target == LOOP_LINE, 10, "went to the line")
        assert f"div:nth-child({LOOP_LINE}) {{scroll-snap-align:center}}" in panel.source_view.marks.value
        assert "<span style=" in panel.source_view.code.value.split(f"aml-dbg-line-{LOOP_LINE}'>")[1].split("</div>")[0]
        _click(panel, LOOP_LINE)  # plain
        panel.kind.value, panel.condition.value = "condition", "k == 1"
        _click(panel, LOOP_LINE + 1)
        wait_for(lambda: len(dbg.breakpoint_list()) == 2, 10, "two breakpoints")
        assert panel.condition.value == "" and panel.kind.value == "breakpoint"  # used once, never again silently
        panel.goto.value = WATCHED_LINE
        wait_for(lambda: panel.source_view.target == WATCHED_LINE, 10, "back up")
        panel.kind.value, panel.condition.value = "log point", "step is {step}"
        _click(panel, WATCHED_LINE)
        wait_for(lambda: len(dbg.breakpoint_list()) == 3, 10, "the log point")
        wait_for(lambda: _mark(panel, WATCHED_LINE) == "log", 10, "log point mark")
        wait_for(lambda: len(panel.breakpoint_rows.children) == 3, 10, "the breakpoints list")
        listed = [r.children[1].value for r in panel.breakpoint_rows.children]
        assert "wide.py:4</code> log “step is {step}”" in listed[0] and "if k == 1" in listed[2]

        run.wait_for_endpoint(30)
        dbg.connect()
        stop = dbg.wait_stopped(30)
        assert stop.line == LOOP_LINE
        wait_for(lambda: _mark(panel, LOOP_LINE + 1) == "condition", 10, "condition mark")
        assert _mark(panel, LOOP_LINE) == "plain"

        # long values: one line each, show all on demand; arrays as their summary, stats on demand
        wait_for(lambda: _has(panel, "grid") and "ndarray (3, 4) float64" in _var(panel, "grid").children[-2].value,
                 15, "the array's summary")
        assert "aml-dbg-show-all" in _var(panel, "big").children[-1]._dom_classes
        _var(panel, "grid").children[-1].click()
        wait_for(lambda: "grid: NaN 0 Inf 0; min 0 max 11 mean 5.5" in panel.full_value.value, 10, "statistics")

        # 400 names: the first 100 shown, the rest reachable page by page
        assert not _has(panel, "name_399")
        for start in (100, 200, 300, 400):
            wait_for(lambda s=start: _button(panel, "aml-dbg-more").description == f"more… (from {s})", 10,
                     f"the page from {start}")
            _button(panel, "aml-dbg-more").click()
        wait_for(lambda: _has(panel, "name_399") and _has(panel, "s"), 15, "the 400th name by paging")
        assert "aml-dbg-show-all" in _var(panel, "s").children[-1]._dom_classes

        # a disabled breakpoint stays listed and stops nothing; a watch that changed is marked
        enabled = panel.breakpoint_rows.children[0].children[0]
        panel.watch_input.value = "k"
        wait_for(lambda: "k = " in panel.watches_html.value, 10, "watch")
        panel.breakpoint_rows.children[1].children[0].value = False  # the plain one at the loop
        wait_for(lambda: [e for _p, _s, e in dbg.breakpoint_list()] == [True, False, True], 10, "disabled")
        serial = dbg.stop_serial
        panel.continue_button.click()
        wait_for(lambda: dbg.stop_serial > serial and dbg.state == "stopped", 30, "the next stop")
        stop = dbg.wait_stopped(30)
        assert stop.line == LOOP_LINE + 1 and dbg.evaluate("k") == "1"
        wait_for(lambda: "aml-dbg-changed" in panel.watches_html.value and "k = 1" in panel.watches_html.value,
                 10, "the changed watch marked")
        assert enabled.value is True
        panel.breakpoint_rows.children[2].children[2].click()  # remove the conditional one
        wait_for(lambda: len(dbg.breakpoint_list()) == 2, 10, "removed")
        panel.continue_button.click()  # the log point at line 4 is still set: it never stops
        assert run.wait(30) == "completed"
        assert dbg.wait_stopped(30) is None
        assert "step is 4" in dbg.console  # what the log point printed (k == 2), in the debug console
        wait_for(lambda: "step is 4" in panel.console_html.value, 10, "the console shown")
    finally:
        dbg.detach()


def test_panel_says_an_evaluate_is_still_running_and_cancels_it(workdir, monkeypatch):
    from aml_magics.debugger import core

    monkeypatch.setattr(core, "EVALUATE_TIMEOUT", 1.0)
    run = aml_magics.submit(code="value = 7\nprint(value, flush=True)\n", name="busy", port=0, timeout=60)
    dbg = run.attach(breakpoints=["busy.py:2"])
    panel = DebuggerPanel(dbg)
    try:
        dbg.wait_stopped(30)
        panel.expression.value = "next(x for x in iter(int, 1) if x)"
        wait_for(lambda: "still running" in panel.history_html.value, 15, "said")
        wait_for(lambda: panel.cancel_button.layout.display is None, 10, "Cancel shown")
        assert "is still running in the debuggee" in panel.busy_html.value
        panel.cancel_button.click()
        wait_for(lambda: panel.cancel_button.layout.display == "none", 15, "cancelled")
        panel.expression.value = "value * 6"
        wait_for(lambda: ">42<" in panel.history_html.value, 10, "evaluates again")
        panel.continue_button.click()
        assert run.wait(30) == "completed"
    finally:
        dbg.detach()


def test_the_panels_detach_reads_detached_by_you(workdir):
    """Issue 23 item 2: the debugger panel's Detach while the run goes on: the run panel's HTML says
    "detached by you after N s" (state line and endpoint), never "nobody attached"."""
    code = "import time\nvalue = 1\ntime.sleep(4)\nprint('slept', flush=True)\n"
    run = aml_magics.submit(code=code, name="pdetach", port=0, timeout=120)
    run.wait_for_endpoint(30)
    run_panel, panel = _debug_here(run)
    dbg = panel.debugger
    try:
        dbg.break_at(str(run.spec.script_path), 3)
        panel.attach_button.click()
        assert dbg.wait_stopped(30).line == 3
        panel.detach_button.click()
        wait_for(lambda: "detached by you after " in run_panel.endpoints_html.value, 15, "the endpoint's words")
        assert re.search(r"data-endpoint='closed'>closed \(detached by you after \d+ s\)<",
                         run_panel.endpoints_html.value), run_panel.endpoints_html.value
        assert "nobody attached" not in run_panel.endpoints_html.value
        wait_for(lambda: "detached by you after " in run_panel.header_html.value, 10, "the state line")
        assert "debugger detached" not in run_panel.header_html.value + run_panel.endpoints_html.value
        assert "detached (the run goes on)" in panel.header.value and panel.detach_button.description == "Close"
    finally:
        dbg.detach()
    assert run.wait(30) == "completed"


STEPPED = "".join(f"name_{i:03d} = {i}\n" for i in range(150)) + """\
for step in range(10):
    name_000 += 1
"""


def test_a_step_sets_the_rows_values_and_makes_no_widget(workdir):
    """Between two stops the tree shows no rows; the last stop's rows wait for the next one, which
    sets their values: a step opens no widget (no new comm) and closes none it will need."""
    from ipywidgets.widgets.widget import _instances

    run = aml_magics.submit(code=STEPPED, name="stepped", port=0, timeout=60)
    dbg = run.attach(breakpoints=["stepped.py:152"])
    try:
        assert dbg.wait_stopped(30).line == 152
        panel = DebuggerPanel(dbg)
        wait_for(lambda: "name_000</b> = 0<" in _text(panel, "name_000") and _has(panel, "special_variables"), 10,
                 "the first stop's rows")
        rows = list(panel.tree.children)
        assert len(rows) == 3  # the group, a block of plain rows, "more…"
        more = _button(panel, "aml-dbg-more")
        before = set(_instances)
        for value in (1, 2):
            panel.over_button.click()
            wait_for(lambda: _current(panel) == 151 and not panel.over_button.disabled, 10, "stepped")
            panel.over_button.click()
            wait_for(lambda v=value: f"name_000</b> = {v}<" in _text(panel, "name_000"), 10, f"name_000 = {value}")
        assert list(panel.tree.children) == rows and _button(panel, "aml-dbg-more") is more
        assert set(_instances) <= before
        more.click()
        wait_for(lambda: _has(panel, "name_149"), 10, "the next page")
    finally:
        dbg.detach()
        run.cancel()
