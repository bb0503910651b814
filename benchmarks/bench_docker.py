"""Cell executed → debug endpoint known, docker target with a cached image, vs bare Docker.

    python benchmarks/bench_docker.py [--reps 5] [--base-image aml-magics-test-base:bookworm-py3]

aml_magics: ``%%aml_debug_run --target docker`` in an IPython shell (text view), timed from
the cell's execution to ``run.wait_for_endpoint()`` returning (the image is built once
before timing, so this is the cached path: hash check, reuse, container start, bootstrap,
endpoint marker, host port mapping).

Baseline: the guide's bare ``docker run -p 127.0.0.1::5678 IMAGE python -m debugpy
--listen 0.0.0.0:5678 --wait-for-client ...`` on the same image, timed from the run
request to debugpy's own log line saying its adapter accepts client connections (the
port is never probed with a connect-and-close: that wedges debugpy's adapter).

Both are repeated interleaved; the medians and their ratio go out as a markdown table row.
Needs a Docker engine (``bash .ci/docker-engine.sh``). Every container is removed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("AML_MAGICS_VIEW", "text")

from aml_magics import images  # noqa: E402
from aml_magics.spec import EnvironmentSpec  # noqa: E402

READY = "accepting incoming client connections"


def time_magic(shell, base: str) -> float:
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        run = shell.run_cell_magic("aml_debug_run", f"--target docker --base-image {base} --timeout 60 --name bench",
                                   "print('hello from the container')\n")
        run.wait_for_endpoint(120)
    elapsed = time.perf_counter() - started
    run.cancel()
    if run.state != "canceled":
        raise RuntimeError(f"bench run ended {run.state}: {run.detail}")
    return elapsed


def time_bare(client, tag: str) -> float:
    started = time.perf_counter()
    container = client.containers.run(
        tag,
        entrypoint=[images.VENV_PYTHON],
        command=["-m", "debugpy", "--log-to-stderr", "--listen", "0.0.0.0:5678", "--wait-for-client",
                 "-c", "print('hello from the container')"],
        ports={"5678/tcp": ("127.0.0.1", None)},
        labels={images.LABEL: "1"},
        detach=True,
    )
    try:
        pending = ""
        for chunk in container.logs(stream=True, follow=True):
            pending += chunk.decode("utf-8", "replace")
            if READY in pending:
                return time.perf_counter() - started
            pending = pending[-200:]
        raise RuntimeError("bare debugpy container ended without listening")
    finally:
        container.remove(force=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--base-image", default=os.environ.get("AML_MAGICS_TEST_BASE",
                                                               "aml-magics-test-base:bookworm-py3"))
    ns = parser.parse_args()

    client = images.connect()
    env = EnvironmentSpec(base_image=ns.base_image)
    tag = images.ensure_image(client, env, base=ns.base_image, wheels=None, log=lambda _line: None)

    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "aml_magics")
    ours: list[float] = []
    bare: list[float] = []
    home = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="aml-bench-") as tmp:
        os.chdir(tmp)
        try:
            time_magic(shell, ns.base_image)  # warm-up: imports, first container on this image
            time_bare(client, tag)
            for _ in range(ns.repeat):
                ours.append(time_magic(shell, ns.base_image))
                bare.append(time_bare(client, tag))
        finally:
            shell.run_line_magic("unload_ext", "aml_magics")
            os.chdir(home)

    a, b = statistics.median(ours), statistics.median(bare)
    print("| measure | aml_magics | bare docker run + debugpy | ratio |")
    print("| --- | --- | --- | --- |")
    print(f"| docker, cached image: cell executed → endpoint known (median of {ns.repeat}) "
          f"| {a * 1000:.0f} ms | {b * 1000:.0f} ms | {a / b:.2f}x |")
    print(f"<!-- aml_magics runs (s): {', '.join(f'{x:.3f}' for x in ours)}; "
          f"bare runs (s): {', '.join(f'{x:.3f}' for x in bare)} -->")
    return 0


if __name__ == "__main__":
    sys.exit(main())
