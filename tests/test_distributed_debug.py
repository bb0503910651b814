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
    debugger = run.attach(rank=3, timeout=60)
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
