"""Deployments on the local target: the Azure ML inference server serves score.py in a process
with debugpy listening; a real DAP client attaches through the emitted launch.json, a real HTTP
scoring request stops at a breakpoint in run(), the request payload is visible, and the response
arrives once the client continues. Error paths: init() raising, a SyntaxError, bad options."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import (
    DOCKER_BASE,
    busy_port,
    count_down_then_ctrl_c,
    free_port,
    port_is_listening,
)
from IPython.core.error import UsageError

from aml_magics.deploy.handle import DebugDeployment, ScoringError, server_failure
from aml_magics.engine import REGISTRY
from aml_magics.testing.dap import attach_with_launch_config

pytest.importorskip("azureml_inference_server_http")

SCORE = """\
import json
import os


def init():
    global model
    with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model.json")) as f:
        model = json.load(f)
    print("model loaded", model)


def run(raw_data):
    payload = json.loads(raw_data)
    scaled = [x * model["scale"] for x in payload["data"]]
    return {"result": scaled, "model": model["name"]}
"""
INIT_LINE = 9  # print("model loaded", model)
RUN_LINE = 15  # return {"result": ...}


@pytest.fixture
def model_dir(workdir: Path) -> Path:
    folder = workdir / "model"
    folder.mkdir()
    (folder / "model.json").write_text(json.dumps({"scale": 3, "name": "triple"}))
    return folder


def test_scoring_request_stops_at_breakpoint_in_run(shell, workdir, model_dir):
    dep = shell.run_cell_magic("aml_debug_deploy", "--name triple --port 0 --timeout 60 --model-dir model", SCORE)
    assert isinstance(dep, DebugDeployment)
    seen: list[str] = []
    dep.subscribe(lambda run, what: seen.append(run.state) if what == "state" else None)
    endpoint = dep.wait_for_endpoint(30)
    assert dep.state == "waiting_for_debugger"
    assert dep.scoring_uri is None
    score_py = workdir / ".aml_magics" / "cells" / "deploy-triple" / "score.py"
    assert score_py.read_text() == SCORE
    config = dep.launch_config()
    assert config["connect"] == {"host": "127.0.0.1", "port": endpoint.port}
    # score.py is served from its own folder: the mapping is 1:1.
    assert config["pathMappings"] == [{"localRoot": "${workspaceFolder}/.aml_magics/cells/deploy-triple",
                                       "remoteRoot": str(score_py.parent)}]

    client = attach_with_launch_config(config, {str(score_py): [INIT_LINE, RUN_LINE]},
                                       workspace_folder=str(workdir))
    responses: list = []
    try:
        # init() runs after the client attached: its breakpoint is hit, AZUREML_MODEL_DIR is set.
        stop = client.wait_stopped(30)
        assert (Path(stop.path), stop.line) == (score_py, INIT_LINE)
        assert client.evaluate("os.environ['AZUREML_MODEL_DIR']", stop.frame_id) == repr(str(model_dir))
        assert dep.state == "attached"
        client.continue_(stop.thread_id)

        uri = dep.wait_until_serving(30)
        assert uri.startswith("http://127.0.0.1:") and uri.endswith("/score")
        assert dep.state == "serving"
        sender = threading.Thread(target=lambda: responses.append(dep.score({"data": [1, 2, 5]}, timeout=60)))
        sender.start()

        stop = client.wait_stopped(30)
        assert stop.reason == "breakpoint"
        assert (Path(stop.path), stop.line) == (score_py, RUN_LINE)
        local_vars = client.variables_of(stop.frame_id)
        assert ast.literal_eval(local_vars["raw_data"]) == '{"data": [1, 2, 5]}'  # the request body
        assert local_vars["payload"] == "{'data': [1, 2, 5]}"
        assert local_vars["scaled"] == "[3, 6, 15]"
        assert not responses  # the request is held at the breakpoint
        client.continue_(stop.thread_id)
        sender.join(30)
    finally:
        client.close()
    assert responses == [{"result": [3, 6, 15], "model": "triple"}]
    assert "model loaded" in dep.logs

    http_port = int(uri.rsplit(":", 1)[1].split("/")[0])
    shell.run_line_magic("aml_cancel", dep.id)
    assert dep.state == "canceled"
    assert not port_is_listening("127.0.0.1", endpoint.port)
    assert not port_is_listening("127.0.0.1", http_port)
    states = [s for i, s in enumerate(seen) if i == 0 or seen[i - 1] != s]
    assert "running" not in states
    assert states[-3:] == ["attached", "serving", "canceled"], states


def test_line_form_aml_score_and_views(shell, workdir, model_dir, capsys):
    (workdir / "svc").mkdir()
    (workdir / "svc" / "score.py").write_text(SCORE)
    http_port = free_port()
    dep = shell.run_line_magic(
        "aml_debug_deploy", f"--port 0 --timeout 0 --wait --http-port {http_port} --model-dir model "
                            "--launch-json .vscode/launch.json svc/score.py")
    assert dep.state == "serving", dep.logs
    written = json.loads((workdir / ".vscode" / "launch.json").read_text())["configurations"][0]
    assert written["name"] == "score" and written["connect"]["port"] == dep.endpoints[0].port
    assert written["pathMappings"][0]["localRoot"] == "${workspaceFolder}/svc"
    assert dep.scoring_uri == f"http://127.0.0.1:{http_port}/score"
    assert dep.attached is False  # nobody attached within 0 s: the debugger is off, the port closed
    assert not port_is_listening("127.0.0.1", dep.endpoints[0].port)
    assert dep.launch_config()["pathMappings"][0]["remoteRoot"] == str(workdir / "svc")

    assert shell.run_line_magic("aml_score", f"""{dep.id} '{{"data": [2]}}'""") == {"result": [6], "model": "triple"}
    shell.user_ns["sample"] = {"data": [1, 1]}
    assert shell.run_line_magic("aml_score", "score sample") == {"result": [3, 3], "model": "triple"}
    # run() raising → HTTP 500, reported as one line; the server keeps serving.
    with pytest.raises(UsageError, match=r"HTTP 500 from .*/score"):
        shell.run_line_magic("aml_score", f"{dep.id} '{{\"nodata\": 1}}'")
    with pytest.raises(ScoringError) as caught:
        dep.score('{"nodata": 1}')
    assert caught.value.status == 500
    with pytest.raises(UsageError, match="not JSON"):
        shell.run_line_magic("aml_score", f"{dep.id} {{data: 1}}")
    assert dep.score(b'{"data": [0]}') == {"result": [0], "model": "triple"}

    text = repr(dep) + "\n" + dep._repr_mimebundle_()["text/plain"]
    assert f"scoring URI: POST http://127.0.0.1:{http_port}/score" in text and ": serving" in text
    from aml_magics.views.widget import DebugRunPanel

    panel = DebugRunPanel(dep)
    assert f"http://127.0.0.1:{http_port}/score" in panel.header_html.value and "serving" in panel.header_html.value

    # Unloading the extension stops the server.
    capsys.readouterr()
    shell.run_line_magic("unload_ext", "aml_magics")
    assert dep.state == "canceled"
    assert dep.id in capsys.readouterr().out
    shell.run_line_magic("load_ext", "aml_magics")
    assert not port_is_listening("127.0.0.1", http_port)


def test_init_raising_fails_with_the_server_traceback(shell, workdir):
    cell = 'def init():\n    raise ValueError("no model in here")\n\n\ndef run(raw_data):\n    return raw_data\n'
    dep = shell.run_cell_magic("aml_debug_deploy", "--name broken --no-debug --wait", cell)
    assert dep.wait(20) == "failed"
    assert dep.exit_code == 3
    assert dep.detail == "init() failed: ValueError: no model in here"
    score_py = workdir / ".aml_magics" / "cells" / "deploy-broken" / "score.py"
    assert dep.traceback.startswith("Traceback (most recent call last):")
    assert f'File "{score_py}", line 2, in init' in dep.traceback
    assert "UserScriptException" in dep.traceback
    assert dep.scoring_uri is None
    with pytest.raises(Exception, match="not serving"):
        dep.score({"data": 1})
    assert dep.traceback in dep._repr_mimebundle_()["text/plain"]


def test_syntax_error_is_caught_before_anything_starts(shell, workdir):
    before = len(REGISTRY.all())
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(UsageError, match=r"score.py: syntax error at line 2"):
        shell.run_cell_magic("aml_debug_deploy", "--port 0", "def init():\n    return (\n\ndef run(x): pass\n")
    (workdir / "s.py").write_text("def run(x)\n    return x\n")
    with pytest.raises(UsageError, match=r"s.py: syntax error at line 1"):
        shell.run_line_magic("aml_debug_deploy", "--port 0 s.py")
    assert len(REGISTRY.all()) == before
    assert not (workdir / ".aml_magics").exists()  # the cell was not even written
    assert {p.pid for p in psutil.Process().children(recursive=True)} == children


@pytest.mark.parametrize(("line", "message"), [
    ("--model-dir nowhere score.py", r"--model-dir .*nowhere is not a directory"),
    ("--target azureml score.py", r"deployments run on: local"),
    ("missing.py", r"script not found: .*missing.py"),
    ("", r"no scoring script"),
    ("--http-port 70000 score.py", r"--http-port must be between 0 and 65535"),
    ("--image some:img score.py", r"--image is for --target docker"),
    ("--target docker --image some:img --pip six score.py", r"--image is served as it is \(plus debugpy\); drop --pip"),
])
def test_bad_options_are_one_line_errors(shell, workdir, line, message):
    (workdir / "score.py").write_text(SCORE)
    with pytest.raises(UsageError, match=message):
        shell.run_line_magic("aml_debug_deploy", line)


def test_busy_http_port_names_the_holder(shell, workdir):
    (workdir / "score.py").write_text(SCORE)
    with busy_port() as port:
        with pytest.raises(UsageError, match=rf"--http-port {port} on 127.0.0.1 is already in use \(held by pid"):
            shell.run_line_magic("aml_debug_deploy", f"--http-port {port} score.py")


def test_cli_deploy_prints_uri_endpoint_and_launch_json(workdir, model_dir):
    (workdir / "score.py").write_text(SCORE)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "aml_magics.cli", "deploy", "score.py", "--port", "0", "--timeout", "0",
         "--model-dir", "model"],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    out: list[str] = []
    try:
        deadline = time.time() + 60
        uri = None
        while time.time() < deadline and uri is None:
            line = proc.stdout.readline()
            if not line:
                break
            out.append(line)
            if line.startswith("aml-debug: scoring URI: "):
                uri = line.split()[3]
        assert uri, "".join(out)
        text = "".join(out)
        assert "aml-debug: debugpy listening at 127.0.0.1:" in text
        assert '"request": "attach"' in text and f'"remoteRoot": "{workdir}"' in text
        from aml_magics.deploy.handle import post_json

        assert post_json(uri, {"data": [4]}, timeout=30) == {"result": [12], "model": "triple"}
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, rest
    assert "stopped" in rest
    http_port = int(uri.rsplit(":", 1)[1].split("/")[0])
    assert not port_is_listening("127.0.0.1", http_port)


def test_cli_deploy_counts_down_on_a_terminal_and_ctrl_c_stops(workdir, model_dir):
    """The attach wait before init() says itself in a live line, as ``aml-debug run``'s does."""
    (workdir / "score.py").write_text(SCORE)
    argv = [sys.executable, "-m", "aml_magics.cli", "deploy", "score.py", "--port", "0", "--timeout", "120",
            "--model-dir", "model"]
    text, port, code = count_down_then_ctrl_c(argv, workdir, "stopped", 120)
    assert f"aml-debug: debugpy listening at 127.0.0.1:{port}" in text
    assert re.search(r"\r\x1b\[Kaml-debug: deployment \S+ stopped", text), text
    assert "Traceback" not in text and code == 130


