"""The rank roster and DebuggerGroup on the local target: 2 "nodes" × 2 real processes, real debugpy.

No torch here (tests/test_distributed_debug.py drives torch.distributed on the simulated
cluster): rank 0 sleeps in native code (``time.sleep``: it cannot pause until it returns),
rank 2 loops in Python (``all_stop`` pauses it), rank 1 stops at a conditional breakpoint,
rank 3 runs without a debugger (``--debug-ranks 0,1,2``). The roster says which is which,
where and for how long; ``%aml_runs RUN --ranks`` prints it.
"""

from __future__ import annotations

import threading

import pytest
from conftest import wait_for
from IPython.core.error import UsageError

import aml_magics

SCRIPT = """\
import os
import time
rank = int(os.environ["RANK"])
value = rank * 10
if rank == 0:
    time.sleep(20)
elif rank == 1:
    time.sleep(3)  # the others are in their sleep / loop when rank 1 stops
elif rank == 2:
    for _ in range(1500):  # about 15 s of Python code between short sleeps
        time.sleep(0.01)
print(f"rank {rank} value {value}", flush=True)
"""
BREAK_LINE = SCRIPT.splitlines().index('print(f"rank {rank} value {value}", flush=True)') + 1


def _roster(run) -> dict[int, tuple[str, str, str]]:
    return {s.rank: (s.debugger, s.where.rsplit("/", 1)[-1], s.reason) for s in run.ranks}


def test_roster_and_group_on_four_local_ranks(shell, workdir, capsys):
    run = aml_magics.submit(code=SCRIPT, name="ros", nodes=2, procs_per_node=2, port=0, timeout=60,
                            debug_ranks="0,1,2")
    group = None
    try:
        run.wait_for(lambda: len(run.endpoints) == 3, 60, "3 endpoints in {timeout:g}s")
        roster = run.ranks
        assert [(s.rank, s.node, s.node_address) for s in roster] == [
            (0, 0, "127.0.0.1"), (1, 0, "127.0.0.1"), (2, 1, "127.0.0.1"), (3, 1, "127.0.0.1")]
        assert [s.debugger for s in roster[:3]] == ["waiting"] * 3
        assert (roster[3].debugger, roster[3].reason) in (("none", "no debugger (not in --debug-ranks)"),
                                                          ("ended", "exit code 0"))  # it never waits

        script = str(run.spec.script_path)
        armed = run.attach(connect=False)  # what the run panel's Debug here opens on a distributed run
        group = run.attach_all(breakpoints=[(script, BREAK_LINE, "rank == 1")], timeout=30)
        assert isinstance(group, aml_magics.DebuggerGroup) and group is armed and run.debugger_group is group
        assert run.attach_all() is group  # one group per run (the panel's Debug here is the same)
        rank, stop = group.wait_stopped(30)
        assert (rank, stop.reason, stop.line) == (1, "breakpoint", BREAK_LINE)
        wait_for(lambda: 2 in group.stops, 20, "rank 2 paused by all_stop")
        assert group.stops[2].reason == "pause"
        wait_for(lambda: run.ranks[2].debugger == "stopped", 5, "the roster told (after the session's listeners)")
        now = _roster(run)
        assert now[1] == ("stopped", f"{run.spec.script_path.name}:{BREAK_LINE}", "breakpoint")
        assert now[2][0] == "stopped" and now[2][2] == "pause"
        assert now[0] == ("attached-running", "", "this kernel's session: running")  # in time.sleep: no stop yet
        assert group.evaluate_all("value") == {1: "10", 2: "20"}
        labels = sorted(p.label for p in group.paused)  # the panel's selector: the roster's words
        assert labels[0].startswith("rank 1 · pid ") and labels[0].endswith(f":{BREAK_LINE} · node 0")
        assert labels[1].startswith("rank 2 · pid ") and labels[1].endswith(" · node 1")
        assert group.debugger(1).evaluate("value + rank") == "11"

        result: dict = {}
        pausing = threading.Thread(target=lambda: result.update(group.pause_all(timeout=1.0)), daemon=True)
        pausing.start()
        pausing.join(5)
        assert not pausing.is_alive(), "pause_all() waited on a rank in native code"
        assert result[0] == "busy" and result[1].line == BREAK_LINE and result[2].reason == "pause"

        shell.run_line_magic("aml_runs", f"{run.id} --ranks")
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split() == ["node", "address", "rank", "debugger", "where", "reason", "for"]
        assert [line.split()[:4] for line in lines[1:]] == [
            ["0", "127.0.0.1", "1", "stopped"], ["0", "127.0.0.1", "0", "attached-running"],
            ["1", "127.0.0.1", "2", "stopped"], ["1", "127.0.0.1", "3", "ended"]]  # the stopped first on each node
        assert f"{run.spec.script_path.name}:{BREAK_LINE}" in lines[1] and lines[1].rstrip().endswith(" s")
        table = run._repr_mimebundle_()["text/plain"]
        assert f"rank 1: 127.0.0.1:{run.endpoints[1].port} — " in table and "debugger stopped at " in table

        group.clear()
        assert sorted(group.continue_all()) == [1, 2]
        rank, stop = group.wait_stopped(40)  # rank 0's pause was pending: it stops back in Python
        assert (rank, stop.reason) == (0, "pause")
        group.continue_all()
        assert run.wait(60) == "completed", run.logs[-2000:]
        assert all(f"rank {r} value {r * 10}" in run.logs for r in range(4))
        wait_for(lambda: all(s.exit_code == 0 for s in run.ranks), 10, "every rank's exit code")
        assert {s.debugger for s in run.ranks} == {"ended"}
    finally:
        if group is not None:
            group.close()
        run.cancel()


