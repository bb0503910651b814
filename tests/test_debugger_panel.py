"""The debugger panel's widgets, driven as a user would (button clicks, text entered, a frame
chosen) against a real run, outside a browser: what the page would show is in the widgets'
traits. The run panel's *Debug here* opens it unattached; a breakpoint clicked in it is armed
before the run is released. (tests/test_browser.py does the same in JupyterLab.)"""

from __future__ import annotations

import pytest
from conftest import wait_for

import aml_magics

pytest.importorskip("ipywidgets")

from aml_magics.debugger.panel import DebuggerPanel  # noqa: E402
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


def _row(panel: DebuggerPanel, line: int):
    return next(r for r in panel.rows if r.number == line)


def _var(panel: DebuggerPanel, name: str):
    return next(w for w in panel.tree.children if f"aml-dbg-var-{name}" in w._dom_classes)


def _has(panel: DebuggerPanel, name: str) -> bool:
    return any(f"aml-dbg-var-{name}" in w._dom_classes for w in panel.tree.children)


def test_debug_here_breakpoint_attach_inspect_step_continue(workdir):
    run = aml_magics.submit(code=SCRIPT, name="panel", port=0, timeout=60)
    run.wait_for_endpoint(30)
    run_panel = DebugRunPanel(run)
    wait_for(lambda: not run_panel.debug_button.disabled, 10, "Debug here enabled")
    run_panel.debug_button.click()
    panel = run_panel.children[-1]
    assert isinstance(panel, DebuggerPanel)
    dbg = panel.debugger
    try:
        assert dbg.state == "armed" and run.state == "waiting_for_debugger"
        assert "panel.py" in panel.source_title.value  # the run's script, to click breakpoints in
        assert not panel.attach_button.disabled and panel.continue_button.disabled
        _row(panel, TOTAL_LINE).lineno.click()
        wait_for(lambda: "aml-dbg-bp" in _row(panel, TOTAL_LINE)._dom_classes, 10, "breakpoint mark")
        assert dbg.breakpoints.lines(str(run.spec.script_path)) == [TOTAL_LINE]

        panel.attach_button.click()
        wait_for(lambda: dbg.state != "armed", 10, "attaching")
        stop = dbg.wait_stopped(30)
        assert stop.line == TOTAL_LINE  # armed before release: the short script could not run past it
        wait_for(lambda: "aml-dbg-current" in _row(panel, TOTAL_LINE)._dom_classes, 10, "current line")
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

        panel.over_button.click()
        wait_for(lambda: "aml-dbg-current" in _row(panel, CALL_LINE)._dom_classes, 10, "stepped")
        wait_for(lambda: "total = 10" in panel.watches_html.value, 10, "watch re-evaluated at the stop")
        panel.in_button.click()
        wait_for(lambda: panel.stack.options and panel.stack.options[0][0].startswith("scale"), 10, "stepped in")
        panel.stack.index = 1  # click the caller's frame
        wait_for(lambda: dbg.frame_index == 1 and "aml-dbg-current" in _row(panel, CALL_LINE)._dom_classes, 10,
                 "caller frame selected")
        wait_for(lambda: any("aml-dbg-var-total" in w._dom_classes for w in panel.tree.children), 10, "its locals")

        _row(panel, TOTAL_LINE).lineno.click()  # toggle the breakpoint off while attached
        wait_for(lambda: dbg.breakpoints.lines(str(run.spec.script_path)) == [], 10, "breakpoint cleared")
        panel.continue_button.click()
        assert run.wait(30) == "completed"
        wait_for(lambda: "data-state='ended'" in panel.header.value, 10, "ended header")
        assert "the run ended (completed)" in panel.header.value
        assert panel.continue_button.disabled and panel.detach_button.description == "Close"
        assert not any("aml-dbg-current" in r._dom_classes for r in panel.rows)  # nothing is current once ended
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
    run_panel = DebugRunPanel(run)
    wait_for(lambda: not run_panel.debug_button.disabled, 10, "Debug here enabled")
    run_panel.debug_button.click()
    panel = run_panel.children[-1]
    dbg = panel.debugger
    try:
        _row(panel, 4).lineno.click()
        wait_for(lambda: dbg.breakpoints.lines(str(run.spec.script_path)) == [4], 10, "breakpoint")
        panel.attach_button.click()
        wait_for(lambda: len(dbg.paused) == 2, 30, "both ranks paused")
        assert dbg.label == f"run {run.id} ranks 0,1"
        assert sorted(p.rank for p in dbg.paused) == [0, 1]
        wait_for(lambda: len(panel.processes.options) == 2, 10, "the selector")
        assert panel.processes.layout.display is None
        labels = [label for label, _pid in panel.processes.options]
        assert labels[0].startswith("rank 0 · pid ") and labels[1].startswith("rank 1 · pid ")
        assert all("twor.py:4" in label for label in labels)
        rank1 = next(p for p in dbg.paused if p.rank == 1)
        panel.processes.value = rank1.pid  # choose rank 1 in the selector
        wait_for(lambda: dbg.service.process.get("systemProcessId") == rank1.pid, 10, "rank 1 selected")
        wait_for(lambda: _has(panel, "value") and "= 10" in str([w.children[-1].value for w in panel.tree.children
                                                                  if "aml-dbg-var-value" in w._dom_classes]),
                 10, "rank 1's locals")
        assert dbg.locals()["value"] == "10"
        panel.continue_button.click()
        wait_for(lambda: [p.rank for p in dbg.paused] == [0], 30, "rank 0 still paused")
        assert dbg.wait_stopped(5).pid != rank1.pid and dbg.locals()["value"] == "0"
        panel.continue_button.click()
        assert run.wait(30) == "completed"
        wait_for(lambda: dbg.ended, 10, "ended")
    finally:
        dbg.detach()
