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


def test_kernel_interrupt_cancels_a_waiting_run(kernel):
    execute(kernel, "%load_ext aml_magics")
    km_pids: list[int] = []

    def interrupt(msg):
        pid = int(msg["content"]["text"].split("started", 1)[1].split()[0])
        km_pids.append(pid)
        kernel_manager.interrupt_kernel()

    kernel_manager = kernel.parent
    messages = execute(kernel, "%%aml_debug_run --no-debug --wait\nimport os, time\nprint('started', os.getpid(), flush=True)\ntime.sleep(300)\n",
                       on_started=interrupt)
    text = "".join(m["content"].get("text", "") for m in messages if m["msg_type"] == "stream")
    assert "canceled (interrupted)" in text
    assert km_pids
    deadline = time.time() + 10
    while psutil.pid_exists(km_pids[0]) and time.time() < deadline:
        time.sleep(0.1)
    assert not psutil.pid_exists(km_pids[0])
