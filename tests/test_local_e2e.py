"""The whole loop on the local target: a cell becomes a run, a real DAP client attaches
through the emitted launch.json, stops at a breakpoint in the cell's file, reads a
variable, continues, and the run completes."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest
from conftest import BREAK_LINE, CELL, alive, busy_port, port_is_listening, wait_for

from aml_magics import launch
from aml_magics.testing.dap import attach_with_launch_config


def test_cell_breakpoint_through_emitted_launch_json(shell, workdir):
    run = shell.run_cell_magic("aml_debug_run", "--name train --port 0 --timeout 60 --args '--lr 0.1'", CELL)
    endpoint = run.wait_for_endpoint(30)
    assert endpoint.host == "127.0.0.1"
    config = run.launch_config()
    assert config["type"] == "debugpy" and config["request"] == "attach"
    assert config["connect"] == {"host": "127.0.0.1", "port": endpoint.port}
    assert config["justMyCode"] is False
    assert config["pathMappings"][0]["localRoot"] == "${workspaceFolder}/.aml_magics/cells"
    script = workdir / ".aml_magics" / "cells" / "train.py"
    assert script.read_text() == CELL
    assert run.state == "waiting_for_debugger"

    client = attach_with_launch_config(config, {str(script): [BREAK_LINE]}, workspace_folder=str(workdir))
    try:
        stop = client.wait_stopped(30)
        assert stop.reason == "breakpoint"
        assert Path(stop.path) == script and stop.line == BREAK_LINE
        assert client.variables_of(stop.frame_id)["total"] == "10"
        wait_for(lambda: run.state == "attached", 10)
        assert run.attached is True
        client.continue_(stop.thread_id)
        assert run.wait(30) == "completed"
    finally:
        client.close()
    assert run.exit_code == 0
    assert "total=10 ['--lr', '0.1']" in run.logs
    assert "Debugger attached = True" in run.logs
    assert not port_is_listening("127.0.0.1", endpoint.port)


def test_nobody_attaches_run_completes_with_tracing_off(shell, workdir):
    probe = "import sys\nprint('tracing', sys.gettrace() is not None)\n"
    run = shell.run_cell_magic("aml_debug_run", "--port 0 --timeout 1 --wait", probe)
    assert run.state == "completed"
    assert "Debugger attached = False" in run.logs
    assert "tracing False" in run.logs
    assert run.attached is False
    assert not port_is_listening("127.0.0.1", run.endpoints[0].port)


def test_cancel_ends_the_whole_process_tree(shell, workdir):
    cell = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        "print('child', child.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    run = shell.run_cell_magic("aml_debug_run", "--no-debug", cell)
    wait_for(lambda: "child " in run.logs, 20)
    child_pid = int(run.logs.split("child ", 1)[1].split()[0])
    assert psutil.pid_exists(child_pid)
    shell.run_line_magic("aml_cancel", run.id)
    assert run.state == "canceled"
    wait_for(lambda: not alive(child_pid), 10)


def test_two_runs_at_once_on_different_ports(shell, workdir):
    first = shell.run_cell_magic("aml_debug_run", "--name one --port auto --timeout 30", "print('one')\n")
    second = shell.run_cell_magic("aml_debug_run", "--name two --port auto --timeout 30", "print('two')\n")
    a, b = first.wait_for_endpoint(30), second.wait_for_endpoint(30)
    assert a.port != b.port
    for run, script in ((first, "one.py"), (second, "two.py")):
        client = attach_with_launch_config(run.launch_config(), {}, workspace_folder=str(workdir))
        try:
            assert run.wait(30) == "completed"
        finally:
            client.close()
        assert script[:-3] in run.logs


def test_busy_port_names_the_holder(shell, workdir):
    from IPython.core.error import UsageError

    with busy_port() as port:
        with pytest.raises(UsageError, match=rf"port {port} on 127.0.0.1 is already in use \(held by pid \d+"):
            shell.run_cell_magic("aml_debug_run", f"--port {port}", "print(1)\n")


def test_launch_json_is_merged_when_the_endpoint_appears(shell, workdir):
    vscode = workdir / ".vscode"
    vscode.mkdir()
    original = (
        '{\n    // my settings\n    "version": "0.2.0",\n    "configurations": [\n'
        '        {"name": "mine", "type": "debugpy", "request": "launch", "program": "a.py"}, // keep\n    ]\n}\n'
    )
    (vscode / "launch.json").write_text(original)
    run = shell.run_cell_magic("aml_debug_run", "--name merged --port 0 --timeout 30 --launch-json .vscode/launch.json",
                               "print('m')\n")
    run.wait_for_endpoint(30)
    wait_for(lambda: "merged" in (vscode / "launch.json").read_text(), 10)
    text = (vscode / "launch.json").read_text()
    assert "// my settings" in text and "// keep" in text
    data = launch.parse_jsonc(text)
    names = [c["name"] for c in data["configurations"]]
    assert names == ["mine", "merged"]
    merged = data["configurations"][1]
    assert merged["connect"]["port"] == run.endpoints[0].port
    assert merged["pathMappings"][0]["localRoot"] == "${workspaceFolder}/.aml_magics/cells"
    client = attach_with_launch_config(merged, {}, workspace_folder=str(workdir))
    try:
        assert run.wait(30) == "completed"
    finally:
        client.close()


def test_line_form_runs_an_existing_script_with_args(shell, workdir):
    src = workdir / "project"
    src.mkdir()
    (src / "train.py").write_text("import sys, os\nprint('args', sys.argv[1:], os.getcwd())\n")
    run = shell.run_line_magic("aml_debug_run", "--no-debug --wait project/train.py -- --epochs 2")
    assert run.state == "completed"
    assert f"args ['--epochs', '2'] {src}" in run.logs


def test_failing_script_is_failed_with_exit_code(shell, workdir):
    run = shell.run_cell_magic("aml_debug_run", "--no-debug --wait", "raise SystemExit(4)\n")
    assert run.state == "failed" and run.exit_code == 4


def test_runs_table_logs_and_launch_json_magics(shell, workdir, capsys):
    run = shell.run_cell_magic("aml_debug_run", "--name listed --port 0 --timeout 0 --wait", "print('listed!')\n")
    capsys.readouterr()
    shell.run_line_magic("aml_runs", "")
    table = capsys.readouterr().out
    assert run.id in table and "completed" in table and f"127.0.0.1:{run.endpoints[0].port}" in table
    shell.run_line_magic("aml_logs", run.id)
    assert "listed!" in capsys.readouterr().out
    fragment = shell.run_line_magic("aml_launch_json", run.id)
    assert fragment["configurations"][0]["name"] == "listed"
    shell.run_line_magic("aml_launch_json", f"{run.id} --write out/launch.json")
    assert json.loads((workdir / "out" / "launch.json").read_text())["configurations"][0]["name"] == "listed"


@pytest.mark.slow  # builds a virtual environment
def test_cached_virtual_environment_is_built_once(shell, workdir):
    cell = "import six, sys\nprint('six', six.__version__, sys.prefix)\n"
    first = shell.run_cell_magic("aml_debug_run", "--name venv --no-debug --wait --pip six", cell)
    assert first.state == "completed", first.logs
    assert "building environment" in first.logs
    prefix = first.logs.split("six ", 2)[-1].split()[1]
    assert str(workdir / "cache") in prefix
    second = shell.run_cell_magic("aml_debug_run", "--name venv --no-debug --wait --pip six", cell)
    assert second.state == "completed"
    assert "reusing environment" in second.logs and "building environment" not in second.logs

