"""The lower items of the second trust round: markers after a progress bar, one attach per
window on a direct port, the output cap in bytes, a run's escape sequences in a terminal, and
``%aml_images --remove ''``. Real runs, a real DAP client, a real CLI process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from IPython.core.error import UsageError

import aml_magics
from aml_magics.output import MAX_KEPT_BYTES, MAX_LINE_BYTES, fresh_lines, terminal_safe
from aml_magics.testing.dap import attach_with_launch_config


def test_a_marker_after_a_progress_bar_starts_its_own_line(workdir):
    """``50%\\r`` with no newline, then the node's marker: the marker is still one (not output)."""
    code = "import sys\nsys.stdout.write('progress 50%\\r')\nsys.stdout.flush()\n"
    run = aml_magics.submit(code=code, name="bar", port=0, timeout=0, wait=True)
    assert run.state == "completed"
    assert "AML_MAGICS_" not in run.logs, run.logs  # every marker was read as one
    assert "progress 50%" in run.logs.splitlines()
    assert fresh_lines("10%\r20%\rAML_MAGICS_X {} m", "AML_MAGICS_") == ["10%\r20%", "AML_MAGICS_X {} m"]


LOOP = "import time\nfor i in range(100):\n    time.sleep(0.05)\nprint('done', i)\n"


def _initialize(port: int) -> bytes:
    """A second client's DAP initialize on the run's direct port: what comes back."""
    body = json.dumps({"seq": 1, "type": "request", "command": "initialize", "arguments": {"adapterID": "x"}})
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
            sock.settimeout(5)
            return sock.recv(4096)
    except OSError:
        return b""


def test_a_direct_run_takes_no_second_attach_after_the_first_leaves(workdir):
    """One attach per window: the moment the first client leaves, a second finds no port (it used
    to be let in for the 0.25 s the detach poll took)."""
    script = workdir / "loop.py"
    script.write_text(LOOP)
    run = aml_magics.submit(str(script), port=0, timeout=60)
    endpoint = run.wait_for_endpoint(30)
    with attach_with_launch_config(run.launch_config(), {}, workspace_folder=str(workdir)) as client:
        client.disconnect()
    assert _initialize(endpoint.port) == b""
    assert run.wait(60) == "completed" and "done 99" in run.logs


def test_the_output_cap_counts_bytes(workdir):
    """Lines of 4-byte characters: what a run keeps stays within MAX_KEPT_BYTES bytes."""
    per_line = MAX_LINE_BYTES // 4 - 100  # under the line cut: whole lines of 4-byte characters
    code = f"for i in range(1000):\n    print('\\U0001F600' * {per_line})\nprint('end')\n"
    run = aml_magics.submit(code=code, name="wide", no_debug=True, wait=True)
    assert run.state == "completed" and run.logs.splitlines()[-1] == "end"
    kept = sum(len(line.encode("utf-8")) for line in run.raw_logs.splitlines())
    assert kept <= MAX_KEPT_BYTES, f"{kept / 2**20:.1f} MiB kept"


HOSTILE_OUTPUT = (
    "import sys\n"
    "sys.stdout.write('clip \\x1b]52;c;ZXZpbA==\\x07 clear \\x1b[2J title \\x1b]0;pwned\\x07 csi \\x9b6n "
    "\\x1b[31mred\\x1b[0m\\n')\n"
)


def test_the_cli_shows_a_runs_escape_sequences_as_text(workdir):
    """OSC 52 (a clipboard write), a screen clear, a title, a C1 CSI: shown, never acted on; colours kept."""
    (workdir / "hostile.py").write_text(HOSTILE_OUTPUT)
    env = {k: v for k, v in os.environ.items() if k != "AML_MAGICS_VIEW"}
    env["PYTHONPATH"] = str(Path(aml_magics.__file__).parent.parent)
    done = subprocess.run([sys.executable, "-m", "aml_magics.cli", "run", "hostile.py", "--no-debug"], cwd=workdir,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    line = next(text for text in done.stdout.splitlines() if text.startswith("clip"))
    assert "\x1b]" not in line and "\x07" not in line and "\x9b" not in line and "\x1b[2J" not in line
    assert "\\x1b]52;c;ZXZpbA==\\x07" in line and "\\x1b[2J" in line and "\\x9b6n" in line
    assert "\x1b[31mred\x1b[0m" in line
    assert terminal_safe("10%\r20%\r") == "20%"


def test_aml_images_remove_nothing_is_one_line(shell):
    for line in ("--remove ''", '--remove "  "'):
        with pytest.raises(UsageError, match=r"^--remove takes an image's tag or id, not an empty name; usage"):
            shell.run_line_magic("aml_images", line)
