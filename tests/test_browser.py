"""The widget as a user sees it: JupyterLab in headless Chromium, driven by Playwright.

A real JupyterLab server (loopback, no token) rooted in a temporary repository (a ``.git`` folder)
holding the quickstart notebook in ``notebooks/``, as a user's project would, and the
distribution's Chromium (Playwright's own browser download is not possible here). The test runs
the notebook's cells with the keyboard, then asserts in the page: the widget renders, the state
reaches "waiting for debugger", the endpoint is shown as listening with how to attach, the
launch.json is folded behind its toggle, the copy button puts it on the clipboard, the Write button
creates ``.vscode/launch.json`` in the repository's root (not in ``notebooks/``), a real DAP client
attached to the endpoint *the page shows* stops at a breakpoint in the cell, and the endpoint then
says attached, then closed. Cells added to the copy: a second run canceled with the Cancel button
(one line says so), a 30-line run whose last line is in view in the log box and whose endpoint
(``--timeout 0``) is never shown listening, and a failing cell whose header says ``KeyError: 'b'``.

Each run saves the panel's screenshot to docs/widget.png (commit it when it changes).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

pytest.importorskip("jupyterlab", reason="JupyterLab is not installed (pip install -e '.[test]')")
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")

from conftest import free_port, port_is_listening  # noqa: E402

from aml_magics.testing.dap import attach_with_launch_config  # noqa: E402

expect = playwright_api.expect

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "01-quickstart-local.ipynb"
SCREENSHOT = REPO / "docs" / "widget.png"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 60_000  # the notebook's own attach timeout (120 s) leaves a DAP client time to attach
# Cells the test adds to its copy of the quickstart notebook (after the notebook's own).
LONG_CELL = "%%aml_debug_run --name long --timeout 0\nfor i in range(1, 31):\n    print(f'line {i} of 30')\n"
FAILING_CELL = "%%aml_debug_run --name failing --timeout 0\nd = {'a': 1}\nprint(d['b'])\n"

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


def _chromium() -> str | None:
    for candidate in (os.environ.get("AML_MAGICS_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass
class Lab:
    root: Path
    port: int
    process: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(self.url + path, method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])


def _notebook_with_extra_cells() -> dict:
    nb = json.loads(NOTEBOOK.read_text())
    for index, source in enumerate((LONG_CELL, FAILING_CELL)):
        nb["cells"].append({"cell_type": "code", "execution_count": None, "id": f"extra-{index}", "metadata": {},
                            "outputs": [], "source": source.splitlines(keepends=True)})
    return nb


@pytest.fixture
def lab(tmp_path: Path):
    """JupyterLab on 127.0.0.1, no token, rooted in a temporary repository with the quickstart
    notebook (plus the test's cells) in notebooks/."""
    # A short root path keeps the paths in the screenshot readable.
    root = Path(tempfile.mkdtemp(prefix="aml-lab-"))
    (root / ".git").mkdir()  # a repository: VS Code's workspace, where launch.json belongs
    (root / "notebooks").mkdir()
    (root / "notebooks" / NOTEBOOK.name).write_text(json.dumps(_notebook_with_extra_cells(), indent=1))
    jupyter = tmp_path / "jupyter"
    settings = jupyter / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    # No "get notified about Jupyter news?" toast over the notebook.
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    env = dict(os.environ)
    env.update({
        "AML_MAGICS_VIEW": "widget",  # the kernel must not inherit the test suite's text view
        "AML_MAGICS_CACHE_DIR": str(tmp_path / "cache"),
        "JUPYTER_CONFIG_DIR": str(jupyter / "config"),
        "JUPYTER_RUNTIME_DIR": str(jupyter / "runtime"),
        "IPYTHONDIR": str(jupyter / "ipython"),
        "JUPYTER_PATH": str(jupyter / "data"),  # kernelspecs a test adds (the torch kernel)
    })
    _add_torch_kernel(jupyter / "data" / "kernels" / "torch")
    port = free_port()
    log = tmp_path / "jupyterlab.log"
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0", "--IdentityProvider.token=", "--ServerApp.password=",
        "--ServerApp.allow_root=True", f"--ServerApp.root_dir={root}",
        f"--LabApp.workspaces_dir={jupyter / 'workspaces'}", f"--LabApp.user_settings_dir={jupyter / 'settings'}",
        "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Lab(root, port, process, log)
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"JupyterLab exited with {process.returncode}:\n{server.log_tail()}")
            try:
                server.api("/api/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer on {server.url} in 90s:\n{server.log_tail()}")
                time.sleep(0.3)
        yield server
    finally:
        _stop(server)
        shutil.rmtree(root, ignore_errors=True)


