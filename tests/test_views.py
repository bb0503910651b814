"""The text view, the ipywidgets panel and %aml_runs, fed by real runs: what they say must be
true now (a debugger that closed is never "listening"), a failure says why, a cancel says when."""

from __future__ import annotations

import json
import re

from conftest import wait_for

import aml_magics
from aml_magics.failure import FrameFilter, last_failure, user_lines
from aml_magics.testing.dap import attach_with_launch_config
from aml_magics.views import mimebundle, render_text

FAILING = "d = {'a': 1}\n\ndef lookup():\n    return d['b']\n\nprint('before')\nlookup()\n"


def test_text_view_has_the_facts_and_no_html(workdir):
    run = aml_magics.submit(code="print('hello')\n", name="texty", port=0, timeout=30)
    endpoint = run.wait_for_endpoint(30)
    text = render_text(run)
    assert "texty" in text and "local" in text and "waiting for debugger" in text
    assert "s left to attach" in text
    assert re.search(rf"debugpy at {endpoint.address}: listening, \d+ s left", text), text
    assert 'open .aml_magics/cells/texty.py in VS Code, Run and Debug → "texty" → F5' in text
    fragment = json.loads(text.split("launch.json:\n", 1)[1])
    assert fragment["configurations"][0]["connect"]["port"] == endpoint.port
    assert "<" not in text
    assert mimebundle(run) == {"text/plain": render_text(run)} or "text/plain" in mimebundle(run)
    run.cancel()
    assert run.state == "canceled"
    text = render_text(run)
    assert re.search(r"canceled by user after \d+(\.\d)? s", text.splitlines()[0]), text
    assert "listening" not in text and "launch.json:" not in text  # nothing to attach to any more
    assert f"debugpy at {endpoint.address}: closed (run canceled)" in text
    assert re.search(r"canceled by user after \d+(\.\d)? s$", run.logs), run.logs  # the output's last line


def test_widget_panel_updates_live_and_its_buttons_work(workdir, monkeypatch):
    """In a notebook folder of a repository, Write puts launch.json in the repository's root."""
    from aml_magics.views.widget import DebugRunPanel

    (workdir / ".git").mkdir()
    notebooks = workdir / "notebooks"
    notebooks.mkdir()
    monkeypatch.chdir(notebooks)
    run = aml_magics.submit(code="import time\nx = 1\ntime.sleep(2)\nprint('done', x)\n",
                            name="widgety", port=0, timeout=60)
    panel = DebugRunPanel(run)
    endpoint = run.wait_for_endpoint(30)
    wait_for(lambda: endpoint.address in panel.endpoints_html.value)
    wait_for(lambda: "data-endpoint='listening'" in panel.endpoints_html.value)
    assert "<table" not in panel.endpoints_html.value  # one process: one line, no rank table
    wait_for(lambda: "data-state='waiting_for_debugger'" in panel.header_html.value)
    assert re.search(r"listening, \d+ s left", panel.endpoints_html.value)  # the countdown, said once
    assert "s left" not in panel.header_html.value
    assert "Run and Debug → &quot;widgety&quot; → F5" in panel.hint_html.value
    assert "notebooks/.aml_magics/cells/widgety.py" in panel.hint_html.value  # relative to the workspace root
    # The launch.json is folded away until asked for; Copy and Write are there meanwhile.
    assert panel.launch_html.layout.display == "none"
    assert "aml-launch-json" in panel.launch_html.value and str(endpoint.port) in panel.launch_html.value
    panel.launch_toggle.value = True
    assert panel.launch_html.layout.display is None
    panel.launch_toggle.value = False
    assert panel.launch_html.layout.display == "none"
    assert panel.write_button.disabled is False and "disabled" not in panel.copy_button.value
    assert panel.write_button.description == "Write to ../.vscode/launch.json"
    panel.write_button.click()
    target = workdir / ".vscode" / "launch.json"
    written = json.loads(target.read_text())
    assert written["configurations"][0]["connect"]["port"] == endpoint.port
    assert not (notebooks / ".vscode").exists()
    assert f"wrote widgety to {target}" in panel.message_html.value  # the absolute path
    client = attach_with_launch_config(run.launch_config(), {}, workspace_folder=str(workdir))
    try:
        wait_for(lambda: "data-endpoint='attached'" in panel.endpoints_html.value)
        wait_for(lambda: "data-state='attached'" in panel.header_html.value)
        assert panel.write_button.disabled is True  # attached: nobody else can attach
        assert run.wait(30) == "completed"
    finally:
        client.close()
    wait_for(lambda: "data-state='completed'" in panel.header_html.value)
    wait_for(lambda: "done 1" in panel.log_html.value)
    assert "closed (run ended)" in panel.endpoints_html.value and "listening" not in panel.endpoints_html.value
    assert panel.cancel_button.disabled is True and panel.write_button.disabled is True
    assert panel.actions.layout.display == "none"  # the run is over: no actions left
    assert "disabled" in panel.copy_button.value and panel.hint_html.value == ""


