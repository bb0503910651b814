"""Figures for distributed local runs and post-mortem, each against a baseline measured here.

    python benchmarks/bench_distributed.py [--repeat N] [--ranks R]

Prints markdown table rows: figure | ours | baseline | ratio.
- submit → all R endpoints known (R ranks, each its own debugpy) vs submit → the endpoint of
  a one-rank run; and the same per rank (R-rank time / R) vs one rank.
- a pure-Python loop under ``--timeout 0 --post-mortem`` (no debugger until a crash) vs
  plain ``python``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from common import BOOTSTRAP, LOOP, loop_seconds, paired, print_rows

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def endpoints_known(workdir: Path, ranks: int) -> float:
    """Seconds from submit until every rank's endpoint is known."""
    import aml_magics

    start = time.perf_counter()
    run = aml_magics.submit(code="print('bench')\n", name=f"bench{ranks}", port=0, timeout=30,
                            procs_per_node=ranks, source_dir=str(workdir))
    try:
        deadline = start + 120
        while len(run.endpoints) < ranks and not run.done and time.perf_counter() < deadline:
            run.wait_for_change(0.05)  # woken by every endpoint
        if len(run.endpoints) < ranks:
            raise RuntimeError(f"run ended ({run.state}) with {len(run.endpoints)}/{ranks} endpoints")
        return time.perf_counter() - start
    finally:
        run.cancel()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ranks", type=int, default=16)
    options = parser.parse_args()
    repeat, ranks = options.repeat, options.ranks
    rows: list[tuple[str, float, float | None]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        many, one = paired(repeat, lambda: endpoints_known(work, ranks), lambda: endpoints_known(work, 1))
        rows.append((f"submit → all {ranks} endpoints known vs submit → 1-rank endpoint (s, {os.cpu_count()} cores)",
                     many, one))
        rows.append((f"per rank: {ranks}-rank time / {ranks} vs 1-rank time (s)", many / ranks, one))
        loop = work / "loop.py"
        loop.write_text(LOOP)
        post_mortem = [sys.executable, "-X", "frozen_modules=off", str(BOOTSTRAP), "--port", "0",
                       "--timeout", "0", "--post-mortem", "--", str(loop)]
        plain = [sys.executable, str(loop)]
        rows.append(("pure-Python loop under `--timeout 0 --post-mortem` vs no debugger (s)",
                     *paired(repeat, lambda: loop_seconds(post_mortem), lambda: loop_seconds(plain))))
    print_rows(rows)


if __name__ == "__main__":
    main()
