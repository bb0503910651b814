"""Post-mortem and breakpoint(): a crashed run waits at its exception for a real DAP client,
which stops at the raising line with the locals and the exception visible; breakpoint()
pauses with a client attached, waits for one on request, and is otherwise a no-op."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import port_is_listening, wait_for

import aml_magics
from aml_magics import launch
from aml_magics.testing.dap import attach_with_launch_config
from aml_magics.views import render_text

CRASH = """\
import sys
print("healthy", "debugpy" in sys.modules, sys.gettrace() is not None, flush=True)
def average(values):
    total = sum(values)
    return total / len(values)
scores = []
print(average(scores))
"""
RAISE_LINE = 5  # return total / len(values)

BREAKS = """\
import sys
print("hook", sys.breakpointhook.__name__, flush=True)
value = 41
breakpoint()
value += 1
print("after", value, flush=True)
"""
BREAKPOINT_LINE = 4
RESUME_LINE = 5  # like pdb: the pause shows the next line the caller will run


def test_zero_overhead_post_mortem_stops_at_the_raising_line(workdir):
    run = aml_magics.submit(code=CRASH, name="crashy", port=0, timeout=0, post_mortem=True,
                            launch_json=".vscode/launch.json")
    endpoint = run.wait_for_endpoint(30)
    assert "healthy False False" in run.logs  # no debugger at all while the run was healthy
    wait_for(lambda: run.state == "crashed_waiting_for_debugger", 10, "crashed state")
    assert run.detail == "ZeroDivisionError: division by zero"
    label = render_text(run).splitlines()[0]
    assert "crashed — waiting for debugger" in label and "left to attach" in label
    assert "ZeroDivisionError: division by zero" in label
    (status,) = run.ranks
    assert status.state == "crashed_waiting_for_debugger" and "ZeroDivisionError" in status.detail
    # launch.json was written at the moment of the crash
    wait_for(lambda: (workdir / ".vscode" / "launch.json").exists(), 10, "launch.json written")
    written = launch.parse_jsonc((workdir / ".vscode" / "launch.json").read_text())
    assert written["configurations"][0]["connect"]["port"] == endpoint.port

    script = workdir / ".aml_magics" / "cells" / "crashy.py"
    client = attach_with_launch_config(run.launch_config(), {}, workspace_folder=str(workdir))
    try:
        stop = client.wait_stopped(30)
        assert stop.reason == "exception"
        assert Path(stop.path) == script and stop.line == RAISE_LINE
        assert client.variables_of(stop.frame_id)["total"] == "0"
        assert client.evaluate("len(values)", stop.frame_id) == "0"
        info = client.request("exceptionInfo", {"threadId": stop.thread_id})
        assert info["exceptionId"].startswith("ZeroDivisionError") and info["description"] == "division by zero"
        assert [f["name"] for f in stop.frames[:2]] == ["average", "<module>"]
        wait_for(lambda: run.state == "attached", 10, "attached state")
        client.continue_(stop.thread_id)
        assert run.wait(30) == "failed"
    finally:
        client.close()
    assert run.exit_code == 1
    assert "ZeroDivisionError: division by zero" in run.logs and "Traceback" in run.logs
    assert not port_is_listening("127.0.0.1", endpoint.port)


def test_post_mortem_after_the_attach_window_closed_and_nobody_comes(workdir):
    run = aml_magics.submit(code="x = 1\nraise KeyError('missing')\n", name="lonely", port=0, timeout=0.5,
                            post_mortem=True, post_mortem_timeout=1)
    first = run.wait_for_endpoint(30)
    assert run.wait(30) == "failed" and run.exit_code == 1
    markers = [line for line in run.raw_logs.splitlines() if "AML_MAGICS_" in line]
    kinds = [line.split()[0] for line in markers]
    assert kinds == ["AML_MAGICS_ENDPOINT", "AML_MAGICS_ATTACHED", "AML_MAGICS_ENDPOINT",
                     "AML_MAGICS_POST_MORTEM", "AML_MAGICS_ATTACHED", "AML_MAGICS_CRASH", "AML_MAGICS_EXIT"]
    post = json.loads(markers[3].split(" ", 1)[1].rsplit(" ", 1)[0])  # the JSON before the MAC
    assert post["type"] == "KeyError" and post["message"] == "'missing'" and post["line"] == 2
    assert post["port"] == first.port  # listening again on the same port
    assert "KeyError: 'missing'" in run.logs
    assert not port_is_listening("127.0.0.1", first.port)


def test_post_mortem_with_a_client_already_attached_stops_at_once(workdir):
    run = aml_magics.submit(code="items = [1, 2]\nfirst = items[5]\n", name="attached_crash", port=0, timeout=30,
                            post_mortem=True)
    run.wait_for_endpoint(30)
    client = attach_with_launch_config(run.launch_config(), {}, workspace_folder=str(workdir))
    try:
        stop = client.wait_stopped(30, reason="exception")
        assert stop.line == 2
        assert client.variables_of(stop.frame_id)["items"] == "[1, 2]"
        info = client.request("exceptionInfo", {"threadId": stop.thread_id})
        assert info["description"] == "list index out of range"
        client.continue_(stop.thread_id)
        assert run.wait(30) == "failed"
    finally:
        client.close()
    assert '"attached": true' in next(x for x in run.raw_logs.splitlines() if "AML_MAGICS_POST_MORTEM" in x)


def test_post_mortem_of_one_rank_in_a_distributed_run(workdir):
    code = ("import os\nrank = int(os.environ['RANK'])\n"
            "if rank == 1:\n    raise RuntimeError(f'rank {rank} lost its data')\nprint('fine', rank)\n")
    run = aml_magics.submit(code=code, name="pm", procs_per_node=2, port=0, timeout=0, post_mortem=True)
    endpoint = run.wait_for_endpoint(30, rank=1)
    wait_for(lambda: run.state == "crashed_waiting_for_debugger", 10, "crashed state")
    assert run.detail == "rank 1: RuntimeError: rank 1 lost its data"
    assert [e.rank for e in run.endpoints] == [1]  # the healthy rank never started a debugger
    wait_for(lambda: run.ranks[0].state == "completed", 10, "rank 0 completed")
    assert run.ranks[1].state == "crashed_waiting_for_debugger"
    config = run.launch_config(rank=1)
    assert config["name"] == "pm rank 1" and config["connect"]["port"] == endpoint.port
    client = attach_with_launch_config(config, {}, workspace_folder=str(workdir))
    try:
        stop = client.wait_stopped(30, reason="exception")
        assert stop.line == 4
        assert client.evaluate("rank", stop.frame_id) == "1"
        client.continue_(stop.thread_id)
        assert run.wait(30) == "failed"
    finally:
        client.close()
    assert run.detail.startswith("rank 1 failed (exit code 1)")
    assert [s.state for s in run.ranks] == ["completed", "failed"]


def test_breakpoint_pauses_with_a_client_attached(workdir):
    run = aml_magics.submit(code=BREAKS, name="bp_attached", port=0, timeout=30)
    run.wait_for_endpoint(30)
    client = attach_with_launch_config(run.launch_config(), {}, workspace_folder=str(workdir))
    try:
        stop = client.wait_stopped(30)
        assert stop.reason == "breakpoint" and stop.line == RESUME_LINE
        assert Path(stop.path) == workdir / ".aml_magics" / "cells" / "bp_attached.py"
        assert client.variables_of(stop.frame_id)["value"] == "41"
        client.continue_(stop.thread_id)
        assert run.wait(30) == "completed"
    finally:
        client.close()
    assert "hook aml_magics_breakpointhook" in run.logs  # ours, not pydevd's, once attached
    assert "after 42" in run.logs


def test_breakpoint_without_a_client_is_a_no_op_not_pdb(workdir):
    switched_off = aml_magics.submit(code=BREAKS, name="bp_off", port=0, timeout=0.3, wait=True)
    no_debug = aml_magics.submit(code=BREAKS, name="bp_nodebug", no_debug=True, wait=True)
    for run in (switched_off, no_debug):
        assert run.state == "completed", run.logs
        assert "hook aml_magics_breakpointhook" in run.logs  # also after the debugger was switched off
        assert "after 42" in run.logs and "(Pdb)" not in run.logs
        assert f"breakpoint() at {run.spec.script_path}:{BREAKPOINT_LINE} ignored" in run.logs


def test_wait_on_breakpoint_reports_waits_and_pauses(workdir):
    run = aml_magics.submit(code=BREAKS, name="bp_wait", port=0, timeout=0, wait_on_breakpoint=True,
                            post_mortem_timeout=60)
    endpoint = run.wait_for_endpoint(30)
    wait_for(lambda: "AML_MAGICS_BREAKPOINT" in run.raw_logs, 10, "breakpoint marker")
    assert run.state == "waiting_for_debugger"
    (status,) = run.ranks
    assert status.detail == f"breakpoint() at {run.spec.script_path}:{BREAKPOINT_LINE}"
    assert "after" not in run.logs
    client = attach_with_launch_config(run.launch_config(), {}, workspace_folder=str(workdir))
    try:
        stop = client.wait_stopped(30)
        assert stop.reason == "breakpoint" and stop.line == RESUME_LINE
        assert client.variables_of(stop.frame_id)["value"] == "41"
        client.continue_(stop.thread_id)
        assert run.wait(30) == "completed"
    finally:
        client.close()
    assert "after 42" in run.logs
    assert not port_is_listening("127.0.0.1", endpoint.port)


MEAN = """\
def mean(v):
    total = sum(v)
    return total / len(v)
