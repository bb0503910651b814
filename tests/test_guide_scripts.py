"""Scripts written the way Microsoft's guide says run unchanged: the guide's own train.py (its
--remote_debug* flags, its debugpy.listen(...) / debugpy.wait_for_client() block) and score.py
(``debugpy.listen(('0.0.0.0', 5678)); debugpy.wait_for_client()`` at the top), on every target.

Real parts throughout: the bootstrap's real debugpy, a real DAP client attaching through the
emitted launch configuration and stopping at a breakpoint *after* the guide's debug block, real
processes, a real Docker engine, the simulated Azure ML node in its own network namespace, real
HTTP scoring requests. With nobody attaching, each run gets past the guide's block once the
run's window has passed, instead of waiting forever as the guide's code would.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
from conftest import DOCKER_BASE, port_is_listening, wait_for

import aml_magics
from aml_magics.invocation import NODE_PATH
from aml_magics.testing.dap import attach_with_launch_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
GUIDE_TRAIN = EXAMPLES / "guide_train.py"
GUIDE_SCORE = EXAMPLES / "guide_score.py"
BOOTSTRAP = NODE_PATH


def line_of(path: Path, text: str) -> int:
    """The 1-based line of ``path`` that starts with ``text`` (after indentation)."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip().startswith(text):
            return number
    raise AssertionError(f"{text!r} not in {path}")


AFTER_BLOCK = line_of(GUIDE_TRAIN, 'print("Argument 1: %s"')  # the first line after the guide's debug block
RUN_LINE = line_of(GUIDE_SCORE, "return {\"predictions\"")  # inside run(), after the work
UNUSED_PORT = 5699  # what the guide's flags ask for; nothing may ever listen there


def guide_args(port: int = UNUSED_PORT, client_ip: str = "127.0.0.1") -> list[str]:
    """The guide's flags (debugging on, its own timeout, address and port) plus an argument of the script."""
    return ["--remote_debug", "--remote_debug_connection_timeout", "300", "--remote_debug_client_ip", client_ip,
            "--remote_debug_port", str(port), "--input_data", "abc"]


def endpoint_markers(run) -> list[dict]:
    """The payloads of a run's ENDPOINT marker lines, in order."""
    found = []
    for line in run.raw_logs.splitlines():
        if "AML_MAGICS_ENDPOINT " in line:
            payload = line.split("AML_MAGICS_ENDPOINT ", 1)[1]
            found.append(json.loads(payload[:payload.rindex("}") + 1]))
    return found


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """Every TCP address process ``pid`` listens on."""
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN}


def project_with(folder: Path, source: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, folder / name)
    return folder / name


def stop_after_the_guide_block(run, script: Path, workdir: Path, timeout: float = 60) -> None:
    """A DAP client attaches through the run's launch configuration and stops at the first line after
    the guide's block, where the guide's own flags are visible, untouched; then the run completes."""
    client = attach_with_launch_config(run.launch_config(), {str(script): [AFTER_BLOCK]},
                                       workspace_folder=str(workdir))
    try:
        stop = client.wait_stopped(timeout)
        assert stop.reason == "breakpoint"
        assert (Path(stop.path), stop.line) == (script, AFTER_BLOCK)  # the local file: pathMappings work
        assert client.evaluate("args.remote_debug", stop.frame_id) == "True"
        assert client.evaluate("args.remote_debug_port", stop.frame_id) == str(UNUSED_PORT)
        assert client.evaluate("debugpy.is_client_connected()", stop.frame_id) == "True"
        client.continue_(stop.thread_id)
        assert run.wait(timeout) == "completed", run.detail + "\n" + run.logs[-2000:]
    finally:
        client.close()
    assert run.exit_code == 0
    logs = run.logs
    assert "Argument 1: abc" in logs and f"remote_debug_port {UNUSED_PORT}, remote_debug_connection_timeout 300" in logs
    assert "Timeout for debug connection: 300" in logs  # the guide's own prints are left alone
    assert logs.count("Debugger attached = True") == 2  # the bootstrap's line and the guide's own
    assert "RuntimeError" not in logs and "Traceback" not in logs


# -- the local target ------------------------------------------------------------------------------