def _torch_python() -> str | None:
    python = os.environ.get("AML_MAGICS_TORCH_PYTHON")
    if python:
        return python
    try:
        done = subprocess.run(["bash", str(REPO / ".ci" / "torch.sh")], capture_output=True, text=True, timeout=900)
    except (subprocess.SubprocessError, OSError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _add_torch_kernel(folder: Path) -> None:
    """A kernelspec "torch": the torch interpreter (over the system site-packages: ipykernel, aml_magics)."""
    python = _torch_python()
    if python is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kernel.json").write_text(json.dumps({
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (torch)", "language": "python"}))


def _stop(server: Lab) -> None:
    """Shut the kernels down through the API, then the server; prove nothing it started survives."""
    process = server.process
    descendants = []
    if process.poll() is None:
        try:
            descendants = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        try:
            for kernel in server.api("/api/kernels") or []:
                server.api(f"/api/kernels/{kernel['id']}", method="DELETE")
        except OSError:
            pass
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    _, alive = psutil.wait_procs(descendants, timeout=15)
    for leftover in alive:
        leftover.kill()
    assert not alive, f"left behind by the JupyterLab session: {[p.pid for p in alive]}"


@pytest.fixture
def page(lab: Lab, tmp_path: Path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set AML_MAGICS_CHROMIUM)")
    with playwright_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=chromium, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1100},
        )
        try:
            context.grant_permissions(["clipboard-read", "clipboard-write"], origin=lab.url)
            yield context.new_page()
        finally:
            context.close()


