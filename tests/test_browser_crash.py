"""The crash capsule's snapshot panel as a user sees it: JupyterLab in headless Chromium.

A cell crashes with no debugger attached; its run panel offers "crash capsule: open"; opening it
shows the debugger panel's layout in a read-only snapshot mode: the exception banner, the call
stack innermost first, the highlighted raising line, the variables (an array's summary, the masked
token), and no stepping buttons. ``AML_MAGICS_UPDATE_SCREENSHOT=1`` saves it to docs/crash.png.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("jupyterlab", reason="JupyterLab is not installed (pip install -e '.[test]')")
pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")

from test_browser import REPO, WAIT_MS, Lab, _panel, expect, lab, page  # noqa: E402, F401 - fixtures

CRASH_NOTEBOOK = "crash.ipynb"
CRASH_CELL = """%%aml_debug_run --name nbcrash --port 0 --timeout 0
import numpy as np

def normalise(batch, scale):
    api_token = "tok-0123456789"
    stats = {"rows": len(batch), "scale": scale}
    return batch / (batch.sum() * scale)

data = np.arange(12, dtype=np.float32).reshape(3, 4)
data[1, 2] = np.nan
normalise(data, scale=None)
"""
RAISE_LINE = 6  # return batch / (batch.sum() * scale) — the magic line is not in the file
CRASH_SCREENSHOT = REPO / "docs" / "crash.png"

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


def _write_notebook(root: Path) -> None:
    def cell(source: str) -> dict:
        return {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": source}

    notebook = {"cells": [cell("%load_ext aml_magics"), cell(CRASH_CELL)], "nbformat": 4, "nbformat_minor": 5,
                "metadata": {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                                            "name": "python3"}, "language_info": {"name": "python"}}}
    (root / CRASH_NOTEBOOK).write_text(json.dumps(notebook))


def _wait_for_idle(server: Lab, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sessions = [s for s in server.api("/api/sessions") or [] if s.get("path", "").endswith(CRASH_NOTEBOOK)]
        if sessions and (sessions[0].get("kernel") or {}).get("execution_state") == "idle":
            return
        time.sleep(0.3)
    raise AssertionError(f"no idle kernel for {CRASH_NOTEBOOK} after {timeout}s:\n{server.log_tail()}")


def test_crash_snapshot_panel_in_jupyterlab(lab: Lab, page, tmp_path: Path):  # noqa: F811 - the fixtures
    _write_notebook(lab.root)
    page.goto(f"{lab.url}/lab/tree/{CRASH_NOTEBOOK}?reset")
    cells = page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell")
    expect(cells).to_have_count(2, timeout=WAIT_MS)
    _wait_for_idle(lab)
    expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_be_visible(timeout=WAIT_MS)
    cells.nth(0).click()
    for _ in range(2):
        page.keyboard.press("Shift+Enter")
        time.sleep(0.2)

    run_panel = _panel(page, "nbcrash-1")
    expect(run_panel.locator("span.aml-state")).to_have_attribute("data-state", "failed", timeout=WAIT_MS)
    row = run_panel.locator(".aml-crash-row")
    expect(row).to_contain_text("crash capsule:", timeout=WAIT_MS)
    row.get_by_role("button", name="open").click()

    snapshot = run_panel.locator(".aml-crash")
    expect(snapshot).to_be_visible(timeout=WAIT_MS)
    expect(snapshot).to_contain_text("snapshot (read-only)")
    expect(snapshot.locator(".aml-dbg-exception")).to_have_text(
        "TypeError: unsupported operand type(s) for *: 'float' and 'NoneType'")
    expect(snapshot.locator(".aml-dbg-stack select option").first).to_contain_text(f"normalise  nbcrash.py:{RAISE_LINE}")
    expect(snapshot.locator(".aml-dbg-current")).to_contain_text("return batch / (batch.sum() * scale)")
    variables = snapshot.locator("table.aml-crash-vars")
    expect(variables).to_contain_text("ndarray (3, 4) float32")
    expect(variables).to_contain_text("NaN 1")
    expect(variables).to_contain_text("masked")
    assert "tok-0123456789" not in variables.inner_text()
    for name in ("Continue", "Step over", "Step in", "Step out", "Pause"):
        assert snapshot.get_by_role("button", name=name).count() == 0  # a snapshot: nothing steps
    heights = snapshot.locator("table.aml-crash-vars tr").evaluate_all("rows => rows.map(r => r.offsetHeight)")
    assert heights and max(heights) <= 2 * min(heights)  # one line per variable, whatever its value

    # choosing the outer frame shows its line and locals
    snapshot.locator(".aml-dbg-stack select").select_option(index=1)
    expect(snapshot.locator(".aml-dbg-current")).to_contain_text("normalise(data, scale=None)", timeout=WAIT_MS)

    snapshot.locator(".aml-dbg-stack select").select_option(index=0)
    expect(snapshot.locator(".aml-dbg-current")).to_contain_text("return batch", timeout=WAIT_MS)
    snapshot.screenshot(path=str(tmp_path / "crash.png"))
    if os.environ.get("AML_MAGICS_UPDATE_SCREENSHOT"):
        CRASH_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copy(tmp_path / "crash.png", CRASH_SCREENSHOT)