def test_guide_train_stops_after_its_debug_block_on_the_runs_endpoint(workdir):
    script = project_with(workdir / "proj", GUIDE_TRAIN, "train.py")
    run = aml_magics.submit(str(script), port=0, timeout=60, args=guide_args(client_ip="0.0.0.0"))
    endpoint = run.wait_for_endpoint(30)
    assert endpoint.host == "127.0.0.1"
    pid = endpoint.pid
    client = attach_with_launch_config(run.launch_config(), {str(script): [AFTER_BLOCK]},
                                       workspace_folder=str(workdir))
    try:
        stop = client.wait_stopped(30)
        assert (Path(stop.path), stop.line) == (script, AFTER_BLOCK)
        # The guide asked for 0.0.0.0:5699; the run's debugger is the only listener, on loopback.
        assert listening_addresses(pid) == {("127.0.0.1", endpoint.port)}
        assert client.evaluate("args.remote_debug_client_ip", stop.frame_id) == "'0.0.0.0'"
        assert client.evaluate("debugpy.is_client_connected()", stop.frame_id) == "True"
        assert client.evaluate("debugpy.listen(('0.0.0.0', 5699))", stop.frame_id) == repr(("127.0.0.1", endpoint.port))
        client.continue_(stop.thread_id)
        assert run.wait(30) == "completed", run.logs
    finally:
        client.close()
    logs = run.logs
    line = (f"aml_magics: debugpy.listen(('0.0.0.0', {UNUSED_PORT})) uses this run's debugger at "
            f"127.0.0.1:{endpoint.port} (bound to 127.0.0.1 by the run's options); no second listener")
    assert logs.count(line) == 1 and logs.count("aml_magics: debugpy.listen(") == 1  # said once, for both calls
    assert "Argument 1: abc" in logs and logs.count("Debugger attached = True") == 2
    assert [m["reason"] for m in endpoint_markers(run)] == ["start"]  # nothing reopened: a client was attached
    assert not port_is_listening("127.0.0.1", endpoint.port)


def test_guide_train_with_nobody_attaching_completes_after_the_window(workdir):
    script = project_with(workdir / "proj", GUIDE_TRAIN, "train.py")
    run = aml_magics.submit(str(script), port=0, timeout=1, args=guide_args(), wait=True)
    assert run.state == "completed", run.logs
    logs = run.logs
    # The run's window passed; the guide's wait_for_client() got the one more window it promises
    # ("if none attaches, the script continues as normal") and the script went on.
    markers = endpoint_markers(run)
    assert [m["reason"] for m in markers] == ["start", "debugpy.wait_for_client"]
    assert markers[1]["port"] == markers[0]["port"] and markers[1]["timeout"] == 1
    assert "debugpy.wait_for_client() reopens it for up to 1s" in logs
    assert logs.count("Debugger attached = False") == 3  # start window, reopened window, the guide's own
    assert "Argument 1: abc" in logs
    assert not port_is_listening("127.0.0.1", markers[0]["port"])


def test_attach_in_the_window_the_guides_wait_reopens(workdir):
    script = project_with(workdir / "proj", GUIDE_TRAIN, "train.py")
    run = aml_magics.submit(str(script), port=0, timeout=10, args=guide_args())
    wait_for(lambda: len(endpoint_markers(run)) == 2, 60, "the guide's wait_for_client() reopening the window")
    assert endpoint_markers(run)[1]["reason"] == "debugpy.wait_for_client"
    wait_for(lambda: run.state == "waiting_for_debugger", 10, "waiting state")
    stop_after_the_guide_block(run, script, workdir)
    assert "Debugger attached = False" in run.logs  # the first window passed with nobody


