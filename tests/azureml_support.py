"""Shared pieces of the azureml tests: a workspace config, the simulator switched on, a
network-namespace node (or loopback, with the reason it had to be)."""

from __future__ import annotations

import json
import time
from pathlib import Path

SCRIPT = """\
import sys
total = 0
for i in range(5):
    total += i
marker = f"total={total}"
print(marker, sys.argv[1:])
"""
BREAK_LINE = 5  # marker = ...
WORKSPACE = {"subscription_id": "00000000-0000-0000-0000-000000000001", "resource_group": "rg-debug",
             "workspace_name": "ws-debug"}


def write_workspace_config(folder: Path) -> Path:
    path = folder / ".azureml" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(WORKSPACE))
    return path


def write_project(folder: Path, script: str = SCRIPT, name: str = "train.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(script)
    return folder / name


def use_simulator(monkeypatch, root: Path, layout: str = "user_logs", netns: str = "") -> None:
    monkeypatch.setenv("AML_MAGICS_AZUREML_BACKEND", "simulator")
    monkeypatch.setenv("AML_MAGICS_SIM_ROOT", str(root))
    monkeypatch.setenv("AML_MAGICS_SIM_LOG_LAYOUT", layout)
    monkeypatch.setenv("AML_MAGICS_SIM_NETNS", netns)
    monkeypatch.setenv("AML_MAGICS_SIM_STATE_SECONDS", "0.05")
    monkeypatch.setenv("AML_MAGICS_AZUREML_POLL_SECONDS", "0.2")
    for name in ("AML_MAGICS_SIM_AUTH", "AML_MAGICS_SIM_COMPUTES", "AML_MAGICS_COMPUTE", "AML_MAGICS_EXPERIMENT",
                 "AML_MAGICS_WORKSPACE_CONFIG", "CI_NAME", "CI_RESOURCE_GROUP", "CI_WORKSPACE", "JPY_SESSION_NAME"):
        monkeypatch.delenv(name, raising=False)


def namespace_or_loopback():
    """For a fixture: a network-namespace node with its own address, or None (loopback) with the reason."""
    from aml_magics.testing.azureml_simulator import NamespaceUnavailable, NodeNamespace

    namespace = NodeNamespace()
    try:
        namespace.create()
    except NamespaceUnavailable as exc:
        print(f"\nazureml simulator: no network namespace ({exc}); the simulated node runs on loopback")
        yield None
        return
    try:
        yield namespace
    finally:
        namespace.remove()


def wait_for(predicate, timeout: float, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
