"""Multi-node Azure ML runs on the simulated cluster (``AML_MAGICS_SIM_NETWORK=bridge``).

Every node of a job is a real network namespace with its own address on a private bridge;
the processes are what the service would start on each node (the PyTorch launcher's or
mpirun's, with their variables), real processes running the real bootstrap and a real
debugpy. A real DAP client attaches to a rank on node 1 through the emitted launch.json; a
stdlib rendezvous (rank 0 listens on MASTER_ADDR:MASTER_PORT, every other rank connects
from its node and sends its rank) proves the environment is right and traffic crosses the
bridge; torch.distributed's gloo all_reduce does the same with a real collective. After a
job ends, is canceled, or its owner is killed, no namespace, bridge, veth or process is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import psutil
import pytest

pytest.importorskip("azureml.core", reason="azureml-core is not installed (pip install 'aml-magics[azureml]')")
pytest.importorskip("azure.ai.ml", reason="azure-ai-ml is not installed (pip install 'aml-magics[azureml-v2]')")

from azureml_support import setup_project, use_simulator, wait_for, write_project  # noqa: E402

from aml_magics import cli  # noqa: E402
from aml_magics.azureml import simnet  # noqa: E402
from aml_magics.azureml.monitor import followed_logs  # noqa: E402
from aml_magics.azureml.simulator import Shape, get_simulator, launcher_environment  # noqa: E402
from aml_magics.azureml.v2.simulator import get_v2_simulator  # noqa: E402
from aml_magics.testing.dap import attach_with_launch_config  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning", "ignore::DeprecationWarning")

# Every rank reads its place from its launcher's variables; rank 0 listens on the master
# address, every other rank connects from its own node and sends its rank.
RENDEZVOUS = textwrap.dedent("""\
    import os
    import socket
    import time

    env = os.environ
    if "OMPI_COMM_WORLD_RANK" in env:  # mpirun's variables, and Azure ML's master node
        rank, world = int(env["OMPI_COMM_WORLD_RANK"]), int(env["OMPI_COMM_WORLD_SIZE"])
        node, local = int(env["OMPI_COMM_WORLD_NODE_RANK"]), int(env["OMPI_COMM_WORLD_LOCAL_RANK"])
        host, port = env["AZ_BATCH_MASTER_NODE"].rsplit(":", 1)
    else:  # the PyTorch launcher's
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        node, local = int(env["NODE_RANK"]), int(env["LOCAL_RANK"])
        host, port = env["MASTER_ADDR"], env["MASTER_PORT"]
    where = f"rank {rank} of {world} on node {node} (local rank {local})"
    if rank == 0:
        server = socket.create_server((host, int(port)))
        server.settimeout(120)
        peers = {}
        while len(peers) < world - 1:
            conn, address = server.accept()
            with conn:
                conn.settimeout(30)
                data = b""
                while chunk := conn.recv(64):
                    data += chunk
                peers[int(data)] = address[0]
                conn.sendall(b"ok")
        print(f"rendezvous complete at {host}:{port}: {json.dumps(peers, sort_keys=True)}", flush=True)
    else:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = socket.create_connection((host, int(port)), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        with conn:
            conn.sendall(str(rank).encode())
            conn.shutdown(socket.SHUT_WR)
            print(f"{where}: rank 0 answered {conn.recv(16).decode()}", flush=True)
    """).replace("import os\n", "import json\nimport os\n", 1)
BREAK_LINE = RENDEZVOUS.splitlines().index("if rank == 0:") + 1  # rank, node, local, host are set

ALL_REDUCE = textwrap.dedent("""\
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")  # env://: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE
    value = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(value)
    print(f"all_reduce on rank {dist.get_rank()} of {dist.get_world_size()}: {value.item():g}", flush=True)
    dist.destroy_process_group()
    """)


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def namespaces():
    """Namespaces must be makeable here (CI: root and iproute2); elsewhere the tests say why not."""
    reason = simnet.unavailable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"the simulated cluster needs network namespaces: {reason}")
        pytest.skip(f"the simulated cluster needs network namespaces: {reason}")


@pytest.fixture
def project(tmp_path, monkeypatch, namespaces):
    root = setup_project(tmp_path, monkeypatch)
    use_simulator(monkeypatch, root / "sim")
    monkeypatch.setenv("AML_MAGICS_SIM_NETWORK", "bridge")
    write_project(root / "proj", RENDEZVOUS, name="rdv.py")
    yield root
    assert simnet.own_resources() == ([], []), "a namespace or veth of this process's clusters is left"


def _last_run(sdk: str):
    runs = get_v2_simulator().runs if sdk == "v2" else get_simulator().runs
    return list(runs.values())[-1]


def _attach_all(run, project: Path, breakpoints_for: dict[int, list[int]]):
    """Attach a DAP client to every configuration of the run's launch.json (what the compound
    ``<name> (all ranks)`` starts); breakpoints in the local script for the ranks given."""
    fragment = run.launch_json(workspace_folder=str(project))
    local = str(project / "proj" / "rdv.py")
    clients = {}
    try:
        for config in fragment["configurations"]:
            rank = int(config["name"].rsplit(" ", 1)[1])
            clients[rank] = attach_with_launch_config(config, {local: breakpoints_for.get(rank, [])},
                                                      workspace_folder=str(project))
    except BaseException:
        for client in clients.values():
            client.close()
        raise
    return fragment, clients


def _assert_rendezvous(run, addresses: list[str], world: int = 4, per_node: int = 2) -> None:
    """Rank 0 heard every other rank, each from the address of its own node."""
    line = next(line for line in run.logs.splitlines() if "rendezvous complete at" in line)
    assert f"rendezvous complete at {addresses[0]}:" in line
    peers = json.loads(line.split(": ", 1)[1])
    assert peers == {str(r): addresses[r // per_node] for r in range(1, world)}
    for rank in range(1, world):
        assert f"rank {rank} of {world} on node {rank // per_node} (local rank {rank % per_node}): rank 0 answered ok" \
            in run.logs


def _far(endpoint) -> tuple[str, int]:
    """(node address, port) of a rank's relay on its node (the endpoint itself is the forwarder)."""
    host, port = endpoint.node_address.rsplit(":", 1)
    return host, int(port)


