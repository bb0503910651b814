"""The CLI, the Python API and the extension's load/unload, with real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

import aml_magics
from aml_magics.testing.dap import attach_with_launch_config


def test_import_and_load_ext_stay_light():
    code = (
        "import sys, aml_magics\n"
        "from IPython.testing.globalipapp import get_ipython\n"
        "ip = get_ipython(); ip.run_line_magic('load_ext', 'aml_magics')\n"
        "heavy = [m for m in ('azureml', 'azureml.core', 'docker', 'ipywidgets', 'azure.ai.ml') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def _start_cli(tmp_path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "aml_magics.cli", "run", *args],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _read_until(stream, needle: str, timeout: float = 30) -> list[str]:
    lines: list[str] = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = stream.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} not seen; got: {''.join(lines)}")


def test_cli_prints_endpoint_and_fragment_and_a_client_attaches(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("import sys\nloss = 0.25\nprint('loss', loss, sys.argv[1:])\n")
    proc = _start_cli(tmp_path, "train.py", "--port", "0", "--timeout", "30", "--", "--epochs", "3")
    try:
        lines = _read_until(proc.stdout, "launch.json attach configuration")
        assert any(line.startswith("aml-debug: debugpy listening at 127.0.0.1:") for line in lines)
        text = ""
        while True:
            text += proc.stdout.readline()
            try:
                fragment = json.loads(text)
                break
            except json.JSONDecodeError:
                continue
        config = fragment["configurations"][0]
        assert config["name"] == "train" and config["connect"]["host"] == "127.0.0.1"
        client = attach_with_launch_config(config, {str(script): [3]}, workspace_folder=str(tmp_path))
        try:
            stop = client.wait_stopped(30)
            assert stop.line == 3 and client.variables_of(stop.frame_id)["loss"] == "0.25"
            client.continue_(stop.thread_id)
            rest, err = proc.communicate(timeout=30)
        finally:
            client.close()
        assert proc.returncode == 0, err
        assert "loss 0.25 ['--epochs', '3']" in rest
        assert "completed" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_ctrl_c_cancels_the_run(tmp_path):
    (tmp_path / "slow.py").write_text("import time, os\nprint('pid', os.getpid(), flush=True)\ntime.sleep(300)\n")
    proc = _start_cli(tmp_path, "slow.py", "--no-debug")
    try:
        lines = _read_until(proc.stdout, "pid ")
        child = int(lines[-1].split()[1])
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130
        assert "canceled" in err
        deadline = time.time() + 10
        while psutil.pid_exists(child) and time.time() < deadline:
            time.sleep(0.1)
        assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_bad_option_is_one_line_exit_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "aml_magics.cli", "run", "x.py", "--port", "-3"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("aml-debug: ")


def test_cli_exit_code_follows_the_script(tmp_path):
    (tmp_path / "fail.py").write_text("raise SystemExit(7)\n")
    out = subprocess.run([sys.executable, "-m", "aml_magics.cli", "run", "fail.py", "--no-debug"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 7


def test_python_api_returns_the_same_handle(workdir):
    run = aml_magics.submit(code="value = 6 * 7\nprint(value)\n", name="api", port=0, timeout=30, args=["a"])
    endpoint = run.wait_for_endpoint(30)
    assert run.launch_config()["connect"]["port"] == endpoint.port
    client = attach_with_launch_config(run.launch_config(), {str(run.spec.script_path): [2]},
                                       workspace_folder=str(workdir))
    try:
        stop = client.wait_stopped(30)
        assert client.variables_of(stop.frame_id)["value"] == "42"
        client.continue_(stop.thread_id)
        assert run.wait(30) == "completed"
    finally:
        client.close()


def test_python_api_rejects_bad_input(workdir):
    from aml_magics.options import OptionsError

    with pytest.raises(OptionsError, match="--port must be between"):
        aml_magics.submit(code="print(1)\n", port=99999)


def test_unload_ext_cancels_and_lists_running_runs(workdir, capsys):
    from IPython.testing.globalipapp import get_ipython

    ip = get_ipython()
    ip.run_line_magic("load_ext", "aml_magics")
    run = ip.run_cell_magic("aml_debug_run", "--name lingering --no-debug", "import time\ntime.sleep(300)\n")
    capsys.readouterr()
    ip.run_line_magic("unload_ext", "aml_magics")
    out = capsys.readouterr().out
    assert "canceled running run(s): lingering" in out
    assert run.state == "canceled"
    assert "aml_debug_run" not in ip.magics_manager.magics["cell"]