def _wait_for_idle_kernel(lab: Lab, timeout: float = 60) -> None:
    """The notebook's kernel is started and idle (the page's indicator says idle before that, too)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sessions = [s for s in lab.api("/api/sessions") or [] if s.get("path", "").endswith(NOTEBOOK.name)]
        if sessions and (sessions[0].get("kernel") or {}).get("execution_state") == "idle":
            return
        time.sleep(0.3)
    raise AssertionError(f"no idle kernel for {NOTEBOOK.name} after {timeout}s:\n{lab.log_tail()}")


def _notebook_cells() -> list[dict]:
    return _notebook_with_extra_cells()["cells"]


def _cell_index(start: str) -> int:
    return next(i for i, c in enumerate(_notebook_cells()) if "".join(c["source"]).startswith(start))


def _debug_cell_index() -> int:
    return _cell_index("%%aml_debug_run --name quickstart")


def _breakpoint_line() -> int:
    source = "".join(_notebook_cells()[_debug_cell_index()]["source"]).splitlines()[1:]  # the magic line is not in the file
    return next(i for i, line in enumerate(source, start=1) if "set a breakpoint here" in line)


def _panel(page, run_id: str):
    return page.locator(".aml-debug-run").filter(has=page.locator(".aml-run-id", has_text=f"({run_id})"))


def _shown_endpoint(panel) -> tuple[str, int]:
    text = panel.locator(".aml-endpoint code").inner_text(timeout=WAIT_MS)
    match = re.fullmatch(r"(127\.0\.0\.1):(\d+)", text.strip())
    assert match, f"the page shows endpoint {text!r}"
    return match.group(1), int(match.group(2))


def _run_cell(page, notebook_cells, index: int) -> None:
    notebook_cells.nth(index).locator(".jp-InputPrompt").click()
    page.keyboard.press("Shift+Enter")


# Records every text a panel of the given run ever showed with "listening" in it.
_WATCH_LISTENING = """runId => {
  window.__amlListening = [];
  const check = () => document.querySelectorAll('.aml-debug-run').forEach(p => {
    const id = p.querySelector('.aml-run-id');
    if (id && id.textContent.includes('(' + runId + ')')
        && (p.querySelector('[data-endpoint=listening]') || p.innerText.includes('listening')))
      window.__amlListening.push(p.innerText);
  });
  new MutationObserver(check).observe(document.body, {subtree: true, childList: true, characterData: true,
                                                      attributes: true});
}"""


def test_widget_in_jupyterlab(lab: Lab, page, tmp_path: Path):
    cells = _notebook_cells()
    debug_index = _debug_cell_index()
    cell_file = lab.root / "notebooks" / ".aml_magics" / "cells" / "quickstart.py"
    launch_json = lab.root / ".vscode" / "launch.json"  # the repository's root: VS Code's workspace

    page.goto(f"{lab.url}/lab/tree/notebooks/{NOTEBOOK.name}?reset")
    notebook_cells = page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell")
    expect(notebook_cells).to_have_count(len(cells), timeout=WAIT_MS)
    _wait_for_idle_kernel(lab)
    expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_be_visible(timeout=WAIT_MS)

    # Run the notebook from the top down to (and including) the debug cell, as a user does: Shift+Enter.
    notebook_cells.nth(0).click()
    for _ in range(debug_index + 1):
        page.keyboard.press("Shift+Enter")
        time.sleep(0.2)

    # 1. The widget renders; the run waits for a debugger, its endpoint listening, and it says how to attach.
    panel = _panel(page, "quickstart-1")
    expect(panel).to_be_visible(timeout=WAIT_MS)
    state = panel.locator("span.aml-state")
    detail = panel.locator(".aml-header .aml-detail")
    endpoint_state = panel.locator(".aml-endpoint-state")
    expect(state).to_have_attribute("data-state", "waiting_for_debugger", timeout=WAIT_MS)
    expect(state).to_have_text("waiting for debugger")
    expect(detail).to_have_count(0)  # the countdown is the endpoint's: said once
    expect(endpoint_state).to_have_attribute("data-endpoint", "listening")
    expect(endpoint_state).to_contain_text(re.compile(r"listening, \d+ s left"))
    expect(panel.locator(".aml-hint")).to_have_text(
        'open notebooks/.aml_magics/cells/quickstart.py in VS Code, Run and Debug → "quickstart" → F5')
    host, port = _shown_endpoint(panel)
    assert port_is_listening(host, port), f"the page shows {host}:{port} but nothing listens there"

    # 2. The launch.json is folded behind its toggle; the toggle shows it.
    textarea = panel.locator("textarea.aml-launch-json")
    toggle = panel.locator("button.aml-launch-toggle")
    expect(toggle).to_have_text(re.compile(r"launch\.json$"))
    expect(textarea).to_be_hidden()
    toggle.click()
    expect(textarea).to_be_visible()
    box, area = panel.bounding_box(), textarea.bounding_box()
    assert area["x"] + area["width"] <= box["x"] + box["width"] + 0.5, (area, box)  # no overflow out of the panel
    shown_json = json.loads(textarea.input_value())
    toggle.click()
    expect(textarea).to_be_hidden()

    # 3. The copy button puts the launch.json fragment on the clipboard.
    copy = panel.locator("button.aml-copy")
    copy.click()
    expect(copy).to_have_text("Copied", timeout=10_000)
    clipboard = json.loads(page.evaluate("() => navigator.clipboard.readText()"))
    assert clipboard == shown_json
    config = clipboard["configurations"][0]
    assert config["name"] == "quickstart" and config["type"] == "debugpy" and config["request"] == "attach"
    assert config["connect"] == {"host": host, "port": port}

    # 4. The Write button merges it into the workspace root's .vscode/launch.json and says where.
    assert not launch_json.exists()
    panel.get_by_role("button", name="Write to ../.vscode/launch.json").click()
    expect(panel.locator(".aml-message")).to_have_text(f"wrote quickstart to {launch_json}", timeout=WAIT_MS)
    written = json.loads(launch_json.read_text())
    assert [c for c in written["configurations"] if c["name"] == "quickstart"] == [config]
    assert not (lab.root / "notebooks" / ".vscode").exists()

    expect(copy).to_have_text("Copy", timeout=10_000)  # the button's label comes back
    panel.screenshot(path=str(tmp_path / "widget.png"))
    SCREENSHOT.parent.mkdir(exist_ok=True)
    shutil.copy(tmp_path / "widget.png", SCREENSHOT)  # regenerated on every run: commit it when it changes

    # 5. The page tells the truth: a real DAP client, configured from the clipboard, stops in the cell.
    line = _breakpoint_line()
    client = attach_with_launch_config(config, {str(cell_file): [line]}, workspace_folder=str(lab.root))
    try:
        stop = client.wait_stopped(30)
        assert stop.reason == "breakpoint"
        assert Path(stop.path) == cell_file and stop.line == line
        local_vars = client.variables_of(stop.frame_id)
        assert local_vars["w"] == "0.0" and local_vars["epoch"] == "0"
        expect(state).to_have_attribute("data-state", "attached", timeout=WAIT_MS)
        expect(state).to_have_text("debugger attached")
        expect(endpoint_state).to_have_attribute("data-endpoint", "attached")
        expect(panel.get_by_role("button", name="Write to ../.vscode/launch.json")).to_be_disabled()
        expect(copy).to_be_disabled()  # nobody else can attach now
        client.request("setBreakpoints", {"source": {"path": str(cell_file)}, "breakpoints": [], "lines": []})
        client.continue_(stop.thread_id)
        expect(state).to_have_attribute("data-state", "completed", timeout=WAIT_MS)
    finally:
        client.close()
    expect(panel.locator("pre.aml-log")).to_contain_text("done: w=3.00 b=1.00", timeout=WAIT_MS)
    expect(endpoint_state).to_have_text("closed (run ended)")
    expect(panel.get_by_role("button", name="Cancel run")).to_be_hidden()  # the run is over: no actions
    expect(copy).to_be_hidden()
    expect(panel.locator(".aml-hint")).to_have_count(0)

    # 6. Run the cell again; the Cancel button ends that run and one line says so.
    _run_cell(page, notebook_cells, debug_index)
    panel = _panel(page, "quickstart-2")
    state = panel.locator("span.aml-state")
    expect(state).to_have_attribute("data-state", "waiting_for_debugger", timeout=WAIT_MS)
    host, port = _shown_endpoint(panel)
    assert port_is_listening(host, port)
    panel.get_by_role("button", name="Cancel run").click()
    expect(state).to_have_attribute("data-state", "canceled", timeout=WAIT_MS)
    expect(state).to_have_text("canceled")
    canceled = re.compile(r"^canceled by user after \d+(\.\d)? s$")
    expect(panel.locator(".aml-header .aml-detail")).to_have_text(canceled)
    expect(panel.locator(".aml-log-line").last).to_have_text(canceled, timeout=WAIT_MS)
    expect(panel.locator(".aml-endpoint-state")).to_have_text("closed (run canceled)")
    deadline = time.monotonic() + 10
    while port_is_listening(host, port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not port_is_listening(host, port), f"{host}:{port} still listening after cancel"

    # 7. A 30-line run (--timeout 0): its last line is in view in the log box, its first scrolled away,
    #    and its endpoint, closed from the start, is never shown listening.
    page.evaluate(_WATCH_LISTENING, "long-3")
    _run_cell(page, notebook_cells, _cell_index("%%aml_debug_run --name long"))
    panel = _panel(page, "long-3")
    expect(panel.locator("span.aml-state")).to_have_attribute("data-state", "completed", timeout=WAIT_MS)
    last = panel.locator(".aml-log-line", has_text="line 30 of 30")
    expect(last).to_have_count(1, timeout=WAIT_MS)
    panel.locator(".aml-log-box").scroll_into_view_if_needed()
    expect(last).to_be_in_viewport()
    expect(panel.locator(".aml-log-line", has_text="line 1 of 30")).not_to_be_in_viewport()
    expect(panel.locator(".aml-endpoint-state")).to_have_text("closed (--timeout 0: no wait)")
    assert page.evaluate("() => window.__amlListening") == []
    expect(panel.locator("button.aml-copy")).to_be_hidden()

    # 8. A failing cell: the header says why; the log shows the user's frames, not the bootstrap's.
    _run_cell(page, notebook_cells, _cell_index("%%aml_debug_run --name failing"))
    panel = _panel(page, "failing-4")
    expect(panel.locator("span.aml-state")).to_have_attribute("data-state", "failed", timeout=WAIT_MS)
    expect(panel.locator(".aml-header .aml-detail")).to_have_text("KeyError: 'b' (exit code 1)")
    log = panel.locator("pre.aml-log")
    expect(log).to_contain_text("failing.py")
    expect(log).not_to_contain_text("aml_magics/node/")
    expect(panel.locator(".aml-log-line").last).to_have_text("KeyError: 'b'")


# -- the in-notebook debugger (aml_magics.debugger) ---------------------------------------------
DEBUG_NOTEBOOK = "debugger.ipynb"
DEBUG_CELL = """%%aml_debug_run --name nbdbg --port 0 --timeout 120
weights = [0.5, 1.5, 2.5]
total = 0.0
for w in weights:
    total += w