# -- 2 nodes x 2 processes, debugged --------------------------------------------------------------------


@pytest.mark.parametrize("sdk", ["v2", "v1"])
def test_two_nodes_attach_a_rank_on_node_1_and_rendezvous(shell, project, sdk):
    run = shell.run_line_magic("aml_debug_run", f"--target azureml --sdk {sdk} --compute cpu-cluster --nodes 2 "
                               "--procs-per-node 2 --timeout 90 proj/rdv.py")
    run.wait_for(lambda: len(run.endpoints) == 4, 60, "4 endpoints in {timeout:g}s")
    sim_run = _last_run(sdk)
    assert sorted(sim_run.get_details()["logFiles"])[-4:] == [f"user_logs/std_log_process_{r}.txt" for r in range(4)]

    endpoints = {e.rank: e for e in run.endpoints}
    assert all(e.tunnelled and e.host == "127.0.0.1" for e in endpoints.values())  # each through a forwarder
    addresses = [_far(endpoints[0])[0], _far(endpoints[2])[0]]
    assert len(set(addresses)) == 2 and all(a.startswith(simnet.CLUSTER_NET + ".") for a in addresses)
    for rank, endpoint in endpoints.items():
        node, local = run.spec.distributed.placement(rank)
        assert _far(endpoint) == (addresses[node], 5678 + local)  # every node: its relays on 5678, 5679
        assert f"/node-{node}/exe/wd" in endpoint.cwd and Path(endpoint.cwd, "rdv.py").is_file()
        own_log = (sim_run.dir / "user_logs" / f"std_log_process_{rank}.txt").read_text()  # where it was read from
        marker = json.loads(next(line for line in own_log.splitlines()
                                 if line.startswith("AML_MAGICS_ENDPOINT ")).split(" ", 1)[1].rsplit(" ", 1)[0])
        assert (marker["rank"], marker["host"], marker["port"]) == (rank, *_far(endpoint))
    assert "endpoint from run tag" not in run.logs

    fragment, clients = _attach_all(run, project, {3: [BREAK_LINE]})
    try:
        assert [c["name"] for c in fragment["configurations"]] == [f"{run.name} rank {r}" for r in range(4)]
        assert fragment["compounds"] == [{"name": f"{run.name} (all ranks)",
                                          "configurations": [f"{run.name} rank {r}" for r in range(4)]}]
        rank3 = fragment["configurations"][3]
        assert rank3["connect"] == {"host": "127.0.0.1", "port": endpoints[3].port}

        stop = clients[3].wait_stopped(30)
        assert stop.reason == "breakpoint" and Path(stop.path) == project / "proj" / "rdv.py"
        values = clients[3].variables_of(stop.frame_id)
        assert (values["rank"], values["node"], values["local"], values["world"]) == ("3", "1", "1", "4")
        assert values["host"] == repr(addresses[0])  # MASTER_ADDR: node 0's address
        clients[3].continue_(stop.thread_id)
        assert run.wait(60) == "completed", run.logs[-3000:]
    finally:
        for client in clients.values():
            client.close()
    _assert_rendezvous(run, addresses)
    assert run.exit_code == 0
    assert sim_run.get_status() == "Completed"
    assert all(p.poll() is not None for p in sim_run._processes)


