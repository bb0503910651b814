"""The proxy route: reaching a node through the job's SSH service and the workspace proxy.

The simulated cluster with ``AML_MAGICS_SIM_INBOUND=proxy`` drops every connection this
machine opens to a node; each node of a job with an SSH service runs a real OpenSSH sshd, and
the simulated workspace proxy is a real websocket server (tornado) that lets only the
simulated identity's bearer token through. The owner's side is the product's: websockets,
paramiko, a direct-tcpip channel, the run's mutual TLS; a real DAP client attaches through
the emitted launch configuration or the in-notebook debugger.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

pytest.importorskip("azure.ai.ml", reason="azure-ai-ml is not installed (pip install 'aml-magics[azureml-v2]')")
pytest.importorskip("paramiko", reason="paramiko is not installed (pip install 'aml-magics[azureml-v2]')")
pytest.importorskip("websockets", reason="websockets is not installed (pip install 'aml-magics[azureml-v2]')")

from azureml_support import setup_project, use_simulator, wait_for, write_project  # noqa: E402

import aml_magics  # noqa: E402
from aml_magics.azureml import simnet  # noqa: E402
from aml_magics.azureml.v2 import simssh  # noqa: E402
from aml_magics.azureml.v2.simulator import get_v2_simulator  # noqa: E402
from aml_magics.sshproxy import RouteError, SshKeyPair, SshSession, open_websocket, websocket_url  # noqa: E402
from aml_magics.testing.dap import attach_with_launch_config  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::PendingDeprecationWarning", "ignore::DeprecationWarning")]

SCRIPT = textwrap.dedent("""\
    import os
    import time

    rank = int(os.environ.get("RANK", "0"))
    value = f"rank-{rank}-value"
    print(f"{value} done", flush=True)
    """)
BREAK_LINE = 6  # print(...): value is set

CRASH = textwrap.dedent("""\
    import os

    rank = int(os.environ.get("RANK", "0"))
    data = {"rank": rank}
    missing = data["nope"]
    """)


@pytest.fixture(scope="module")
def machinery():
    for reason in (simnet.unavailable_reason(), simssh.unavailable_reason()):
        if reason:
            if os.environ.get("CI"):
                pytest.fail(f"the proxy route's simulator needs: {reason}")
            pytest.skip(f"the proxy route's simulator needs: {reason}")


@pytest.fixture
def project(tmp_path, monkeypatch, machinery):
    root = setup_project(tmp_path, monkeypatch)
    use_simulator(monkeypatch, root / "sim")
    monkeypatch.setenv("AML_MAGICS_SIM_NETWORK", "bridge")
    monkeypatch.setenv("AML_MAGICS_SIM_INBOUND", "proxy")
    for name in ("AML_MAGICS_SIM_SSH", "AML_MAGICS_SIM_SSH_DELAY", "AML_MAGICS_SIM_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    write_project(root / "proj", SCRIPT, name="ranks.py")
    write_project(root / "proj", CRASH, name="crash.py")
    yield root
    wait_for(lambda: simnet.own_resources() == ([], []), 20, "the clusters removed")
    assert not _ssh_threads(), "an SSH/websocket thread of the proxy route is left"
    assert get_v2_simulator().proxy.open_connections == 0, "a websocket of the proxy is left open"


def _ssh_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("aml-magics-ssh") and t.is_alive()]


def _far(endpoint) -> tuple[str, int]:
    host, port = endpoint.node_address.rsplit(":", 1)
    return host, int(port)


def _last_job():
    return list(get_v2_simulator().runs.values())[-1]


def _submit(connect: str = "proxy", script: str = "proj/ranks.py", **options):
    options.setdefault("timeout", 90)
    return aml_magics.submit(script, target="azureml", sdk="v2", compute="cpu-cluster", connect=connect, **options)


# -- attach through the proxy -------------------------------------------------------------------------


def test_rank_on_node_1_through_the_proxy_only_cluster(project):
    run = _submit(nodes=2)
    run.wait_for(lambda: len(run.endpoints) == 2, 90, "2 endpoints in {timeout:g}s")
    endpoints = {e.rank: e for e in run.endpoints}
    assert all(e.route == "proxy" and e.tunnelled and e.host == "127.0.0.1" for e in endpoints.values())
    assert endpoints[1].route_detail == "via the workspace proxy (SSH service, node 1)"
    node1, relay1 = _far(endpoints[1])
    assert node1 != _far(endpoints[0])[0]

    with pytest.raises(OSError):  # this machine cannot reach the node: only the proxy can
        socket.create_connection((node1, relay1), timeout=2).close()

    job = _last_job()
    assert sorted(job.ssh.nodes) == [0, 1] and all(n.status == "Running" for n in job.ssh.nodes.values())
    config = run.launch_config(rank=1)
    assert config["connect"] == {"host": "127.0.0.1", "port": endpoints[1].port}
    local = project / "proj" / "ranks.py"
    client = attach_with_launch_config(config, {str(local): [BREAK_LINE]}, workspace_folder=str(project))
    try:
        stop = client.wait_stopped(60)
        assert stop.reason == "breakpoint" and Path(stop.path) == local
        values = client.variables_of(stop.frame_id)
        assert values["value"] == "'rank-1-value'" and values["rank"] == "1"
        client.continue_(stop.thread_id)
        assert run.wait(90) == "completed", run.logs[-3000:]
    finally:
        client.close()
    assert "rank-1-value done" in run.logs
    assert "aml_magics: rank 1: via the workspace proxy (SSH service, node 1)" in run.logs
    from aml_magics.views.text import endpoint_summary, render_text

    assert "debuggers reached via the workspace proxy (SSH service, node 0); via the workspace proxy " \
           "(SSH service, node 1)" in render_text(run)
    assert any(line.endswith("via the workspace proxy (SSH service, node 1)") for line in endpoint_summary(run))


def test_in_notebook_debugger_through_the_proxy(project):
    run = _submit(script="proj/crash.py", post_mortem=True, timeout=60)
    dbg = run.attach(breakpoints=["crash.py:4"], timeout=90)
    try:
        assert run.endpoints[0].route == "proxy"
        stop = dbg.wait_stopped(60)
        assert stop.reason == "breakpoint" and stop.line == 4
        assert dbg.locals()["rank"] == "0"
        dbg.continue_()
        stop = dbg.wait_stopped(60)  # the crash, caught with the debugger still attached
        assert stop is not None and stop.reason == "exception" and stop.line == 5
        assert dbg.locals()["data"] == "{'rank': 0}"
        dbg.continue_()
        assert dbg.wait_stopped(30) is None
    finally:
        dbg.detach()
    assert run.wait(90) == "failed"


def test_post_mortem_window_reopens_through_the_proxy(project):
    run = _submit(script="proj/crash.py", post_mortem=True, timeout=2, post_mortem_timeout=60)
    endpoint = run.wait_for_endpoint(90)
    assert endpoint.route == "proxy"
    wait_for(lambda: run.state == "crashed_waiting_for_debugger", 60, "the post-mortem window")  # nobody came first
    dbg = run.attach(timeout=60)  # the same forwarder: a new channel on the node's SSH session
    try:
        stop = dbg.wait_stopped(60)
        assert stop is not None and stop.reason == "exception" and stop.line == 5, run.logs[-2000:]
        assert dbg.exception().type == "KeyError"
        dbg.continue_()
        assert dbg.wait_stopped(30) is None
    finally:
        dbg.detach()
    assert run.wait(90) == "failed"


# -- refusals ---------------------------------------------------------------------------------------------


def test_the_proxy_refuses_without_the_token_and_sshd_refuses_another_key(project):
    run = _submit(timeout=60)
    endpoint = run.wait_for_endpoint(90)
    job = _last_job()
    backend = get_v2_simulator()
    wait_for(lambda: job.ssh is not None and job.ssh.nodes[0].status == "Running", 30, "the SSH service")
    url = websocket_url(backend.proxy.endpoint(job.id), 0)
    refused = backend.proxy.refused
    for token in (None, "not-the-owners-token"):
        with pytest.raises(RouteError, match=r"refused the token \(401"):
            open_websocket(url, token)
    assert backend.proxy.refused == refused + 2

    ws = open_websocket(url, backend.token)  # the owner's token, but a key the job never got
    with pytest.raises(RouteError, match="refused the run's key for user azureuser"):
        SshSession(ws, SshKeyPair.new())
    log = (job.ssh.folder / "node-0" / "sshd.log").read_text()
    assert "Failed publickey for azureuser" in log or "Connection closed by authenticating user azureuser" in log

    # the run's own route still works
    client = attach_with_launch_config(run.launch_config(), {}, workspace_folder=str(project))
    client.close()
    assert endpoint.route == "proxy"
    run.cancel()


@pytest.mark.parametrize("setting, line", [
    ("AML_MAGICS_SIM_TOKEN=stale", "aml_magics: node 0: the workspace proxy refused the token (401: expired, or not "
                                   "the job's owner; sign in again as the job's owner)"),
    ("AML_MAGICS_SIM_SSH=other-key", "aml_magics: node 0: the node's SSH service refused the run's key for user "
                                     "azureuser"),
])
def test_a_refusal_during_the_run_is_one_line_and_the_run_goes_on(project, monkeypatch, setting, line):
    name, value = setting.split("=")
    monkeypatch.setenv(name, value)
    run = _submit(timeout=8)
    wait_for(lambda: line in run.logs, 60, "the refusal's line")
    assert sum(line in text for text in run.logs.splitlines()) == 1
    assert run.state in ("waiting_for_debugger", "running")  # the run keeps its state
    assert run.wait(90) == "completed"  # nobody could attach: the window ran out, the script ran
    assert "rank-0-value done" in run.logs


def test_connect_proxy_with_sdk_v1_is_one_line(project):
    from aml_magics.errors import OptionsError

    pytest.importorskip("azureml.core", reason="azureml-core is not installed (pip install 'aml-magics[azureml]')")
    with pytest.raises(OptionsError, match="--connect proxy needs --sdk v2: SDK v1 runs have no job "):
        aml_magics.submit("proj/ranks.py", target="azureml", sdk="v1", compute="cpu-cluster", connect="proxy")


# -- auto -----------------------------------------------------------------------------------------------


def test_auto_picks_direct_on_the_open_bridge(project, monkeypatch):
    monkeypatch.delenv("AML_MAGICS_SIM_INBOUND")
    run = _submit(connect="auto")
    endpoint = run.wait_for_endpoint(90)
    assert endpoint.route == "direct" and endpoint.route_detail == ""
    assert "aml_magics: rank 0: direct route to node 0" in run.logs
    assert _last_job().ssh is not None  # the job carried the SSH service all the same
    client = attach_with_launch_config(run.launch_config(), {}, workspace_folder=str(project))
    client.close()
    run.cancel()


def test_auto_picks_the_proxy_on_the_closed_cluster_within_10_s(project):
    run = _submit(connect="auto")
    start = None

    def endpoint_line() -> bool:
        nonlocal start
        if start is None and "AML_MAGICS_ENDPOINT" in run.raw_logs:
            start = time.monotonic()
        return bool(run.endpoints)

    wait_for(endpoint_line, 90, "the endpoint")
    chose = time.monotonic() - (start or time.monotonic())
    endpoint = run.endpoints[0]
    assert endpoint.route == "proxy", run.logs[-2000:]
    assert chose < 10, f"auto took {chose:.1f}s to pick the proxy"
    assert "does not answer from here within 3 s; using the workspace proxy" in run.logs
    client = attach_with_launch_config(run.launch_config(), {}, workspace_folder=str(project))
    client.close()
    run.cancel()


def test_direct_carries_no_ssh_service(project, monkeypatch):
    monkeypatch.delenv("AML_MAGICS_SIM_INBOUND")
    run = _submit(connect="direct", timeout=30)
    endpoint = run.wait_for_endpoint(90)
    assert endpoint.route == "direct"
    assert _last_job().ssh_services() == {}
    run.cancel()


# -- waiting, failing, cancel, owner death -------------------------------------------------------------------


def test_a_failed_ssh_service_is_one_line_and_the_run_goes_on(project, monkeypatch):
    monkeypatch.setenv("AML_MAGICS_SIM_SSH", "fail")
    run = _submit(timeout=5)
    wait_for(lambda: "the job's SSH service failed on node 0" in run.logs, 60, "the service's failure")
    assert "(simulated) the SSH service failed to start on the node" in run.logs
    assert run.wait(90) == "completed"  # nobody attached: the window closed, the script ran


def test_cancel_while_waiting_for_the_ssh_service_leaves_nothing(project, monkeypatch):
    monkeypatch.setenv("AML_MAGICS_SIM_SSH_DELAY", "30")
    run = _submit()
    wait_for(lambda: "waiting for the node's SSH service (status: Starting)" in run.logs, 90, "the wait")
    assert _ssh_threads()
    run.cancel()
    assert run.wait(30) == "canceled"
    wait_for(lambda: not _ssh_threads(), 15, "the route's threads gone")


def _job_sshd(project: Path) -> list[psutil.Process]:
    """The sshd processes of the simulated jobs under ``project`` (their config lives there)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        line = " ".join(process.info["cmdline"] or [])
        if "sshd" in line and "sshd_config" in line and str(project) in line:
            found.append(process)
    return found