def test_widget_cancel_button_cancels_and_says_when(workdir):
    from aml_magics.views.widget import DebugRunPanel

    run = aml_magics.submit(code="import time\ntime.sleep(300)\n", name="cancelme", port=0, timeout=300)
    panel = DebugRunPanel(run)
    run.wait_for_endpoint(30)
    panel.cancel_button.click()
    assert run.wait(20) == "canceled"
    wait_for(lambda: "data-state='canceled'" in panel.header_html.value)
    detail = re.search(r"<span class='aml-detail'>([^<]*)</span>", panel.header_html.value).group(1)
    assert re.fullmatch(r"canceled by user after \d+(\.\d)? s", detail), detail
    wait_for(lambda: "canceled by user after" in panel.log_html.value)
    assert "closed (run canceled)" in panel.endpoints_html.value


def test_a_failed_run_says_why_with_the_users_frames_only(workdir):
    from aml_magics.views.widget import DebugRunPanel

    run = aml_magics.submit(code=FAILING, name="failing", port=0, timeout=0)
    panel = DebugRunPanel(run)
    assert run.wait(30) == "failed"
    assert run.detail == "KeyError: 'b' (exit code 1)"
    assert render_text(run).splitlines()[0].endswith("failed: KeyError: 'b' (exit code 1)")
    wait_for(lambda: "data-state='failed'" in panel.header_html.value)
    assert "KeyError: &#x27;b&#x27; (exit code 1)" in panel.header_html.value
    # The log: the traceback from the user's own frames; the bootstrap's and runpy's are left out.
    for shown in (run.logs, panel.log_html.value):
        assert "failing.py" in shown and "lookup" in shown and "KeyError" in shown
        assert "aml_magics/node/" not in shown and "runpy" not in shown
    assert "aml_magics/node/script.py" in run.raw_logs and "runpy" in run.raw_logs  # kept as they came
    traceback = run.logs.split("Traceback (most recent call last):\n", 1)[1].splitlines()
    script = run.spec.script_path
    assert [line for line in traceback if line.startswith("  File ")] == [
        f'  File "{script}", line 7, in <module>', f'  File "{script}", line 4, in lookup']
    assert traceback[-1] == "KeyError: 'b'"
    # --timeout 0: the endpoint was known, but never could a client attach.
    assert "closed (--timeout 0: no wait)" in panel.endpoints_html.value
    assert "listening" not in panel.endpoints_html.value and panel.write_button.disabled is True


def test_the_log_box_holds_the_whole_tail_of_a_long_run(workdir):
    from aml_magics.views.widget import DebugRunPanel

    run = aml_magics.submit(code="for i in range(1, 31):\n    print(f'line {i} of 30')\n", name="long", no_debug=True)
    panel = DebugRunPanel(run)
    assert run.wait(30) == "completed"
    wait_for(lambda: "line 30 of 30" in panel.log_html.value)
    assert panel.log_html.value.count("class='aml-log-line'") == 30
    assert panel.log_box.layout.flex_flow == "column-reverse"  # the newest line stays in view
    assert "debugger off (--no-debug)" in panel.endpoints_html.value


