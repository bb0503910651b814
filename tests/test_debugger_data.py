"""Arrays, tensors and frames at a glance in the in-notebook debugger (issue 23): a real run
stopped in a frame holding numpy arrays, pandas objects and (in the torch venv) tensors.

``dbg.locals()`` shows each as one line — shape, dtype (as numpy/torch spell them), device —
computed in the debuggee from metadata, so a 10⁸-element array costs what a 10-element one
does; ``dbg.statistics(...)`` computes min/max/mean and NaN/Inf counts where the data is.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import aml_magics

np = pytest.importorskip("numpy")
pytest.importorskip("pandas")

FRAMES = """\
import numpy as np, pandas as pd
def work():
    grid = np.arange(12, dtype="float64").reshape(3, 4)
    huge = np.ones(100_000_000, dtype="float32")
    bad = np.array([1.0, float("nan"), float("inf"), 3.0])
    table = pd.DataFrame({"a": [1, 2, 3], "b": [0.5, 1.5, 2.5]})
    column = table["a"]
    count = 3
    return count
work()
"""
STOP_LINE = 9


def test_locals_summarise_arrays_and_frames_and_statistics_are_asked_for(workdir):
    run = aml_magics.submit(code=FRAMES, name="arrays", port=0, timeout=120)
    dbg = run.attach(breakpoints=[f"arrays.py:{STOP_LINE}"])
    try:
        assert dbg.wait_stopped(60).line == STOP_LINE
        values = dbg.locals()
        assert values["grid"] == "ndarray (3, 4) float64"
        assert values["huge"] == "ndarray (100000000,) float32"
        assert values["table"] == "DataFrame (3, 2)"
        assert values["column"] == "Series (3,) int64"
        assert values["count"] == "3"
        assert dbg.statistics("grid") == ("min 0 max 11 mean 5.5 · NaN 0 · Inf 0 · "
                                          "first: [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, …]")
        assert "NaN 1 · Inf 1" in dbg.statistics("bad") and "min 1 max 3 mean 2" in dbg.statistics("bad")
        assert "(1 in 10 sampled)" in dbg.statistics("huge")
        assert dbg.statistics("count") == "no statistics for int"
        dbg.continue_()
        assert dbg.wait_stopped(60) is None
    finally:
        dbg.detach()
    assert run.wait(60) == "completed"


TENSORS = """\
import torch
def work():
    weights = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    ids = torch.tensor([1, 2, 3])
    return weights
work()
"""


DRIVER = """\
import json, sys
import aml_magics
run = aml_magics.submit(code=sys.argv[1], name="tensors", port=0, timeout=120)
dbg = run.attach(breakpoints=["tensors.py:5"])
try:
    stop = dbg.wait_stopped(60)
    out = {"line": stop.line, "locals": dbg.locals(), "stats": dbg.statistics("weights")}
    dbg.continue_()
    out["after"] = repr(dbg.wait_stopped(60))
finally:
    dbg.detach()
out["state"] = run.wait(60)
print(json.dumps(out))
"""


def _torch_python() -> str:
    """An interpreter with torch (.ci/torch.sh makes one over the system site-packages)."""
    python = os.environ.get("AML_MAGICS_TORCH_PYTHON")
    if python:
        return python
    script = Path(__file__).resolve().parent.parent / ".ci" / "torch.sh"
    try:
        return subprocess.run(["bash", str(script)], check=True, capture_output=True, text=True,
                              timeout=900).stdout.strip()
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"no torch interpreter: bash .ci/torch.sh failed ({exc})")


@pytest.mark.slow
def test_tensors_show_shape_dtype_and_device(workdir):
    """The run's interpreter is the kernel's: the driver runs in the torch interpreter."""
    done = subprocess.run([_torch_python(), "-c", DRIVER, TENSORS], capture_output=True, text=True, timeout=300,
                          cwd=workdir)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["line"] == 5
    assert out["locals"]["weights"] == "Tensor (2, 3) torch.float32 cpu"
    assert out["locals"]["ids"] == "Tensor (3,) torch.int64 cpu"
    assert out["stats"].startswith("NaN 0 Inf 0; min 0 max 5 mean 2.5")
    assert (out["after"], out["state"]) == ("None", "completed")
