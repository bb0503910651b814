"""The bootstrap alone, as every target runs it: real debugpy, real processes."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from aml_magics.invocation import NODE_PATH
from aml_magics.node import address
from aml_magics.protocol import MarkerReader

BOOTSTRAP = NODE_PATH  # the node package, run as a folder as every target runs it


def run_bootstrap(tmp_path: Path, body: str, *options: str, args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    script = tmp_path / "user_script.py"
    script.write_text(body)
    return subprocess.run(
        [sys.executable, str(BOOTSTRAP), *options, "--", str(script), *args],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )


def markers(output: str) -> dict[str, dict]:
    """The (unsigned: started by hand, no owner) markers of a bootstrap's output, by kind."""
    found = {}
    reader = MarkerReader(None)
    for line in output.splitlines():
        marker = reader.parse(line)
        if marker:
            found[marker.kind] = dataclasses.asdict(marker)
    return found


PROBE = """
import json, socket, sys, threading
port = int(sys.argv[1])
probe = socket.socket()
try:
    probe.bind(("127.0.0.1", port))   # binding (not connecting) proves the listener is gone
    closed = True
except OSError:
    closed = False
finally:
    probe.close()
print("PROBE " + json.dumps({"trace": sys.gettrace() is not None, "closed": closed,
                              "argv": sys.argv, "name": __name__, "file": __file__}))
"""


def test_no_client_means_timeout_then_debugger_fully_off(tmp_path):
    port = _free_port()
    result = run_bootstrap(tmp_path, PROBE, "--port", str(port), "--timeout", "1", args=(str(port), "x y"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Timeout for debug connection: 1" in out
    assert "ip_address: 127.0.0.1" in out
    assert "Debugger attached = False" in out
    found = markers(out)
    assert found["ENDPOINT"]["host"] == "127.0.0.1" and found["ENDPOINT"]["port"] == port
    assert found["ENDPOINT"]["cwd"] == str(tmp_path)
    assert found["ATTACHED"]["attached"] is False
    probe = json.loads(out.split("PROBE ", 1)[1].splitlines()[0])
    assert probe["trace"] is False, "tracing must be off when nobody attached"
    assert probe["closed"] is True, "the debug port must be closed after the attach timeout"
    assert probe["argv"] == [str(tmp_path / "user_script.py"), str(port), "x y"]
    assert probe["name"] == "__main__"
    assert found["EXIT"]["code"] == 0


def test_port_zero_reports_the_real_port(tmp_path):
    result = run_bootstrap(tmp_path, "print('hi')", "--port", "0", "--timeout", "0.5")
    found = markers(result.stdout)
    assert 0 < found["ENDPOINT"]["port"] < 65536


def test_exit_codes_propagate(tmp_path):
    assert run_bootstrap(tmp_path, "import sys; sys.exit(3)", "--no-debug").returncode == 3
    failed = run_bootstrap(tmp_path, "raise ValueError('boom')", "--no-debug")
    assert failed.returncode == 1 and "ValueError: boom" in failed.stderr
    assert markers(failed.stdout)["EXIT"]["code"] == 1


CYCLE = """
class Holder:
    def __init__(self):
        self.me = self  # a cycle: only the garbage collector frees it
        self.out = open("flushed.txt", "w")
        self.out.write("written, never flushed by the script")
keep = [Holder()]
raise RuntimeError("boom")
"""


@pytest.mark.parametrize("capsule", [False, True], ids=["no-capsule", "capsule"])
def test_the_scripts_cyclic_garbage_is_still_collected_at_the_exit(tmp_path, capsule):
    """The node freezes its own objects out of the exit's collections, not the script's: a file held
    only by a cycle of the script's is flushed when the crashed run exits, as under plain python
    (a freeze at the crash would leave it unwritten). Also after a capsule rendered that cycle's
    values (the repr worker held the last one it rendered, alive to the end)."""
    crash = ("--crash-dir", str(tmp_path / "crashes")) if capsule else ("--no-crash-capsule",)
    result = run_bootstrap(tmp_path, CYCLE, "--no-debug", *crash)
    assert (tmp_path / "crashes").exists() == capsule
    assert result.returncode == 1 and "RuntimeError: boom" in result.stderr
    assert (tmp_path / "flushed.txt").read_text() == "written, never flushed by the script"


def test_no_debug_starts_no_debugger(tmp_path):
    result = run_bootstrap(tmp_path, "import sys; print('mods', 'debugpy' in sys.modules)", "--no-debug")
    assert "mods False" in result.stdout
    assert "ENDPOINT" not in markers(result.stdout)


def test_script_dir_first_on_path(tmp_path):
    (tmp_path / "helper_mod.py").write_text("VALUE = 42\n")
    result = run_bootstrap(tmp_path, "import helper_mod; print('v', helper_mod.VALUE)", "--no-debug")
    assert "v 42" in result.stdout


def test_bind_node_uses_a_non_loopback_interface_address():
    found = address.node_address()
    assert found and not found.startswith("127.") or not address._interface_addresses()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_busy_port_fails_fast_with_one_line(tmp_path):
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        result = run_bootstrap(tmp_path, "print('never')", "--port", str(port), "--timeout", "30")
    finally:
        holder.close()
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "never" not in result.stdout
    assert markers(result.stdout)["ERROR"]["message"].startswith("cannot listen")


WINDOW_DRIVER = """
import argparse, json, sys
import debugpy
from aml_magics.node.driver import Debugger
options = argparse.Namespace(bind="127.0.0.1", port=0, port_auto=False, separate_adapter=False, reattach=False)
debugger = Debugger(debugpy, options)
host, port = debugger.listen()
print(port, flush=True)
sys.stdin.readline()  # the client attaches, configures and leaves before the wait begins
print(json.dumps({"attached": debugger.wait_for_client(float(sys.argv[1]))}), flush=True)
debugger.switch_off()
"""


def test_a_client_that_came_and_left_before_the_wait_began_counts_as_attached(tmp_path):
    """The window between reporting the endpoint and waiting (long on a loaded machine): a client
    that configured its session and left in it was attached (its leaving is the detach that
    follows); the wait must not forget it and hold the run for the whole window."""
    from aml_magics.testing.dap import DapClient

    (tmp_path / "driver.py").write_text(WINDOW_DRIVER)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), "60"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        port = int(proc.stdout.readline())
        client = DapClient.connect("127.0.0.1", port)
        try:
            client.attach({"name": "a", "type": "debugpy", "request": "attach",
                           "connect": {"host": "127.0.0.1", "port": port}, "justMyCode": False})
            client.disconnect()
        finally:
            client.close()
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline()) == {"attached": True}
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
