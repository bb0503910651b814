"""Figures for the in-notebook debugger, each against a baseline measured in the same run.

    python benchmarks/bench_debugger.py [--repeat N]

* a step, from the request to the panel's models holding the new stack and locals
  (``Debugger.step_over()``), vs the bare DAP round trips for the same requests on a
  channel of our own (``next`` → ``stopped`` → ``stackTrace`` → ``scopes`` → ``variables``),
  each on its own local run, alternated step by step;
* the kernel's memory growth while the panel browses a 1,000,000-element list (its pages)
  and a 10 MB string (cut), vs a client that fetches those values whole; each measured in
  a fresh process;
* a step → the panel redrawn (its current line, stack and visible variables), with 3 locals
  vs the API's step (``Debugger.step_over()``), and with 400 names vs 3, each on its own local
  run, the runs side by side and stepped in turn;
* the at-a-glance row (shape, dtype, device) of a 10⁸-element tensor vs a 10-element one
  (numpy arrays when no torch interpreter is known: ``AML_MAGICS_TORCH_PYTHON``).

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
            assert stop is not None and dbg.locals_page is not None
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


FEW = """\
def work():
    a, b = 1, 2
    for i in range(1_000_000):
        a += i
        b += 1
work()
"""
MANY = "".join(f"name_{i:03d} = {i}\n" for i in range(400)) + """\
a = 0
for i in range(1_000_000):
    a += i
    name_000 += 1
"""


class _Stepper:
    """One run stopped in a loop, with a panel: :meth:`step` times a Step over click until the panel
    shows the new current line, stack and locals (``locals_too=False``: the current line and stack
    only; ``api``: ``Debugger.step_over()`` instead of the click)."""

    def __init__(self, code: str, name: str, line: int, api: bool = False, locals_too: bool = True) -> None:
        import aml_magics
        from aml_magics.debugger.panel import DebuggerPanel

        self.api, self.locals_too = api, locals_too
        self.run = aml_magics.submit(code=code, name=name, port=0, timeout=60)
        try:
            self.dbg = self.run.attach(breakpoints=[f"{name}.py:{line}"])
            self.dbg.wait_stopped(30)
            self.dbg.clear()
            self.panel = DebuggerPanel(self.dbg)
        except BaseException:
            self.run.cancel()
            raise

    def step(self) -> float:
        dbg, panel = self.dbg, self.panel
        serial = dbg.stop_serial
        start = time.perf_counter()
        deadline = start + 30
        if self.api:
            dbg.step_over()
        else:
            panel.over_button.click()
            while time.perf_counter() < deadline and not _redrawn(panel, serial, self.locals_too):
                time.sleep(0.0005)
        elapsed = time.perf_counter() - start
        # untimed: the panel settles (locals drawn) before the next step of any run (a person's pace)
        while time.perf_counter() < deadline and not _redrawn(panel, serial):
            time.sleep(0.0005)
        return elapsed

    def close(self) -> None:
        try:
            self.dbg.detach()
        finally:
            self.run.cancel()


def _alternated(configs: list[dict], steps: int) -> list[list[float]]:
    """Seconds per step of each config, its runs side by side and stepped in turn (what the machine
    does meanwhile falls on all of them alike)."""
    steppers: list[_Stepper] = []
    try:
        for config in configs:
            steppers.append(_Stepper(**config))
        times: list[list[float]] = [[] for _ in steppers]
        for _ in range(steps):
            for stepper, taken in zip(steppers, times, strict=True):
                taken.append(stepper.step())
        return times
    finally:
        for stepper in steppers:
            stepper.close()


def _redrawn(panel, serial: int, locals_too: bool = True) -> bool:
    dbg = panel.debugger
    stop = dbg.current_stop
    shown = (dbg.stop_serial > serial and stop is not None and panel._seen_stop[0] == dbg.stop_serial
             and panel.source_view.current == stop.line and bool(panel.stack.options))
    return shown and (not locals_too or (not panel._tree_dirty and dbg.locals_page is not None
                                         and any("aml-dbg-var" in (getattr(w, "value", "") or "")
                                                 or "aml-dbg-var" in w._dom_classes for w in panel.tree.children)))


def panel_figures(repeat: int) -> list[tuple[str, float, float | None]]:
    steps = max(20, repeat * 6)
    times = _alternated([dict(code=FEW, name="few", line=4), dict(code=FEW, name="fewapi", line=4, api=True),
                         dict(code=MANY, name="many", line=403),
                         dict(code=FEW, name="fewstack", line=4, locals_too=False),
                         dict(code=MANY, name="manystack", line=403, locals_too=False)], steps)
    few, api, many, few_stack, many_stack = (statistics.median(taken) for taken in times)
    return [(f"step → panel redrawn (current line, stack, visible locals), 3 locals, vs the API's step (ms, "
             f"median of {steps})", few * 1000, api * 1000),
            (f"step → panel redrawn, 400 names vs 3 locals (ms, median of {steps})", many * 1000, few * 1000),
            (f"step → current line and stack shown (the locals follow), 400 names vs 3 locals (ms, median of "
             f"{steps})", many_stack * 1000, few_stack * 1000)]


GLANCED = """\
import sys
try:
    import torch
    huge, tiny = torch.ones(100_000_000), torch.ones(10)