def test_cli_deploy_syntax_error_exits_2(workdir, capsys):
    from aml_magics.cli import main

    (workdir / "score.py").write_text("def init(:\n")
    assert main(["deploy", "score.py"]) == 2
    assert "syntax error at line 1" in capsys.readouterr().err


def test_server_failure_parser_takes_the_last_chained_record():
    lines = [
        "2026-01-01 00:00:00,000 I [1] azmlinfsrv.user_script - Invoking user's init function",
        "2026-01-01 00:00:00,001 E [1] azmlinfsrv - User's init function failed",
        "2026-01-01 00:00:00,002 E [1] azmlinfsrv - Encountered Exception Traceback (most recent call last):",
        '  File "/app/score.py", line 2, in init',
        "    raise KeyError('w')",
        "KeyError: 'w'",
        "",
        "The above exception was the direct cause of the following exception:",
        "",
        "Traceback (most recent call last):",
        '  File "/x/user_script.py", line 121, in invoke_init',
        "server.user_script.UserScriptException: Caught an unhandled exception from the user script",
        "",
        "AML_MAGICS_EXIT {\"code\": 3}",
    ]
    text, summary = server_failure(lines)
    assert summary == "init() failed: KeyError: 'w'"
    assert text.splitlines()[0] == "Traceback (most recent call last):"
    assert text.splitlines()[-1].endswith("Caught an unhandled exception from the user script")
    assert server_failure(["no traceback here"]) is None


