"""The secure debug channel: only this run's owner can attach, and nothing in the output can
redirect them.

Real processes, real TLS, real network namespaces as the hosts strangers connect from: a
forged marker line changes nothing; wherever the port leaves the machine a stranger's plain
TCP, certificate-less TLS or wrong-certificate TLS is refused before one byte reaches debugpy,
and the owner's real DAP client still attaches through the emitted launch.json; when the client
leaves, the node stops listening (one attach per window) unless --reattach.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import BREAK_LINE, CELL, DOCKER_BASE, port_is_listening, wait_for

import aml_magics
from aml_magics.invocation import is_node_command
from aml_magics.node.wire import marker_mac
from aml_magics.testing.dap import attach_with_launch_config
from aml_magics.tunnel import TunnelCredentials

EVIL = {"host": "evil.example.com", "port": 4444}
SPOOF = textwrap.dedent(f"""
    import json, os
    rows = ['ok', 'x AML_MAGICS_ENDPOINT {json.dumps(EVIL)}']
    for r in rows:
        print("processing row:", r)
    print('AML_MAGICS_ENDPOINT {json.dumps(EVIL)}')
    print('AML_MAGICS_ATTACHED {{"attached": true}}')
    print('AML_MAGICS_ENDPOINT {json.dumps(EVIL, sort_keys=True)} {marker_mac(b"x" * 32, "ENDPOINT", json.dumps(EVIL, sort_keys=True))}')
    print("secrets visible:", os.environ.get("AML_MAGICS_SECRETS"), os.environ.get("AML_MAGICS_OWNER"))
""")


# -- markers: only the run's own key makes one ------------------------------------------------------


@pytest.mark.parametrize("no_debug", [False, True])
def test_spoofed_markers_change_nothing(workdir, no_debug):
    launch_json = workdir / "lj.json"
    run = aml_magics.submit(code=SPOOF, name="spoof", port=0, timeout=0, no_debug=no_debug,
                            launch_json=str(launch_json), wait=True)
    assert run.state == "completed"
    assert all(e.host != "evil.example.com" for e in run.endpoints)
    assert run.attached is not True and run.reader.rejected == 4
    assert not launch_json.exists() or "evil" not in launch_json.read_text()
    if not no_debug:
        assert json.loads(launch_json.read_text())["configurations"][0]["connect"]["host"] == "127.0.0.1"
    logs = run.logs  # every forged line is ordinary output
    assert "processing row: x AML_MAGICS_ENDPOINT" in logs
    assert sum(line.startswith("AML_MAGICS_") for line in logs.splitlines()) == 3
    assert "secrets visible: None None" in logs  # the user's code never sees the run's secrets


def test_spoofed_markers_through_the_cli(workdir):
    (workdir / "spoof.py").write_text(SPOOF)
    env = {k: v for k, v in os.environ.items() if k != "AML_MAGICS_VIEW"}
    result = subprocess.run([sys.executable, "-m", "aml_magics.cli", "run", "spoof.py", "--port", "0", "--timeout", "0",
                             "--launch-json", "lj.json"], cwd=workdir, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "evil" not in (workdir / "lj.json").read_text()
    assert "processing row: x AML_MAGICS_ENDPOINT" in result.stdout


# -- strangers at the port ------------------------------------------------------------------------------

DAP_INIT = b'Content-Length: 52\r\n\r\n{"seq":1,"type":"request","command":"initialize"}   '


def _plain(host: str, port: int) -> bytes:
    """What a plain TCP client (a port scanner, a stranger's VS Code) gets back: nothing."""
    with socket.create_connection((host, port), timeout=10) as sock:
        try:
            sock.sendall(DAP_INIT)
            sock.settimeout(5)
            return sock.recv(4096)
        except (ConnectionResetError, BrokenPipeError):
            return b""


def _tls(host: str, port: int, credentials: TunnelCredentials | None) -> bytes:
    """A TLS client without a certificate, or with another run's: refused in the handshake."""
    context = credentials.client_context() if credentials else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=10) as raw, context.wrap_socket(raw) as tls:
            tls.sendall(DAP_INIT)
            tls.settimeout(5)
            return tls.recv(4096)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return b""