def test_owner_killed_while_connecting_through_the_proxy_leaves_nothing(project, monkeypatch):
    monkeypatch.setenv("AML_MAGICS_SIM_SSH_DELAY", "2")
    env = {**os.environ, "PYTHONPATH": str(Path(aml_magics.__file__).parent.parent)}
    owner = subprocess.Popen([sys.executable, "-m", "aml_magics.cli", "run", "--target", "azureml", "--sdk", "v2",
                              "--compute", "cpu-cluster", "--connect", "proxy", "--nodes", "2", "--timeout", "90",
                              "--wait", "proj/ranks.py"], cwd=project, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(owner.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        wait_for(lambda: any("waiting for the node's SSH service" in line for line in seen), 90,
                 "the owner waiting for the SSH service")
        wait_for(lambda: len(_job_sshd(project)) >= 2, 30, "an sshd on each node")  # the route is connecting
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
    prefix = f"{simnet._NS_PREFIX}{owner.pid}x"

    def gone() -> bool:
        names = [line.split()[0] for line in simnet._ip_quiet("netns", "list").splitlines() if line.split()]
        return not any(name.startswith(prefix) for name in names)

    wait_for(gone, 30, "the killed owner's cluster removed")
    wait_for(lambda: not _job_sshd(project), 15, "the killed owner's sshd gone")
    assert not [c for c in psutil.net_connections(kind="tcp") if c.pid == owner.pid]