# -- --target docker (a real engine, as in tests/test_docker_target.py) ------------------------------

@pytest.mark.docker
def test_docker_deployment_stops_at_breakpoint_in_run(shell, workdir, model_dir, no_container_left):
    dep = shell.run_cell_magic(
        "aml_debug_deploy", f"--target docker --base-image {DOCKER_BASE} --name dtriple --port 0 --timeout 120 "
                            "--model-dir model", SCORE)
    endpoint = dep.wait_for_endpoint(600)  # the first time, the image is built (cached after)
    assert dep.target == "docker" and endpoint.cwd == "/var/azureml-app"
    container = dep._handle.container
    for port in ("5678/tcp", "5001/tcp"):  # debug and scoring port: on loopback only
        assert container.ports[port][0]["HostIp"] == "127.0.0.1"
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    score_py = workdir / ".aml_magics" / "cells" / "deploy-dtriple" / "score.py"
    # score.py alone, read-only (nothing else of its folder), as the invoking user
    assert mounts["/var/azureml-app/score.py"]["Source"] == str(score_py)
    assert mounts["/var/azureml-app/score.py"]["RW"] is False and "/var/azureml-app" not in mounts
    assert container.attrs["Config"]["User"] == f"{os.getuid()}:{os.getgid()}"
    assert "AML_MAGICS_SECRETS" not in " ".join(container.attrs["Config"]["Env"])
    assert mounts["/aml_magics/deploy_server.py"]["RW"] is False
    assert mounts["/var/azureml-app/azureml-models/model/1"]["Source"] == str(model_dir)
    config = dep.launch_config()
    assert config["connect"] == {"host": "127.0.0.1", "port": endpoint.port}
    assert config["pathMappings"][0]["remoteRoot"] == "/var/azureml-app"

    client = attach_with_launch_config(config, {str(score_py): [INIT_LINE, RUN_LINE]}, workspace_folder=str(workdir))
    responses: list = []
    try:
        stop = client.wait_stopped(60)
        assert (Path(stop.path), stop.line) == (score_py, INIT_LINE)  # the local copy: pathMappings work
        assert client.evaluate("os.environ['AZUREML_MODEL_DIR']", stop.frame_id) == \
            repr("/var/azureml-app/azureml-models/model/1")
        client.continue_(stop.thread_id)
        uri = dep.wait_until_serving(60)
        assert uri == f"http://127.0.0.1:{container.ports['5001/tcp'][0]['HostPort']}/score"
        sender = threading.Thread(target=lambda: responses.append(dep.score({"data": [7]}, timeout=60)))
        sender.start()
        stop = client.wait_stopped(60)
        assert (Path(stop.path), stop.line) == (score_py, RUN_LINE)
        assert ast.literal_eval(client.variables_of(stop.frame_id)["raw_data"]) == '{"data": [7]}'
        assert not responses
        client.continue_(stop.thread_id)
        sender.join(60)
    finally:
        client.close()
    assert responses == [{"result": [21], "model": "triple"}]
    http_port = int(uri.rsplit(":", 1)[1].split("/")[0])
    shell.run_line_magic("aml_cancel", dep.id)
    assert dep.state == "canceled"
    assert not port_is_listening("127.0.0.1", http_port)
    assert not port_is_listening("127.0.0.1", endpoint.port)