def test_aml_runs_says_what_each_debugger_is_now_and_groups_ranks_by_node(shell, workdir, capsys):
    from aml_magics.views.widget import DebugRunPanel

    done = shell.run_cell_magic("aml_debug_run", "--name quick --port 0 --timeout 0 --wait", "print('hi')\n")
    run = shell.run_cell_magic("aml_debug_run", "--name fleet --nodes 2 --procs-per-node 2 --port 0 --timeout 120",
                               "import time\ntime.sleep(60)\n")
    try:
        wait_for(lambda: len(run.endpoints) == 4, 60, "four endpoints")
        capsys.readouterr()
        shell.run_line_magic("aml_runs", "")
        out = capsys.readouterr().out
        quick = next(line for line in out.splitlines() if line.startswith(done.id))
        assert "closed (--timeout 0: no wait)" in quick and "listening" not in quick
        lines = out.splitlines()
        first = next(i for i, line in enumerate(lines) if line.startswith(run.id))
        assert re.search(r"node 0 127\.0\.0\.1: rank 0 127\.0\.0\.1:\d+ listening, \d+ s left; rank 1 ", lines[first])
        assert re.search(r"^\s+node 1 127\.0\.0\.1: rank 2 127\.0\.0\.1:\d+ listening, \d+ s left; rank 3 ",
                         lines[first + 1])
        table = DebugRunPanel(run)._endpoints_html()
        assert table.count("<tr class='aml-node'") == 2 and table.count("<tr class='aml-rank'") == 4
        assert "  node 1 (127.0.0.1):\n    rank 2: 127.0.0.1:" in render_text(run)
    finally:
        run.cancel()
    capsys.readouterr()
    shell.run_line_magic("aml_runs", "")
    lines = capsys.readouterr().out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(run.id))
    mine = "\n".join(lines[first:first + 2])
    assert "listening" not in mine and mine.count("closed (run canceled)") == 4, mine


def test_traceback_frames_of_ranks_and_chains():
    """The filter reads each rank's lines apart and keeps the user's frames of a chain."""
    lines = [
        "[rank 1] Traceback (most recent call last):",
        '[rank 0] step 3',
        '[rank 1]   File "/aml_magics/node/script.py", line 34, in run_user_script',
        "[rank 1]     runpy.run_path(script_path, run_name=\"__main__\")",
        '[rank 1]   File "<frozen runpy>", line 291, in run_path',
        '[rank 1]   File "/app/train.py", line 3, in <module>',
        "[rank 1]     1 / 0",
        "[rank 1]     ~~^~~",
        "[rank 1] ZeroDivisionError: division by zero",
    ]
    assert user_lines(lines) == [lines[0], lines[1], *lines[5:]]
    failure = last_failure(lines)
    assert failure is not None and failure.summary == "rank 1: ZeroDivisionError: division by zero"
    chain = [
        "Traceback (most recent call last):",
        '  File "/mnt/wd/aml_magics_node/script.py", line 1, in run_user_script',
        "    x",
        '  File "/mnt/wd/train.py", line 2, in <module>',
        "    {}['k']",
        "KeyError: 'k'",
        "",
        "During handling of the above exception, another exception occurred:",
        "",
        "Traceback (most recent call last):",
        '  File "/mnt/wd/train.py", line 4, in <module>',
        "    raise ValueError('no k')",
        "ValueError: no k",
    ]
    keep = FrameFilter().keep
    assert [line for line in chain if keep(line)] == chain[:1] + chain[3:]
    assert last_failure(chain).exception == "ValueError: no k"
    assert last_failure(["hello", "Traceback (most recent call last):"]) is None  # cut short
