"""Figures for the crash capsule (issue 25), each a ratio against a baseline measured in the same run.

    python benchmarks/bench_crash.py [--repeat N]

- a crash of a 100-frame stack with 1000 locals: the node writing its capsule, to exit, vs the same
  script's plain traceback exit (``python script.py``), and vs the node with ``--no-crash-capsule``;
- a run that does not crash pays nothing: the loop with capsules on vs off.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import BOOTSTRAP, LOOP, loop_seconds, paired, print_rows

DEEP = """
import os, sys, time
sys.setrecursionlimit(10_000)
def level(n, payload):
    a, b, c, d, e = n, n * 2, str(n), [n] * 3, {"n": n}
    f, g, h, i = float(n), (n, n), None, "x" * 50
    if n == 0:
        with open(os.environ["CRASH_STAMP"], "w") as out:
            out.write(repr(time.time()))
        raise RuntimeError("deep failure")
    return level(n - 1, payload)
level(99, list(range(100)))
"""  # 100 frames of 10 locals each: 1000 locals


def crash_to_exit(argv: list[str], stamp: Path) -> float:
    """Seconds from the raise (stamped by the script) to the process gone: the crash's handling
    and the exit, not the interpreter's start."""
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "PYDEVD_DISABLE_FILE_VALIDATION": "1", "CRASH_STAMP": str(stamp)})
    return time.time() - float(stamp.read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    repeat = parser.parse_args().repeat
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        deep = work / "deep.py"
        deep.write_text(DEEP)
        loop = work / "loop.py"
        loop.write_text(LOOP)
        node = [sys.executable, "-X", "frozen_modules=off", str(BOOTSTRAP)]
        capsule = [*node, "--no-debug", "--crash-dir", str(work / "crashes"), "--", str(deep)]
        no_capsule = [*node, "--no-debug", "--no-crash-capsule", "--", str(deep)]
        plain = [sys.executable, "-X", "frozen_modules=off", str(deep)]
        stamp = work / "stamp"
        rows = [("crash of a 100-frame stack, 1000 locals → capsule complete and exited, vs the plain traceback "
                 "exit (s, from the raise)",
                 *paired(repeat, lambda: crash_to_exit(capsule, stamp), lambda: crash_to_exit(plain, stamp))),
                ("same crash: capsule written vs the node with --no-crash-capsule (s, from the raise)",
                 *paired(repeat, lambda: crash_to_exit(capsule, stamp), lambda: crash_to_exit(no_capsule, stamp)))]
        debug = [*node, "--port", "0", "--timeout", "0.2"]
        on = [*debug, "--crash-dir", str(work / "crashes"), "--", str(loop)]
        off = [*debug, "--no-crash-capsule", "--", str(loop)]
        rows.append(("a run that does not crash: the loop with capsules on vs off (s)",
                     *paired(repeat, lambda: loop_seconds(on), lambda: loop_seconds(off))))
    print_rows(rows)


if __name__ == "__main__":
    main()