def test_guide_train_on_every_rank_gets_that_ranks_own_debugger(workdir):
    """``--procs-per-node 2``: each rank's guide block runs against that rank's debugger — its
    ``debugpy.listen()`` returns the rank's own endpoint, nothing listens where the guide asked —
    and a rank nobody attaches to completes after its windows."""
    script = project_with(workdir / "proj", GUIDE_TRAIN, "train.py")
    run = aml_magics.submit(str(script), port=0, timeout=8, procs_per_node=2, args=guide_args(client_ip="0.0.0.0"))
    wait_for(lambda: len(run.endpoints) == 2, 60, "both ranks' endpoints")
    endpoints = {e.rank: e for e in run.endpoints}
    assert endpoints[0].port != endpoints[1].port
    client = attach_with_launch_config(run.launch_config(rank=1), {str(script): [AFTER_BLOCK]},
                                       workspace_folder=str(workdir))
    try:
        stop = client.wait_stopped(30)
        assert (Path(stop.path), stop.line) == (script, AFTER_BLOCK)
        assert client.evaluate("os.environ['RANK']", stop.frame_id) == "'1'"
        assert client.evaluate("debugpy.listen(('0.0.0.0', 5699))", stop.frame_id) == \
            repr(("127.0.0.1", endpoints[1].port))
        assert listening_addresses(endpoints[1].pid) == {("127.0.0.1", endpoints[1].port)}
        client.continue_(stop.thread_id)
        assert run.wait(60) == "completed", run.detail + "\n" + run.logs[-2000:]
    finally:
        client.close()
    logs = run.logs
    assert logs.count("Argument 1: abc") == 2 and "Traceback" not in logs
    for rank in (0, 1):
        assert logs.count(f"uses this run's debugger at 127.0.0.1:{endpoints[rank].port}") == 1
    assert not port_is_listening("127.0.0.1", UNUSED_PORT)


