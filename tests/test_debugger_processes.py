"""Child processes in the in-notebook debugger: debugpy announces each child with a
``debugpyAttach`` event, the Debugger attaches a session to it with the same breakpoints (as
VS Code does), and its process selector lists the processes that are paused. A real debugpy
with its separate adapter (what follows subprocesses), started as in test_dap_client.py."""

from __future__ import annotations

import os
import textwrap

import pytest
import test_dap_client
from conftest import port_is_listening, wait_for
from test_dap_client import _config, _finish

import aml_magics
from aml_magics import debugger

pytest.importorskip("debugpy")
debuggee = test_dap_client.debuggee  # the fixture: a real debugpy waiting for a client

PARENT = textwrap.dedent(
    """\
    import os
    import subprocess
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    child = subprocess.Popen([sys.executable, os.path.join(here, "child.py")])
    waiting_for = child.pid
    code = child.wait()
    print("parent: child exited", code)
    """
)
PARENT_BREAK = 6  # waiting_for = child.pid
CHILD = textwrap.dedent(
    """\
    import os
    secret = "from-child-%d" % (6 * 7)
    print("child says", secret)
    """
)
CHILD_BREAK = 3


def test_paused_processes_are_listed_and_each_can_be_debugged(tmp_path, debuggee):
    (tmp_path / "parent.py").write_text(PARENT)
    (tmp_path / "child.py").write_text(CHILD)
    proc, port = debuggee(tmp_path / "parent.py")
    dbg = debugger.attach(_config(port), breakpoints=[(str(tmp_path / "parent.py"), PARENT_BREAK),
                                                      (str(tmp_path / "child.py"), CHILD_BREAK)])
    try:
        wait_for(lambda: len(dbg.paused) == 2, 30, "both processes paused")
        by_line = {p.stop.line: p for p in dbg.paused}
        parent, child = by_line[PARENT_BREAK], by_line[CHILD_BREAK]
        assert parent.pid == proc.pid and child.pid not in (None, proc.pid)
        assert "child.py" in child.label and f"child.py:{CHILD_BREAK}" in child.label

        dbg.select(child.pid)
        stop = dbg.wait_stopped(5)
        assert (stop.pid, os.path.basename(stop.path), stop.line) == (child.pid, "child.py", CHILD_BREAK)
        assert dbg.locals()["secret"] == "'from-child-42'"
        dbg.continue_()
        wait_for(lambda: [p.pid for p in dbg.paused] == [parent.pid], 30, "only the parent paused")

        stop = dbg.wait_stopped(5)  # the paused one: the parent
        assert stop.pid == parent.pid and stop.line == PARENT_BREAK
        assert dbg.evaluate("child.pid") == str(child.pid) and "waiting_for" not in dbg.locals()
        dbg.continue_()
        assert dbg.wait_stopped(30) is None
        assert dbg.state == "ended"
        with pytest.raises(aml_magics.DebuggerError, match="no debugged process with pid 1"):
            dbg.select(1)
    finally:
        dbg.detach()
    assert proc.wait(15) == 0
    out = _finish(proc)
    assert "child says from-child-42" in out and "parent: child exited 0" in out


def test_a_run_with_subprocesses_follows_its_child(workdir):
    """``--subprocesses`` on a real run: the script's child gets a session of its own, armed with
    the same breakpoints before it runs; the selector names the run's script, not the bootstrap."""
    (workdir / "parent.py").write_text(PARENT)
    (workdir / "child.py").write_text(CHILD)
    run = aml_magics.submit(str(workdir / "parent.py"), port=0, timeout=60, subprocesses=True)
    dbg = run.attach(breakpoints=[("parent.py", PARENT_BREAK), ("child.py", CHILD_BREAK)], timeout=30)
    try:
        wait_for(lambda: len(dbg.paused) == 2, 60, "the run and its child paused")
        by_line = {p.stop.line: p for p in dbg.paused}
        parent, child = by_line[PARENT_BREAK], by_line[CHILD_BREAK]
        assert parent.pid == run.endpoints[0].pid and child.pid != parent.pid
        assert parent.label.startswith(f"pid {parent.pid} parent.py — stopped at parent.py:{PARENT_BREAK}")
        dbg.select(child.pid)
        assert dbg.locals()["secret"] == "'from-child-42'"
        dbg.continue_()
        wait_for(lambda: [p.pid for p in dbg.paused] == [parent.pid], 30, "only the run paused")
        dbg.select(parent.pid)
        dbg.continue_()
        assert run.wait(30) == "completed", run.logs
    finally:
        dbg.detach()
    logs = run.logs
    assert "child says from-child-42" in logs and "parent: child exited 0" in logs
    assert "left running" not in logs  # debugpy's own adapter process is not the script's


