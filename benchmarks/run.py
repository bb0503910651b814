"""Run every benchmark (bench_*.py) and print their markdown rows as one table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _is_header(line: str) -> bool:
    return line.startswith(("| figure", "| measure", "| ---", "|---"))


def main() -> int:
    print("| figure | ours | baseline | ratio |")
    print("|---|---|---|---|")
    status = 0
    for bench in sorted(HERE.glob("bench_*.py")):
        out = subprocess.run([sys.executable, str(bench), *sys.argv[1:]], capture_output=True, text=True)
        rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and not _is_header(line)]
        for row in rows:
            print(row, flush=True)
        if out.returncode != 0:
            status = 1
            print(f"<!-- {bench.name} failed: {out.stderr.strip().splitlines()[-1:]} -->", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
