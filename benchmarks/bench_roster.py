"""Figures for the rank roster and DebuggerGroup, each against its one-rank baseline.

    python benchmarks/bench_roster.py [--repeat N]

Prints markdown table rows: figure | ours | baseline | ratio.
- ``run.ranks`` (the roster: node, address, debugger state, time in it) for 16 ranks vs 1 rank,
  each run fed the marker lines a remote target delivers (ENDPOINT, ATTACHED per rank).
- ``group.evaluate_all(expr)`` over 4 real ranks stopped at a breakpoint vs one rank's
  ``evaluate(expr)`` (the ranks are asked in parallel: the goal is ≤ 1.5×), for an answer that
  is all local CPU (nothing to overlap: the DAP work in this process is serial under the GIL)
  and for a rank that takes 20 ms to answer (what a far node's round trip costs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import print_rows

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

STOPPING = """\
import os
rank = int(os.environ["RANK"])
value = [rank] * 1000
print("stop here", flush=True)
"""
STOP_LINE = 4


def fed_run(ranks: int, folder: Path):
    """A DebugRun of ``ranks`` ranks on 4 nodes (one node for one rank), every rank attached."""
    from aml_magics.run import DebugRun
    from aml_magics.spec import DistributedSpec, RunSpec

    nodes = 4 if ranks % 4 == 0 else 1
    spec = RunSpec(name="roster", source_dir=folder, script="t.py",
                   distributed=DistributedSpec(nodes=nodes, procs_per_node=ranks // nodes))
    run = DebugRun(f"roster-{ranks}", spec, "fake")
    run.set_state("running")
    for rank in range(ranks):
        node = rank // (ranks // nodes)
        for kind, data in (("ENDPOINT", dict(host=f"10.0.0.{node + 1}", port=5678 + rank, pid=rank + 1, timeout=60,
                                             deadline=time.time() + 60)),
                           ("ATTACHED", dict(attached=True))):
            run.line(f"[rank {rank}] AML_MAGICS_{kind} " + json.dumps({"rank": rank, **data}))
    return run


def roster_seconds(run, calls: int = 2000) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        run.ranks  # noqa: B018 - the refresh is what is timed
    return (time.perf_counter() - start) / calls


SLOW_ANSWER = "__import__('time').sleep(0.02) or sum(value)"  # a rank that takes 20 ms to answer (a far node)


def evaluate_figures(folder: Path, repeat: int) -> list[tuple[str, float, float]]:
    """(expression, median seconds of evaluate_all over 4 stopped ranks, of one rank's evaluate)."""
    import aml_magics

    run = aml_magics.submit(code=STOPPING, name="evalall", procs_per_node=4, port=0, timeout=60,
                            source_dir=str(folder))
    group = None
    try:
        run.wait_for(lambda: len(run.endpoints) == 4, 60, "4 endpoints in {timeout:g}s")
        group = run.attach_all(breakpoints=[(str(run.spec.script_path), STOP_LINE)], timeout=60, all_stop=False)
        deadline = time.monotonic() + 60
        while len(group.stops) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        one = group.debugger(0)
        figures = []
        for expression in ("sum(value)", SLOW_ANSWER):
            all_times, one_times = [], []
            for _ in range(repeat):
                start = time.perf_counter()
                values = group.evaluate_all(expression)
                all_times.append(time.perf_counter() - start)
                assert len(values) == 4 and all(v == str(r * 1000) for r, v in values.items()), values
                start = time.perf_counter()
                one.evaluate(expression)
                one_times.append(time.perf_counter() - start)
            figures.append((expression, statistics.median(all_times), statistics.median(one_times)))
        return figures
    finally:
        if group is not None:
            group.close()
        run.cancel()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=30)
    repeat = parser.parse_args().repeat
    rows: list[tuple[str, float, float | None]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        many, single = fed_run(16, folder), fed_run(1, folder)
        rows.append(("`run.ranks` roster refresh, 16 ranks on 4 nodes vs 1 rank (ms)",
                     statistics.median(roster_seconds(many) for _ in range(5)) * 1000,
                     statistics.median(roster_seconds(single) for _ in range(5)) * 1000))
        for expression, all_four, one in evaluate_figures(folder, repeat):
            what = "a 20 ms answer per rank" if expression == SLOW_ANSWER else "`sum(value)`, local loopback"
            rows.append((f"`evaluate_all` over 4 stopped ranks vs one rank's `evaluate`, {what} (ms)",
                         all_four * 1000, one * 1000))
    print_rows(rows)


if __name__ == "__main__":
    main()
