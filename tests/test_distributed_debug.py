"""Debugging one rank of a torch.distributed job without breaking it (issue 24).

Real processes on the simulated cluster (2 nodes × 2 processes, SDK v2, a bridge between
network namespaces), torch with gloo on CPU, real debugpy, the product's own DAP client. The
user's code sets a 5 s process group timeout and does two ``all_reduce``s; keeping one rank
stopped between them for 20 s kills the job unless its timeouts are raised (the ``keep`` test
proves the bug is caught). ``run.attach_all`` drives every rank at once.
"""

from __future__ import annotations

import os
import textwrap
import threading
import time

import pytest

pytest.importorskip("azureml.core", reason="azureml-core is not installed (pip install 'aml-magics[azureml]')")
pytest.importorskip("azure.ai.ml", reason="azure-ai-ml is not installed (pip install 'aml-magics[azureml-v2]')")

from azureml_support import setup_project, use_simulator, write_project  # noqa: E402
from test_azureml_cluster import _torch_python  # noqa: E402

import aml_magics  # noqa: E402
from aml_magics.azureml import simnet  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::PendingDeprecationWarning", "ignore::DeprecationWarning")]

TWO_REDUCES = textwrap.dedent("""\
    import datetime
    import os

    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=5))
    rank = dist.get_rank()
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    first = value.item()
    print(f"rank {rank}: first all_reduce {first:g}", flush=True)
    if os.environ.get("BREAK_RANK") == str(rank):
        breakpoint()
    if os.environ.get("DIST_BREAKPOINT"):
        dist.breakpoint(rank=int(os.environ["DIST_BREAKPOINT"]))
    total = torch.tensor([first * (rank + 1)])
    dist.all_reduce(total)
    print(f"rank {rank}: second all_reduce {total.item():g}", flush=True)
    dist.destroy_process_group()
    """)
LINES = TWO_REDUCES.splitlines()
FIRST_LINE = LINES.index("first = value.item()") + 1
BETWEEN_LINE = LINES.index("total = torch.tensor([first * (rank + 1)])") + 1
DIST_BREAKPOINT_LINE = LINES.index('    dist.breakpoint(rank=int(os.environ["DIST_BREAKPOINT"]))') + 1
HELD = 20.0  # seconds rank 3 stays stopped: four times the script's own timeout


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project on the simulated cluster (its nodes: network namespaces on a bridge)."""
    reason = simnet.unavailable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"the simulated cluster needs network namespaces: {reason}")
        pytest.skip(f"the simulated cluster needs network namespaces: {reason}")
    root = setup_project(tmp_path, monkeypatch)
    use_simulator(monkeypatch, root / "sim")
    monkeypatch.setenv("AML_MAGICS_SIM_NETWORK", "bridge")
    yield root
    assert simnet.own_resources() == ([], []), "a namespace or veth of this process's clusters is left"


def _submit(project, monkeypatch, env: dict[str, str], **options):
    monkeypatch.setenv("AML_MAGICS_SIM_PYTHON", _torch_python())  # the nodes' "image" has torch
    write_project(project / "proj", TWO_REDUCES, name="reduce.py")
    # The nodes share this machine's host name, which resolves to no node address: gloo takes eth0.
    return aml_magics.submit("proj/reduce.py", target="azureml", sdk="v2", compute="cpu-cluster", nodes=2,
                             procs_per_node=2, env={"GLOO_SOCKET_IFNAME": "eth0", **env}, **options)


def _hold_rank_3(run) -> None:
    """Rank 3 calls breakpoint() between the reduces; attach, keep it stopped, continue."""
    run.wait_for(lambda: any(s.rank == 3 and s.debugger == "waiting" for s in run.ranks), 120,
                 "rank 3 waiting at breakpoint() in {timeout:g}s")
    # No exception stops: with --collective-timeout keep the second all_reduce raises on rank 3 too,
    # and an uncaught-filter stop there would hold the job this helper waits to end.
    debugger = run.attach(rank=3, timeout=60, exceptions=())
    try:
        stop = debugger.wait_stopped(60)
        assert stop is not None and stop.line == DIST_BREAKPOINT_LINE - 1  # the line after breakpoint()
        assert debugger.evaluate("first") == "10.0"
        time.sleep(HELD)  # the other ranks wait in the second all_reduce meanwhile
        debugger.continue_()
        run.wait(120)
    finally:
        debugger.close()


def test_a_rank_stopped_longer_than_the_timeout_does_not_kill_the_job(project, monkeypatch):
    run = _submit(project, monkeypatch, {"BREAK_RANK": "3"}, debug_ranks="3", timeout=0, wait_on_breakpoint=True)
    _hold_rank_3(run)
    assert run.state == "completed", run.logs[-3000:]
    for rank in range(4):
        assert f"[rank {rank}] rank {rank}: first all_reduce 10" in run.logs
        assert f"[rank {rank}] rank {rank}: second all_reduce 100" in run.logs
        assert (f"[rank {rank}] aml_magics: torch.distributed.init_process_group: timeout=0:00:05 raised to "
                "2:00:00 (--collective-timeout 7200)") in run.logs


def test_keep_leaves_the_users_timeout_and_the_job_dies(project, monkeypatch):
    """The same run with --collective-timeout keep: gloo's own timeout fires (the bug the test catches)."""
    run = _submit(project, monkeypatch, {"BREAK_RANK": "3"}, debug_ranks="3", timeout=0, wait_on_breakpoint=True,
                  collective_timeout="keep")
    _hold_rank_3(run)
    assert run.state == "failed", run.logs[-3000:]
    assert "raised to" not in run.logs
    assert "second all_reduce" not in run.logs
    assert "Timed out" in run.logs or "timed out" in run.logs, run.logs[-3000:]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not after {timeout:g}s")
        time.sleep(0.1)


