"""Distributed runs on the local target: N×M real processes with torchrun's environment,
one debug endpoint per debugged rank, a real DAP client per rank through the emitted
launch.json (compound members), per-rank states, and --debug-ranks leaving the other
processes without any listener."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import psutil
import pytest
from conftest import alive, wait_for

import aml_magics
from aml_magics.options import Defaults, OptionsError, build_request, make_parser
from aml_magics.testing.dap import attach_with_launch_config
from aml_magics.views import render_text

RANKED = """\
import os
rank = int(os.environ["RANK"])
value = rank * 10 + 1
env = os.environ
print(f"value={value} world={env['WORLD_SIZE']} local={env['LOCAL_RANK']} node={env['NODE_RANK']} master={env['MASTER_ADDR']}:{env['MASTER_PORT']}")
"""
BREAK_LINE = 4  # env = ...: value is set there


def test_four_ranks_two_attached_through_the_compound(workdir):
    run = aml_magics.submit(code=RANKED, name="ddp", nodes=2, procs_per_node=2, port=0, timeout=12)
    wait_for(lambda: len(run.endpoints) == 4, 30, "4 endpoints")
    ports = {e.rank: e.port for e in run.endpoints}
    assert sorted(ports) == [0, 1, 2, 3] and len(set(ports.values())) == 4

    fragment = run.launch_json()
    configs = {c["name"]: c for c in fragment["configurations"]}
    assert sorted(configs) == [f"ddp rank {r}" for r in range(4)]
    (compound,) = fragment["compounds"]
    assert compound["name"] == "ddp (all ranks)"
    assert compound["configurations"] == [f"ddp rank {r}" for r in range(4)]
    assert run.launch_config(rank=2) == configs["ddp rank 2"]

    script = workdir / ".aml_magics" / "cells" / "ddp.py"
    chosen = [name for name in compound["configurations"] if name.endswith(("rank 1", "rank 3"))]
    clients = [attach_with_launch_config(configs[name], {str(script): [BREAK_LINE]}, workspace_folder=str(workdir))
               for name in chosen]
    try:
        seen = {}
        for name, client in zip(chosen, clients, strict=True):
            stop = client.wait_stopped(30)
            assert stop.reason == "breakpoint"
            assert Path(stop.path) == script and stop.line == BREAK_LINE
            seen[name] = client.variables_of(stop.frame_id)["value"]
            assert client.evaluate("rank", stop.frame_id) == name[-1]
        assert seen == {"ddp rank 1": "11", "ddp rank 3": "31"}
        states = {s.rank: s.state for s in run.ranks}
        assert states[1] == states[3] == "attached"
        assert states[0] == states[2] == "waiting_for_debugger"
        assert run.state == "waiting_for_debugger"  # some ranks still wait
        text = render_text(run)
        assert "rank 1: 127.0.0.1:" in text and "debugger attached" in text
        for client in clients:
            client.continue_()
        assert run.wait(40) == "completed"
    finally:
        for client in clients:
            client.close()
    assert run.exit_code == 0
    assert [s.state for s in run.ranks] == ["completed"] * 4
    for rank in range(4):
        line = next(x for x in run.logs.splitlines() if x.startswith(f"[rank {rank}] value="))
        assert f"value={rank * 10 + 1} world=4 local={rank % 2} node={rank // 2} master=127.0.0.1:" in line
    masters = set(re.findall(r"master=127\.0\.0\.1:(\d+)", run.logs))
    assert len(masters) == 1


def test_debug_ranks_leave_the_other_ranks_without_a_listener(workdir):
    code = (
        "import os, sys, time\n"
        "print('probe', os.environ['RANK'], os.getpid(), 'debugpy' in sys.modules, sys.gettrace() is not None,"
        " flush=True)\n"
        "time.sleep(120)\n"
    )
    run = aml_magics.submit(code=code, name="some", procs_per_node=4, port=0, timeout=60, debug_ranks="0,3")
    wait_for(lambda: len(run.endpoints) == 2 and run.logs.count("probe ") >= 2, 30, "2 endpoints + 2 probes")
    assert [e.rank for e in run.endpoints] == [0, 3]
    probes = {int(r): (int(pid), mods, trace)
              for r, pid, mods, trace in re.findall(r"probe (\d) (\d+) (\w+) (\w+)", run.logs)}
    assert sorted(probes) == [1, 2]  # 0 and 3 wait for a debugger before running the script
    for rank in (1, 2):
        pid, debugpy_loaded, tracing = probes[rank]
        assert (debugpy_loaded, tracing) == ("False", "False")
        assert _listening_ports(pid) == set(), f"rank {rank} must open no port"
    for endpoint in run.endpoints:
        assert endpoint.port in _listening_ports(endpoint.pid)
    statuses = {s.rank: s for s in run.ranks}
    assert statuses[1].endpoint is None and statuses[1].state == "running"
    assert statuses[0].state == "waiting_for_debugger"
    assert "rank 2: no debugger" in render_text(run)
    pids = [probes[1][0], probes[2][0], *(e.pid for e in run.endpoints)]
    run.cancel()
    assert run.state == "canceled"
    wait_for(lambda: not any(alive(pid) for pid in pids), 10, "all ranks gone")
    assert {s.state for s in run.ranks} == {"canceled"}


def test_sixteen_ranks_report_sixteen_endpoints(workdir):
    started = time.perf_counter()
    run = aml_magics.submit(code="print('ok')\n", name="wide", nodes=4, procs_per_node=4, port=0, timeout=0)
    wait_for(lambda: len(run.endpoints) == 16, 60, "16 endpoints")
    elapsed = time.perf_counter() - started
    assert run.wait(30) == "completed", run.logs[-2000:]
    assert sorted(e.rank for e in run.endpoints) == list(range(16))
    assert len({e.port for e in run.endpoints}) == 16
    fragment = run.launch_json()
    assert len(fragment["configurations"]) == 16
    assert len(fragment["compounds"][0]["configurations"]) == 16
    assert run.logs.count("ok") == 16
    print(f"16 endpoints known after {elapsed:.2f}s")


def test_a_failing_rank_fails_the_run_and_is_named(workdir):
    code = "import os, sys\nif os.environ['RANK'] == '1':\n    sys.exit(3)\nprint('fine')\n"
    run = aml_magics.submit(code=code, name="onefails", procs_per_node=3, no_debug=True, wait=True)
    assert run.state == "failed" and run.exit_code == 3
    assert run.detail.startswith("rank 1 failed (exit code 3)")
    assert [s.state for s in run.ranks] == ["completed", "failed", "completed"]
    assert "[rank 1] AML_MAGICS_EXIT" in run.raw_logs and run.logs.count("fine") == 2


def test_cancel_ends_every_rank(workdir):
    code = "import os, time\nprint('pid', os.getpid(), flush=True)\ntime.sleep(300)\n"
    run = aml_magics.submit(code=code, name="sleepers", procs_per_node=3, no_debug=True)
    wait_for(lambda: run.logs.count("pid ") == 3, 20, "3 ranks started")
    pids = [int(p) for p in re.findall(r"pid (\d+)", run.logs)]
    run.cancel()
    assert run.state == "canceled"
    wait_for(lambda: not any(alive(pid) for pid in pids), 10, "all ranks gone")


@pytest.mark.parametrize("line, message", [
    ("--target docker --nodes 2 x.py", "target 'docker' runs one container"),
    ("--procs-per-node 4 --debug-ranks 0,4 x.py", "--debug-ranks 4: the run has 4 rank"),
    ("--nodes 0 x.py", "at least 1"),
    ("--debug-ranks a,b x.py", "--debug-ranks takes ranks like 0,3"),
    ("--nodes 10 --procs-per-node 10 x.py", "the local target starts at most 64"),
    ("--no-debug --post-mortem x.py", "--post-mortem needs the debugger: drop --no-debug"),
])
def test_distributed_option_mistakes(workdir, line, message):
    (workdir / "x.py").write_text("print(1)\n")
    with pytest.raises(OptionsError, match=re.escape(message)):
        build_request(make_parser("t").parse_args(line.split()), None, Defaults(), cwd=workdir)


def test_spec_and_bootstrap_args_for_a_single_command_line(workdir):
    from aml_magics.invocation import bootstrap_options as bootstrap_args

    (workdir / "x.py").write_text("print(1)\n")
    ns = make_parser("t").parse_args(
        "--nodes 2 --procs-per-node 2 --debug-ranks 3 --debug-ranks 0 --post-mortem --post-mortem-timeout 30 "
        "--wait-on-breakpoint x.py".split())
    spec = build_request(ns, None, Defaults(), cwd=workdir).spec
    assert spec.distributed.world_size == 4 and spec.debug.debug_ranks == (0, 3)
    assert spec.debug.post_mortem and spec.debug.wait_on_breakpoint and spec.debug.post_mortem_timeout == 30
    shared = bootstrap_args(spec, "0.0.0.0", 5678)  # one command line for all (azureml, docker)
    assert shared[-3:] == ["--debug-ranks", "0,3", "--port-per-local-rank"]
    assert "--post-mortem" in shared and "--wait-on-breakpoint" in shared
    assert bootstrap_args(spec, "127.0.0.1", 0, rank=1) == ["--no-debug"]
    assert "--debug-ranks" not in bootstrap_args(spec, "127.0.0.1", 0, rank=3)


def test_bootstrap_reads_rank_and_port_from_the_launchers_env(monkeypatch):
    from aml_magics.node import args as bootstrap

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "5")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1")
    ns = bootstrap.parse_args(["--port", "6000", "--port-per-local-rank", "--debug-ranks", "0,5", "s.py"])
    assert (ns.rank, ns.local_rank, ns.port, ns.debug_this_rank) == (5, 1, 6001, True)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    ns = bootstrap.parse_args(["--port", "6000", "--port-per-local-rank", "--debug-ranks", "0,5", "--", "s.py", "a"])
    assert (ns.rank, ns.port, ns.debug_this_rank, ns.script_args) == (2, 6000, False, ["a"])


def _listening_ports(pid: int) -> set[int]:
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return set()
    return {c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN}


def test_rank_states_and_views_follow_the_markers(tmp_path):
    """DebugRun fed marker lines as a remote target would deliver them (no processes)."""
    from aml_magics.run import DebugRun
    from aml_magics.spec import DebugOptions, DistributedSpec, RunSpec
    from aml_magics.views.widget import DebugRunPanel

    spec = RunSpec(name="fed", source_dir=tmp_path, script="t.py", debug=DebugOptions(debug_ranks=(0, 2)),
                   distributed=DistributedSpec(nodes=1, procs_per_node=3))
    run = DebugRun("fed-1", spec, "fake")
    run.set_state("running")

    def marker(rank, kind, **data):
        run.line(f"[rank {rank}] AML_MAGICS_{kind} " + json.dumps({"rank": rank, **data}))

    marker(0, "ENDPOINT", host="10.0.0.4", port=5678, pid=1, timeout=60, deadline=time.time() + 60)
    marker(2, "ENDPOINT", host="10.0.0.5", port=5678, pid=2, timeout=60, deadline=time.time() + 60)
    assert [s.state for s in run.ranks] == ["waiting_for_debugger", "running", "waiting_for_debugger"]
    marker(0, "ATTACHED", attached=True)
    marker(2, "ATTACHED", attached=False)
    assert run.state == "attached"
    marker(2, "POST_MORTEM", type="ValueError", message="bad shape", host="10.0.0.5", port=5678,
           timeout=600, deadline=time.time() + 600)
    assert run.state == "crashed_waiting_for_debugger" and run.detail == "rank 2: ValueError: bad shape"
    assert run.ranks[2].detail == "ValueError: bad shape"
    text = render_text(run)
    assert "crashed — waiting for debugger" in text.splitlines()[0] and "rank 2: ValueError: bad shape" in text
    assert "rank 1: no debugger — running" in text
    assert "rank 2: 10.0.0.5:5678 — crashed — waiting for debugger: ValueError: bad shape" in text
    panel = DebugRunPanel(run)
    table = panel._endpoints_html()
    assert table.count("<tr class='aml-rank'") == 3 and "<th>state</th>" in table
    assert "data-state='crashed_waiting_for_debugger'" in table and "no debugger" in table
    assert [c["name"] for c in run.launch_json()["configurations"]] == ["fed rank 0", "fed rank 2"]
    marker(1, "EXIT", code=0)
    marker(2, "EXIT", code=1)
    assert run.state == "attached"  # rank 0 is still being debugged
    run.finished("failed", 1, "rank 2 failed (exit code 1)")
    assert [s.state for s in run.ranks] == ["failed", "completed", "failed"]