@pytest.mark.docker
def test_docker_deployment_init_raising_fails_with_traceback(shell, workdir, no_container_left):
    cell = 'def init():\n    raise RuntimeError("cannot load")\n\n\ndef run(raw_data):\n    return raw_data\n'
    dep = shell.run_cell_magic("aml_debug_deploy",
                               f"--target docker --base-image {DOCKER_BASE} --name dbroken --no-debug --wait", cell)
    assert dep.wait(600) == "failed"
    assert dep.detail == "init() failed: RuntimeError: cannot load"
    assert 'File "/var/azureml-app/score.py", line 2, in init' in dep.traceback


# -- --target docker --image: an existing inference image, debugpy added ---------------------------------

INFERENCE_PYTHON = "/azureml-envs/azureml_test/bin/python"


@pytest.fixture(scope="module")
def inference_image(engine) -> str:
    """A stand-in for an Azure ML inference image: the test base + a venv under /azureml-envs with the
    inference server (and no debugpy), installed offline from wheels resolved on the host by the docker
    target's own machinery. Cached by its tag."""
    import tempfile

    import docker

    from aml_magics import images
    from aml_magics.deploy.request import server_requirement
    from aml_magics.spec import EnvironmentSpec

    base_id = engine.images.get(DOCKER_BASE).id
    key = EnvironmentSpec(pip=(server_requirement(),)).fingerprint(DOCKER_BASE, base_id, "stand-in 1")
    tag = f"aml-magics-test-inference:{key}"
    try:
        engine.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    python = images.probe_python(engine, base_id)
    env = EnvironmentSpec(pip=(server_requirement(),))
    with tempfile.TemporaryDirectory() as tmp:
        pip_wheel = images.wheels.download_wheels(env, python, Path(tmp) / "wheels", lambda _: None)
        venv = INFERENCE_PYTHON.rsplit("/bin/", 1)[0]
        recipe = "\n".join([
            f"FROM {base_id}",
            "COPY wheels /tmp/wheels",
            images.recipe._run([python.executable, "-m", "venv", "--without-pip", venv]),
            images.recipe._run([INFERENCE_PYTHON, f"/tmp/wheels/{pip_wheel}/pip", "install", "--no-index", "--find-links",
                         "/tmp/wheels", "--no-cache-dir", "--disable-pip-version-check", server_requirement()]),
            images.recipe._run(["rm", "-rf", "/tmp/wheels"]),
            "WORKDIR /var/azureml-app",
        ]) + "\n"
        with images.build.build_context(recipe, EnvironmentSpec(), Path(tmp) / "wheels") as context:
            images.run_build(engine, tag, context, "none", lambda _: None, None)
    return tag