scaled = total * 2
print("scaled", scaled)
"""
DEBUG_SCREENSHOT = REPO / "docs" / "debugger.png"


def _write_debug_notebook(root: Path) -> None:
    def cell(source: str) -> dict:
        return {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": source}

    notebook = {"cells": [cell("%load_ext aml_magics"), cell(DEBUG_CELL)], "nbformat": 4, "nbformat_minor": 5,
                "metadata": {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                                            "name": "python3"}, "language_info": {"name": "python"}}}
    (root / DEBUG_NOTEBOOK).write_text(json.dumps(notebook))


def _wait_for_idle(lab: Lab, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sessions = [s for s in lab.api("/api/sessions") or [] if s.get("path", "").endswith(name)]
        if sessions and (sessions[0].get("kernel") or {}).get("execution_state") == "idle":
            return
        time.sleep(0.3)
    raise AssertionError(f"no idle kernel for {name} after {timeout}s:\n{lab.log_tail()}")


CURRENT_BG = "rgb(255, 243, 176)"  # the current line (#fff3b0)
MARK_BG = {"plain": "rgb(211, 47, 47)", "condition": "rgb(239, 108, 0)", "log": "rgb(21, 101, 192)"}


def _line_number(dbg, line: int):
    """Line ``line``'s number in the source view's gutter (a click toggles its breakpoint)."""
    return dbg.locator(".aml-dbg-gutter .widget-radio-box label").nth(line - 1)


def _expect_mark(dbg, line: int, kind: str) -> None:
    expect(_line_number(dbg, line)).to_have_css("background-color", MARK_BG[kind], timeout=WAIT_MS)


def _expect_current(dbg, line: int, current: bool = True) -> None:
    """``line`` drawn as the current one (or not), and in view when it is: centred in the scroll box."""
    row = dbg.locator(f".aml-dbg-line-{line}")
    if not current:
        expect(row).not_to_have_css("background-color", CURRENT_BG, timeout=WAIT_MS)
        return
    expect(row).to_have_css("background-color", CURRENT_BG, timeout=WAIT_MS)
    dbg.locator(".aml-dbg-scroll").scroll_into_view_if_needed()
    expect(row).to_be_in_viewport(timeout=WAIT_MS)
    def off_centre() -> float:  # px between the line's middle and the scroll box's (the snap may glide there)
        box, here = dbg.locator(".aml-dbg-scroll").bounding_box(), row.bounding_box()
        return abs(here["y"] + here["height"] / 2 - (box["y"] + box["height"] / 2))

    def centred() -> bool:  # or as near as the scroll goes: a line near the top stays below the middle
        at_top = dbg.locator(".aml-dbg-scroll").evaluate("box => box.scrollTop") == 0
        return off_centre() <= 20 or (at_top and row.evaluate("r => r.offsetTop") < 11 * r_height)

    r_height = row.bounding_box()["height"]
    deadline = time.monotonic() + 5
    while not centred() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert centred(), f"line {line} is {off_centre()} px off the source view's centre"


def test_debugger_panel_in_jupyterlab(lab: Lab, page, tmp_path: Path):
    """Debug here → click a line number → Attach: the run stops there (armed before release), the
    stop line is highlighted, a variable expands, an expression evaluates, a step moves the
    highlight, Continue runs the cell to its end."""
    _write_debug_notebook(lab.root)
    page.goto(f"{lab.url}/lab/tree/{DEBUG_NOTEBOOK}?reset")
    cells = page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell")
    expect(cells).to_have_count(2, timeout=WAIT_MS)
    _wait_for_idle(lab, DEBUG_NOTEBOOK)
    expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_be_visible(timeout=WAIT_MS)
    cells.nth(0).click()
    for _ in range(2):
        page.keyboard.press("Shift+Enter")
        time.sleep(0.2)

    run_panel = _panel(page, "nbdbg-1")
    run_state = run_panel.locator("span.aml-state")
    expect(run_state).to_have_attribute("data-state", "waiting_for_debugger", timeout=WAIT_MS)
    run_panel.get_by_role("button", name="Debug here").click()
    dbg = run_panel.locator(".aml-dbg")
    expect(dbg).to_be_visible(timeout=WAIT_MS)
    state = dbg.locator(".aml-dbg-state")
    expect(state).to_have_attribute("data-state", "armed", timeout=WAIT_MS)
    expect(dbg.locator(".aml-dbg-file")).to_have_text("nbdbg.py", timeout=WAIT_MS)  # relative to the run's local root

    # 1. click the line number of `scaled = total * 2`: a breakpoint, not sent anywhere yet
    line = 5
    _line_number(dbg, line).click()
    _expect_mark(dbg, line, "plain")
    assert run_state.get_attribute("data-state") == "waiting_for_debugger"

    # 2. Attach: armed before release, so the run stops there; the stop line is highlighted
    dbg.get_by_role("button", name="Attach").click()
    expect(state).to_have_attribute("data-state", "stopped", timeout=WAIT_MS)
    expect(state).to_contain_text(f"stopped (breakpoint) at nbdbg.py:{line}")
    _expect_current(dbg, line)
    expect(run_state).to_have_attribute("data-state", "attached", timeout=WAIT_MS)
    expect(dbg.locator(".aml-dbg-stack select option").first).to_contain_text(f"<module> — nbdbg.py:{line}")

    # 3. expand a variable: its children come from the run
    expect(dbg.locator(".aml-dbg-var-total")).to_contain_text("total = 4.5", timeout=WAIT_MS)
    dbg.locator(".aml-dbg-var-weights .aml-dbg-toggle").click()
    expect(dbg.locator(".aml-dbg-var-2")).to_contain_text("2 = 2.5", timeout=WAIT_MS)

    # 4. evaluate an expression in the stopped frame
    box = dbg.locator(".aml-dbg-expression input")
    box.fill("total * 10")
    box.press("Enter")
    expect(dbg.locator(".aml-dbg-history")).to_contain_text("45.0", timeout=WAIT_MS)

    dbg.screenshot(path=str(tmp_path / "debugger.png"))
    if os.environ.get("AML_MAGICS_UPDATE_SCREENSHOT"):
        DEBUG_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copy(tmp_path / "debugger.png", DEBUG_SCREENSHOT)

    # 5. step over: the highlight moves to the next line
    dbg.get_by_role("button", name="Step over").click()
    _expect_current(dbg, line + 1)
    _expect_current(dbg, line, current=False)
    expect(dbg.locator(".aml-dbg-var-scaled")).to_contain_text("scaled = 9.0", timeout=WAIT_MS)

    # 6. continue: the cell's process runs to its end, and both panels say so
    dbg.get_by_role("button", name="Continue").click()
    expect(run_state).to_have_attribute("data-state", "completed", timeout=WAIT_MS)
    expect(state).to_have_attribute("data-state", "ended", timeout=WAIT_MS)
    expect(state).to_contain_text("the run ended (completed)")
    expect(run_panel.locator("pre.aml-log")).to_contain_text("scaled 9.0", timeout=WAIT_MS)


ROSTER_NOTEBOOK = "roster.ipynb"
ROSTER_CODE = """import os, time
rank = int(os.environ["RANK"])
loss = [0.25, float("nan"), 0.25, 0.25][rank]
for step in range(3000):
    time.sleep(0.01)
    if step == 100 and rank == 1:
        print("rank 1 sees", loss)
