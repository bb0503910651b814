"""The DAP test client against a real debugpy (``python -m debugpy --listen … --wait-for-client``).

No mocks of debugpy: every case starts a real debuggee, attaches as VS Code would and
drives it. A few protocol cases at the end use a plain loopback socket as the peer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import free_port

pytest.importorskip("debugpy")

from aml_magics.testing.dap import DapClient, DapError, attach_with_launch_config  # noqa: E402

SCRIPT = textwrap.dedent(
    """\
    import sys
    total = 0
    for i in range(4):
        total += i
    message = "total is %d" % total
    print(message)
    print("script finished")
    """
)
BREAK_LINE = 5  # message = ...: total is 6 there

PARENT = textwrap.dedent(
    """\
    import os
    import subprocess
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    result = subprocess.run([sys.executable, os.path.join(here, "child.py")])
    print("parent: child exited", result.returncode)
    """
)
CHILD = textwrap.dedent(
    """\
    import os
    secret = "from-child-%d" % (6 * 7)
    print("child says", secret)
    """
)
CHILD_BREAK_LINE = 3

SLEEPER = textwrap.dedent(
    """\
    import time
    print("sleeping", flush=True)
    for _ in range(600):
        time.sleep(0.1)
    print("woke up")
    """
)


def _adapter_pids(port: int) -> list[int]:
    """debugpy's adapter daemonizes (setsid + fork): find it by its ``--port PORT`` argument."""
    pids = []
    proc = Path("/proc")
    if not proc.is_dir():
        return pids
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"debugpy" in a and b"adapter" in a for a in args) and b"--port" in args:
            i = args.index(b"--port")
            if i + 1 < len(args) and args[i + 1] == str(port).encode():
                pids.append(int(entry.name))
    return pids


