"""Figures for the local target, each a ratio against a baseline measured in the same run.

    python benchmarks/bench_local.py [--repeat N]

Prints markdown table rows: figure | ours | baseline | ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from common import BOOTSTRAP, LOOP, loop_seconds, paired, print_rows


def median_of(repeat: int, measure) -> float:
    return statistics.median(measure() for _ in range(repeat))


def time_import(statement: str, setup: str = "pass") -> float:
    code = f"{setup}\nimport time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def import_figures(repeat: int) -> list[tuple[str, float, float | None]]:
    # The shell exists before the timer starts: a notebook user already has one.
    ours = median_of(repeat, lambda: time_import(
        "import aml_magics; ip.run_line_magic('load_ext', 'aml_magics')",
        setup="from IPython.testing.globalipapp import get_ipython; ip = get_ipython()"))
    try:
        azure = median_of(repeat, lambda: time_import("import azureml.core"))
    except subprocess.CalledProcessError:
        azure = None
    return [("`import aml_magics` + `%load_ext` vs `import azureml.core` (s)", ours, azure)]


def listening_pid_port(root: psutil.Process) -> int | None:
    """A listening TCP port of ``root`` or its children (found without connecting)."""
    pids = {root.pid} | {c.pid for c in root.children(recursive=True)}
    for conn in psutil.net_connections(kind="tcp"):
        if conn.pid in pids and conn.status == psutil.CONN_LISTEN and conn.laddr:
            return conn.laddr.port
    return None


def bare_debugpy_to_listening(script: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-X", "frozen_modules=off", "-m", "debugpy", "--listen", "127.0.0.1:0",
                             "--wait-for-client", str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYDEVD_DISABLE_FILE_VALIDATION": "1"})
    try:
        root = psutil.Process(proc.pid)
        while listening_pid_port(root) is None:
            time.sleep(0.005)
        return time.perf_counter() - start
    finally:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        proc.wait()


def cell_to_endpoint(workdir: Path) -> float:
    import aml_magics

    start = time.perf_counter()
    run = aml_magics.submit(code="print('bench')\n", name="bench", port=0, timeout=30,
                            source_dir=str(workdir))
    try:
        run.wait_for_endpoint(60)
        return time.perf_counter() - start
    finally:
        run.cancel()


def bootstrap_to_endpoint(script: Path, separate_adapter: bool) -> float:
    argv = [sys.executable, "-X", "frozen_modules=off", str(BOOTSTRAP), "--port", "0", "--timeout", "30"]
    if separate_adapter:
        argv.append("--separate-adapter")
    start = time.perf_counter()
    proc = subprocess.Popen([*argv, "--", str(script)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYDEVD_DISABLE_FILE_VALIDATION": "1"}, start_new_session=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "AML_MAGICS_ENDPOINT" in line:
                return time.perf_counter() - start
        raise RuntimeError("no endpoint")
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    repeat = parser.parse_args().repeat
    rows = import_figures(repeat)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        script = work / "idle.py"
        script.write_text("print('idle')\n")
        loop = work / "loop.py"
        loop.write_text(LOOP)
        rows.append(("cell executed → endpoint known, vs bare `python -m debugpy --listen --wait-for-client` "
                     "to listening (s)",
                     *paired(repeat, lambda: cell_to_endpoint(work), lambda: bare_debugpy_to_listening(script))))
        rows.append(("bootstrap to endpoint: in-process adapter (ours) vs debugpy's separate adapter (s)",
                     *paired(repeat, lambda: bootstrap_to_endpoint(script, False),
                             lambda: bootstrap_to_endpoint(script, True))))
        after_timeout = [sys.executable, "-X", "frozen_modules=off", str(BOOTSTRAP), "--port", "0",
                         "--timeout", "0.2", "--", str(loop)]
        listening = [sys.executable, "-X", "frozen_modules=off", "-c",
                     "import debugpy, runpy, sys; debugpy.listen(('127.0.0.1', 0)); "
                     f"runpy.run_path({str(loop)!r}, run_name='__main__')"]
        plain = [sys.executable, str(loop)]
        rows.append(("pure-Python loop after an attach timeout (debugger switched off) vs no debugger (s)",
                     *paired(repeat, lambda: loop_seconds(after_timeout), lambda: loop_seconds(plain))))
        rows.append(("same loop with debugpy left listening (what we avoid) vs no debugger (s)",
                     *paired(repeat, lambda: loop_seconds(listening), lambda: loop_seconds(plain))))
    print_rows(rows)


if __name__ == "__main__":
    main()