print("done", rank)
"""
ROSTER_BREAK_LINE = 7  # print("rank 1 sees", loss): reached by rank 1 only
ROSTER_CELLS = (
    "%load_ext aml_magics",
    "import aml_magics\n"
    f"run = aml_magics.submit(code={ROSTER_CODE!r}, name='roster', nodes=2, procs_per_node=2, port=0, timeout=120)\n"
    "run",
    f"group = run.attach_all(breakpoints=[(str(run.spec.script_path), {ROSTER_BREAK_LINE})], timeout=60)\n"
    "rank, stop = group.wait_stopped(60)\n"
    "print('first stop on rank', rank)",
    "group.close()\nrun.cancel()\nprint('closed', run.wait(30))",
)
ROSTER_SCREENSHOT = REPO / "docs" / "roster.png"


def test_rank_roster_in_the_run_panel(lab: Lab, page, tmp_path: Path):
    """A 2×2 local run, attach_all from a cell: the run panel's table, grouped by node, shows rank 1
    stopped at its breakpoint, first on node 0, and the other ranks paused by all_stop."""
    def cell(source: str) -> dict:
        return {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": source}

    notebook = {"cells": [cell(source) for source in ROSTER_CELLS], "nbformat": 4, "nbformat_minor": 5,
                "metadata": {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                                            "name": "python3"}, "language_info": {"name": "python"}}}
    (lab.root / ROSTER_NOTEBOOK).write_text(json.dumps(notebook))
    page.goto(f"{lab.url}/lab/tree/{ROSTER_NOTEBOOK}?reset")
    cells = page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell")
    expect(cells).to_have_count(len(ROSTER_CELLS), timeout=WAIT_MS)
    _wait_for_idle(lab, ROSTER_NOTEBOOK)
    expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_be_visible(timeout=WAIT_MS)
    cells.nth(0).click()
    for _ in range(3):
        page.keyboard.press("Shift+Enter")
        time.sleep(0.2)
    expect(cells.nth(2)).to_contain_text("first stop on rank 1", timeout=WAIT_MS)

    run_panel = _panel(page, "roster-1")
    table = run_panel.locator("table.aml-endpoints")
    expect(table.locator("tr.aml-node")).to_have_count(2, timeout=WAIT_MS)
    stopped = table.locator(".aml-rank-debugger[data-debugger='stopped']")
    expect(stopped).to_have_count(4, timeout=WAIT_MS)  # rank 1 at its breakpoint, the others paused by all_stop
    rows = table.locator("tr")
    expect(rows.nth(2)).to_have_attribute("data-rank", "1")  # node 0's first row: its stopped rank
    expect(rows.nth(2)).to_contain_text(f"stopped at roster.py:{ROSTER_BREAK_LINE} (breakpoint)")
    expect(table.locator("tr.aml-rank[data-rank='0'] .aml-rank-debugger")).to_contain_text("(pause)")
    table.screenshot(path=str(tmp_path / "roster.png"))
    if os.environ.get("AML_MAGICS_UPDATE_SCREENSHOT"):
        shutil.copy(tmp_path / "roster.png", ROSTER_SCREENSHOT)

    page.keyboard.press("Shift+Enter")  # the last cell: close the group, cancel the run
    expect(cells.nth(3)).to_contain_text("closed canceled", timeout=WAIT_MS)


# -- the debugger with data a person scans: long values, 400 names, arrays and tensors -----------------------
WIDE_NOTEBOOK = "wide.ipynb"
WIDE_CELL = ("%%aml_debug_run --name wide --port 0 --timeout 120\nimport numpy as np\nimport torch\n"
             "big = list(range(1000))\ns = 'x' * 100000\ngrid = np.arange(12, dtype='float64').reshape(3, 4)\n"
             "batch = torch.arange(6, dtype=torch.float32).reshape(2, 3)\n"
             + "".join(f"name_{i:03d} = {i}\n" for i in range(400))
             + "total = 1\nprint('done', total)\n")
WIDE_STOP = 408  # print('done', total) (the magic line is not in the file)
CRASH_NOTEBOOK = "crash.ipynb"
CRASH_CELL = "%%aml_debug_run --name crash --port 0 --timeout 120\ndef mean(v):\n    total = sum(v)\n" \
             "    return total / len(v)\nprint(mean([]))\n"
SCREENSHOTS = {name: REPO / "docs" / f"{name}.png" for name in ("debugger-stopped", "debugger-tensor",
                                                                 "debugger-breakpoints")}


def _write_notebook(root: Path, name: str, cell_source: str, kernel: str = "python3") -> None:
    def cell(source: str) -> dict:
        return {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": source}

    notebook = {"cells": [cell("%load_ext aml_magics"), cell(cell_source)], "nbformat": 4, "nbformat_minor": 5,
                "metadata": {"kernelspec": {"display_name": kernel, "language": "python", "name": kernel},
                             "language_info": {"name": "python"}}}
    (root / name).write_text(json.dumps(notebook))


def _debug_here(lab: Lab, page, name: str, run_id: str):
    """Open the notebook, run its two cells, click Debug here: the debugger panel, armed."""
    page.goto(f"{lab.url}/lab/tree/{name}?reset")
    cells = page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell")
    expect(cells).to_have_count(2, timeout=WAIT_MS)
    _wait_for_idle(lab, name, timeout=120)
    expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_be_visible(timeout=2 * WAIT_MS)
    cells.nth(0).click()
    for _ in range(2):
        page.keyboard.press("Shift+Enter")
        time.sleep(0.2)
    run_panel = _panel(page, run_id)
    expect(run_panel.locator("span.aml-state")).to_have_attribute("data-state", "waiting_for_debugger",
                                                                  timeout=WAIT_MS)
    run_panel.get_by_role("button", name="Debug here").click()
    dbg = run_panel.locator(".aml-dbg")
    expect(dbg.locator(".aml-dbg-state")).to_have_attribute("data-state", "armed", timeout=WAIT_MS)
    return run_panel, dbg


def _shoot(locator, tmp_path: Path, name: str, height: float = 900) -> None:
    """A screenshot of ``locator``'s top ``height`` px (a panel with 400 rows is taller than a figure)."""
    locator.scroll_into_view_if_needed()
    box = locator.bounding_box()
    locator.page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True,
                            clip={"x": box["x"], "y": box["y"], "width": box["width"],
                                  "height": min(box["height"], height)})
    if os.environ.get("AML_MAGICS_UPDATE_SCREENSHOT"):
        shutil.copy(tmp_path / f"{name}.png", SCREENSHOTS[name])


