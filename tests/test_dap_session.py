"""aml_magics.dap's session, service and models against a real debugpy
(``python -m debugpy --listen … --wait-for-client``, the fixture of test_dap_client.py).

The service is what a debugger panel reads: after a stop, the call-stack and variables
models already hold the stack and the locals when the state says "stopped"; a step moves
the line; big containers come in pages of at most 100; a child process announced by
``debugpyAttach`` is followed with its own service and the same breakpoints.
"""

from __future__ import annotations

import os
import textwrap

import pytest
import test_dap_client
from test_dap_client import CHILD, CHILD_BREAK_LINE, PARENT, _config, _finish

from aml_magics.dap import DebugService, RequestFailed, Session
from aml_magics.dap.models import PAGE_SIZE, VALUE_LIMIT, Model
from aml_magics.dap.service import ENDED, RUNNING, STOPPED

pytest.importorskip("debugpy")
debuggee = test_dap_client.debuggee  # the fixture: a real debugpy waiting for a client

SCRIPT = textwrap.dedent(
    """\
    import os
    big = list(range(1_000_000))
    text = "x" * 100_000
    total = 0
    for i in range(4):
        total += i
    message = "total is %d" % total
    doubled = total * 2
    print(message, doubled)
    """
)
LOOP_LINE = 6  # total += i
MESSAGE_LINE = 7  # message = ...
DOUBLED_LINE = 8


def test_session_open_arms_breakpoints_before_release(tmp_path, debuggee):
    script = tmp_path / "app.py"
    script.write_text(SCRIPT)
    proc, port = debuggee(script)
    queues = {}
    session = Session.open(_config(port), {str(script): [{"line": MESSAGE_LINE}]}, timeout=20,
                           prepare=lambda s: queues.setdefault("events", s.channel.event_queue()))
    try:
        assert session.attached and session.capabilities.get("supportsConfigurationDoneRequest")
        assert session.breakpoints[str(script)][0]["verified"] is True
        thread = queues["events"].take("stopped", timeout=20)["body"]["threadId"]
        frames = session.channel.request("stackTrace", {"threadId": thread})["stackFrames"]
        assert frames[0]["line"] == MESSAGE_LINE
        session.channel.request("continue", {"threadId": thread})
        queues["events"].take("terminated", timeout=20)
    finally:
        session.disconnect()
    assert proc.wait(15) == 0