def test_a_single_rank_debugger_tells_the_roster_where_it_stopped(workdir):
    run = aml_magics.submit(code="value = 7\nprint(value)\n", name="solo", port=0, timeout=30)
    try:
        debugger = run.attach(breakpoints=[(str(run.spec.script_path), 2)], timeout=30)
        stop = debugger.wait_stopped(30)
        assert stop is not None and stop.line == 2
        wait_for(lambda: run.ranks[0].debugger == "stopped", 5, "the roster told (after the session's listeners)")
        status = run.ranks[0]
        assert (status.debugger, status.where, status.reason) == ("stopped", f"{run.spec.script_path.name}:2",
                                                                  "breakpoint")
        debugger.continue_()
        assert run.wait(30) == "completed"
        wait_for(lambda: run.ranks[0].debugger == "ended", 10, "the roster says ended")
    finally:
        run.cancel()


def test_collective_timeout_bad_input_is_one_line(workdir, capsys):
    from aml_magics import cli

    (workdir / "t.py").write_text("print('x')\n")
    for value, says in (("abc", "--collective-timeout takes seconds or keep, not 'abc'"),
                        ("0", "--collective-timeout takes seconds (more than 0, up to 604800) or keep, not 0")):
        assert cli.main(["run", "t.py", "--collective-timeout", value]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err, err
    assert cli.main(["run", "t.py", "--no-debug", "--collective-timeout", "keep"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--collective-timeout needs the debugger: drop --no-debug" in err, err


def test_roster_commands_say_what_is_wrong_in_one_line(shell, workdir):
    with pytest.raises(UsageError, match=r"usage: %aml_runs \[RUN --ranks\]"):
        shell.run_line_magic("aml_runs", "some-run")
    with pytest.raises(UsageError, match="no-such"):
        shell.run_line_magic("aml_runs", "no-such --ranks")
    run = aml_magics.submit(code="print('x')", name="one", no_debug=True, wait=True)
    with pytest.raises(aml_magics.DebuggerError, match="has no debugged rank"):
        run.attach_all(timeout=1)
