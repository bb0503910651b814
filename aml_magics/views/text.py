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
    "crashed_waiting_for_debugger": "crashed — waiting for debugger",  # post-mortem
    "starting": "starting",  # a deployment's server, before its debugger listens
    "serving": "serving",  # a deployment whose init() returned: it takes scoring requests
    "completed": "completed",
    "failed": "failed",
    "canceled": "canceled",
}


def state_label(run: "DebugRun") -> str:
    label = STATE_LABELS.get(run.state, run.state)
    left = run.seconds_left_to_attach()
    if left is not None:
        label += f" ({left:.0f}s left to attach)"
    if run.state in ("failed", "crashed_waiting_for_debugger") and run.detail:
        label += f": {run.detail}"
    return label


def rank_state_label(status) -> str:
    """One rank's state (a RankStatus), with what it crashed with or waits at."""
    label = STATE_LABELS.get(status.state, status.state)
    detail = status.detail
    if detail and status.state in ("crashed_waiting_for_debugger", "waiting_for_debugger", "failed"):
        label += f": {detail}"
    return label


def rank_address(run: "DebugRun", status) -> str:
    """Where a rank's debugger listens, or why it has none."""
    if status.endpoint is not None:
        return status.endpoint.address
    if not run.spec.debug.debugs_rank(status.rank):
        return "no debugger"
    return "not known yet"


def render_text(run: "DebugRun", log_lines: int = 0) -> str:
    lines = [f"aml_magics run {run.id} ({run.name}) on {run.target}: {state_label(run)}"]
    if run.description:
        lines.append(run.description)
    for facet in run.facets:  # e.g. a deployment's scoring URI
        lines.extend(facet.text_lines())
    endpoints = run.endpoints
    for endpoint in endpoints:
        rank = f" rank {endpoint.rank}" if len(endpoints) > 1 else ""
        lines.append(f"debugpy listening{rank} at {endpoint.address}")
    ranks = run.ranks
    if len(ranks) > 1:
        lines.append("ranks:")
        lines.extend(f"  rank {s.rank}: {rank_address(run, s)} — {rank_state_label(s)}" for s in ranks)
    if endpoints:
        lines.append("launch.json:")
        lines.append(json.dumps(run.launch_json(), indent=4))
    elif not run.spec.debug.enabled:
        lines.append("debugger off (--no-debug)")
    if log_lines:
        lines.extend(run.log_tail(log_lines))
    return "\n".join(lines)
