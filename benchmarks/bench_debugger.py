"""Figures for the in-notebook debugger, each against a baseline measured in the same run.

    python benchmarks/bench_debugger.py [--repeat N]

* a step, from the request to the panel's models holding the new stack and locals
  (``Debugger.step_over()``), vs the bare DAP round trips for the same requests on a
  channel of our own (``next`` → ``stopped`` → ``stackTrace`` → ``scopes`` → ``variables``),
  each on its own local run, alternated step by step;
* the kernel's memory growth while the panel browses a 1,000,000-element list (its pages)
  and a 10 MB string (cut), vs a client that fetches those values whole; each measured in
  a fresh process.

Prints markdown table rows: figure | ours | baseline | ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import print_rows  # noqa: E402

STEPPER = """\
total = 0
for i in range(1_000_000):
    total += i
"""
BROWSED = """\
big = list(range(1_000_000))
text = "x" * 10_000_000
done = True
"""


def step_figures(repeat: int, work: Path) -> list[tuple[str, float, float | None]]:
    import aml_magics
    from aml_magics.dap import Session
    from aml_magics.launch import resolve_variables

    steps = max(50, repeat * 20)
    ours_run = aml_magics.submit(code=STEPPER, name="bench_ours", port=0, timeout=60)
    bare_run = aml_magics.submit(code=STEPPER, name="bench_bare", port=0, timeout=60)
    try:
        dbg = ours_run.attach(breakpoints=["bench_ours.py:3"])
        dbg.wait_stopped(30)
        bare_run.wait_for_endpoint(30)
        config = resolve_variables(bare_run.launch_config(workspace_folder=work), work)
        events = {}
        session = Session.open(config, {str(bare_run.spec.script_path): [3]}, timeout=30,
                               prepare=lambda s: events.setdefault("q", s.channel.event_queue(["stopped"])))
        queue = events["q"]
        thread = queue.take("stopped", timeout=30)["body"]["threadId"]
        channel = session.channel
        session.set_breakpoints(str(bare_run.spec.script_path), [])
        dbg.clear()

        def ours() -> float:
            start = time.perf_counter()
            stop = dbg.step_over()
            elapsed = time.perf_counter() - start
            assert stop is not None and dbg.service.variables.locals is not None
            return elapsed

        def bare() -> float:
            start = time.perf_counter()
            channel.request("next", {"threadId": thread})
            stopped = queue.take("stopped", timeout=30)["body"]
            frames = channel.request("stackTrace", {"threadId": stopped["threadId"], "startFrame": 0, "levels": 50})
            frame_id = frames["stackFrames"][0]["id"]
            scopes = channel.request("scopes", {"frameId": frame_id})["scopes"]
            channel.request("variables", {"variablesReference": scopes[0]["variablesReference"], "start": 0,
                                          "count": 100})
            return time.perf_counter() - start

        ours_times, bare_times = [], []
        for _ in range(steps):
            ours_times.append(ours())
            bare_times.append(bare())
        session.disconnect()
        dbg.detach()
    finally:
        ours_run.cancel()
        bare_run.cancel()
    ours_ms, bare_ms = statistics.median(ours_times) * 1000, statistics.median(bare_times) * 1000
    return [(f"step → panel models hold the new stack and locals, vs the bare DAP round trips (ms, median of "
             f"{steps})", ours_ms, bare_ms)]


def browse(mode: str) -> float:
    """In this (fresh) process: attach, browse the big values, return the RSS growth in MiB."""
    import gc

    import psutil

    import aml_magics
    from aml_magics.debugger.panel import DebuggerPanel

    os.environ.setdefault("AML_MAGICS_VIEW", "text")
    work = Path(tempfile.mkdtemp(prefix="aml-bench-"))
    os.chdir(work)
    run = aml_magics.submit(code=BROWSED, name="browsed", port=0, timeout=60)
    try:
        run.wait_for_endpoint(30)
        gc.collect()
        before = psutil.Process().memory_info().rss
        dbg = run.attach(breakpoints=["browsed.py:3"])
        dbg.wait_stopped(30)
        if mode == "ours":
            panel = DebuggerPanel(dbg)
            big = next(v for v in dbg.variables() if v.name == "big")
            for start in (0, 100):  # every page debugpy has of it
                panel._expand(big.reference, start)
            panel.expression.value = "text"
            panel.expression.value = "big"
            deadline = time.monotonic() + 30
            while len(panel._history) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            panel._executor.submit(lambda: None).result(30)
            panel.refresh()
        else:  # what a client without paging and cut values would hold: the whole values
            values = [dbg.service.evaluate(name, context="clipboard", limit=1 << 30).value for name in ("text", "big")]
            assert sum(len(v) for v in values) > 10_000_000
        gc.collect()
        growth = (psutil.Process().memory_info().rss - before) / 2**20
        dbg.continue_()
        dbg.detach()
        return growth
    finally:
        run.cancel()


def memory_figures(repeat: int) -> list[tuple[str, float, float | None]]:
    def measure(mode: str) -> float:
        out = subprocess.run([sys.executable, __file__, "--browse", mode], capture_output=True, text=True,
                             check=True, cwd=str(HERE))
        return float(json.loads(out.stdout.strip().splitlines()[-1])["growth_mib"])

    runs = max(1, repeat // 2)
    ours = statistics.median(measure("ours") for _ in range(runs))
    whole = statistics.median(measure("whole") for _ in range(runs))
    return [("kernel memory growth browsing a 1,000,000-element list and a 10 MB string in the panel, vs "
             "fetching them whole (MiB)", ours, whole)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--browse", choices=("ours", "whole"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.browse:
        print(json.dumps({"growth_mib": browse(options.browse)}))
        return
    os.environ.setdefault("AML_MAGICS_VIEW", "text")
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        rows = step_figures(options.repeat, Path(tmp))
    rows += memory_figures(options.repeat)
    print_rows(rows)


if __name__ == "__main__":
    main()