@pytest.mark.docker
def test_docker_deployment_in_an_existing_inference_image(shell, workdir, model_dir, inference_image,
                                                          no_container_left, engine):
    dep = shell.run_cell_magic(
        "aml_debug_deploy", f"--target docker --image {inference_image} --name dimage --port 0 --timeout 120 "
                            "--model-dir model", SCORE)
    endpoint = dep.wait_for_endpoint(300)
    assert f"Python: {INFERENCE_PYTHON}" in dep.logs or f"server Python {INFERENCE_PYTHON}" in dep.logs
    container = dep._handle.container
    assert container.attrs["Config"]["Entrypoint"][0] == INFERENCE_PYTHON  # the image's own Python
    base = engine.images.get(container.image.id)
    assert base.labels["aml_magics.base"] == inference_image and base.labels["aml_magics.python"] == INFERENCE_PYTHON
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    score_py = workdir / ".aml_magics" / "cells" / "deploy-dimage" / "score.py"
    assert mounts["/var/azureml-app/score.py"]["Source"] == str(score_py)
    assert mounts["/var/azureml-app/score.py"]["RW"] is False
    assert "/var/azureml-app" not in mounts and "/aml_magics/deploy_server.py" not in mounts  # in the image
    for port in ("5678/tcp", "5001/tcp"):
        assert container.ports[port][0]["HostIp"] == "127.0.0.1"
    config = dep.launch_config()
    assert config["connect"] == {"host": "127.0.0.1", "port": endpoint.port}
    assert config["pathMappings"][0]["remoteRoot"] == "/var/azureml-app"
    client = attach_with_launch_config(config, {str(score_py): [RUN_LINE]}, workspace_folder=str(workdir))
    responses: list = []
    try:
        dep.wait_until_serving(60)
        sender = threading.Thread(target=lambda: responses.append(dep.score({"data": [2]}, timeout=60)))
        sender.start()
        stop = client.wait_stopped(60)
        assert (Path(stop.path), stop.line) == (score_py, RUN_LINE)
        assert ast.literal_eval(client.variables_of(stop.frame_id)["raw_data"]) == '{"data": [2]}'
        assert client.evaluate("__import__('sys').executable", stop.frame_id) == repr(INFERENCE_PYTHON)
        assert client.evaluate("__import__('debugpy').__file__", stop.frame_id).startswith("'/aml_magics/site/")
        client.continue_(stop.thread_id)
        sender.join(60)
    finally:
        client.close()
        dep.cancel()
    assert responses == [{"result": [6], "model": "triple"}]
    assert dep.state == "canceled"

    again = shell.run_cell_magic("aml_debug_deploy", f"--target docker --image {inference_image} --name dimage2 "
                                                     "--no-debug --model-dir model --wait", SCORE)
    try:
        assert again.wait_until_serving(120)
        assert "aml_magics: reusing image aml-magics/env:" in again.logs and "building image" not in again.logs
        assert again.score({"data": [1]}, timeout=30) == {"result": [3], "model": "triple"}
    finally:
        again.cancel()


@pytest.mark.docker
def test_docker_image_without_the_server_or_missing_is_one_line(shell, workdir, engine, no_container_left):
    with pytest.raises(UsageError, match=r"^--image localhost:1/absent:none is not in the local Docker engine") as info:
        shell.run_cell_magic("aml_debug_deploy", "--target docker --image localhost:1/absent:none", SCORE)
    assert "\n" not in str(info.value)
    dep = shell.run_cell_magic("aml_debug_deploy", f"--target docker --image {DOCKER_BASE} --no-debug", SCORE)
    assert dep.wait(120) == "failed"
    assert dep.detail.startswith(f"image {DOCKER_BASE} has no Python with azureml_inference_server_http"), dep.detail
    assert "\n" not in dep.detail
