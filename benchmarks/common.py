"""What the bench_*.py scripts share: the timed loop, paired medians, the table."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BOOTSTRAP = HERE.parent / "aml_magics" / "node"  # the node package, run as a folder
LOOP = """
import time
def work():
    s = 0
    for i in range(3_000_000):
        s += i * i % 7
    return s
t = time.perf_counter(); work(); print("LOOP", time.perf_counter() - t, flush=True)
"""


def paired(repeat: int, ours, baseline) -> tuple[float, float]:
    """Alternate the two measurements so machine noise hits both alike; medians."""
    a, b = [], []
    for _ in range(repeat):
        a.append(ours())
        b.append(baseline())
    return statistics.median(a), statistics.median(b)


def loop_seconds(argv: list[str]) -> float:
    """Run LOOP's script with ``argv``; the seconds it reports for its loop."""
    out = subprocess.run(argv, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYDEVD_DISABLE_FILE_VALIDATION": "1"})
    return float(out.stdout.split("LOOP", 1)[1].split()[0])


def print_rows(rows: list[tuple[str, float, float | None]]) -> None:
    print("| figure | ours | baseline | ratio |")
    print("|---|---|---|---|")
    for name, ours, base in rows:
        ratio = f"{ours / base:.2f}x" if base else "n/a"
        base_text = f"{base:.3f}" if base is not None else "not installed"
        print(f"| {name} | {ours:.3f} | {base_text} | {ratio} |")


def dap_round_trips(client, stop, count: int = 200) -> float:
    """Median seconds of one request/response pair at a stop."""
    times = []
    for i in range(count):
        started = time.perf_counter()
        if i % 2:
            client.request("threads")
        else:
            client.request("stackTrace", {"threadId": stop.thread_id, "startFrame": 0, "levels": 20})
        times.append(time.perf_counter() - started)
    return statistics.median(times)
