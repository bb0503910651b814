"""The in-notebook debugger on the other targets: a deployment whose run() stops on a real
HTTP scoring request, a Docker container (real engine), and the simulated Azure ML node in
its own network namespace (a plain run and a pipeline step) — each time breakpoints armed at
attach, a stop in the *local* file, a local read, an expression evaluated, a step, and the
run continued to its end."""

from __future__ import annotations

import ast
import json
import threading
from pathlib import Path

import pytest
from conftest import BREAK_LINE, CELL, DOCKER_BASE, wait_for

import aml_magics
from aml_magics.testing.dap import attach_with_launch_config

SCORE = """\
import json


def init():
    global factor
    factor = 3


def run(raw_data):
    payload = json.loads(raw_data)
    scaled = [x * factor for x in payload["data"]]
    return {"result": scaled}
"""
RUN_LINE = 10  # payload = json.loads(raw_data)


def _debug_cell_run(run, local_script: Path, timeout: float = 60) -> None:
    """Attach with the cell's breakpoint armed, inspect, step, continue to completion."""
    dbg = run.attach(breakpoints=[(str(local_script), BREAK_LINE)], timeout=timeout)
    try:
        stop = dbg.wait_stopped(timeout)
        assert stop.reason == "breakpoint"
        assert (Path(stop.path), stop.line) == (local_script, BREAK_LINE)  # mapped back to the local copy
        assert stop.text == 'marker = f"total={total}"'
        assert dbg.locals()["total"] == "10"
        assert dbg.evaluate("total * 4") == "40"
        assert dbg.step_over(timeout).line == BREAK_LINE + 1
        assert dbg.locals()["marker"] == "'total=10'"
        dbg.continue_()
        assert dbg.wait_stopped(timeout) is None
        assert run.wait(timeout) == "completed", run.detail
    finally:
        dbg.detach()
    assert "total=10" in run.logs


# -- a deployment --------------------------------------------------------------------------
def _debug_deployment(dep, score_py: Path) -> None:
    dbg = dep.attach(breakpoints=[f"score.py:{RUN_LINE}"], timeout=120)  # relative to the local root
    responses: list = []
    try:
        dep.wait_until_serving(120)
        sender = threading.Thread(target=lambda: responses.append(dep.score({"data": [1, 2, 5]}, timeout=60)))
        sender.start()
        stop = dbg.wait_stopped(60)
        assert (stop.reason, Path(stop.path), stop.line) == ("breakpoint", score_py, RUN_LINE)
        local = dbg.locals()
        assert ast.literal_eval(local["raw_data"]) == '{"data": [1, 2, 5]}'  # the request's body
        assert "payload" not in local
        assert dbg.step_over().line == RUN_LINE + 1
        assert dbg.evaluate("payload['data'][-1] * factor") == "15"
        assert dbg.step_over().line == RUN_LINE + 2 and dbg.locals()["scaled"] == "[3, 6, 15]"
        assert not responses  # the request is held while we look
        dbg.continue_()
        sender.join(60)
        assert responses == [{"result": [3, 6, 15]}]
        assert dbg.state == "running"  # the server serves on, still attached
        sender = threading.Thread(target=lambda: responses.append(dep.score({"data": [7]}, timeout=60)))
        sender.start()
        assert dbg.wait_stopped(60) is not None
        assert ast.literal_eval(dbg.locals()["raw_data"]) == '{"data": [7]}'
        dbg.clear()
        dbg.continue_()
        sender.join(60)
        assert responses[-1] == {"result": [21]}
    finally:
        dbg.detach()
    assert dep.score({"data": [2]}) == {"result": [6]}  # detached: nothing stops any more
    dep.cancel()
    wait_for(lambda: dbg.state == "ended", 10, "debugger ended")


def test_deployment_run_stops_on_a_real_scoring_request(shell, workdir):
    pytest.importorskip("azureml_inference_server_http")
    dep = shell.run_cell_magic("aml_debug_deploy", "--name dbgdep --port 0 --timeout 60", SCORE)
    _debug_deployment(dep, workdir / ".aml_magics" / "cells" / "deploy-dbgdep" / "score.py")


@pytest.mark.docker
def test_docker_deployment_run_stops_on_a_real_scoring_request(shell, engine, workdir, no_container_left):
    dep = shell.run_cell_magic("aml_debug_deploy", f"--target docker --base-image {DOCKER_BASE} --name dbgddep "
                               "--port 0 --timeout 120", SCORE)
    dep.wait_for_endpoint(600)  # the first time, the image is built (cached after)
    _debug_deployment(dep, workdir / ".aml_magics" / "cells" / "deploy-dbgddep" / "score.py")


# -- docker --------------------------------------------------------------------------------
@pytest.mark.docker
def test_docker_container(engine, workdir, no_container_left):
    run = aml_magics.submit(code=CELL, name="dbgdock", target="docker", base_image=DOCKER_BASE, timeout=120)
    run.wait_for_endpoint(120)
    _debug_cell_run(run, workdir / ".aml_magics" / "cells" / "dbgdock.py")