def _stop(proc: subprocess.Popen, port: int) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the debuggee and its children
        except ProcessLookupError:
            pass
    try:
        proc.communicate(timeout=10)
    except (subprocess.TimeoutExpired, ValueError):
        proc.kill()
    deadline = time.monotonic() + 3
    while _adapter_pids(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in _adapter_pids(port):  # the adapter normally exits with its debuggee
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def debuggee():
    """``start(script, cwd=None) -> (Popen, port)``: a debuggee under debugpy, waiting for a client."""
    started: list[tuple[subprocess.Popen, int]] = []

    def start(script: Path, cwd: Path | None = None) -> tuple[subprocess.Popen, int]:
        port = free_port()  # that socket is closed again before debugpy binds the port
        env = dict(os.environ, PYDEVD_DISABLE_FILE_VALIDATION="1", PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-Xfrozen_modules=off",
                "-m",
                "debugpy",
                "--listen",
                f"127.0.0.1:{port}",
                "--wait-for-client",
                str(script),
            ],
            cwd=str(cwd or script.parent),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        started.append((proc, port))
        return proc, port

    yield start
    for proc, port in started:
        _stop(proc, port)


def _config(port: int, **extra) -> dict:
    return {
        "name": "aml-magics: attach",
        "type": "debugpy",
        "request": "attach",
        "connect": {"host": "127.0.0.1", "port": port},
        "justMyCode": False,
        **extra,
    }


def _finish(proc: subprocess.Popen, timeout: float = 15) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


def test_breakpoint_variables_evaluate_continue(tmp_path, debuggee):
    script = tmp_path / "app.py"
    script.write_text(SCRIPT)
    proc, port = debuggee(script)
    config = _config(port, pathMappings=[{"localRoot": "${workspaceFolder}", "remoteRoot": str(tmp_path)}])

    with attach_with_launch_config(config, {str(script): [BREAK_LINE]}, workspace_folder=str(tmp_path)) as client:
        assert client.capabilities.get("supportsConfigurationDoneRequest")
        assert client.breakpoints[str(script)][0]["line"] == BREAK_LINE

        stop = client.wait_stopped(timeout=20)
        assert stop.reason == "breakpoint"
        assert os.path.samefile(stop.frames[0]["source"]["path"], script)
        assert stop.frames[0]["line"] == BREAK_LINE
        assert stop.frames[0]["name"] == "<module>"

        local_vars = client.variables_of(stop.frames[0]["id"], "Locals")
        assert local_vars["total"] == "6"
        assert local_vars["i"] == "3"
        assert client.evaluate("total * 7", stop.frames[0]["id"]) == "42"
        with pytest.raises(DapError):
            client.evaluate("no_such_name + 1", stop.frames[0]["id"])

        client.continue_()
        client.wait_event("terminated", timeout=20)
        assert any(e["event"] == "stopped" for e in client.events())
        assert client.reverse_requests == []

    assert proc.wait(timeout=15) == 0
    out = _finish(proc)
    assert "total is 6" in out
    assert "script finished" in out


def test_path_mappings_local_path_breakpoint(tmp_path, debuggee):
    local = tmp_path / "local"
    remote = tmp_path / "remote"
    local.mkdir()
    remote.mkdir()
    (remote / "app.py").write_text(SCRIPT)
    shutil.copy(remote / "app.py", local / "app.py")
    proc, port = debuggee(remote / "app.py", cwd=remote)
    config = _config(port, pathMappings=[{"localRoot": "${workspaceFolder}", "remoteRoot": str(remote)}])
    local_path = str(local / "app.py")

    with attach_with_launch_config(config, {local_path: [BREAK_LINE]}, workspace_folder=str(local)) as client:
        stop = client.wait_stopped(timeout=20, reason="breakpoint")
        assert stop.frames[0]["source"]["path"] == local_path
        assert stop.frames[0]["line"] == BREAK_LINE
        # the code really runs from "remote": its __file__ says so
        assert str(remote) in client.evaluate("__file__", stop.frames[0]["id"])
        client.continue_()
        client.wait_event("terminated", timeout=20)

    assert proc.wait(timeout=15) == 0
    assert "script finished" in _finish(proc)


def test_child_process_via_debugpy_attach_event(tmp_path, debuggee):
    (tmp_path / "parent.py").write_text(PARENT)
    child_path = tmp_path / "child.py"
    child_path.write_text(CHILD)
    proc, port = debuggee(tmp_path / "parent.py")
    breakpoints = {str(child_path): [CHILD_BREAK_LINE]}

    with attach_with_launch_config(_config(port), breakpoints) as client:
        body = client.wait_event("debugpyAttach", timeout=20)
        assert body["request"] == "attach"
        assert body["connect"]["port"] == port  # the same adapter port, a new connection
        assert isinstance(body["subProcessId"], int)

        child = client.attach_child(body, breakpoints, timeout=20)
        assert child in client.children
        stop = child.wait_stopped(timeout=20, reason="breakpoint")
        assert os.path.samefile(stop.frames[0]["source"]["path"], child_path)
        assert stop.frames[0]["line"] == CHILD_BREAK_LINE
        assert child.variables_of(stop.frames[0]["id"])["secret"] == "'from-child-42'"
        child.continue_()
        child.wait_event("terminated", timeout=20)
        client.wait_event("terminated", timeout=20)

    assert proc.wait(timeout=15) == 0
    out = _finish(proc)
    assert "child says from-child-42" in out
    assert "parent: child exited 0" in out


def test_disconnect_terminate_ends_debuggee(tmp_path, debuggee):
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    proc, port = debuggee(script)

    client = attach_with_launch_config(_config(port))
    client.wait_event("process", timeout=20)
    assert proc.poll() is None
    client.disconnect(terminate=True)
    assert client.closed
    proc.wait(timeout=15)
    assert "woke up" not in _finish(proc)


def test_connect_to_nothing_fails_within_timeout():
    port = free_port()
    started = time.monotonic()
    with pytest.raises(DapError, match="could not connect"):
        DapClient.connect("127.0.0.1", port, timeout=1.0)
    assert time.monotonic() - started < 5


# ---------------------------------------------------------------- protocol, loopback peer
def _frame(message: dict) -> bytes:
    data = json.dumps(message).encode()
    return b"Content-Length: %d\r\n\r\n" % len(data) + data


def _read_frame(conn_file) -> dict:
    length = None
    while True:
        line = conn_file.readline().strip()
        if not line:
            break
        key, _, value = line.decode().partition(":")
        if key.lower() == "content-length":
            length = int(value)
    return json.loads(conn_file.read(length))


@pytest.fixture
def peer():
    """A listening loopback socket standing in for an adapter; yields (port, accept)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(10)
    accepted: list[socket.socket] = []

    def accept() -> socket.socket:
        conn, _ = server.accept()
        accepted.append(conn)
        return conn

    yield server.getsockname()[1], accept
    for conn in accepted:
        conn.close()
    server.close()


def test_reverse_request_gets_an_error_response_and_events_queue(peer):
    port, accept = peer
    with DapClient.connect("127.0.0.1", port, timeout=5) as client:
        conn = accept()
        conn.sendall(
            _frame({"seq": 1, "type": "event", "event": "output", "body": {"output": "hi\n"}})
            + _frame({"seq": 2, "type": "request", "command": "runInTerminal", "arguments": {"args": ["x"]}})
        )
        reply = _read_frame(conn.makefile("rb"))
        assert reply["type"] == "response"
        assert reply["request_seq"] == 2
        assert reply["command"] == "runInTerminal"
        assert reply["success"] is False
        assert client.wait_event("output", timeout=5) == {"output": "hi\n"}
        assert client.output() == "hi\n"
        with pytest.raises(DapError, match="last events"):
            client.wait_event("stopped", timeout=0.2)


def test_closed_socket_wakes_waiters_promptly(peer):
    port, accept = peer
    with DapClient.connect("127.0.0.1", port, timeout=5) as client:
        conn = accept()
        seq = client.send_request("threads")
        errors: list[Exception] = []

        def wait() -> None:
            try:
                client.wait_event("stopped", timeout=30)
            except DapError as exc:
                errors.append(exc)

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.2)
        started = time.monotonic()
        conn.shutdown(socket.SHUT_RDWR)
        conn.close()
        waiter.join(timeout=5)
        with pytest.raises(DapError, match="no response"):
            client.wait_response(seq, timeout=30)
        assert time.monotonic() - started < 5
        assert errors and "closed" in str(errors[0])
