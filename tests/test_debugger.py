"""The in-notebook debugger (aml_magics.Debugger) on real runs of the local target: a real
bootstrap with debugpy, attached from the test process as a kernel would, through
``run.attach(...)`` and the ``%aml_attach`` / ``%aml_dbg`` magics.

Breakpoints are armed before the run is released, a stop is reported in local paths with
the line's text, locals are read, expressions evaluated (and debugpy's error raised as
DebuggerError), steps move the line, continue runs to completion; post-mortem stops at the
exception with its type and message; two ranks are debugged one after the other; the
one-client rule gives one clear line and never wedges the run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import port_is_listening, wait_for
from IPython.core.error import UsageError

import aml_magics
from aml_magics.testing.dap import attach_with_launch_config

SCRIPT = """\
import os
def scale(value, factor):
    scaled = value * factor
    return scaled
total = 0
for i in range(5):
    total += i
result = scale(total, 3)
print("result", result, flush=True)
"""
CALL_LINE = 8  # result = scale(total, 3)
INNER_LINE = 3  # scaled = value * factor


def _script(workdir: Path, name: str) -> Path:
    return workdir / ".aml_magics" / "cells" / f"{name}.py"


def test_attach_stop_inspect_step_continue(workdir):
    run = aml_magics.submit(code=SCRIPT, name="dbg", port=0, timeout=60)
    dbg = run.attach(breakpoints=[f"dbg.py:{CALL_LINE}"])  # relative to the run's local root
    assert isinstance(dbg, aml_magics.Debugger)
    try:
        stop = dbg.wait_stopped(30)
        assert stop.reason == "breakpoint"
        assert (Path(stop.path), stop.line) == (_script(workdir, "dbg"), CALL_LINE)
        assert stop.text == "result = scale(total, 3)"
        wait_for(lambda: run.state == "attached", 10, "attached state")
        assert dbg.locals()["total"] == "10"
        assert dbg.evaluate("total * 2 + i") == "24"
        with pytest.raises(aml_magics.DebuggerError, match=r"^NameError: name 'nope' is not defined$"):
            dbg.evaluate("nope + 1")
        assert [f.name for f in dbg.stack()] == ["<module>"]  # the bootstrap's own frames are hidden

        inner = dbg.step_in()
        assert (inner.reason, inner.line) == ("step", INNER_LINE)
        assert [(f.name, f.line) for f in dbg.stack()] == [("scale", INNER_LINE), ("<module>", CALL_LINE)]
        assert dbg.locals() == {"value": "10", "factor": "3"}
        assert dbg.locals(frame=1)["total"] == "10"
        after = dbg.step_over()
        assert after.line == INNER_LINE + 1 and dbg.locals()["scaled"] == "30"
        back = dbg.step_out()
        assert back.line == CALL_LINE and back.path == stop.path
        over = dbg.step_over()
        assert over.line == CALL_LINE + 1 and dbg.locals()["result"] == "30"

        dbg.continue_()
        assert dbg.wait_stopped(30) is None
        assert run.wait(30) == "completed"
        assert dbg.state == "ended" and dbg.end_reason == "the run ended (completed)"
    finally:
        dbg.detach()
    assert "result 30" in run.logs
    assert not port_is_listening("127.0.0.1", run.endpoints[0].port)


def test_break_at_clear_and_conditions_while_attached(workdir):
    run = aml_magics.submit(code=SCRIPT, name="cond", port=0, timeout=60)
    script = _script(workdir, "cond")
    dbg = run.attach(breakpoints=[(str(script), 7)])  # an absolute path
    try:
        first = dbg.wait_stopped(30)
        assert first.line == 7 and dbg.locals()["i"] == "0"
        state = dbg.break_at(script, 7, condition="i == 3")
        assert state.verified is True and state.condition == "i == 3"
        dbg.continue_()
        assert dbg.wait_stopped(30).line == 7 and dbg.locals()["i"] == "3"
        dbg.clear(script, 7)
        assert dbg.breakpoints.lines(str(script)) == []
        dbg.break_at("cond.py", INNER_LINE)
        dbg.continue_()
        stop = dbg.wait_stopped(30)
        assert stop.line == INNER_LINE and dbg.locals()["value"] == "10"
        dbg.clear()
        dbg.continue_()
        assert dbg.wait_stopped(30) is None
    finally:
        dbg.detach()
    assert run.wait(30) == "completed"


def test_bad_breakpoints_are_one_clear_line(workdir):
    run = aml_magics.submit(code=SCRIPT, name="badbp", port=0, timeout=60)
    try:
        with pytest.raises(aml_magics.DebuggerError, match=r"no such file: .*missing\.py"):
            run.attach(breakpoints=["missing.py:3"])
        with pytest.raises(aml_magics.DebuggerError, match="a breakpoint is FILE:LINE"):
            run.attach(breakpoints=["badbp.py"])
        with pytest.raises(aml_magics.DebuggerError, match="is not a number"):
            run.attach(breakpoints=["badbp.py:x"])
        assert run.state == "waiting_for_debugger"  # nothing connected: the run still waits
        dbg = run.attach()
        dbg.detach()
        assert run.wait(30) == "completed"
    finally:
        run.cancel()


def test_detach_lets_the_run_go_on(workdir):
    run = aml_magics.submit(code=SCRIPT, name="leave", port=0, timeout=60)
    dbg = run.attach(breakpoints=[f"leave.py:{CALL_LINE}"])
    assert dbg.wait_stopped(30).line == CALL_LINE
    dbg.detach()
    assert dbg.state == "ended" and dbg.end_reason == "detached (the run goes on)"
    assert run.wait(30) == "completed"
    assert "result 30" in run.logs
    with pytest.raises(aml_magics.DebuggerError, match="the debug session ended: detached"):
        dbg.locals()


def test_post_mortem_stop_with_exception_type_and_message(workdir):
    crash = "def average(values):\n    total = sum(values)\n    return total / len(values)\nprint(average([]))\n"
    run = aml_magics.submit(code=crash, name="pm", port=0, timeout=0, post_mortem=True)
    wait_for(lambda: run.state == "crashed_waiting_for_debugger", 30, "crashed state")
    dbg = run.attach()
    try:
        stop = dbg.wait_stopped(30)
        assert stop.reason == "exception"
        assert (Path(stop.path), stop.line) == (_script(workdir, "pm"), 3)
        assert stop.text == "return total / len(values)"
        info = dbg.exception()
        assert (info.type, info.message) == ("ZeroDivisionError", "division by zero")
        assert "return total / len(values)" in info.traceback and "average" in info.traceback
        assert dbg.locals()["total"] == "0"
        dbg.continue_()
        assert dbg.wait_stopped(30) is None
    finally:
        dbg.detach()
    assert run.wait(30) == "failed"


def test_two_ranks_one_after_the_other(workdir):
    code = "import os\nrank = int(os.environ['RANK'])\nvalue = rank * 10\nprint('rank', rank, value)\n"
    run = aml_magics.submit(code=code, name="ranks", port=0, timeout=60, procs_per_node=2)
    for rank in (0, 1):
        dbg = run.attach(breakpoints=["ranks.py:4"], rank=rank)
        try:
            assert dbg.label == f"run {run.id} rank {rank}"
            stop = dbg.wait_stopped(30)
            assert stop.line == 4
            assert dbg.locals()["value"] == str(rank * 10)
            assert dbg.evaluate("os.environ['RANK']") == repr(str(rank))
            dbg.continue_()
            assert dbg.wait_stopped(30) is None
        finally:
            dbg.detach()
    assert run.wait(30) == "completed"
    assert [s.state for s in run.ranks] == ["completed", "completed"]


def test_one_client_at_a_time_a_held_port_is_refused_and_the_run_goes_on(workdir):
    run = aml_magics.submit(code=SCRIPT, name="held", port=0, timeout=60)
    run.wait_for_endpoint(30)
    script = _script(workdir, "held")
    vscode = attach_with_launch_config(run.launch_config(), {str(script): [CALL_LINE]}, workspace_folder=str(workdir))
    try:
        with pytest.raises(aml_magics.DebuggerError) as refused:
            run.attach()
        message = str(refused.value)
        assert "\n" not in message
        assert f"run {run.id} rank 0" in message and "already being debugged by pid" in message
        assert "one client at a time" in message
        # the first client still owns the session: the run was not disturbed
        stop = vscode.wait_stopped(30)
        assert stop.line == CALL_LINE and vscode.variables_of(stop.frame_id)["total"] == "10"
        vscode.continue_(stop.thread_id)
        assert run.wait(30) == "completed"
    finally:
        vscode.close()


def test_one_client_at_a_time_our_session_taken_over_says_so(workdir):
    run = aml_magics.submit(code=SCRIPT, name="taken", port=0, timeout=60)
    dbg = run.attach(breakpoints=[f"taken.py:{CALL_LINE}"])
    try:
        assert dbg.wait_stopped(30).line == CALL_LINE
        with pytest.raises(aml_magics.DebuggerError, match="already being debugged from this kernel"):
            run.attach()
        other = attach_with_launch_config(run.launch_config(), {}, workspace_folder=str(workdir))
        try:
            wait_for(lambda: dbg.ended, 15, "our session ended")
            assert "another client (pid" in dbg.end_reason and "handed it the session" in dbg.end_reason
            assert dbg.wait_stopped(1) is None
            # the paused thread went to the new client with the session; it resumes the run
            other.continue_()
            assert run.wait(30) == "completed"  # never wedged
        finally:
            other.close()
    finally:
        dbg.detach()


def test_attaching_to_an_ended_run_or_a_switched_off_debugger(workdir):
    done = aml_magics.submit(code="print(1)\n", name="done", port=0, timeout=0, wait=True)
    with pytest.raises(aml_magics.DebuggerError, match="the run already ended"):
        done.attach()
    off = aml_magics.submit(code="import time\ntime.sleep(30)\n", name="off", port=0, timeout=0.2)
    try:
        off.wait_for_endpoint(30)
        wait_for(lambda: "Debugger attached = False" in off.logs, 20, "debugger switched off")
        with pytest.raises(aml_magics.DebuggerError, match="the debugger of this rank is off"):
            off.attach(timeout=5)
    finally:
        off.cancel()


def test_magics_attach_and_dbg(shell, workdir, capsys):
    run = shell.run_cell_magic("aml_debug_run", "--name mag --port 0 --timeout 60", SCRIPT)
    dbg = shell.run_line_magic("aml_attach", f"{run.id} --break mag.py:{CALL_LINE}")
    assert isinstance(dbg, aml_magics.Debugger)
    try:
        dbg.wait_stopped(30)
        capsys.readouterr()

        def dbg_says(command: str) -> str:
            shell.run_line_magic("aml_dbg", command)
            return capsys.readouterr().out

        assert f"#0 <module> at mag.py:{CALL_LINE}" in dbg_says("where")
        assert "total" in dbg_says("locals") and "= 10" in dbg_says("locals")
        assert dbg_says("p total * 3").strip() == "30"
        assert f"at mag.py:{INNER_LINE}" in dbg_says("step")
        assert "#1 <module>" in dbg_says("up")
        assert "i " in dbg_says("locals")
        assert "#0 scale" in dbg_says("down")
        assert "breakpoint at mag.py:4 if scaled > 0 (verified)" in dbg_says("break mag.py:4 if scaled > 0")
        shown = dbg_says("next")  # the step lands on the new breakpoint: debugpy says "breakpoint"
        assert "stopped (breakpoint) at mag.py:4" in shown and "●    4 ->     return scaled" in shown
        assert f"at mag.py:{CALL_LINE}" in dbg_says("return")
        assert "cleared every breakpoint" in dbg_says("clear")
        with pytest.raises(UsageError, match="NameError: name 'nope' is not defined"):
            shell.run_line_magic("aml_dbg", "p nope")
        with pytest.raises(UsageError, match="unknown command 'jump'"):
            shell.run_line_magic("aml_dbg", "jump 3")
        with pytest.raises(UsageError, match="a breakpoint is FILE:LINE"):
            shell.run_line_magic("aml_dbg", "break mag.py")
        assert "stop on exceptions: uncaught" in dbg_says("exceptions")
        assert "stop on exceptions: raised, user-uncaught" in dbg_says("exceptions raised user-uncaught")
        assert "stop on exceptions: none" in dbg_says("exceptions none")
        assert dbg_says("stats total").strip() == "10"  # not an array: its value, as the node renders it
        assert "no evaluate is running" in dbg_says("cancel")
        dbg_says("break mag.py:9")
        assert "stopped (breakpoint) at mag.py:9" in dbg_says("continue")  # continue shows the next stop
        dbg_says("clear")
        assert "the session ended: the run ended (completed)" in dbg_says("continue")
        assert run.wait(30) == "completed"
        with pytest.raises(UsageError, match="the debug session ended"):
            shell.run_line_magic("aml_dbg", "where")
    finally:
        dbg.detach()
    with pytest.raises(UsageError, match="usage: %aml_attach"):
        shell.run_line_magic("aml_attach", "")
    with pytest.raises(UsageError, match="argument --rank: invalid int value"):
        shell.run_line_magic("aml_attach", f"{run.id} --rank x")
    with pytest.raises(UsageError, match="the run already ended"):
        shell.run_line_magic("aml_attach", run.id)


def test_a_run_canceled_while_stopped_ends_the_session_and_nothing_hangs(workdir):
    run = aml_magics.submit(code=SCRIPT, name="cancelled", port=0, timeout=60)
    dbg = run.attach(breakpoints=[f"cancelled.py:{CALL_LINE}"])
    try:
        assert dbg.wait_stopped(30).line == CALL_LINE
        seen: list[str] = []
        dbg.subscribe(lambda _d, change: seen.append(dbg.state) if change == "state" else None)
        run.cancel()
        assert run.wait(30) == "canceled"
        assert dbg.wait_stopped(30) is None  # woken by the end, not by a timeout
        assert dbg.end_reason == "the run ended (canceled)"
        assert seen[-1] == "ended"
        with pytest.raises(aml_magics.DebuggerError, match=r"the debug session ended: the run ended \(canceled\)"):
            dbg.step_over()
        assert dbg.root.session.closed
    finally:
        dbg.detach()
    assert "(canceled)" in repr(dbg)


MEAN = """\
def mean(v):
    total = sum(v)
    return total / len(v)