def test_a_subprocesses_run_nobody_attaches_to_closes_its_port_after_the_window(workdir):
    """debugpy's adapter process goes when the window closes: no port stays open, and the adapter
    is not reported as something the script left running."""
    (workdir / "sleepy.py").write_text("import time\nprint('start', flush=True)\ntime.sleep(4)\nprint('done')\n")
    run = aml_magics.submit(str(workdir / "sleepy.py"), port=0, timeout=1, subprocesses=True)
    endpoint = run.wait_for_endpoint(30)
    wait_for(lambda: "Debugger attached = False" in run.logs, 30, "the window to pass")
    wait_for(lambda: not port_is_listening("127.0.0.1", endpoint.port), 5, "the port to close")
    assert run.state == "running"  # the script goes on without a debugger
    assert run.wait(30) == "completed", run.logs
    assert "done" in run.logs and "left running" not in run.logs


def test_subprocesses_is_refused_where_child_sessions_cannot_be_reached(workdir):
    (workdir / "job.py").write_text("print('x')\n")
    with pytest.raises(aml_magics.errors.OptionsError, match=r"--subprocesses: target 'docker' does not follow"):
        aml_magics.submit(str(workdir / "job.py"), target="docker", subprocesses=True)
    with pytest.raises(aml_magics.errors.OptionsError, match=r"--subprocesses needs the debugger: drop --no-debug"):
        aml_magics.submit(str(workdir / "job.py"), no_debug=True, subprocesses=True)
    with pytest.raises(aml_magics.errors.OptionsError, match=r"--subprocesses with --bind 10\.9\.8\.7: the child "):
        aml_magics.submit(str(workdir / "job.py"), bind="10.9.8.7", subprocesses=True)


def test_a_pause_that_lands_in_the_node_is_shown_as_such_not_as_runpy():
    """What an all-stop pause of a rank still in the node before its script returned (seen in CI):
    the main thread in the node's own frames, under the runpy that started the node."""
    from aml_magics.dap.models import StackFrame
    from aml_magics.debugger.core import Stop, _outside_script
    from aml_magics.debugger.paths import OUTSIDE_SCRIPT

    node = os.path.dirname(aml_magics.__file__) + "/node"
    runpy = os.path.dirname(os.__file__) + "/runpy.py"
    in_node = [StackFrame(3, "service_thread", f"{node}/wire.py", 39, 1),
               StackFrame(4, "watch_detach", f"{node}/driver.py", 218, 1),
               StackFrame(5, "main", f"{node}/main.py", 96, 1),
               StackFrame(6, "<module>", f"{node}/__main__.py", 36, 1),
               StackFrame(7, "_run_code", runpy, 88, 1),
               StackFrame(8, "_run_module_as_main", runpy, 198, 1)]
    assert _outside_script(in_node)
    script = [StackFrame(2, "<module>", "/work/twor.py", 4, 1), StackFrame(3, "_run_code", runpy, 88, 1)]
    assert not _outside_script(script + in_node[:4])
    assert Stop("pause", None, 0, 1, "").place == OUTSIDE_SCRIPT
    assert Stop("breakpoint", "/work/twor.py", 4, 1, "").place == "twor.py:4"