except ImportError:
    import numpy as np
    huge, tiny = np.ones(100_000_000, dtype="float32"), np.ones(10, dtype="float32")
ready = True
"""


def glance(repeat: int) -> dict:
    """In this process (the torch interpreter when there is one): the summary's time, huge vs tiny."""
    import aml_magics

    os.environ.setdefault("AML_MAGICS_VIEW", "text")
    os.chdir(tempfile.mkdtemp(prefix="aml-bench-"))
    run = aml_magics.submit(code=GLANCED, name="glanced", port=0, timeout=60)
    try:
        dbg = run.attach(breakpoints=["glanced.py:8"])
        dbg.wait_stopped(60)
        summary = dbg.summaries(["huge"])["huge"]

        def timed(name: str) -> float:
            start = time.perf_counter()
            dbg.summaries([name])
            return time.perf_counter() - start

        huge, tiny = [], []
        for _ in range(max(20, repeat * 10)):
            huge.append(timed("huge"))
            tiny.append(timed("tiny"))
        dbg.detach()
    finally:
        run.cancel()
    return {"summary": summary, "huge_ms": statistics.median(huge) * 1000, "tiny_ms": statistics.median(tiny) * 1000}


def glance_figures(repeat: int) -> list[tuple[str, float, float | None]]:
    python = os.environ.get("AML_MAGICS_TORCH_PYTHON") or sys.executable
    out = subprocess.run([python, __file__, "--glance", "--repeat", str(repeat)], capture_output=True, text=True,
                         check=True, cwd=str(HERE))
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return [(f"at-a-glance row of a 10⁸-element value vs a 10-element one ({result['summary']}; ms)",
             result["huge_ms"], result["tiny_ms"])]


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
    parser.add_argument("--glance", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=("step", "memory", "panel", "glance"), help="one group of figures")
    options = parser.parse_args()
    if options.browse:
        print(json.dumps({"growth_mib": browse(options.browse)}))
        return
    if options.glance:
        print(json.dumps(glance(options.repeat)))
        return
    os.environ.setdefault("AML_MAGICS_VIEW", "text")
    rows: list[tuple[str, float, float | None]] = []
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        if options.only in (None, "step"):
            rows += step_figures(options.repeat, Path(tmp))
        if options.only in (None, "panel"):
            rows += panel_figures(options.repeat)
    if options.only in (None, "memory"):
        rows += memory_figures(options.repeat)
    if options.only in (None, "glance"):
        rows += glance_figures(options.repeat)
    print_rows(rows)


if __name__ == "__main__":
    main()