print("start", flush=True)
print(mean([]))
"""
MEAN_RAISE_LINE = 3


def _only_user_stops(client, stop, script: Path) -> None:
    """The stop is the user's raising line; continuing reaches the end with no other stop."""
    assert stop.reason == "exception"
    assert Path(stop.path) == script and stop.line == MEAN_RAISE_LINE, stop.frames[:3]
    assert [f["name"] for f in stop.frames[:2]] == ["mean", "<module>"]
    info = client.request("exceptionInfo", {"threadId": stop.thread_id})
    assert info["exceptionId"].startswith("ZeroDivisionError")
    client.continue_(stop.thread_id)


def test_uncaught_filter_stops_at_the_raising_line_not_in_our_files(workdir):
    """VS Code's default exception filter (``uncaught``) stops where plain debugpy would."""
    run = aml_magics.submit(code=MEAN, name="mean_empty", port=0, timeout=30)
    run.wait_for_endpoint(30)
    client = attach_with_launch_config(run.launch_config(), {}, workspace_folder=str(workdir),
                                       exception_filters=("uncaught",))
    try:
        stop = client.wait_stopped(30)
        _only_user_stops(client, stop, workdir / ".aml_magics" / "cells" / "mean_empty.py")
        assert run.wait(30) == "failed"
        stops = [e for e in client.events() if e.get("event") == "stopped"]
        assert len(stops) == 1, stops  # no second stop at the node's own exit
    finally:
        client.close()
    assert run.exit_code == 1
    assert "ZeroDivisionError: division by zero" in run.detail
    assert run.logs.count("Traceback (most recent call last)") == 1
    assert "aml_magics/node" not in run.logs and "_aml_magics_node" not in run.logs