print(mean([]))
"""


def test_an_uncaught_exception_stops_at_the_raising_line(workdir):
    """Issue 23 item 1: ``uncaught`` is the default filter, as in VS Code: the stop is the user's
    raising line (never a file of ours), the exception's type is there, continue ends the run."""
    run = aml_magics.submit(code=MEAN, name="mean", port=0, timeout=60)
    dbg = run.attach(exceptions=("uncaught",))
    try:
        stop = dbg.wait_stopped(30)
        assert stop is not None and stop.reason == "exception"
        assert (Path(stop.path), stop.line) == (_script(workdir, "mean"), 3)
        assert stop.text == "return total / len(v)"
        info = dbg.exception()
        assert (info.type, info.message) == ("ZeroDivisionError", "division by zero")
        assert dbg.locals()["total"] == "0"
        dbg.continue_()
        assert dbg.wait_stopped(30) is None  # no second stop in our own files
    finally:
        dbg.detach()
    assert run.wait(30) == "failed"


def test_exception_filters_are_checked_and_can_change_while_attached(workdir):
    with pytest.raises(aml_magics.DebuggerError, match="unknown exception filter 'sometimes'"):
        aml_magics.debugger.attach({"connect": {"host": "127.0.0.1", "port": 1}}, exceptions=("sometimes",))
    code = "def check(x):\n    try:\n        raise ValueError(x)\n    except ValueError:\n        return x\n" \
           "print(check(5))\nprint('done', flush=True)\n"
    run = aml_magics.submit(code=code, name="raised", port=0, timeout=60)
    dbg = run.attach(breakpoints=["raised.py:6"], exceptions=())
    try:
        assert dbg.wait_stopped(30).line == 6
        assert dbg.set_exceptions(["raised", "user-uncaught"]) == ("raised", "userUnhandled")
        dbg.continue_()
        stop = dbg.wait_stopped(30)  # a caught exception stops once "raised" is on
        assert stop is not None and (stop.reason, stop.line) == ("exception", 3)
        assert dbg.exception().type == "ValueError"
        dbg.set_exceptions([])
        dbg.continue_()
        assert dbg.wait_stopped(30) is None
    finally:
        dbg.detach()
    assert run.wait(30) == "completed"


