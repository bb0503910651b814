"""A DAP client in a process of its own, for a test to kill with SIGKILL once it stopped somewhere.

``python vanishing_client.py CONFIG_JSON WORKSPACE MODE SCRIPT LINE``: attaches as VS Code would
with the launch.json configuration, stops (MODE: ``breakpoint`` at SCRIPT:LINE, ``step`` — one
``next`` after that breakpoint, ``exception`` — a raised exception, ``pause`` — a pause request,
``post-mortem`` — the crash the run waits with), prints ``STOPPED <reason> <line>`` and then waits, holding the connection open,
until it is killed.
"""

from __future__ import annotations

import json
import sys
import time

from aml_magics.dap.session import address_of
from aml_magics.testing.dap import DapClient


def main(config_json: str, workspace: str, mode: str, script: str, line: str) -> None:
    config = json.loads(json.dumps(json.loads(config_json)).replace("${workspaceFolder}", workspace))
    host, port = address_of(config, "attach configuration")
    client = DapClient.connect(host, port, timeout=30)
    breakpoints = {script: [int(line)]} if mode in ("breakpoint", "step") else {}
    filters = ["raised"] if mode == "exception" else []
    client.session.attach(config, breakpoints, timeout=30, exception_filters=filters)
    if mode == "pause":
        threads = client.request("threads").get("threads") or []
        client.request("pause", {"threadId": threads[0]["id"]})
    stop = client.wait_stopped(60)
    if mode == "step":
        client.request("next", {"threadId": stop.thread_id})
        stop = client.wait_stopped(60, reason="step")
    print(f"STOPPED {stop.reason} {stop.line}", flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main(*sys.argv[1:6])
