"""The proxy route (the job's SSH service through the workspace proxy), as ratios in one run.

    python benchmarks/bench_proxy.py [--repeat N]

On the simulated proxy-only cluster (``AML_MAGICS_SIM_NETWORK=bridge``,
``AML_MAGICS_SIM_INBOUND=proxy``: a real sshd per node, the simulated websocket proxy):

- a DAP request round trip (median of many, at a stop) through our route (websockets +
  paramiko in the owner's process, a direct-tcpip channel to the relay) vs OpenSSH's own
  client doing the same thing: ``ssh -o ProxyCommand=<a websocket pump> -L`` to the same
  relay over the same proxy, the same TLS forwarder in front (goal: ≤ 1.0x);
- job Running → attachable (a DAP client attached) via the proxy, against the same job
  reached directly on the open bridge.

Needs root, iproute2, iptables, openssh-server (sshd and ssh). Prints markdown rows.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import HERE, dap_round_trips, paired, print_rows

import aml_magics
from aml_magics.azureml.v2.simulator import get_v2_simulator
from aml_magics.sshproxy import websocket_url
from aml_magics.testing.dap import attach_with_launch_config
from aml_magics.tunnel import Forwarder

SCRIPT = "import time\nx = 41\ny = x + 1\ntime.sleep(0.2)\nprint(y)\n"
BREAK = 3
WORKSPACE = '{"subscription_id": "00000000-0000-0000-0000-000000000001", "resource_group": "rg", ' \
            '"workspace_name": "ws"}'


def _submit(folder: Path, connect: str):
    return aml_magics.submit(str(folder / "proj" / "t.py"), target="azureml", sdk="v2", compute="cpu-cluster",
                             connect=connect, timeout=120)


def _trip_and_finish(client, folder: Path, run) -> float:
    try:
        stop = client.wait_stopped(60)
        trip = dap_round_trips(client, stop)
        client.continue_(stop.thread_id)
    finally:
        client.close()
    run.wait(60)
    return trip


def _ours(folder: Path) -> float:
    run = _submit(folder, "proxy")
    run.wait_for_endpoint(120)
    client = attach_with_launch_config(run.launch_config(), {str(folder / "proj" / "t.py"): [BREAK]},
                                       workspace_folder=str(folder), timeout=120)
    return _trip_and_finish(client, folder, run)


class _LocalPort:
    """A forwarder route to ``ssh -L``'s local port (OpenSSH carries the bytes, not us)."""

    name = "direct"
    detail = "OpenSSH -L"

    def __init__(self, port: int) -> None:
        self.port = port

    def connect(self, host: str, port: int, timeout: float) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _openssh(folder: Path) -> float:
    """The same job and relay, reached by ``ssh -o ProxyCommand=<pump> -L`` instead of our route."""
    run = _submit(folder, "proxy")
    endpoint = run.wait_for_endpoint(120)
    handle = run._handle._inner  # the tunnel's handle: its certificates and the job's routes (the run's key)
    routes = handle.inner.routes
    backend = get_v2_simulator()
    node_host, relay = endpoint.node_address.rsplit(":", 1)
    job = routes.job
    while (routes.backend.ssh_service(routes.client, job, 0)[0]) != "Running":
        time.sleep(0.1)
    url = websocket_url(backend.proxy.endpoint(job), 0)
    key = folder / "id_bench"
    key.touch(mode=0o600)
    key.write_text(routes.key.private)
    local = _free_port()
    ssh = subprocess.Popen(["ssh", "-F", "/dev/null", "-i", str(key), "-o", "StrictHostKeyChecking=no",
                            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ExitOnForwardFailure=yes",
                            "-o", f"ProxyCommand={sys.executable} {HERE / 'ws_pump.py'} {url}", "-N",
                            "-L", f"127.0.0.1:{local}:{node_host}:{relay}", "azureuser@node"],
                           env={**os.environ, "AML_MAGICS_BENCH_TOKEN": backend.token})
    forwarder = Forwarder(node_host, int(relay), handle.credentials, route=_LocalPort(local)).start()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", local), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        config = {**run.launch_config(), "connect": {"host": "127.0.0.1", "port": forwarder.port}}
        client = attach_with_launch_config(config, {str(folder / "proj" / "t.py"): [BREAK]}, workspace_folder=str(folder),
                                           timeout=60)
        return _trip_and_finish(client, folder, run)
    finally:
        forwarder.close()
        ssh.terminate()
        ssh.wait(10)
        key.unlink()


def _running_to_attached(folder: Path, connect: str) -> float:
    """Seconds from the job's Running line to a DAP client attached through the run's forwarder."""
    run = _submit(folder, connect)
    while "Running" not in run.logs:
        time.sleep(0.01)
    running = time.perf_counter()
    run.wait_for_endpoint(120)
    client = attach_with_launch_config(run.launch_config(), {str(folder / "proj" / "t.py"): [BREAK]},
                                       workspace_folder=str(folder), timeout=120)
    attached = time.perf_counter()
    _trip_and_finish(client, folder, run)
    return attached - running


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    repeat = parser.parse_args().repeat
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "proj").mkdir()
        (folder / "proj" / "t.py").write_text(SCRIPT)
        (folder / ".azureml").mkdir()
        (folder / ".azureml" / "config.json").write_text(WORKSPACE)
        os.chdir(folder)
        os.environ.update({"AML_MAGICS_AZUREML_BACKEND": "simulator", "AML_MAGICS_SIM_ROOT": str(folder / "sim"),
                           "AML_MAGICS_SIM_NETWORK": "bridge", "AML_MAGICS_SIM_INBOUND": "proxy",
                           "AML_MAGICS_SIM_STATE_SECONDS": "0.05", "AML_MAGICS_AZUREML_POLL_SECONDS": "0.2"})
        ours, openssh = paired(repeat, lambda: _ours(folder), lambda: _openssh(folder))
        via_proxy = statistics.median(_running_to_attached(folder, "proxy") for _ in range(repeat))
        os.environ["AML_MAGICS_SIM_INBOUND"] = ""
        direct = statistics.median(_running_to_attached(folder, "direct") for _ in range(repeat))
        print_rows([
            ("DAP request round trip: proxy route (websockets + paramiko) vs OpenSSH `ssh -o ProxyCommand -L` (ms)",
             1000 * ours, 1000 * openssh),
            ("job Running → DAP client attached: via the proxy vs direct on the open bridge (s)", via_proxy, direct),
        ])


if __name__ == "__main__":
    main()