def test_debug_ranks_across_nodes(project):
    import aml_magics

    run = aml_magics.submit("proj/rdv.py", target="azureml", sdk="v2", compute="cpu-cluster", nodes=2,
                            procs_per_node=2, debug_ranks="1,2", timeout=90)
    run.wait_for(lambda: len(run.endpoints) == 2, 60, "2 endpoints in {timeout:g}s")
    endpoints = {e.rank: e for e in run.endpoints}
    assert sorted(endpoints) == [1, 2] and _far(endpoints[1])[0] != _far(endpoints[2])[0]  # one on each node
    fragment, clients = _attach_all(run, project, {2: [BREAK_LINE]})
    try:
        assert fragment["compounds"][0]["configurations"] == [f"{run.name} rank 1", f"{run.name} rank 2"]
        stop = clients[2].wait_stopped(30)
        values = clients[2].variables_of(stop.frame_id)
        assert (values["rank"], values["node"], values["local"]) == ("2", "1", "0")
        clients[2].continue_(stop.thread_id)
        assert run.wait(60) == "completed", run.logs[-3000:]
    finally:
        for client in clients.values():
            client.close()
    ranks = {status.rank: status for status in run.ranks}
    assert ranks[0].endpoint is None and ranks[3].endpoint is None  # no debugger, no port
    assert "[rank 0] Timeout for debug connection" not in run.logs and "[rank 3] Timeout" not in run.logs
    _assert_rendezvous(run, [_far(endpoints[1])[0], _far(endpoints[2])[0]])  # rank 1 on node 0, rank 2 on node 1


# -- MPI: Open MPI's variables on every node (SDK v2 MpiDistribution, SDK v1 MpiConfiguration) --------


def test_mpi_job_on_two_nodes(project):
    import aml_magics

    run = aml_magics.submit("proj/rdv.py", target="azureml", sdk="v2", compute="cpu-cluster", nodes=2,
                            procs_per_node=2, distribution="mpi", no_debug=True, wait=True)
    assert run.state == "completed", run.logs[-3000:]
    job = _last_run("v2")
    assert job.distribution == "mpi"
    peers = json.loads(next(line for line in run.logs.splitlines() if "rendezvous complete" in line).split(": ", 1)[1])
    assert peers["1"] != peers["2"] and peers["2"] == peers["3"]  # ranks 2 and 3 came from node 1


def test_sdk_v1_mpi_configuration_on_two_nodes(project):
    """azureml-core's MpiConfiguration (process_count_per_node, node_count), submitted as is."""
    from azureml.core import ScriptRunConfig
    from azureml.core.runconfig import MpiConfiguration

    from aml_magics.azureml.settings import WorkspaceRef

    simulator = get_simulator()
    workspace = simulator.open_workspace(WorkspaceRef("ws-debug", "rg-debug", None, None, "test"))
    config = ScriptRunConfig(source_directory=str(project / "proj"), script="rdv.py", compute_target="cpu-cluster",
                             distributed_job_config=MpiConfiguration(process_count_per_node=2, node_count=2))
    run = simulator.submit_run(workspace, "mpi", config, {})
    run.wait_for_completion(timeout=90)
    assert run.get_status() == "Completed", run.get_details()
    logs = {r: (run.dir / "user_logs" / f"std_log_process_{r}.txt").read_text() for r in range(4)}
    line = next(line for line in logs[0].splitlines() if "rendezvous complete" in line)
    peers = json.loads(line.split(": ", 1)[1])
    assert peers["2"] == peers["3"] != peers["1"]
    assert "rank 3 of 4 on node 1 (local rank 1): rank 0 answered ok" in logs[3]