def test_debugger_long_values_400_names_arrays_and_tensors_in_jupyterlab(lab: Lab, page, tmp_path: Path):
    """Go to line 408 and break there; stopped: no variable row is taller than one line and the
    evaluate column stays in the viewport whatever the values (a 100,000-character string, a
    1,000-element list); names past the 100th are reached with "more…"; an array and a tensor
    read as shape/dtype/device, their statistics on demand; the breakpoints list shows it."""
    if not (lab.root.parent / "jupyter").exists() and _torch_python() is None:
        pytest.skip("no torch interpreter (bash .ci/torch.sh)")
    _write_notebook(lab.root, WIDE_NOTEBOOK, WIDE_CELL, kernel="torch")
    run_panel, dbg = _debug_here(lab, page, WIDE_NOTEBOOK, "wide-1")
    goto = dbg.locator(".aml-dbg-goto input")
    goto.fill(str(WIDE_STOP))
    goto.press("Enter")
    row = dbg.locator(f".aml-dbg-line-{WIDE_STOP}")
    expect(row).to_be_in_viewport(timeout=WAIT_MS)
    _line_number(dbg, WIDE_STOP).click()
    _expect_mark(dbg, WIDE_STOP, "plain")
    expect(dbg.locator(".aml-dbg-bplist")).to_contain_text(f"wide.py:{WIDE_STOP}", timeout=WAIT_MS)
    for kind, text, number in (("condition", "total > 0", WIDE_STOP - 1), ("log point", "name_399 is {name_399}",
                                                                          WIDE_STOP - 2)):
        dbg.locator(".aml-dbg-kind select").select_option(kind)
        dbg.locator(".aml-dbg-condition input").fill(text)
        dbg.locator(".aml-dbg-condition input").press("Tab")
        _line_number(dbg, number).click()
        _expect_mark(dbg, number, "condition" if kind == "condition" else "log")
    expect(dbg.locator(".aml-dbg-bprow")).to_have_count(3, timeout=WAIT_MS)
    expect(dbg.locator(".aml-dbg-condition input")).to_have_value("")  # used once
    _shoot(dbg, tmp_path, "debugger-breakpoints", height=760)

    dbg.get_by_role("button", name="Attach").click()
    state = dbg.locator(".aml-dbg-state")
    expect(state).to_have_attribute("data-state", "stopped", timeout=WAIT_MS)
    _expect_current(dbg, WIDE_STOP)
    expect(dbg.locator(".aml-dbg-var-grid")).to_contain_text("ndarray (3, 4) float64", timeout=WAIT_MS)
    expect(dbg.locator(".aml-dbg-var-big")).to_be_visible()

    # a tensor at a glance, its statistics computed in the run
    batch = dbg.locator(".aml-dbg-var-batch")
    expect(batch).to_contain_text("Tensor (2, 3) torch.float32 cpu", timeout=WAIT_MS)
    batch.locator(".aml-dbg-stats").click()
    expect(dbg.locator(".aml-dbg-full-value textarea")).to_have_value(
        re.compile(r"^batch: NaN 0 Inf 0; min 0 max 5 mean 2\.5"), timeout=WAIT_MS)
    _shoot(dbg.locator(".aml-dbg-columns"), tmp_path, "debugger-tensor", height=330)

    box = dbg.locator(".aml-dbg-expression input")
    box.fill("s")
    box.press("Enter")
    expect(dbg.locator(".aml-dbg-history")).to_contain_text("xxxx", timeout=WAIT_MS)
    _shoot(dbg, tmp_path, "debugger-stopped", height=1000)

    # the layout, measured in the page: one line per row, the evaluate column inside the viewport
    heights = dbg.locator(".aml-dbg-var").evaluate_all("rows => rows.map(r => r.getBoundingClientRect().height)")
    line = dbg.locator(".aml-dbg-var-big").evaluate("r => parseFloat(getComputedStyle(r).fontSize) * 2.2")
    assert heights and max(heights) <= line, f"a variable row is {max(heights)} px tall (one line: ≤ {line})"
    right = dbg.locator(".aml-dbg-expression").evaluate("e => e.closest('.widget-vbox').getBoundingClientRect().right")
    width = page.evaluate("() => document.documentElement.clientWidth")
    assert right <= width, f"the evaluate column ends at {right} px, the viewport at {width}"
    results = dbg.locator(".aml-dbg-result").evaluate_all("rs => rs.map(r => r.getBoundingClientRect().height)")
    assert max(results) <= 2 * line, f"an evaluate result is {max(results)} px tall"

    # 400 names: the rest page by page
    last = dbg.locator(".aml-dbg-var-name_399")
    deadline = time.monotonic() + WAIT_MS / 1000
    while not last.is_visible() and time.monotonic() < deadline:
        more = dbg.locator(".aml-dbg-more")
        if more.count():  # a redraw may replace the button under the pointer: a click event on the one shown now
            try:
                more.first.dispatch_event("click", timeout=5_000)
            except playwright_api.Error:
                pass
        time.sleep(1.0)
    expect(last).to_contain_text("name_399 = 399", timeout=WAIT_MS)


    dbg.get_by_role("button", name="Continue").click()
    expect(run_panel.locator("span.aml-state")).to_have_attribute("data-state", "completed", timeout=WAIT_MS)
    expect(state).to_have_attribute("data-state", "ended", timeout=WAIT_MS)
    _expect_current(dbg, WIDE_STOP, current=False)  # nothing current once ended
    dbg.get_by_role("button", name="Close").click()
    expect(dbg).to_be_hidden(timeout=WAIT_MS)