def test_after_our_detach_the_run_says_detached_by_you(workdir):
    """Issue 23 item 2: this kernel's Debugger.detach() while the run goes on: the run's state line,
    its endpoint and %aml_runs' table say "detached by you after N s", not "nobody attached"."""
    from aml_magics.views.text import endpoint_now, endpoint_summary, render_text, state_label

    code = "import time\nvalue = 1\ntime.sleep(4)\nprint('slept', flush=True)\n"
    run = aml_magics.submit(code=code, name="left", port=0, timeout=120)
    dbg = run.attach(breakpoints=["left.py:3"])
    assert dbg.wait_stopped(30).line == 3
    dbg.detach()
    wait_for(lambda: run.state == "running" and run.debugger_note, 10, "running again, the detach said")
    assert re.fullmatch(r"detached by you after \d+ s", run.debugger_note), run.debugger_note
    assert state_label(run) == f"running; {run.debugger_note}"
    words = endpoint_now(run, run.ranks[0]).words
    assert words == f"closed ({run.debugger_note})", words
    assert endpoint_summary(run)[0].endswith(words) and words in render_text(run)
    assert run.ranks[0].reason == run.debugger_note  # the roster's words too
    assert run.wait(30) == "completed"
    assert endpoint_now(run, run.ranks[0]).words == words