def test_launcher_variables():
    shape = Shape(2, 2, "pytorch")
    assert launcher_environment(shape, 3, "10.213.9.10") == {
        "RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "NODE_RANK": "1",
        "GROUP_RANK": "1", "MASTER_ADDR": "10.213.9.10", "MASTER_PORT": "29500"}
    assert launcher_environment(Shape(2, 2, "mpi"), 2, "10.213.9.10") == {
        "OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "0",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "OMPI_COMM_WORLD_NODE_RANK": "1",
        "AZ_BATCHAI_MPI_MASTER_NODE": "10.213.9.10", "AZ_BATCH_MASTER_NODE": "10.213.9.10:29500"}
    one_node = launcher_environment(Shape(1, 2, "mpi"), 1, "127.0.0.1")  # Azure ML: no AZ_BATCH_MASTER_NODE there
    assert one_node["AZ_BATCHAI_MPI_MASTER_NODE"] == "127.0.0.1" and "AZ_BATCH_MASTER_NODE" not in one_node
    assert launcher_environment(Shape(), 0, "127.0.0.1") == {}
    assert launcher_environment(Shape(2, 1, None), 1, "10.213.9.10") == {}  # no launcher: the command on each node


# -- torch.distributed: a real collective across the nodes --------------------------------------------


def _torch_python() -> str:
    """An interpreter with torch: .ci/run makes one (AML_MAGICS_TORCH_PYTHON); in CI it must be there."""
    python = os.environ.get("AML_MAGICS_TORCH_PYTHON")
    if python:
        return python
    probe = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True)
    if probe.returncode == 0:
        return sys.executable
    if os.environ.get("CI"):
        pytest.fail("torch is not installed: .ci/run sets AML_MAGICS_TORCH_PYTHON (bash .ci/torch.sh)")
    pytest.skip("torch is not installed here: `bash .ci/torch.sh` makes an interpreter with it "
                "(AML_MAGICS_TORCH_PYTHON=<its output>)")


def test_torch_gloo_all_reduce_over_two_nodes(project, monkeypatch):
    import aml_magics

    monkeypatch.setenv("AML_MAGICS_SIM_PYTHON", _torch_python())  # the "image" of the nodes has torch
    write_project(project / "proj", ALL_REDUCE, name="reduce.py")
    # The nodes share this machine's host name, which resolves to no node address: gloo takes eth0.
    run = aml_magics.submit("proj/reduce.py", target="azureml", sdk="v2", compute="cpu-cluster", nodes=2,
                            procs_per_node=2, no_debug=True, env={"GLOO_SOCKET_IFNAME": "eth0"}, wait=True)
    assert run.state == "completed", run.logs[-3000:]
    for rank in range(4):
        assert f"[rank {rank}] all_reduce on rank {rank} of 4: 10" in run.logs


# -- cancel and cleanup -------------------------------------------------------------------------------


def test_cancel_leaves_no_namespace_veth_or_process(shell, project):
    run = shell.run_line_magic("aml_debug_run", "--target azureml --sdk v2 --compute cpu-cluster --nodes 2 "
                               "--procs-per-node 2 --timeout 120 proj/rdv.py")
    run.wait_for(lambda: len(run.endpoints) == 4, 60, "4 endpoints in {timeout:g}s")
    job = _last_run("v2")
    namespaces, links = simnet.own_resources()
    assert len(namespaces) == 3 and len(links) == 1  # the switch (with the bridge), 2 nodes; this machine's end
    pids = [p.pid for p in job._processes]
    shell.run_line_magic("aml_cancel", run.id)
    assert run.wait(30) == "canceled" and run.detail.startswith("canceled by user after ")
    assert job.get_status() == "Canceled"
    assert simnet.own_resources() == ([], [])
    assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]


def test_multi_node_without_the_bridge_is_one_clear_line(project, monkeypatch, capsys):
    monkeypatch.delenv("AML_MAGICS_SIM_NETWORK")
    for sdk, what in (("v2", "instance_count"), ("v1", "node_count")):
        code = cli.main(["run", "proj/rdv.py", "--target", "azureml", "--sdk", sdk, "--compute", "cpu-cluster",
                         "--nodes", "2", "--procs-per-node", "2"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert f"the simulator runs one node; {what} 2 is not simulated (AML_MAGICS_SIM_NETWORK=bridge" in err
    monkeypatch.setenv("AML_MAGICS_SIM_NETWORK", "vxlan")
    assert cli.main(["run", "proj/rdv.py", "--target", "azureml", "--sdk", "v2", "--compute", "cpu-cluster"]) == 2
    assert "AML_MAGICS_SIM_NETWORK='vxlan': expected bridge (or unset)" in capsys.readouterr().err


_OWNER = textwrap.dedent("""\
    import json, subprocess, sys, time
    from aml_magics.azureml.simnet import BridgeCluster
    cluster = BridgeCluster(2).create()
    node = subprocess.Popen([*cluster.exec_prefix(1), sys.executable, "-c", "import time; time.sleep(120)"])
    print(json.dumps({"namespaces": [*cluster.namespaces, cluster.switch], "link": cluster.host_if,
                      "node": node.pid, "watcher": cluster._watcher.pid}), flush=True)
    time.sleep(120)
    """)


def _owner(tmp_path: Path) -> tuple[subprocess.Popen, dict]:
    owner = subprocess.Popen([sys.executable, "-c", _OWNER], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(simnet.__file__).parents[2])})
    info = json.loads(owner.stdout.readline())
    assert set(info["namespaces"]) <= set(_netns_names())
    return owner, info