def test_uncaught_filter_after_a_post_mortem_attach_stops_once(workdir):
    run = aml_magics.submit(code=MEAN, name="mean_pm", port=0, timeout=0, post_mortem=True)
    run.wait_for_endpoint(30)
    wait_for(lambda: run.state == "crashed_waiting_for_debugger", 10, "crashed state")
    client = attach_with_launch_config(run.launch_config(), {}, workspace_folder=str(workdir),
                                       exception_filters=("uncaught",))
    try:
        stop = client.wait_stopped(30)
        _only_user_stops(client, stop, workdir / ".aml_magics" / "cells" / "mean_pm.py")
        assert run.wait(30) == "failed"
        assert len([e for e in client.events() if e.get("event") == "stopped"]) == 1
    finally:
        client.close()
    assert run.exit_code == 1


def test_user_sys_exit_with_a_code_stops_at_the_users_line(workdir):
    code = "import sys\nprint('bye', flush=True)\nsys.exit(3)\n"
    run = aml_magics.submit(code=code, name="exits3", port=0, timeout=30)
    run.wait_for_endpoint(30)
    client = attach_with_launch_config(run.launch_config(), {}, workspace_folder=str(workdir),
                                       exception_filters=("uncaught",))
    try:
        stop = client.wait_stopped(30)
        assert Path(stop.path) == workdir / ".aml_magics" / "cells" / "exits3.py" and stop.line == 3
        client.continue_(stop.thread_id)
        assert run.wait(30) == "failed"
    finally:
        client.close()
    assert run.exit_code == 3


def test_cancel_with_the_uncaught_filter_does_not_stop_in_our_files(workdir):
    """A cancel (SIGINT) ends the script with the node's own exit code 130: no stop at that SystemExit."""
    run = aml_magics.submit(code="import time\nwhile True:\n    time.sleep(0.05)\n", name="cancel_attached", port=0,
                            timeout=30)
    run.wait_for_endpoint(30)
    client = attach_with_launch_config(run.launch_config(), {}, workspace_folder=str(workdir),
                                       exception_filters=("uncaught",))
    try:
        wait_for(lambda: run.state == "attached", 10, "attached")
        run.cancel()
        assert run.wait(30) == "canceled"
        assert [e for e in client.events() if e.get("event") == "stopped"] == []
    finally:
        client.close()
    assert run.exit_code == 130  # the script's own end, not the SIGTERM a stuck stop would need


def test_post_mortem_after_an_earlier_session_detached_stops_at_the_raise(workdir):
    """One attach per window: the first session (the in-notebook debugger) stops, then detaches,
    and the script crashes the moment the goodbye resumes it, before the node has handled the
    goodbye. The crash must open a new window, not wait in the used one that lets nobody in: a
    second client (an independent DAP client through the run's configuration) stops at the raise."""
    code = "x = 1\nraise ValueError('boom')\n"
    run = aml_magics.submit(code=code, name="twice", port=0, timeout=30, post_mortem=True, post_mortem_timeout=30)
    endpoint = run.wait_for_endpoint(30)
    dbg = run.attach(breakpoints=[f"{run.spec.script_path}:1"])
    try:
        assert dbg.wait_stopped(30).line == 1
    finally:
        dbg.detach()
    wait_for(lambda: run.state == "crashed_waiting_for_debugger", 20, "the crash")
    client = attach_with_launch_config(run.launch_config(), {}, workspace_folder=str(workdir))
    try:
        stop = client.wait_stopped(30)
        assert stop.reason == "exception" and stop.line == 2
        assert client.variables_of(stop.frame_id)["x"] == "1"
        client.continue_(stop.thread_id)
        assert run.wait(30) == "failed"
    finally:
        client.close()
    assert run.logs.count("debugger detached after") == 1  # the first client's leaving, said once
    assert not port_is_listening("127.0.0.1", endpoint.port)