def test_another_clients_detach_stays_the_nodes_words(workdir):
    """A client elsewhere (VS Code) that says disconnect: "debugger detached after N s" (not "by you")."""
    from aml_magics.views.text import endpoint_now, state_label

    code = "import time\nvalue = 1\ntime.sleep(3)\nprint('slept', flush=True)\n"
    run = aml_magics.submit(code=code, name="vsleft", port=0, timeout=120)
    run.wait_for_endpoint(30)
    script = _script(workdir, "vsleft")
    vscode = attach_with_launch_config(run.launch_config(), {str(script): [3]}, workspace_folder=str(workdir))
    try:
        assert vscode.wait_stopped(30).line == 3
        vscode.disconnect()
    finally:
        vscode.close()
    wait_for(lambda: run.state == "running" and run.debugger_note, 10, "running again, the detach said")
    assert re.fullmatch(r"debugger detached after \d+ s", run.debugger_note), run.debugger_note
    assert state_label(run) == f"running; {run.debugger_note}"
    assert endpoint_now(run, run.ranks[0]).words == f"closed ({run.debugger_note})"
    assert run.wait(30) == "completed"


NAMES = ("def helper():\n    return 1\nclass Holder:\n    pass\n"
         + "".join(f"name_{i:03d} = {i}\n" for i in range(400)) + "_hidden = 1\ndone = True\n")
