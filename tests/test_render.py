"""The safe renderer (aml_magics/node/render.py): summaries that never touch the data,
statistics on request, reprs bounded in time and size, containers bounded, secrets masked.
Real numpy and pandas objects; torch (CPU) in its own interpreter (.ci/torch.sh)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aml_magics.node import render

ROOT = Path(__file__).resolve().parents[1]


class Raises:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


class Sleeps:
    def __repr__(self) -> str:
        time.sleep(60)
        return "never"


class Huge:
    def __repr__(self) -> str:
        return "y" * 5_000_000


def test_summaries_are_metadata_only():
    assert render.summary(np.zeros((3, 4))) == "ndarray (3, 4) float64"
    assert render.summary(np.arange(5, dtype=np.int32)) == "ndarray (5,) int32"
    frame = pd.DataFrame({"a": range(100), "b": [0.5] * 100, "c": ["x"] * 100})
    assert render.summary(frame) == "DataFrame (100, 3)"
    assert render.summary(frame["b"]) == "Series (100,) float64"
    for other in (1, "text", [1, 2], {"a": 1}, np.float64(2.0), None):
        assert render.summary(other) is None


def test_statistics_of_an_array_with_nan_and_inf():
    values = np.array([[1.0, 2.0, np.nan], [4.0, np.inf, 6.0]])
    text = render.statistics(values)
    assert "min 1 max 6 mean 3.25" in text and "NaN 1 Inf 1" in text
    assert "first [1, 2, nan, 4, inf, …]" in text
    assert render.statistics(np.arange(10)).startswith("NaN 0 Inf 0; min 0 max 9 mean 4.5")
    assert render.statistics(np.zeros(0)) == "empty"


def test_statistics_of_a_large_array_are_sampled_and_say_so(monkeypatch):
    monkeypatch.setattr(render, "STATISTICS_LIMIT", 1000)
    text = render.statistics(np.ones(10_000))
    assert "mean 1" in text and "sample of 1000 of 10000" in text


def test_statistics_of_pandas():
    frame = pd.DataFrame({"a": [1.0, None, 3.0], "b": [10, 20, 30], "name": ["x", "y", "z"]})
    text = render.statistics(frame)
    assert "min 1 max 30" in text and "NaN 1" in text and "columns [a, b, name]" in text
    series = render.statistics(frame["a"])
    assert "min 1 max 3 mean 2" in series and "NaN 1" in series


def test_safe_repr_of_values_that_raise_hang_or_flood():
    assert render.safe_repr(Raises()) == "<test_render.Raises: repr raised RuntimeError: no repr for you>"
    started = time.monotonic()
    text = render.safe_repr(Sleeps(), timeout=0.2)
    assert time.monotonic() - started < 5  # abandoned, not waited for (a generous bound, not a figure)
    assert text == "<test_render.Sleeps: repr took longer than 0.2s>"
    assert render.safe_repr(42) == "42"  # a fresh worker after the stuck one
    huge = render.safe_repr(Huge())
    assert len(huge) == render.REPR_LIMIT and huge.endswith("…")
    assert render.safe_repr("z" * 10_000).startswith("'zzz") and len(render.safe_repr("z" * 10_000)) == 200


def test_containers_are_bounded_in_depth_and_width():
    big = {i: [i, {"deep": [1, 2, 3]}] for i in range(1_000_000)}
    text = render.render(big)
    assert text.startswith("{0: [0, {…} (1 items)], 1: [1, {…} (1 items)]")
    assert "(1000000 items)" in text and len(text) <= render.REPR_LIMIT + 20
    assert render.render([1, 2]) == "[1, 2]" and render.render(()) == "()" and render.render((1,)) == "(1,)"
    assert render.render(set()) == "set()"


@pytest.mark.parametrize("name", ["api_token", "password", "DB_PASSWORD", "client_secret", "key", "api_key",
                                  "storage_account_key", "credential", "connection_string", "sas_token", "auth"])
def test_secret_looking_names_are_masked(name):
    assert render.render("hunter2", name=name) == render.MASK


@pytest.mark.parametrize("name", ["keyboard", "monkey", "author", "tokens_per_batch_size_x", "basis", "values"])
def test_ordinary_names_are_shown(name):
    if name == "tokens_per_batch_size_x":  # "token" anywhere: masked, erring on the safe side
        assert render.is_secret_name(name)
    else:
        assert render.render(3, name=name) == "3"


def test_secret_keys_inside_a_dict_are_masked():
    text = render.render({"user": "ann", "password": "hunter2", "nested": {"token": "abc"}})
    assert "hunter2" not in text and "abc" not in text and "'user': 'ann'" in text


TORCH_SCRIPT = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from aml_magics.node import render
t = torch.tensor([[1.0, float('nan'), 3.0], [4.0, 5.0, float('inf')]])
print(render.summary(t))
print(render.statistics(t))
print(render.summary(torch.zeros(2, 3, dtype=torch.int64)))
print(render.statistics(torch.arange(10)))
"""


def test_a_torch_tensor_is_summarised_with_shape_dtype_mean_and_nan_count():
    python = subprocess.run(["bash", str(ROOT / ".ci" / "torch.sh")], capture_output=True, text=True,
                            check=True, timeout=900).stdout.strip().splitlines()[-1]
    out = subprocess.run([python, "-c", TORCH_SCRIPT, str(ROOT)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "Tensor (2, 3) torch.float32 cpu"
    assert lines[1].startswith("NaN 1 Inf 1; min 1 max 5 mean 3.25; first [1, nan, 3, 4, 5, …]")
    assert lines[2] == "Tensor (2, 3) torch.int64 cpu"
    assert lines[3].startswith("NaN 0 Inf 0; min 0 max 9 mean 4.5")