def _bootstrap(tmp_path: Path, body: str, *options: str) -> subprocess.CompletedProcess:
    script = tmp_path / "user_script.py"
    script.write_text(body)
    return subprocess.run([sys.executable, str(BOOTSTRAP), *options, "--", str(script)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)


EVERY_CALL = """
import sys, debugpy
from debugpy import listen, wait_for_client
print("listen", debugpy.listen(("0.0.0.0", 5699)), listen(5699))
wait_for_client()
debugpy.wait_for_client()
print("connected", debugpy.is_client_connected())
debugpy.breakpoint()
debugpy.configure(subProcess=False)
debugpy.log_to("/nonexistent")
print("connect", debugpy.connect(("127.0.0.1", int(open("peer").read()))))
debugpy.debug_this_thread()
debugpy.trace_this_thread(True)
debugpy.trigger_exception_handler()
debugpy.wait_for_client.cancel()
try:
    debugpy.listen(("0.0.0.0", 70000))
except ValueError as exc:
    print("bad port:", exc)
print("loaded", sorted(m for m in ("pydevd", "debugpy.server") if m in sys.modules))
print("tracing", sys.gettrace() is not None)
"""


@pytest.mark.parametrize("options", [("--no-debug",), ("--port", "0", "--debug-ranks", "1", "--rank", "0")],
                         ids=["no-debug", "rank-not-debugged"])
def test_without_a_debugger_every_call_returns_at_once(tmp_path, options):
    with socket.socket() as peer:  # debugpy.connect() must not connect here
        peer.bind(("127.0.0.1", 0))
        peer.listen(1)
        (tmp_path / "peer").write_text(str(peer.getsockname()[1]))
        result = _bootstrap(tmp_path, EVERY_CALL, *options)
        peer.setblocking(False)
        with pytest.raises(BlockingIOError):
            peer.accept()
    assert result.returncode == 0, result.stderr
    out, err = result.stdout, result.stderr
    assert "listen ('0.0.0.0', 5699) ('127.0.0.1', 5699)" in out  # what was asked; nothing listens
    assert "connected False" in out and "connect None" in out and "tracing False" in out
    assert "loaded []" in out  # no debugger was even loaded
    assert "bad port: invalid port number" in out  # checked as debugpy checks it
    assert "AML_MAGICS_ENDPOINT" not in out
    why = "this run has no debugger (--no-debug)" if "--no-debug" in options else \
        "rank 0 has no debugger (not in --debug-ranks)"
    assert err.count(f"aml_magics: debugpy.listen(('0.0.0.0', 5699)) ignored: {why}; nothing listens") == 1
    assert err.count("aml_magics: debugpy.connect(") == 1 and err.count("aml_magics: debugpy.configure(") == 1
    assert err.count("aml_magics: debugpy.log_to(") == 1
    assert "Traceback" not in err


def test_timeout_zero_never_waits_and_says_so(tmp_path):
    with socket.socket() as peer:
        peer.bind(("127.0.0.1", 0))
        peer.listen(1)
        (tmp_path / "peer").write_text(str(peer.getsockname()[1]))
        result = _bootstrap(tmp_path, EVERY_CALL, "--port", "0", "--timeout", "0")
        peer.setblocking(False)
        with pytest.raises(BlockingIOError):
            peer.accept()
    assert result.returncode == 0, result.stderr
    port = json.loads(result.stdout.split("AML_MAGICS_ENDPOINT ", 1)[1].splitlines()[0])["port"]
    assert f"listen ('127.0.0.1', {port}) ('127.0.0.1', {port})" in result.stdout  # the run's endpoint
    assert result.stdout.count("AML_MAGICS_ENDPOINT") == 1  # --timeout 0: nothing reopened
    assert "connected False" in result.stdout and "tracing False" in result.stdout
    err = result.stderr
    assert err.count(f"debugpy.listen(('0.0.0.0', 5699)) ignored: this run's debugger at 127.0.0.1:{port} "
                     "(bound to 127.0.0.1 by the run's options) is off (--timeout 0); nothing listens") == 1
    assert err.count("debugpy.wait_for_client() returns at once") == 1
    assert err.count("debugpy.connect(('127.0.0.1', ") == 1 and "does not connect out" in err
    assert "Traceback" not in err


BREAKS = """\
import debugpy
print("connected", debugpy.is_client_connected())
debugpy.breakpoint()
after = "paused here"
print("done", after)
"""


def test_debugpy_breakpoint_pauses_like_breakpoint_with_a_client(workdir):
    script = workdir / "breaks.py"
    script.write_text(BREAKS)
    run = aml_magics.submit(str(script), port=0, timeout=60)
    run.wait_for_endpoint(30)
    client = attach_with_launch_config(run.launch_config(), {}, workspace_folder=str(workdir))
    try:
        stop = client.wait_stopped(30)
        assert (Path(stop.path), stop.line) == (script, 4)  # the line after debugpy.breakpoint()
        assert client.evaluate("debugpy.is_client_connected()", stop.frame_id) == "True"
        client.continue_(stop.thread_id)
        assert run.wait(30) == "completed"
    finally:
        client.close()
    assert "connected True" in run.logs and "done paused here" in run.logs


def test_debugpy_breakpoint_waits_with_wait_on_breakpoint(workdir):
    script = workdir / "breaks.py"
    script.write_text(BREAKS)
    run = aml_magics.submit(str(script), port=0, timeout=0, wait_on_breakpoint=True, post_mortem_timeout=60)
    wait_for(lambda: run.state == "waiting_for_debugger", 30, "breakpoint() waiting")
    assert "connected False" in run.logs
    client = attach_with_launch_config(run.launch_config(), {}, workspace_folder=str(workdir))
    try:
        stop = client.wait_stopped(30)
        assert (Path(stop.path), stop.line) == (script, 4)
        client.continue_(stop.thread_id)
        assert run.wait(30) == "completed"
    finally:
        client.close()
    assert "done paused here" in run.logs


AFTER_A_CLIENT_LEFT = """\
import os, time, debugpy
while not os.path.exists("go"):
    time.sleep(0.05)
debugpy.listen(("0.0.0.0", 5699))
debugpy.wait_for_client()
print("past the block, connected", debugpy.is_client_connected())
"""


def test_a_client_that_left_is_not_waited_for_again(workdir):
    (workdir / "left.py").write_text(AFTER_A_CLIENT_LEFT)
    run = aml_magics.submit(str(workdir / "left.py"), port=0, timeout=60)
    run.wait_for_endpoint(30)
    client = attach_with_launch_config(run.launch_config(), {}, workspace_folder=str(workdir))
    wait_for(lambda: run.state == "attached", 30, "attached state")
    client.disconnect()
    (workdir / "go").write_text("")
    assert run.wait(30) == "completed", run.logs  # the window was used: the guide's wait does not wait again
    assert "past the block, connected False" in run.logs
    assert "debugpy.wait_for_client() returns at once" in run.logs


WAITS_WITH_A_BREAKPOINT = """\
import os, threading, time, debugpy


def work():
    breakpoint()
    print("worker resumed")


worker = threading.Thread(target=work, name="worker")
worker.start()
while not os.path.exists("go"):
    time.sleep(0.05)
print("main calls wait_for_client", flush=True)
debugpy.wait_for_client()
print("main past wait_for_client, connected", debugpy.is_client_connected())
worker.join()
"""


def test_wait_for_client_waits_within_another_threads_window(workdir):
    script = workdir / "waits.py"
    script.write_text(WAITS_WITH_A_BREAKPOINT)
    run = aml_magics.submit(str(script), port=0, timeout=0, wait_on_breakpoint=True, post_mortem_timeout=60)
    wait_for(lambda: run.state == "waiting_for_debugger", 30, "breakpoint() in the worker waiting")
    (workdir / "go").write_text("")
    wait_for(lambda: "main calls wait_for_client" in run.logs, 30, "main thread in wait_for_client()")
    assert "main past wait_for_client" not in run.logs  # it waits within the worker's window, not at once
    client = attach_with_launch_config(run.launch_config(), {}, workspace_folder=str(workdir))
    try:
        stop = client.wait_stopped(30)
        assert Path(stop.path) == script and stop.line == 6  # the worker, after its breakpoint()
        wait_for(lambda: "main past wait_for_client, connected True" in run.logs, 30, "main thread released")
        client.continue_(stop.thread_id)
        assert run.wait(30) == "completed", run.logs
    finally:
        client.close()
    assert "worker resumed" in run.logs


# -- docker ----------------------------------------------------------------------------------------


@pytest.mark.docker
def test_guide_train_in_docker(engine, workdir, no_container_left):
    script = project_with(workdir / "proj", GUIDE_TRAIN, "train.py")
    run = aml_magics.submit(str(script), target="docker", base_image=DOCKER_BASE, port=0, timeout=120,
                            args=guide_args(client_ip="0.0.0.0"))
    endpoint = run.wait_for_endpoint(600)  # the first time, the image is built (cached after)
    assert endpoint.host == "127.0.0.1" and endpoint.cwd == "/app"
    container = run._handle.container
    assert set(container.ports) == {"5678/tcp"}  # the guide's 5699 is published nowhere
    assert container.ports["5678/tcp"][0]["HostIp"] == "127.0.0.1"
    stop_after_the_guide_block(run, script, workdir)
    # Inside the container the run's own endpoint is the container's address (published on the host's loopback).
    assert re.search(r"debugpy.listen\(\('0.0.0.0', 5699\)\) uses this run's debugger at [\d.]+:5678 "
                     r"\(bound to 0.0.0.0 by the run's options\); no second listener", run.logs), run.logs


@pytest.mark.docker
def test_guide_train_in_docker_with_nobody_attaching(engine, workdir, no_container_left):
    script = project_with(workdir / "proj", GUIDE_TRAIN, "train.py")
    run = aml_magics.submit(str(script), target="docker", base_image=DOCKER_BASE, port=0, timeout=1,
                            args=guide_args())
    assert run.wait(600) == "completed", run.detail + "\n" + run.logs[-2000:]
    assert [m["reason"] for m in endpoint_markers(run)] == ["start", "debugpy.wait_for_client"]
    assert "Argument 1: abc" in run.logs and "Debugger attached = False" in run.logs


# -- the simulated Azure ML node -------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_guide_train_on_the_simulated_azureml_node(shell, project, monkeypatch, node_namespace):
    from azureml_support import use_simulated_node, wait_for_the_debugger

    node = use_simulated_node(monkeypatch, project, node_namespace)
    script = project_with(project / "proj", GUIDE_TRAIN, "train.py")
    run = shell.run_line_magic("aml_debug_run", "--target azureml --compute cpu-cluster --experiment guide --port 0 "
                               "--timeout 60 proj/train.py -- " + " ".join(guide_args(client_ip="0.0.0.0")))
    endpoint, _ = wait_for_the_debugger(run, node)  # the node's own address, not the guide's 0.0.0.0
    stop_after_the_guide_block(run, script, project)
    relay = endpoint.node_address  # the node side: the relay in front of debugpy
    assert f"uses this run's debugger at {relay} (bound to {node} by the run's options)" in run.logs


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_guide_train_on_the_simulated_node_with_nobody_attaching(project, monkeypatch, node_namespace):
    from azureml_support import use_simulated_node

    use_simulated_node(monkeypatch, project, node_namespace)
    project_with(project / "proj", GUIDE_TRAIN, "train.py")
    run = aml_magics.submit("proj/train.py", target="azureml", compute="cpu-cluster", port=0, timeout=1,
                            args=guide_args(), wait=True)
    assert run.state == "completed", run.detail + "\n" + run.logs[-2000:]
    assert [m["reason"] for m in endpoint_markers(run)] == ["start", "debugpy.wait_for_client"]
    assert "Argument 1: abc" in run.logs


# -- deployments: the guide's score.py ---------------------------------------------------------------


def _score_and_stop_in_run(dep, score_py: Path, workdir: Path, timeout: float = 60) -> None:
    """Attach in the run's window; the guide's block at the top of score.py passes; a real HTTP request
    stops at the breakpoint in run(), its payload visible; the response arrives after continue."""
    client = attach_with_launch_config(dep.launch_config(), {str(score_py): [RUN_LINE]},
                                       workspace_folder=str(workdir))
    responses: list = []
    try:
        dep.wait_until_serving(timeout)
        sender = threading.Thread(target=lambda: responses.append(dep.score({"data": [1, 2]}, timeout=timeout)))
        sender.start()
        stop = client.wait_stopped(timeout)
        assert stop.reason == "breakpoint"
        assert (Path(stop.path), stop.line) == (score_py, RUN_LINE)
        local_vars = client.variables_of(stop.frame_id)
        assert ast.literal_eval(local_vars["raw_data"]) == '{"data": [1, 2]}'  # the request's body
        assert local_vars["predictions"] == "[4.0, 7.0]"
        assert client.evaluate("debugpy.is_client_connected()", stop.frame_id) == "True"
        assert not responses  # held at the breakpoint
        client.continue_(stop.thread_id)
        sender.join(timeout)
    finally:
        client.close()
    assert responses == [{"predictions": [4.0, 7.0]}]
    assert "Debugger attached..." in dep.logs and "model loaded" in dep.logs
    assert "debugpy.listen(('0.0.0.0', 5678)) uses this run's debugger at " in dep.logs


@pytest.fixture
def inference_server():
    pytest.importorskip("azureml_inference_server_http")


def test_guide_score_under_aml_debug_deploy(shell, workdir, inference_server):
    score_py = project_with(workdir / "svc", GUIDE_SCORE, "score.py")
    dep = shell.run_line_magic("aml_debug_deploy", "--name guide --port 0 --timeout 60 svc/score.py")
    endpoint = dep.wait_for_endpoint(30)
    pid = endpoint.pid
    _score_and_stop_in_run(dep, score_py, workdir)
    http_port = int(re.search(r":(\d+)/score$", dep.scoring_uri).group(1))
    # Only the run's debugger and the scoring server listen, both on loopback: nothing on the guide's 0.0.0.0.
    assert listening_addresses(pid) <= {("127.0.0.1", endpoint.port), ("127.0.0.1", http_port)}
    assert ("127.0.0.1", http_port) in listening_addresses(pid)
    shell.run_line_magic("aml_cancel", dep.id)
    assert dep.state == "canceled"
    assert not port_is_listening("127.0.0.1", endpoint.port)


def test_guide_score_with_nobody_attaching_serves_after_the_window(workdir, inference_server):
    project_with(workdir / "svc", GUIDE_SCORE, "score.py")
    # What aml_magics.deploy(...) calls; once the aml_magics.deploy package is imported (any deployment),
    # that attribute is the package, not the function (reported, not fixed here).
    from aml_magics.deploy.request import deploy

    dep = deploy("svc/score.py", port=0, timeout=1)
    try:
        assert dep.wait_until_serving(60)
        assert dep.score({"data": [2]}, timeout=30) == {"predictions": [7.0]}
        assert [m["reason"] for m in endpoint_markers(dep)] == ["start", "debugpy.wait_for_client"]
        assert "Debugger attached..." in dep.logs and "Debugger attached = False" in dep.logs
        assert not port_is_listening("127.0.0.1", dep.endpoints[0].port)  # the windows closed
    finally:
        dep.cancel()
    assert dep.state == "canceled"


@pytest.mark.docker
def test_guide_score_in_docker(shell, workdir, engine, inference_server, no_container_left):
    score_py = project_with(workdir / "svc", GUIDE_SCORE, "score.py")
    dep = shell.run_line_magic("aml_debug_deploy", f"--target docker --base-image {DOCKER_BASE} --name dguide "
                                                   "--port 0 --timeout 120 svc/score.py")
    endpoint = dep.wait_for_endpoint(600)  # the first time, the image is built (cached after)
    container = dep._handle.container
    assert set(container.ports) == {"5678/tcp", "5001/tcp"}
    assert all(container.ports[p][0]["HostIp"] == "127.0.0.1" for p in container.ports)
    assert dep.launch_config()["connect"] == {"host": "127.0.0.1", "port": endpoint.port}
    _score_and_stop_in_run(dep, score_py, workdir)
    shell.run_line_magic("aml_cancel", dep.id)
    assert dep.state == "canceled"