NAMES_STOP = 406


def test_a_variables_page_is_the_asked_slice_of_the_whole_answer(workdir):
    """debugpy sends every child whatever ``count`` asks; the node's pydevd answers ``start`` /
    ``count`` with that slice of what it sends without them (same order, same groups), and a
    request without ``count`` still gets every name. The API's locals() still has all 400. (The
    node lists a frame's names for the window only, and answers "no group" for plain data at once:
    the groups of functions, classes and dunders come first as debugpy puts them.)"""
    run = aml_magics.submit(code=NAMES, name="names", port=0, timeout=60)
    dbg = run.attach(breakpoints=[f"names.py:{NAMES_STOP}"])
    try:
        assert dbg.wait_stopped(30).line == NAMES_STOP
        service = dbg.service
        assert service.wait_locals()
        channel = service.session.channel
        reference = service.variables.locals.reference
        whole = channel.request("variables", {"variablesReference": reference})["variables"]
        names = [v["name"] for v in whole]
        assert len(names) > 400 and "name_399" in names and "_hidden" in names
        assert names[:3] == ["special variables", "function variables", "class variables"]
        for start, count in ((0, 101), (1, 3), (100, 50), (len(names) - 3, 100)):
            page = channel.request("variables", {"variablesReference": reference, "start": start, "count": count})
            shown = page["variables"]
            assert [v["name"] for v in shown] == names[start:start + count]
            assert [(v["value"], v.get("type"), v.get("evaluateName")) for v in shown] == [
                (v["value"], v.get("type"), v.get("evaluateName")) for v in whole[start:start + count]]
        for group, inside in ((1, ["helper"]), (2, ["Holder"])):  # a group's children, paged too
            page = channel.request("variables", {"variablesReference": whole[group]["variablesReference"], "start": 0,
                                                 "count": 10})
            assert [v["name"] for v in page["variables"]] == inside
        assert [v.name for v in service.variables.locals.variables] == names[:100]
        values = dbg.locals()
        assert len([n for n in values if n.startswith("name_")]) == 400 and values["name_399"] == "399"
        dbg.continue_()
        assert dbg.wait_stopped(30) is None
    finally:
        dbg.detach()
    assert run.wait(60) == "completed"