@pytest.mark.docker
def test_docker_one_client_rule_names_the_holder(engine, workdir, no_container_left):
    run = aml_magics.submit(code=CELL, name="dockheld", target="docker", base_image=DOCKER_BASE, timeout=120)
    run.wait_for_endpoint(120)
    script = workdir / ".aml_magics" / "cells" / "dockheld.py"
    other = attach_with_launch_config(run.launch_config(), {str(script): [BREAK_LINE]}, workspace_folder=str(workdir))
    try:
        with pytest.raises(aml_magics.DebuggerError, match=r"already being debugged by pid \d+ .*one client at a time"):
            run.attach()
        stop = other.wait_stopped(60)
        other.continue_(stop.thread_id)
        assert run.wait(60) == "completed"
    finally:
        other.close()


# -- the simulated Azure ML node -----------------------------------------------------------
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_azureml_node_run(shell, project, monkeypatch, node_namespace):
    from azureml_support import use_simulated_node, wait_for_the_debugger

    node = use_simulated_node(monkeypatch, project, node_namespace)
    run = shell.run_line_magic("aml_debug_run", "--target azureml --compute cpu-cluster --experiment dbg "
                               "--port 0 --timeout 60 proj/train.py -- --lr 0.1")
    endpoint, _config = wait_for_the_debugger(run, node)
    dbg = shell.run_line_magic("aml_attach", f"{run.id} --break train.py:{BREAK_LINE}")
    try:
        assert endpoint.tunnelled and dbg.address == ("127.0.0.1", endpoint.port)  # the owner's forwarder
        stop = dbg.wait_stopped(30)
        assert (Path(stop.path), stop.line) == (project / "proj" / "train.py", BREAK_LINE)
        assert dbg.locals()["total"] == "10"
        assert "/nodes/" in dbg.evaluate("__import__('os').getcwd()")  # it really runs on the node
        assert dbg.step_over().line == BREAK_LINE + 1
        dbg.continue_()
        assert dbg.wait_stopped(60) is None
        assert run.wait(60) == "completed"
    finally:
        dbg.detach()
    assert "total=10 ['--lr', '0.1']" in run.logs


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_azureml_node_held_by_another_client_is_refused_from_the_runs_own_report(shell, project, monkeypatch,
                                                                                   node_namespace):
    from azureml_support import use_simulated_node, wait_for_the_debugger

    node = use_simulated_node(monkeypatch, project, node_namespace)
    run = shell.run_line_magic("aml_debug_run", "--target azureml --compute cpu-cluster --experiment held "
                               "--port 0 --timeout 60 proj/train.py")
    endpoint, config = wait_for_the_debugger(run, node)
    local = project / "proj" / "train.py"
    other = attach_with_launch_config(config, {str(local): [BREAK_LINE]}, workspace_folder=str(project))
    try:
        wait_for(lambda: run.state == "attached", 30, "attached state")
        with pytest.raises(aml_magics.DebuggerError) as refused:
            run.attach()
        message = str(refused.value)
        if endpoint.tunnelled or node_namespace is None:  # the holder is a client of this machine's forwarder
            assert "already being debugged by pid" in message
        else:  # the node is not this machine: the run's own report decides
            assert "the run reports a debugger attached" in message
        stop = other.wait_stopped(30)
        other.continue_(stop.thread_id)
        assert run.wait(60) == "completed"
    finally:
        other.close()


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_azureml_pipeline_step(shell, tmp_path, monkeypatch, node_namespace):
    pytest.importorskip("azureml.pipeline.steps")
    from azureml.pipeline.steps import PythonScriptStep
    from azureml_support import use_simulator, write_workspace_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AML_MAGICS_CACHE_DIR", str(tmp_path / "cache"))
    write_workspace_config(tmp_path)
    (tmp_path / "step1").mkdir()
    local = tmp_path / "step1" / "prep.py"
    local.write_text("import sys\nrows = [3, 4]\ncount = len(rows)\nprint('rows', count, sys.argv[1:])\n")
    use_simulator(monkeypatch, tmp_path / "sim", netns=node_namespace.name if node_namespace else "")
    step = PythonScriptStep(script_name="prep.py", name="prep", compute_target="cpu-cluster",
                            source_directory="step1", arguments=["--n", 2])
    shell.user_ns["one_step"] = [step]
    result = shell.run_line_magic("aml_debug_pipeline", "one_step --steps prep --timeout 60 --port 0 --experiment dbgp")
    run = result.steps["prep"]
    dbg = run.attach(breakpoints=["prep.py:3"], timeout=60)
    try:
        stop = dbg.wait_stopped(30)
        assert (Path(stop.path), stop.line) == (local, 3)
        assert dbg.locals()["rows"] == "[3, 4]"
        assert dbg.evaluate("sys.argv[1:]") == "['--n', '2']"
        assert dbg.step_over().line == 4 and dbg.locals()["count"] == "2"
        dbg.continue_()
        assert dbg.wait_stopped(60) is None
        assert run.wait(60) == "completed"
    finally:
        dbg.detach()
    assert "rows 2 ['--n', '2']" in run.logs
    assert json.dumps(["--n", "2"])  # the step's arguments reached the script untouched (above)