def _pause_all_within(group, seconds: float = 5.0) -> dict:
    """pause_all() on a thread: it must come back within ``seconds`` (ranks in a collective are busy)."""
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(group.pause_all()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"pause_all() still waiting after {seconds:g}s"
    return result


def _finish(run, group) -> None:
    """Continue every rank until the run ends (ranks whose pause was pending stop once more)."""
    deadline = time.monotonic() + 120
    while not run.done and time.monotonic() < deadline:
        group.continue_all()
        run.wait_for_change(0.5)
    assert run.wait(30) == "completed", run.logs[-3000:]
    for rank in range(4):
        assert f"[rank {rank}] rank {rank}: second all_reduce 100" in run.logs


def test_attach_all_compares_the_ranks_and_drives_them_together(project, monkeypatch):
    run = _submit(project, monkeypatch, {}, timeout=120)
    local = str(project / "proj" / "reduce.py")
    group = run.attach_all(breakpoints=[(local, FIRST_LINE + 1)], timeout=90, all_stop=False)
    try:
        assert isinstance(group, aml_magics.DebuggerGroup) and sorted(group.ranks) == [0, 1, 2, 3]
        rank, stop = group.wait_stopped(90)
        assert rank in range(4) and (stop.reason, stop.line) == ("breakpoint", FIRST_LINE + 1)
        _wait(lambda: len(group.stops) == 4, 60, "every rank stopped at the breakpoint")
        assert group.evaluate_all("first") == {r: "10.0" for r in range(4)}
        assert group.evaluate_all("rank") == {r: str(r) for r in range(4)}
        assert group.debugger(2).evaluate("value.item() * rank") == "20.0"

        roster = run.ranks
        addresses = {s.node: s.node_address for s in roster}
        assert len(set(addresses.values())) == 2 and all(a.startswith(simnet.CLUSTER_NET + ".") for a in addresses.values())
        for status in roster:
            assert status.node == status.rank // 2
            assert (status.debugger, status.where, status.reason) == ("stopped", f"reduce.py:{FIRST_LINE + 1}",
                                                                      "breakpoint")
            assert status.seconds >= 0 and status.exit_code is None

        group.clear()
        for other in (0, 1, 2):
            group.debugger(other).continue_()
        time.sleep(3)  # ranks 0-2 reach the second all_reduce and block there: rank 3 is still stopped
        paused = _pause_all_within(group)
        assert paused[3] == group.stops[3]
        assert {r: paused[r] for r in (0, 1, 2)} == {0: "busy", 1: "busy", 2: "busy"}, paused
        assert {s.rank: s.debugger for s in run.ranks} == {0: "attached-running", 1: "attached-running",
                                                           2: "attached-running", 3: "stopped"}
        assert group.continue_all() == [3]
        rank, stop = group.wait_stopped(60)  # a busy rank's pause was pending: it stops back in Python
        assert rank in (0, 1, 2) and stop.reason == "pause"
        _finish(run, group)
    finally:
        group.close()
    # the last log lines (each rank's EXIT) may follow the job's end by a poll
    _wait(lambda: all(s.exit_code is not None for s in run.ranks), 15,
          "every rank's exit code\n" + "\n".join(run.raw_logs.splitlines()[-40:]))
    assert {s.rank: (s.debugger, s.exit_code) for s in run.ranks} == {r: ("ended", 0) for r in range(4)}


def test_torch_distributed_breakpoint_stops_one_rank_in_our_debugger(project, monkeypatch):
    run = _submit(project, monkeypatch, {"DIST_BREAKPOINT": "1"}, timeout=120)
    group = run.attach_all(timeout=90)  # all_stop: the others pause as soon as they run Python code
    try:
        rank, stop = group.wait_stopped(90)
        assert (rank, stop.line) == (1, DIST_BREAKPOINT_LINE), stop  # before the barrier: the call's line
        assert stop.path is not None and stop.path.endswith("reduce.py")
        assert group.debugger(1).evaluate("first") == "10.0"
        time.sleep(2)  # the other ranks are in the barrier
        paused = _pause_all_within(group)
        assert {r: paused[r] for r in (0, 2, 3)} == {0: "busy", 2: "busy", 3: "busy"}, paused
        assert "pdb" not in run.logs and "ATTENTION" not in run.logs
        _finish(run, group)
    finally:
        group.close()