def _netns_names() -> list[str]:
    return [line.split()[0] for line in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                       text=True).stdout.splitlines() if line.split()]


def _gone(info: dict) -> bool:
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    node_alive = psutil.pid_exists(info["node"]) and psutil.Process(info["node"]).status() != psutil.STATUS_ZOMBIE
    return not set(info["namespaces"]) & set(_netns_names()) and f" {info['link']}@" not in links and not node_alive


def test_a_killed_owner_leaves_nothing(tmp_path, namespaces):
    """SIGKILL: no atexit runs; the watcher sees the owner's pipe close and removes the cluster
    and what still runs on its nodes."""
    owner, info = _owner(tmp_path)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    owner.stdout.close()
    wait_for(lambda: _gone(info), 20, "the killed owner's cluster removed")
    wait_for(lambda: not psutil.pid_exists(info["watcher"]), 10, "the watcher ended")


def test_the_next_cluster_sweeps_what_a_dead_owner_left(tmp_path, namespaces):
    """Owner and watcher both killed: the next cluster's sweep removes their leftovers."""
    owner, info = _owner(tmp_path)
    os.kill(info["watcher"], signal.SIGKILL)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    owner.stdout.close()
    assert set(info["namespaces"]) <= set(simnet.stale_resources()[0])  # still there, their owner dead
    with simnet.BridgeCluster(1) as cluster:  # its creation sweeps first
        assert cluster.switch in _netns_names()
        assert _gone(info)
    assert simnet.own_resources() == ([], [])


def test_a_reused_pid_does_not_keep_a_dead_owners_cluster(tmp_path, namespaces):
    """Resource names carry only the owner's pid; its record (boot, start time) tells a pid that
    now belongs to another process apart. Here the pid still runs, but not as the process the
    record names: as after a reuse, the sweep removes the cluster and forgets the record."""
    owner, info = _owner(tmp_path)
    try:
        os.kill(info["watcher"], signal.SIGKILL)
        record = Path(tempfile.gettempdir()) / f"aml-magics-simnet-owners-{os.getuid()}" / f"{owner.pid}.json"
        fields = json.loads(record.read_text())
        assert fields["pid"] == str(owner.pid) and fields["start"]
        assert not set(info["namespaces"]) & set(simnet.stale_resources()[0]), "a live owner's cluster is kept"
        record.write_text(json.dumps({**fields, "start": str(int(fields["start"]) + 1)}))
        assert set(info["namespaces"]) <= set(simnet.stale_resources()[0])
        with simnet.BridgeCluster(1) as cluster:  # its creation sweeps first
            assert cluster.switch in _netns_names()
            assert _gone(info)
        assert not record.exists()
    finally:
        owner.kill()
        owner.wait()
        owner.stdout.close()
    assert simnet.own_resources() == ([], [])


# -- the monitor: one log per process of every node ----------------------------------------------------


def test_per_process_logs_are_followed_with_their_rank_from_the_first_poll():
    # node 1's logs appear later than node 0's; the prefix is the same before and after
    assert followed_logs(["user_logs/std_log_process_0.txt"]) == [("user_logs/std_log_process_0.txt", "[rank 0] ")]
    padded = followed_logs(["user_logs/std_log_process_03.txt", "user_logs/std_log_process_00.txt",
                            "user_logs/std_log_process_01.txt", "user_logs/std_log_process_02.txt",
                            "azureml-logs/20_image_build_log.txt", "system_logs/lifecycler/execution-wrapper.log"])
    assert padded == [("azureml-logs/20_image_build_log.txt", "[image build] ")] + [
        (f"user_logs/std_log_process_0{r}.txt", f"[rank {r}] ") for r in range(4)]
    assert followed_logs(["azureml-logs/70_driver_log_1.txt", "azureml-logs/70_driver_log_0.txt"]) == [
        ("azureml-logs/70_driver_log_0.txt", "[rank 0] "), ("azureml-logs/70_driver_log_1.txt", "[rank 1] ")]
