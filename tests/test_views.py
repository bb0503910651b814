"""The text view and the ipywidgets panel, fed by a real run."""

from __future__ import annotations

import json

from conftest import wait_for

import aml_magics
from aml_magics.testing.dap import attach_with_launch_config
from aml_magics.views import mimebundle, render_text


def test_text_view_has_the_facts_and_no_html(workdir):
    run = aml_magics.submit(code="print('hello')\n", name="texty", port=0, timeout=30)
    endpoint = run.wait_for_endpoint(30)
    text = render_text(run)
    assert "texty" in text and "local" in text and "waiting for debugger" in text
    assert "s left to attach" in text
    assert f"debugpy listening at {endpoint.address}" in text
    fragment = json.loads(text.split("launch.json:\n", 1)[1])
    assert fragment["configurations"][0]["connect"]["port"] == endpoint.port
    assert "<" not in text
    assert mimebundle(run) == {"text/plain": render_text(run)} or "text/plain" in mimebundle(run)
    run.cancel()
    assert run.state == "canceled"
    assert "canceled" in render_text(run)


def test_widget_panel_updates_live_and_its_buttons_work(workdir):
    from aml_magics.views.widget import DebugRunPanel

    run = aml_magics.submit(code="import time\nx = 1\ntime.sleep(2)\nprint('done', x)\n",
                            name="widgety", port=0, timeout=60)
    panel = DebugRunPanel(run)
    endpoint = run.wait_for_endpoint(30)
    wait_for(lambda: endpoint.address in panel.endpoints_html.value)
    wait_for(lambda: "waiting for debugger" in panel.header_html.value)
    assert "left to attach" in panel.header_html.value
    assert "aml-launch-json" in panel.launch_html.value and str(endpoint.port) in panel.launch_html.value
    assert panel.write_button.disabled is False
    panel.write_button.click()
    written = json.loads((workdir / ".vscode" / "launch.json").read_text())
    assert written["configurations"][0]["connect"]["port"] == endpoint.port
    assert "wrote widgety" in panel.message_html.value
    client = attach_with_launch_config(run.launch_config(), {}, workspace_folder=str(workdir))
    try:
        wait_for(lambda: "debugger attached" in panel.header_html.value)
        assert run.wait(30) == "completed"
    finally:
        client.close()
    wait_for(lambda: "completed" in panel.header_html.value)
    wait_for(lambda: "done 1" in panel.log_html.value)
    assert panel.cancel_button.disabled is True


def test_widget_cancel_button_cancels(workdir):
    from aml_magics.views.widget import DebugRunPanel

    run = aml_magics.submit(code="import time\ntime.sleep(300)\n", name="cancelme", port=0, timeout=300)
    panel = DebugRunPanel(run)
    run.wait_for_endpoint(30)
    panel.cancel_button.click()
    assert run.wait(20) == "canceled"
    wait_for(lambda: "canceled" in panel.header_html.value)
