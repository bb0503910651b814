"""Plain-text view: the same facts as the widget, for terminals, the CLI and nbconvert."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..run import DebugRun

STATE_LABELS = {
    "preparing": "preparing",
    "building": "building environment",
    "queued": "queued",
    "running": "running",
    "waiting_for_debugger": "waiting for debugger",
    "attached": "debugger attached",
    "completed": "completed",
    "failed": "failed",
    "canceled": "canceled",
}


def state_label(run: "DebugRun") -> str:
    label = STATE_LABELS.get(run.state, run.state)
    left = run.seconds_left_to_attach()
    if left is not None:
        label += f" ({left:.0f}s left to attach)"
    if run.state == "failed" and run.detail:
        label += f": {run.detail}"
    return label


def render_text(run: "DebugRun", log_lines: int = 0) -> str:
    lines = [f"aml_magics run {run.id} ({run.name}) on {run.target}: {state_label(run)}"]
    if run.description:
        lines.append(run.description)
    endpoints = run.endpoints
    for endpoint in endpoints:
        rank = f" rank {endpoint.rank}" if len(endpoints) > 1 else ""
        lines.append(f"debugpy listening{rank} at {endpoint.address}")
    if endpoints:
        lines.append("launch.json:")
        lines.append(json.dumps(run.launch_json(), indent=4))
    elif not run.spec.debug.enabled:
        lines.append("debugger off (--no-debug)")
    if log_lines:
        lines.extend(run.log_tail(log_lines))
    return "\n".join(lines)