def assert_strangers_refused(host: str, port: int) -> None:
    assert _plain(host, port) == b""
    assert _tls(host, port, None) == b""
    assert _tls(host, port, TunnelCredentials.new()) == b""


PROBE = textwrap.dedent("""
    import json, socket, ssl, sys
    host, port = sys.argv[1], int(sys.argv[2])
    init = b'Content-Length: 52\\r\\n\\r\\n{"seq":1,"type":"request","command":"initialize"}   '
    out = {}
    try:
        s = socket.create_connection((host, port), timeout=10)
        s.sendall(init); s.settimeout(5)
        out["plain"] = s.recv(4096).decode(errors="replace")
    except OSError as exc:
        out["plain"] = ""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
    try:
        t = ctx.wrap_socket(socket.create_connection((host, port), timeout=10))
        t.sendall(init); t.settimeout(5)
        out["tls"] = t.recv(4096).decode(errors="replace")
    except (OSError, ssl.SSLError):
        out["tls"] = ""
    print(json.dumps(out))
""")


def _debug_through(run, script: Path, line: int, variable: str, value: str, workspace: Path) -> None:
    config = run.launch_config()
    assert config["connect"]["host"] == "127.0.0.1"  # the owner's forwarder
    with attach_with_launch_config(config, {str(script): [line]}, workspace_folder=str(workspace)) as client:
        stop = client.wait_stopped(30)
        assert stop.line == line and client.variables_of(stop.frame_id)[variable] == value
        client.continue_(stop.thread_id)
        assert run.wait(60) == "completed"


@pytest.fixture(scope="module")
def stranger_host():
    """A second host: a network namespace joined to this machine by a veth pair."""
    from aml_magics.azureml.simulator import NamespaceUnavailable, NodeNamespace

    namespace = NodeNamespace()
    try:
        namespace.create()
    except NamespaceUnavailable as exc:
        if os.environ.get("AML_MAGICS_REQUIRE_DOCKER"):  # CI: root and iproute2 are there
            pytest.fail(f"no network namespace: {exc}")
        pytest.skip(f"no network namespace: {exc}")
    yield namespace
    namespace.remove()


def test_a_local_run_bound_off_loopback_is_tunnelled(workdir, stranger_host):
    """``--bind`` to this machine's address on a link: a stranger on that link (another host) is
    refused; the owner attaches through the forwarder."""
    script = workdir / "job.py"
    script.write_text(CELL)
    run = aml_magics.submit(str(script), port=0, bind=stranger_host.host_address, timeout=60)
    endpoint = run.wait_for_endpoint(30)
    relay_host, relay_port = endpoint.node_address.rsplit(":", 1)
    assert endpoint.tunnelled and relay_host == stranger_host.host_address
    seen = subprocess.run(["ip", "netns", "exec", stranger_host.name, sys.executable, "-c", PROBE, relay_host,
                           relay_port], capture_output=True, text=True, timeout=60)
    assert json.loads(seen.stdout) == {"plain": "", "tls": ""}, seen.stderr
    assert_strangers_refused(relay_host, int(relay_port))
    # debugpy has no port of its own (not even on loopback): the relay is all that listens
    assert _listening(_the_bootstrap()) == {(relay_host, int(relay_port))}
    _debug_through(run, script, BREAK_LINE, "total", "10", workdir)


def _the_bootstrap() -> psutil.Process:
    """The one run of this test: its bootstrap process."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if is_node_command(process.cmdline()):
                found.append(process)
        except psutil.Error:  # ended meanwhile, or a zombie of an earlier test
            pass
    (process,) = found
    return process


def _listening(process: psutil.Process) -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for c in process.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}


def test_a_tunnelled_run_reopens_through_the_tunnel_for_a_post_mortem(workdir, stranger_host):
    """The window passes with nobody (relay and debugger off), then a crash listens again: a new
    relay on the same port, debugpy again without a port of its own, the owner's forwarder again."""
    script = workdir / "crash.py"
    script.write_text("import time\ntime.sleep(2)\nvalues = []\nprint(sum(values) / len(values))\n")
    run = aml_magics.submit(str(script), port=0, bind=stranger_host.host_address, timeout=0.5, post_mortem=True,
                            post_mortem_timeout=60)
    first = run.wait_for_endpoint(30)
    wait_for(lambda: run.state == "crashed_waiting_for_debugger", 30, "the crash to wait for a debugger")
    second = run.endpoints[-1]
    assert second.tunnelled and second.node_address == first.node_address  # the same relay port, reopened
    assert _listening(_the_bootstrap()) == {(stranger_host.host_address, int(first.node_address.rsplit(":", 1)[1]))}
    with attach_with_launch_config(run.launch_config(), {}, workspace_folder=str(workdir)) as client:
        stop = client.wait_stopped(30)
        assert stop.reason == "exception" and stop.line == 4
        assert client.evaluate("len(values)", stop.frame_id) == "0"
        client.continue_(stop.thread_id)
        assert run.wait(30) == "failed"


