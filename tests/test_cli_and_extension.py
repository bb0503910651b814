"""The CLI, the Python API and the extension's load/unload, with real processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from conftest import busy_port, count_down_then_ctrl_c

import aml_magics
from aml_magics.testing.dap import attach_with_launch_config

REPO = Path(__file__).resolve().parent.parent


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


def _cli(cwd, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aml_magics.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def _one_line_error(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, out
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("aml-debug: "), out.stderr
    assert "Traceback" not in out.stderr
    return out.stderr.strip()


def test_cli_bad_option_is_one_line_exit_2(tmp_path):
    _one_line_error(_cli(tmp_path, "run", "x.py", "--port", "-3"))
    message = _one_line_error(_cli(tmp_path, "run", "x.py", "--port", "abc"))
    assert message == "aml-debug: --port must be a number 0-65535 or 'auto', not 'abc'"  # --port named once


def test_cli_help_shows_the_script_the_args_and_the_defaults(tmp_path):
    out = _cli(tmp_path, "run", "--help")
    assert out.returncode == 0 and out.stderr == ""
    text = out.stdout
    assert text.startswith("usage: aml-debug run [options] SCRIPT [-- ARGS ...]\n")
    assert re.search(r"\n  SCRIPT\s+the Python script to run, e\.g\. examples/train\.py", text)
    assert "[script_path]" not in text and "script_path" not in text
    flat = " ".join(text.split())
    assert "ARGS after -- are passed to it untouched" in flat
    for default in ("(default: local)", "(the default: 5678 or the next free one)", "(default: 300)",
                    "(default: 600)", "(default: text)"):
        assert default in flat, default
    assert "aml-debug run examples/train.py --timeout 30 -- --epochs 5" in text  # an example
    assert "%%%%" not in text


def test_the_magics_help_names_both_forms(shell, capsys):
    shell.run_line_magic("aml_debug_run", "--help")
    text = capsys.readouterr().out
    assert text.startswith("usage: %aml_debug_run [options] [SCRIPT] [-- ARGS ...]\n"
                           "       %%aml_debug_run [options]   (the cell is the script)\n"), text[:300]
    assert "(default: 300)" in " ".join(text.split())


def test_cli_a_scripts_own_help_goes_to_the_script(tmp_path):
    (tmp_path / "tool.py").write_text("import sys\nprint('script got', sys.argv[1:])\n")
    out = _cli(tmp_path, "run", "tool.py", "--no-debug", "--", "--help")
    assert out.returncode == 0 and "script got ['--help']" in out.stdout and "usage:" not in out.stdout


def test_cli_script_arguments_before_the_separator_get_a_hint(tmp_path):
    (tmp_path / "train.py").write_text("print('never')\n")
    message = _one_line_error(_cli(tmp_path, "run", "train.py", "--epochs", "3"))
    assert "unrecognized arguments: --epochs 3" in message
    assert "the script's own arguments go after --: aml-debug run [options] SCRIPT -- --epochs 3" in message


def test_cli_a_folder_is_not_a_script_and_no_script_is_said_in_terminal_words(tmp_path):
    examples = tmp_path / "examples"
    examples.mkdir()
    (examples / "train.py").write_text("print(1)\n")
    message = _one_line_error(_cli(tmp_path, "run", "examples/"))
    assert "examples/ is a folder, not a script" in message and "examples/train.py" in message
    assert "not found" not in message
    message = _one_line_error(_cli(tmp_path, "run", "--timeout", "3"))
    assert message.startswith("aml-debug: no script to run: aml-debug run [options] SCRIPT [-- ARGS ...]")
    assert "%%" not in message and "cell" not in message


def test_cli_default_port_is_auto_when_5678_is_taken(tmp_path):
    """The README's main job on a shared machine: 5678 busy (held here, or by someone else) is no error."""
    (tmp_path / "job.py").write_text("print('ran')\n")
    holder = socket.socket()
    try:
        deadline = time.monotonic() + 60  # other runs on a shared machine take 5678 for moments at a time
        while True:
            try:
                holder.bind(("127.0.0.1", 5678))
                holder.listen(1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    break  # held by a long-lived process of someone else: the same situation
                time.sleep(0.2)
        out = _cli(tmp_path, "run", "job.py", "--timeout", "0")
    finally:
        holder.close()
    assert out.returncode == 0, out.stderr
    port = int(re.search(r"aml-debug: debugpy at 127\.0\.0\.1:(\d+) \(rank 0\): closed \(--timeout 0: no wait\)",
                         out.stdout).group(1))
    assert port != 5678 and "ran" in out.stdout


def test_a_busy_fixed_port_names_its_holder_or_says_the_os_does_not(tmp_path):
    from aml_magics.ports import PortBusy, choose_port

    with busy_port() as port:
        with pytest.raises(PortBusy, match=rf"port {port} on 127\.0\.0\.1 is already in use \(held by pid {os.getpid()} "):
            choose_port("127.0.0.1", port, auto=False)
        # Another user (nobody) asks: Linux hides whose socket it is from them.
        python = "/usr/bin/python3"
        if not os.access(python, os.X_OK) or os.geteuid() != 0:
            pytest.skip("needs root and the system Python to ask as another user")
        import psutil as psutil_module

        readable = Path(tempfile.mkdtemp(prefix="aml-nobody-"))  # under /tmp: others may enter
        try:
            shutil.copytree(Path(psutil_module.__file__).parent, readable / "psutil")
            shutil.copytree(REPO / "aml_magics", readable / "aml_magics",
                            ignore=shutil.ignore_patterns("__pycache__"))
            for path in [readable, *readable.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
            code = ("from aml_magics.ports import PortBusy, choose_port\n"
                    f"try:\n    choose_port('127.0.0.1', {port}, auto=False)\n"
                    "except PortBusy as exc:\n    print(exc)\n")
            out = subprocess.run([python, "-c", code], user="nobody", env={"PYTHONPATH": str(readable)}, cwd="/",
                                 capture_output=True, text=True, timeout=60)
        finally:
            shutil.rmtree(readable, ignore_errors=True)
    assert out.returncode == 0, out.stderr
    assert f"port {port} on 127.0.0.1 is already in use (the OS does not say by which process" in out.stdout


def test_cli_counts_down_on_a_terminal_and_ctrl_c_cancels(tmp_path):
    """Under a real pseudo-terminal (the CLI's controlling TTY): a live line, rewritten in place."""
    (tmp_path / "slow.py").write_text("print('working')\n")
    argv = [sys.executable, "-m", "aml_magics.cli", "run", "slow.py", "--port", "0", "--timeout", "120"]
    text, port, code = count_down_then_ctrl_c(argv, tmp_path, "canceled by user after", 120)
    assert f"aml-debug: debugpy listening at 127.0.0.1:{port} (rank 0)" in text
    assert re.search(r"aml-debug: run slow-1 canceled by user after \d+(\.\d)? s", text), text
    assert "Traceback" not in text and code == 130


def test_cli_says_the_wait_in_one_plain_line_when_not_a_terminal(tmp_path):
    (tmp_path / "quick.py").write_text("print('ran')\n")
    out = _cli(tmp_path, "run", "quick.py", "--port", "0", "--timeout", "1")
    assert out.returncode == 0, out.stderr
    assert "\r" not in out.stderr and "\x1b" not in out.stderr
    # the seconds left when the CLI heard of the wait: the whole window, or 0 on a machine so busy
    # that the marker was read after the window had passed (seen once under a loaded CI)
    assert re.search(r"^aml-debug: waiting for a debugger at 127\.0\.0\.1:\d+ — [01] s to attach — Ctrl-C cancels$",
                     out.stderr, re.M), out.stderr
    assert "aml-debug: nobody attached in time: the debugger is off and the script runs on (--timeout 1)" in out.stderr
    assert out.stderr.count("waiting for a debugger") == 1


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
