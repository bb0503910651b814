"""A client that vanishes never freezes the run (issue 26).

Real runs, a real DAP client in a process of its own, stopped at a breakpoint, after a step, at a
raised exception, paused or in a post-mortem — then killed with SIGKILL (a VS Code crash): every thread
resumes, the run goes on to its end, the node's port closes within 2 s (or stays open for a
second client with --reattach, who stops again), and the run says "debugger gone (connection
lost) after N s". Routes: direct on loopback, the TLS tunnel (bound off loopback), a Docker
container, the simulated Azure ML node. A half-open client (its packets dropped by a rule in its
network namespace, then killed: no FIN, no RST ever arrives) is found by TCP keepalive.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DOCKER_BASE, port_is_listening, wait_for

import aml_magics
from aml_magics.node.liveness import SILENCE_LIMIT

HERE = Path(__file__).parent
LOOP = """\
import time
for i in range({n}):
    time.sleep(0.05)
    try:
        raise ValueError(i)
    except ValueError:
        pass
print('done', i)
"""
LOOP_LINE = 3
CRASH = "import time\ntime.sleep(0.5)\nvalues = []\nprint(sum(values) / len(values))\n"
MODES = {"breakpoint": "breakpoint", "step": "step", "exception": "exception", "pause": "pause",
         "post-mortem": "exception"}


def start_client(config: dict, workspace: Path, mode: str, script: Path, prefix: tuple[str, ...] = ()) -> subprocess.Popen:
    """The client process, stopped as ``mode`` says (its ``STOPPED`` line read) before this returns."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE)]))
    client = subprocess.Popen([*prefix, sys.executable, str(HERE / "vanishing_client.py"), json.dumps(config),
                               str(workspace), mode, str(script), str(LOOP_LINE)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = client.stdout.readline() if client.stdout else ""
    if not line.startswith("STOPPED"):
        client.kill()
        raise AssertionError(f"the client did not stop: {line!r} {client.communicate(timeout=10)[1]}")
    assert line.split()[1] == MODES[mode], line
    return client


def kill(client: subprocess.Popen) -> None:
    client.send_signal(signal.SIGKILL)
    client.wait(10)
    for stream in (client.stdout, client.stderr):
        if stream is not None:
            stream.close()


def node_port(run) -> tuple[str, int]:
    endpoint = run.endpoints[-1]
    host, port = (endpoint.node_address or endpoint.address).rsplit(":", 1)
    return host, int(port)


def markers(run, kind: str) -> list[dict]:
    """The ``kind`` markers the run printed (their JSON, as the node wrote it)."""
    return [json.loads(line.split(" ", 1)[1].rsplit(" ", 1)[0]) for line in run.raw_logs.splitlines()
            if line.startswith(f"AML_MAGICS_{kind} ")]


def detached(run) -> list[dict]:
    return markers(run, "DETACHED")


def listening_in(tcp_tables: str, port: int) -> bool:
    """Whether ``/proc/net/tcp{,6}`` (as read in another container or namespace) has a listener on ``port``."""
    for line in tcp_tables.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
            return True
    return False


def assert_gone(run, listening: bool = False) -> None:
    (marker,) = detached(run)
    assert marker["cause"] == "connection lost" and marker["listening"] is listening
    assert marker["reason"].startswith("debugger gone (connection lost) after ")


def submit(script: Path, mode: str, **options):
    if mode == "post-mortem":
        script.write_text(CRASH)
        run = aml_magics.submit(str(script), port=0, timeout=0, post_mortem=True, post_mortem_timeout=60, **options)
        wait_for(lambda: run.state == "crashed_waiting_for_debugger", 60, "the crash to wait for a debugger")
        return run
    script.write_text(LOOP.format(n=100))
    run = aml_magics.submit(str(script), port=0, timeout=60, **options)
    run.wait_for_endpoint(60)
    return run


# -- direct and tunnelled local runs ---------------------------------------------------------------


@pytest.fixture(scope="module")
def other_host():
    """This machine's end of a veth link to a network namespace: an address off loopback."""
    from aml_magics.azureml.simnet import NamespaceUnavailable, NodeNamespace

    namespace = NodeNamespace()
    try:
        namespace.create()
    except NamespaceUnavailable as exc:
        if os.environ.get("AML_MAGICS_REQUIRE_DOCKER"):
            pytest.fail(f"no network namespace: {exc}")
        pytest.skip(f"no network namespace: {exc}")
    yield namespace
    namespace.remove()


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("route", ["direct", "tunnel"])
def test_a_killed_client_never_freezes_a_local_run(workdir, other_host, route, mode):
    bind = other_host.host_address if route == "tunnel" else "127.0.0.1"
    script = workdir / "job.py"
    run = submit(script, mode, bind=bind)
    assert run.endpoints[-1].tunnelled is (route == "tunnel")
    client = start_client(run.launch_config(), workdir, mode, script)
    wait_for(lambda: run.state == "attached", 15, "the attached state")
    host, port = node_port(run)
    kill(client)
    wait_for(lambda: not port_is_listening(host, port), 2, "the node's port to close")
    assert run.wait(60) == ("failed" if mode == "post-mortem" else "completed")
    if mode != "post-mortem":
        assert "done 99" in run.logs
    assert_gone(run)
    assert "debugger gone (connection lost) after" in run.debugger_note


@pytest.mark.parametrize("route", ["direct", "tunnel"])
def test_with_reattach_a_second_client_stops_again(workdir, other_host, route):
    bind = other_host.host_address if route == "tunnel" else "127.0.0.1"
    script = workdir / "job.py"
    script.write_text(LOOP.format(n=200))
    run = aml_magics.submit(str(script), port=0, timeout=60, reattach=True, bind=bind)
    run.wait_for_endpoint(60)
    host, port = node_port(run)
    kill(start_client(run.launch_config(), workdir, "breakpoint", script))
    wait_for(lambda: detached(run), 2, "the DETACHED marker")
    assert_gone(run, listening=True)
    assert port_is_listening(host, port)
    second = start_client(run.launch_config(), workdir, "step", script)  # attaches and stops again
    wait_for(lambda: run.state == "attached" and not run.debugger_note, 5, "the second client reported")
    kill(second)
    wait_for(lambda: len(detached(run)) == 2, 2, "the second DETACHED marker")
    assert run.state == "running" and run.debugger_note.startswith("debugger gone (connection lost)")
    assert run.wait(60) == "completed" and "done 199" in run.logs


def test_the_views_say_the_debugger_is_gone(workdir):
    """While the run goes on after its client vanished: the text view's state line and endpoint,
    and the panel's header and endpoint, say so (never "attached", never "listening")."""
    from aml_magics.views import render_text
    from aml_magics.views.widget import DebugRunPanel

    script = workdir / "job.py"
    script.write_text(LOOP.format(n=150))
    run = aml_magics.submit(str(script), port=0, timeout=60)
    endpoint = run.wait_for_endpoint(60)
    panel = DebugRunPanel(run)
    kill(start_client(run.launch_config(), workdir, "breakpoint", script))
    wait_for(lambda: run.state == "running" and run.debugger_note, 5, "the run to go on")
    note = run.debugger_note
    assert note.startswith("debugger gone (connection lost) after ")
    text = render_text(run)
    assert f": running; {note}" in text.splitlines()[0], text
    assert f"debugpy at {endpoint.address}: closed ({note})" in text, text
    wait_for(lambda: note in panel.header_html.value, 5, "the panel's header")
    wait_for(lambda: f"closed ({note})" in panel.endpoints_html.value, 5, "the panel's endpoint")
    assert run.wait(60) == "completed"


# -- a Docker container and the simulated Azure ML node (the tunnel, off this machine's loopback) ------------


@pytest.mark.slow
@pytest.mark.docker
@pytest.mark.parametrize("mode", ["breakpoint", "post-mortem"])
def test_a_killed_client_never_freezes_a_docker_run(engine, workdir, no_container_left, mode):
    script = workdir / "job.py"
    run = submit(script, mode, target="docker", base_image=DOCKER_BASE)
    client = start_client(run.launch_config(), workdir, mode, script)
    wait_for(lambda: run.state == "attached", 15, "the attached state")
    container = run.handle.container
    port = markers(run, "ENDPOINT")[-1]["port"]  # the relay's port inside the container

    def listening() -> bool:
        return listening_in(container.exec_run(["cat", "/proc/net/tcp", "/proc/net/tcp6"]).output.decode(), port)

    assert listening()
    kill(client)
    wait_for(lambda: not listening(), 2, "the relay's port in the container to close")
    assert run.wait(60) == ("failed" if mode == "post-mortem" else "completed")
    assert_gone(run)


@pytest.mark.slow
def test_a_killed_client_never_freezes_the_simulated_azureml_node(shell, tmp_path, monkeypatch):
    pytest.importorskip("azureml.core")
    from azureml_support import setup_project, use_simulated_node

    from aml_magics.azureml.simnet import NodeNamespace

    project = setup_project(tmp_path, monkeypatch)
    script = project / "proj" / "train.py"
    script.write_text(LOOP.format(n=100))
    with NodeNamespace() as node_ns:
        use_simulated_node(monkeypatch, project, node_ns)
        run = shell.run_line_magic("aml_debug_run", "--target azureml --compute cpu-cluster --experiment gone "
                                   "--port 0 --timeout 60 proj/train.py")
        endpoint = run.wait_for_endpoint(60)
        client = start_client(run.launch_config(), project, "step", script)
        wait_for(lambda: run.state == "attached", 15, "the attached state")
        port = int(endpoint.node_address.rsplit(":", 1)[1])

        def listening() -> bool:
            tables = subprocess.run(["ip", "netns", "exec", node_ns.name, "cat", "/proc/net/tcp", "/proc/net/tcp6"],
                                    capture_output=True, text=True, timeout=10).stdout
            return listening_in(tables, port)

        assert listening()
        kill(client)
        wait_for(lambda: not listening(), 2, "the relay's port on the node to close")
        assert run.wait(120) == "completed" and "done 99" in run.logs
        assert_gone(run)


# -- a half-open client: gone without a word ----------------------------------------------------------


def test_a_silent_client_is_found_by_keepalive(workdir):
    """The client attaches from another host (a network namespace), stops at a breakpoint, then
    every packet of that host is dropped and the client killed: no FIN, no RST ever reaches the
    node. TCP keepalive finds it within SILENCE_LIMIT seconds; the run goes on to its end."""
    from aml_magics.azureml.simnet import NamespaceUnavailable, NodeNamespace

    namespace = NodeNamespace()
    try:
        namespace.create()
    except NamespaceUnavailable as exc:
        if os.environ.get("AML_MAGICS_REQUIRE_DOCKER"):
            pytest.fail(f"no network namespace: {exc}")
        pytest.skip(f"no network namespace: {exc}")
    try:
        script = workdir / "job.py"
        script.write_text(LOOP.format(n=100))
        run = aml_magics.submit(str(script), port=0, timeout=60, bind=namespace.host_address, insecure=True)
        endpoint = run.wait_for_endpoint(60)
        assert not endpoint.tunnelled and endpoint.host == namespace.host_address
        netns = ("ip", "netns", "exec", namespace.name)
        client = start_client(run.launch_config(), workdir, "breakpoint", script, prefix=netns)
        wait_for(lambda: run.state == "attached", 15, "the attached state")
        for chain in ("INPUT", "OUTPUT"):
            subprocess.run([*netns, "iptables", "-A", chain, "-j", "DROP"], check=True, timeout=20)
        kill(client)
        time.sleep(3)
        assert run.state == "attached" and port_is_listening(endpoint.host, endpoint.port)  # nothing came yet
        wait_for(lambda: detached(run), SILENCE_LIMIT + 3, "keepalive to find the silent client")
        assert_gone(run)
        assert run.wait(60) == "completed" and "done 99" in run.logs
        assert not port_is_listening(endpoint.host, endpoint.port)
    finally:
        namespace.remove()


# -- the in-notebook debugger's own session ending ------------------------------------------------------


def test_closing_the_in_notebook_debugger_without_a_disconnect_resumes_the_run(workdir):
    """Debugger.close() drops the DAP connection without a word (what its session ending any way
    but a detach does): the node treats it as a disconnect."""
    script = workdir / "job.py"
    script.write_text(LOOP.format(n=100))
    run = aml_magics.submit(str(script), port=0, timeout=60)
    debugger = run.attach(breakpoints=[(str(script), LOOP_LINE)])
    stop = debugger.wait_stopped(30)
    assert stop is not None and stop.line == LOOP_LINE
    host, port = node_port(run)
    debugger.close()
    wait_for(lambda: not port_is_listening(host, port), 2, "the node's port to close")
    assert run.wait(60) == "completed" and "done 99" in run.logs
    assert_gone(run)


def test_a_dead_kernel_with_a_debugger_stopped_in_a_run_never_freezes_it(workdir):
    """A real Jupyter kernel attaches its in-notebook debugger to a run (owned here), stops at a
    breakpoint, and is killed (a kernel restart, a crashed kernel)."""
    from conftest import start_kernel

    script = workdir / "job.py"
    script.write_text(LOOP.format(n=100))
    run = aml_magics.submit(str(script), port=0, timeout=60)
    run.wait_for_endpoint(60)
    km, kc = start_kernel(workdir)
    try:
        code = (f"import json\nfrom aml_magics.debugger import attach\n"
                f"dbg = attach(json.loads({json.dumps(json.dumps(run.launch_config()))}), "
                f"breakpoints=[({str(script)!r}, {LOOP_LINE})])\n"
                f"stop = dbg.wait_stopped(30)\nprint('STOPPED', stop.line)\n")
        reply = kc.execute_interactive(code, timeout=60, output_hook=lambda msg: None)
        assert reply["content"]["status"] == "ok", reply["content"]
        wait_for(lambda: run.state == "attached", 15, "the attached state")
        host, port = node_port(run)
        km.signal_kernel(signal.SIGKILL)
        wait_for(lambda: not port_is_listening(host, port), 2, "the node's port to close")
        assert run.wait(60) == "completed" and "done 99" in run.logs
        assert_gone(run)
    finally:
        kc.stop_channels()
        if km.is_alive():
            km.shutdown_kernel(now=True)


@pytest.mark.slow
def test_a_silent_tunnel_is_found_by_the_relays_keepalive(shell, tmp_path, monkeypatch):
    """The simulated Azure ML node (its own network namespace) stops answering: every packet in and
    out of it dropped, then the client killed — the owner's forwarder closes its TLS connection,
    but the FIN never reaches the relay. The relay's keepalive finds it; the run goes on."""
    pytest.importorskip("azureml.core")
    from azureml_support import setup_project, use_simulated_node

    from aml_magics.azureml.simnet import NodeNamespace

    project = setup_project(tmp_path, monkeypatch)
    script = project / "proj" / "train.py"
    script.write_text(LOOP.format(n=100))
    with NodeNamespace() as node_ns:
        use_simulated_node(monkeypatch, project, node_ns)
        run = shell.run_line_magic("aml_debug_run", "--target azureml --compute cpu-cluster --experiment silent "
                                   "--port 0 --timeout 60 proj/train.py")
        run.wait_for_endpoint(60)
        client = start_client(run.launch_config(), project, "breakpoint", script)
        wait_for(lambda: run.state == "attached", 15, "the attached state")
        netns = ("ip", "netns", "exec", node_ns.name)
        for chain in ("INPUT", "OUTPUT"):
            subprocess.run([*netns, "iptables", "-A", chain, "-j", "DROP"], check=True, timeout=20)
        kill(client)
        time.sleep(3)
        assert run.state == "attached"  # nothing reached the node yet
        wait_for(lambda: detached(run), SILENCE_LIMIT + 3, "keepalive to find the silent tunnel")
        assert_gone(run)
        assert run.wait(120) == "completed" and "done 99" in run.logs