@pytest.mark.docker
def test_a_docker_run_is_tunnelled(engine, workdir, no_container_left):
    script = workdir / "job.py"
    script.write_text(CELL)
    run = aml_magics.submit(str(script), target="docker", base_image=DOCKER_BASE, port=0, timeout=60)
    endpoint = run.wait_for_endpoint(180)
    assert endpoint.tunnelled
    container = run.handle.container
    container.reload()
    bridge_ip = container.attrs["NetworkSettings"]["IPAddress"]
    assert_strangers_refused(bridge_ip, 5678)  # another container on the bridge: refused
    published = int(endpoint.node_address.rsplit(":", 1)[1])
    assert_strangers_refused("127.0.0.1", published)  # a local stranger at the published port: refused
    _debug_through(run, script, BREAK_LINE, "total", "10", workdir)


def test_insecure_gives_the_direct_port_with_a_warning(workdir, stranger_host):
    run = aml_magics.submit(code=CELL, name="direct", port=0, bind=stranger_host.host_address, timeout=0,
                            insecure=True, wait=True)
    assert run.state == "completed" and not run.endpoints[0].tunnelled
    assert run.endpoints[0].host == stranger_host.host_address
    assert "WARNING --insecure" in run.logs


# -- one attach per window -------------------------------------------------------------------------------

LOOP = "import time\nfor i in range(100):\n    time.sleep(0.05)\nprint('done', i)\n"


def _attach_and_leave(run, script: Path, workdir: Path) -> None:
    with attach_with_launch_config(run.launch_config(), {str(script): [3]}, workspace_folder=str(workdir)) as client:
        stop = client.wait_stopped(30)
        client.request("setBreakpoints", {"source": {"path": str(script)}, "breakpoints": [], "lines": []})
        client.continue_(stop.thread_id)
        client.disconnect()


@pytest.mark.parametrize("bind", ["127.0.0.1", "stranger"])
def test_the_node_stops_listening_when_the_client_leaves(workdir, stranger_host, bind):
    script = workdir / "loop.py"
    script.write_text(LOOP)
    address = stranger_host.host_address if bind == "stranger" else bind
    run = aml_magics.submit(str(script), port=0, bind=address, timeout=60)
    endpoint = run.wait_for_endpoint(30)
    port = int((endpoint.node_address or endpoint.address).rsplit(":", 1)[1])
    _attach_and_leave(run, script, workdir)
    wait_for(lambda: not port_is_listening(address, port), 2, "the node's port to close")
    assert run.wait(60) == "completed" and "done 99" in run.logs
    assert "AML_MAGICS_DETACHED" in run.raw_logs


def test_reattach_keeps_the_listener_for_a_second_client(workdir):
    script = workdir / "loop.py"
    script.write_text(LOOP.replace("range(100)", "range(300)"))
    run = aml_magics.submit(str(script), port=0, timeout=60, reattach=True)
    endpoint = run.wait_for_endpoint(30)
    _attach_and_leave(run, script, workdir)
    time.sleep(0.5)
    assert port_is_listening("127.0.0.1", endpoint.port)
    _attach_and_leave(run, script, workdir)  # a second session attaches and stops again
    assert run.wait(60) == "completed"


SCORE = textwrap.dedent("""
    import json
    def init():
        global factor
        factor = 3
    def run(raw_data):
        data = json.loads(raw_data)["data"]
        return {"result": [x * factor for x in data]}
""")