LONG_NOTEBOOK = "longsrc.ipynb"
LONG_SOURCE_CELL = ("%%aml_debug_run --name longsrc --port 0 --timeout 120\n"
             + "".join(f"x = {i}  # filler line {i}\n" for i in range(1, 401))
             + "total = 0\nfor k in range(3):\n    total += k\nafter = total * 2\nprint('after', after)\nprint('done')\n")
LONG_STOP = 404  # after = total * 2


def test_debugger_source_view_whole_file_current_line_centred_in_jupyterlab(lab: Lab, page, tmp_path: Path):
    """Issue 23 item 5: the whole file scrolls in the source view; go to line 404 (one step), click its
    number, attach: the current line is centred in view, a step moves it and keeps it in view even
    after the user scrolled elsewhere; the file is sent once (one code block, its lines highlighted)."""
    _write_notebook(lab.root, LONG_NOTEBOOK, LONG_SOURCE_CELL)
    _run_panel, dbg = _debug_here(lab, page, LONG_NOTEBOOK, "longsrc-1")
    expect(dbg.locator(".aml-dbg-lines > div")).to_have_count(406, timeout=WAIT_MS)  # the whole file
    expect(dbg.locator(".aml-dbg-gutter .widget-radio-box label")).to_have_count(406)
    row = dbg.locator(f".aml-dbg-line-{LONG_STOP}")
    dbg.locator(".aml-dbg-scroll").scroll_into_view_if_needed()
    expect(row).not_to_be_in_viewport()  # scrolled out of the box at first
    goto = dbg.locator(".aml-dbg-goto input")
    goto.fill(str(LONG_STOP))
    goto.press("Enter")
    expect(row).to_be_in_viewport(timeout=WAIT_MS)
    expect(row.locator("span").first).to_have_attribute("style", re.compile("color"))  # highlighted
    _line_number(dbg, LONG_STOP).click()
    _expect_mark(dbg, LONG_STOP, "plain")
    expect(dbg.locator(".aml-dbg-bplist")).to_contain_text(f"longsrc.py:{LONG_STOP}", timeout=WAIT_MS)

    dbg.get_by_role("button", name="Attach").click()
    state = dbg.locator(".aml-dbg-state")
    expect(state).to_have_attribute("data-state", "stopped", timeout=WAIT_MS)
    _expect_current(dbg, LONG_STOP)
    # the user scrolls to the top; a step brings the new current line back to the centre
    time.sleep(0.6)  # the centring lasts 0.4 s (the box is a snap container only that long)
    dbg.locator(".aml-dbg-scroll").evaluate("box => { box.scrollTop = 0; box.scrollIntoView(); }")
    expect(dbg.locator(".aml-dbg-line-1")).to_be_in_viewport(timeout=WAIT_MS)
    time.sleep(0.6)  # the user's scroll stays where it is (no snapping back)
    expect(dbg.locator(".aml-dbg-line-1")).to_be_in_viewport()
    dbg.get_by_role("button", name="Step over").click()
    _expect_current(dbg, LONG_STOP + 1)
    _expect_current(dbg, LONG_STOP, current=False)
    _line_number(dbg, LONG_STOP).click()  # toggled off while attached
    expect(_line_number(dbg, LONG_STOP)).not_to_have_css("background-color", MARK_BG["plain"], timeout=WAIT_MS)
    dbg.get_by_role("button", name="Continue").click()
    expect(state).to_have_attribute("data-state", "ended", timeout=WAIT_MS)
    _expect_current(dbg, LONG_STOP + 1, current=False)


def test_debugger_stops_at_an_uncaught_exception_in_jupyterlab(lab: Lab, page, tmp_path: Path):
    """Attach with the default filter (uncaught): the panel stops at the raising line with the
    exception's banner, instead of saying "ended (failed)"."""
    _write_notebook(lab.root, CRASH_NOTEBOOK, CRASH_CELL)
    _run_panel, dbg = _debug_here(lab, page, CRASH_NOTEBOOK, "crash-1")
    expect(dbg.locator(".aml-dbg-exc-uncaught input")).to_be_checked()
    expect(dbg.locator(".aml-dbg-exc-raised input")).not_to_be_checked()
    dbg.get_by_role("button", name="Attach").click()
    state = dbg.locator(".aml-dbg-state")
    expect(state).to_have_attribute("data-state", "stopped", timeout=WAIT_MS)
    expect(state).to_contain_text("stopped (exception) at crash.py:3")
    expect(dbg.locator(".aml-dbg-exception")).to_have_text("ZeroDivisionError: division by zero", timeout=WAIT_MS)
    _expect_current(dbg, 3)