def test_service_models_hold_the_stack_when_the_state_says_stopped_the_locals_follow(tmp_path, debuggee):
    script = tmp_path / "app.py"
    script.write_text(SCRIPT)
    proc, port = debuggee(script)
    seen: list[tuple] = []
    service = DebugService.open(_config(port), {str(script): [LOOP_LINE]}, timeout=20)

    def on_state(model: Model, change: str) -> None:
        if change == "state" and service.state == STOPPED:
            seen.append(service.callstack.frames[0].line)  # the locals are not waited for (they follow)

    service.subscribe(on_state)
    try:
        stop = service.wait_stopped(20)
        assert stop is not None and stop.reason == "breakpoint"
        assert seen == [LOOP_LINE]
        assert service.wait_locals(10) and service.variables.locals is not None
        top = service.callstack.frames[0]
        assert os.path.samefile(top.path, script) and top.name == "<module>"
        local = {v.name: v for v in service.variables.locals.variables}
        assert local["total"].value == "0" and local["i"].value == "0"
        assert service.breakpoints.by_path[str(script)][0].verified is True

        # conditional breakpoint replaces the plain one; continue reaches it
        service.set_breakpoints(str(script), [{"line": LOOP_LINE, "condition": "i == 3"}])
        assert service.breakpoints.by_path[str(script)][0].condition == "i == 3"
        service.resume("continue")
        assert service.state in (RUNNING, STOPPED)
        stop = service.wait_stopped(20)
        assert service.wait_locals(10)
        assert {v.name: v.value for v in service.variables.locals.variables}["i"] == "3"

        # step over: the line advances, the models follow
        service.set_breakpoints(str(script), [])
        service.resume("next")
        stop = service.wait_stopped(20)
        assert stop.reason == "step" and service.callstack.frames[0].line == LOOP_LINE - 1  # the for line
        while service.callstack.frames[0].line != MESSAGE_LINE:
            service.resume("next")
            service.wait_stopped(20)
        service.resume("next")
        service.wait_stopped(20)
        assert service.callstack.frames[0].line == DOUBLED_LINE
        assert service.wait_locals(10)
        assert {v.name: v.value for v in service.variables.locals.variables}["message"] == "'total is 6'"

        # evaluate: a value, an expandable result, and debugpy's own error text
        assert service.evaluate("total * 7").value == "42"
        with pytest.raises(RequestFailed, match="name 'nope' is not defined"):
            service.evaluate("nope + 1")

        # big values: pages of at most 100 children, long reprs cut
        big = {v.name: v for v in service.variables.locals.variables}["big"]
        assert big.expandable
        first = service.load_children(big.reference)
        assert len(first.variables) <= PAGE_SIZE and first.more
        names = [v.name for v in first.variables]
        assert len(names) == PAGE_SIZE and names[2:4] == ["000000", "000001"]
        second = service.load_children(big.reference, start=PAGE_SIZE)
        assert {v.name: v.value for v in second.variables}["len()"] == "1000000"  # debugpy's own cap at 100 items
        assert not second.more
        assert service.variables.page(big.reference, PAGE_SIZE) == second
        text = service.evaluate("text")
        assert text.cut and len(text.value) <= VALUE_LIMIT + 1

        service.resume("continue")
        assert service.wait_stopped(20) is None
        assert service.state == ENDED
    finally:
        service.close()
    assert proc.wait(15) == 0
    assert "total is 6 12" in _finish(proc)


def test_service_follows_a_child_process_with_the_same_breakpoints(tmp_path, debuggee):
    (tmp_path / "parent.py").write_text(PARENT)
    child_path = tmp_path / "child.py"
    child_path.write_text(CHILD)
    proc, port = debuggee(tmp_path / "parent.py")
    service = DebugService.open(_config(port), {str(child_path): [CHILD_BREAK_LINE]}, timeout=20)
    try:
        added = []
        service.subscribe(lambda model, change: added.append(change) if change == "child" else None)
        import time

        deadline = time.monotonic() + 30
        while not service.children and time.monotonic() < deadline:
            time.sleep(0.05)
        assert service.children, "no child session"
        child = service.children[0]
        assert child.parent is service and child.breakpoints is service.breakpoints
        stop = child.wait_stopped(20)
        assert stop is not None and stop.reason == "breakpoint"
        assert os.path.samefile(child.callstack.frames[0].path, child_path)
        assert child.wait_locals(10)
        assert {v.name: v.value for v in child.variables.locals.variables}["secret"] == "'from-child-42'"
        assert child.process.get("systemProcessId") not in (None, proc.pid)
        child.resume("continue")
        assert child.wait_stopped(20) is None
        assert service.wait_stopped(20) is None
    finally:
        service.close()
    assert proc.wait(15) == 0
    assert "child says from-child-42" in _finish(proc)


def test_detach_lets_the_debuggee_run_on(tmp_path, debuggee):
    script = tmp_path / "app.py"
    script.write_text(SCRIPT)
    proc, port = debuggee(script)
    service = DebugService.open(_config(port), {str(script): [MESSAGE_LINE]}, timeout=20)
    try:
        assert service.wait_stopped(20) is not None
        service.detach()
        assert service.state == ENDED and service.end_reason == "detached"
        assert service.wait_stopped(1) is None
    finally:
        service.close()
    assert proc.wait(15) == 0
    assert "total is 6 12" in _finish(proc)
