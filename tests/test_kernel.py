"""In a real Jupyter kernel: the widget is the rich display, and a kernel interrupt cancels."""

from __future__ import annotations

import time

import psutil
import pytest
from conftest import start_kernel

jupyter_client = pytest.importorskip("jupyter_client", reason="jupyter_client comes with ipykernel ([test] extra)")


@pytest.fixture
def kernel(tmp_path):
    km, kc = start_kernel(tmp_path)
    yield kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def execute(kc, code: str, timeout: float = 60, on_started=None) -> list[dict]:
    msg_id = kc.execute(code)
    messages = []
    deadline = time.time() + timeout
    started = False
    while time.time() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=1)
        except Exception:
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        messages.append(msg)
        if on_started and not started and msg["msg_type"] == "stream" and "started" in msg["content"]["text"]:
            started = True
            on_started(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return messages
    raise AssertionError(f"no idle after {timeout}s: {messages[-5:]}")


def test_widget_is_the_rich_display_in_a_kernel(kernel):
    execute(kernel, "%load_ext aml_magics")
    messages = execute(kernel, "%%aml_debug_run --name k --port 0 --timeout 1\nprint('hi')\n")
    results = [m for m in messages if m["msg_type"] == "execute_result"]
    assert results, [m["msg_type"] for m in messages]
    data = results[0]["content"]["data"]
    assert "application/vnd.jupyter.widget-view+json" in data
    assert "aml_magics run k-1 (k) on local" in data["text/plain"]


def test_kernel_interrupt_cancels_a_waiting_run(kernel, tmp_path):
    execute(kernel, "%load_ext aml_magics")
    started = tmp_path / "started"
    km_pids: list[int] = []

    def interrupt_once_started() -> None:  # the run's output is the panel's (--wait shows it), not a stream
        deadline = time.time() + 60
        while not started.exists() and time.time() < deadline:
            time.sleep(0.1)
        km_pids.append(int(started.read_text()))
        kernel.parent.interrupt_kernel()

    import threading

    threading.Thread(target=interrupt_once_started, daemon=True).start()
    messages = execute(kernel, "%%aml_debug_run --no-debug --wait\nimport os, time\n"
                               f"open({str(started)!r}, 'w').write(str(os.getpid()))\ntime.sleep(300)\n")
    text = "".join(m["content"].get("text", "") for m in messages if m["msg_type"] == "stream")
    assert "canceled (interrupted)" in text
    assert km_pids
    deadline = time.time() + 10
    while psutil.pid_exists(km_pids[0]) and time.time() < deadline:
        time.sleep(0.1)
    assert not psutil.pid_exists(km_pids[0])


def test_wait_shows_the_live_panel_and_the_log_once(kernel):
    """``--wait`` in a notebook: the panel (state, countdown, Cancel, the log) while the cell blocks;
    the run's output is in the panel only, not streamed beside it and shown again."""
    execute(kernel, "%load_ext aml_magics")
    messages = execute(kernel, "%%aml_debug_run --name w --port 0 --timeout 0 --wait\nprint('said-once')\n")
    kinds = [m["msg_type"] for m in messages]
    shown = [m for m in messages if m["msg_type"] == "display_data"]
    assert shown and "application/vnd.jupyter.widget-view+json" in shown[0]["content"]["data"], kinds
    assert "execute_result" not in kinds  # the panel above is the cell's output, not a second one
    streamed = "".join(m["content"].get("text", "") for m in messages if m["msg_type"] == "stream")
    assert "said-once" not in streamed
    state = "".join(str(m["content"].get("data", {}).get("state", {})) for m in messages
                    if m["msg_type"] == "comm_msg")
    assert "said-once" in state and "completed" in state  # the panel's log and badge, updated live
    # Once ended, the same display's text form holds the log (a saved notebook, nbconvert), once.
    updates = [m["content"]["data"] for m in messages if m["msg_type"] == "update_display_data"]
    assert updates and updates[-1]["text/plain"].count("said-once") == 1
    assert "application/vnd.jupyter.widget-view+json" in updates[-1]  # still the panel where widgets render