@pytest.mark.docker
def test_a_docker_deployment_is_tunnelled(engine, workdir, no_container_left):
    from aml_magics.deploy.request import deploy

    dep = deploy(code=SCORE, target="docker", base_image=DOCKER_BASE, name="tscore", port=0, timeout=120)
    endpoint = dep.wait_for_endpoint(600)
    assert endpoint.tunnelled
    assert_strangers_refused("127.0.0.1", int(endpoint.node_address.rsplit(":", 1)[1]))
    score_py = workdir / ".aml_magics" / "cells" / "deploy-tscore" / "score.py"
    with attach_with_launch_config(dep.launch_config(), {str(score_py): [7]}, workspace_folder=str(workdir)) as client:
        dep.wait_until_serving(120)  # init() ran once attached; the breakpoint is in run()
        result: list = []
        sender = threading.Thread(target=lambda: result.append(dep.score({"data": [2]}, timeout=60)))
        sender.start()
        stop = client.wait_stopped(60)
        assert stop.line == 7 and client.evaluate("factor", stop.frame_id) == "3"
        client.continue_(stop.thread_id)
        sender.join(60)
    assert result == [{"result": [6]}]
    dep.cancel()


def test_the_simulated_azureml_node_is_tunnelled(shell, tmp_path, monkeypatch, stranger_host):
    """The node in its own namespace: the relay binds the node's address; strangers on the node's
    network (this machine's end of the link) are refused; the owner attaches through the forwarder."""
    pytest.importorskip("azureml.core")
    from azureml_support import debug_to_the_end, setup_project, use_simulated_node, wait_for_the_debugger

    from aml_magics.azureml.simulator import NodeNamespace

    project = setup_project(tmp_path, monkeypatch)
    with NodeNamespace() as node_ns:
        node = use_simulated_node(monkeypatch, project, node_ns)
        run = shell.run_line_magic("aml_debug_run", "--target azureml --compute cpu-cluster --experiment sec "
                                   "--port 0 --timeout 60 proj/train.py -- --lr 0.1")
        endpoint, config = wait_for_the_debugger(run, node)
        relay_host, relay_port = endpoint.node_address.rsplit(":", 1)
        assert relay_host == node
        assert_strangers_refused(relay_host, int(relay_port))
        debug_to_the_end(run, config, project)


def _tls_pair() -> tuple[ssl.SSLSocket, ssl.SSLSocket]:
    """The node's and the owner's ends of one authenticated connection, as the relay and the
    forwarder make them (the run's real certificates, TLS 1.3)."""
    from aml_magics.node.relay import relay_context

    credentials = TunnelCredentials.new()
    node_context, _ = relay_context(credentials.node_side())
    with socket.create_server(("127.0.0.1", 0)) as server:
        raw = socket.create_connection(server.getsockname())
        conn, _ = server.accept()
    result: dict = {}
    accepting = threading.Thread(target=lambda: result.update(node=node_context.wrap_socket(conn, server_side=True)))
    accepting.start()
    owner = credentials.client_context().wrap_socket(raw, server_hostname=None)
    accepting.join(10)
    return result["node"], owner


def test_a_tls_session_hands_debugpy_whole_messages_and_ends_once():
    """What debugpy reads and writes on the node when tunnelled: a header leaves with its body in
    one record; a client that vanishes ends the session once, whichever side notices first."""
    from aml_magics.node.liveness import Link
    from aml_magics.node.relay import TlsSession

    node, owner = _tls_pair()
    ended = []
    session = TlsSession(node, Link(lambda link, cause: ended.append(cause)))
    body = b'{"seq":1,"type":"event","event":"stopped"}'
    session.sendall(b"Content-Length: %d\r\n\r\n" % len(body))
    session.sendall(body)
    owner.settimeout(10)
    assert owner.recv(65536) == b"Content-Length: %d\r\n\r\n" % len(body) + body  # one record, both parts
    owner.sendall(b"Content-Length: 2\r\n\r\n{}")
    assert session.recv(1024) == b"Content-Length: 2\r\n\r\n{}"
    # The client goes away without a word (RST): the next writes fail, the session ends, once.
    owner.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    owner.close()
    with pytest.raises(OSError):
        for _ in range(100):
            session.sendall(b"x" * 4096)
            time.sleep(0.01)
    assert session.recv(1024) == b""
    session.close()
    wait_for(lambda: ended, 5, "the session's end")
    assert ended == ["connection lost"]
