"""Plain-text view: the same facts as the widget, for terminals, the CLI and nbconvert.

Also the words both views use, so they say the same thing: a state's label, what an endpoint
is *now* (listening with the seconds left, attached, or closed and why: a debugger that is not
there any more is never shown as listening), how to attach, and a distributed run's ranks
grouped by node.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from .. import launch
from ..failure import user_lines
from ..protocol import DETACHED_BY_YOU

if TYPE_CHECKING:
    from ..protocol import Endpoint
    from ..run import DebugRun, RankStatus

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
LISTENING, ATTACHED, CLOSED = "listening", "attached", "closed"


def state_detail(run: "DebugRun") -> str:
    """What goes beside the state badge: why it failed or crashed, when it was canceled (the seconds
    left to attach are the endpoint's, beside it)."""
    if run.state in ("failed", "crashed_waiting_for_debugger", "canceled") and run.detail:
        return run.detail
    if run.state == "running" and run.debugger_note:  # the client left: "debugger gone (connection lost) after 12 s"
        return run.debugger_note
    return ""


def state_label(run: "DebugRun") -> str:
    """``waiting for debugger (27s left to attach)``, ``failed: KeyError: 'b' (exit code 1)``,
    ``canceled by user after 3.2 s``."""
    label = STATE_LABELS.get(run.state, run.state)
    left = run.seconds_left_to_attach()
    if left is not None:
        label += f" ({left:.0f}s left to attach)"
    if run.state == "canceled" and run.detail:
        return run.detail if run.detail.startswith("canceled") else f"{label}: {run.detail}"
    if run.state in ("failed", "crashed_waiting_for_debugger") and run.detail:
        label += f": {run.detail}"
    elif run.state == "running" and run.debugger_note:
        label += f"; {run.debugger_note}"  # "running; debugger gone (connection lost) after 12 s"
    return label


def rank_state_label(status: "RankStatus") -> str:
    """One rank's state (a RankStatus), with what it crashed with or waits at."""
    label = STATE_LABELS.get(status.state, status.state)
    detail = status.detail
    if detail and status.state in ("crashed_waiting_for_debugger", "waiting_for_debugger", "failed"):
        label += f": {detail}"
    return label


# -- endpoints: what is true now --------------------------------------------------------------------


class EndpointNow(NamedTuple):
    kind: str  # listening | attached | closed
    words: str  # "listening, 27 s left", "closed (nobody attached in 30 s)"


def endpoint_now(run: "DebugRun", status: "RankStatus") -> EndpointNow:
    """What a rank's debugger endpoint is now: listening (with the seconds left), attached, closed."""
    if not run.done:
        if status.state in ("waiting_for_debugger", "crashed_waiting_for_debugger"):
            left = run.seconds_left_to_attach()
            return EndpointNow(LISTENING, f"listening, {left:.0f} s left" if left is not None else "listening")
        if status.state == "attached":
            return EndpointNow(ATTACHED, "attached")
        if status.detail.startswith(("debugger ", DETACHED_BY_YOU)):  # the client left: "… after 12 s"
            if run.spec.debug.reattach:
                return EndpointNow(LISTENING, f"listening again ({status.detail})")
            return EndpointNow(CLOSED, f"closed ({status.detail})")
        return EndpointNow(CLOSED, _nobody_came(run))
    if run.world_size == 1 and run.attached is False:
        return EndpointNow(CLOSED, _nobody_came(run))
    return EndpointNow(CLOSED, "closed (run ended)" if run.state != "canceled" else "closed (run canceled)")


def _nobody_came(run: "DebugRun") -> str:
    if run.debugger_note:  # somebody came, and left: "debugger detached after 3 s", "detached by you after 3 s"
        return f"closed ({run.debugger_note})"
    timeout = run.spec.debug.timeout
    return "closed (--timeout 0: no wait)" if timeout == 0 else f"closed (nobody attached in {timeout:g} s)"


def listening_endpoints(run: "DebugRun") -> list["Endpoint"]:
    return [s.endpoint for s in run.ranks if s.endpoint is not None and endpoint_now(run, s).kind == LISTENING]


def can_attach(run: "DebugRun") -> bool:
    """Whether a client could attach now (what Copy/Write are for)."""
    return bool(listening_endpoints(run))


def rank_address(run: "DebugRun", status: "RankStatus") -> str:
    """Where a rank's debugger listens (``(closed)`` once it does not), or why it has none."""
    if status.endpoint is not None:
        closed = endpoint_now(run, status).kind == CLOSED
        return status.endpoint.address + (" (closed)" if closed else "")
    if not run.spec.debug.debugs_rank(status.rank):
        return "no debugger"
    return "not known yet"


class RankRow(NamedTuple):
    """One rank as both views show it (the one place a rank's row is worked out)."""

    rank: int
    address: str  # host:port, or why there is none ("no debugger", "not known yet")
    now: EndpointNow | None  # what its debugger is now; None without an endpoint
    state: str
    state_label: str

    @property
    def where(self) -> str:
        """The address, marked ``(closed)`` once nobody can attach there."""
        return self.address + (" (closed)" if self.now is not None and self.now.kind == CLOSED else "")

    def text(self) -> str:
        return f"rank {self.rank}: {self.where} — {self.state_label}"

    def summary(self) -> str:
        return f"rank {self.rank} " + (f"{self.address} {self.now.words}" if self.now is not None else self.address)


def rank_row(run: "DebugRun", status: "RankStatus") -> RankRow:
    if status.endpoint is None:
        return RankRow(status.rank, rank_address(run, status), None, status.state, rank_state_label(status))
    return RankRow(status.rank, status.endpoint.address, endpoint_now(run, status), status.state,
                   rank_state_label(status))


def node_host(endpoint: "Endpoint") -> str:
    """The address of the machine a debugger runs on (its far side when reached through a tunnel)."""
    far = getattr(endpoint, "node_address", None)
    return far.rsplit(":", 1)[0] if far else endpoint.host


def route_line(run: "DebugRun") -> str:
    """How the debuggers are reached when not directly, e.g. "via the workspace proxy (SSH service,
    node 1)"; "" when every endpoint is reached directly."""
    details = sorted({e.route_detail for e in run.endpoints if getattr(e, "route", "direct") != "direct"
                      and getattr(e, "route_detail", "")})
    return "; ".join(details)


def by_node(run: "DebugRun") -> list[tuple[int, str, list["RankStatus"]]]:
    """The ranks grouped by node: (node index, the node's address or "", its ranks)."""
    nodes: dict[int, list[RankStatus]] = {}
    for status in run.ranks:
        nodes.setdefault(run.spec.distributed.placement(status.rank)[0], []).append(status)
    return [(node, next((node_host(s.endpoint) for s in ranks if s.endpoint is not None), ""), ranks)
            for node, ranks in sorted(nodes.items())]


def endpoint_summary(run: "DebugRun") -> list[str]:
    """One line per node (one line for a single process): where and what each debugger is now;
    for ``%aml_runs``."""
    if not run.spec.debug.enabled:
        return ["debugger off"]
    ranks = run.ranks
    if len(ranks) <= 1:
        status = ranks[0] if ranks else None
        if status is None or status.endpoint is None:
            return ["-"]
        via = getattr(status.endpoint, "route_detail", "")
        return [f"{status.endpoint.address} {endpoint_now(run, status).words}" + (f" {via}" if via else "")]
    lines = []
    for node, host, statuses in by_node(run):
        parts = [rank_row(run, s).summary() for s in statuses]
        via = next((s.endpoint.route_detail for s in statuses if s.endpoint is not None and s.endpoint.route_detail),
                   "")
        lines.append(f"node {node}" + (f" {host}" if host else "") + ": " + "; ".join(parts) + (f" {via}" if via else ""))
    return lines


# -- the roster: every rank's debugger ----------------------------------------------------------------

ROSTER_HEADER = ("node", "address", "rank", "debugger", "where", "reason", "for")


def debugger_words(status: "RankStatus") -> str:
    """A rank's debugger in a few words: ``stopped at reduce.py:12 (breakpoint)``, ``ended (exit code 0)``."""
    if status.debugger == "ended":
        return f"ended ({status.reason})" if status.reason else "ended"
    where = f" at {os.path.basename(status.where)}" if status.where else ""
    reason = f" ({status.reason})" if status.debugger == "stopped" and status.reason else ""
    return f"{status.debugger}{where}{reason}"


def seconds_words(seconds: float) -> str:
    """``42 s``, ``3 min 5 s``, ``2 h 1 min``."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def roster_order(statuses: list["RankStatus"]) -> list["RankStatus"]:
    """The stopped ranks first (longest stopped first), then by rank."""
    return sorted(statuses, key=lambda s: (s.debugger != "stopped", s.since if s.debugger == "stopped" else 0, s.rank))


def roster_rows(run: "DebugRun") -> list[tuple[str, ...]]:
    """The roster as rows of text (``ROSTER_HEADER``): grouped by node, the stopped ranks first."""
    rows: list[tuple[str, ...]] = []
    nodes: dict[int, list[RankStatus]] = {}
    for status in run.ranks:
        nodes.setdefault(status.node, []).append(status)
    for node, statuses in sorted(nodes.items()):
        for status in roster_order(statuses):
            rows.append((str(node), status.node_address or "?", str(status.rank), status.debugger,
                         os.path.basename(status.where) if status.where else "", status.reason,
                         seconds_words(status.seconds)))
    return rows


def roster_text(run: "DebugRun") -> str:
    """``%aml_runs RUN --ranks``: one line per rank, grouped by node, the stopped ones first."""
    rows = [ROSTER_HEADER, *roster_rows(run)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(ROSTER_HEADER))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


# -- how to attach ---------------------------------------------------------------------------------


def attach_hint(run: "DebugRun") -> str:
    """``open .aml_magics/cells/quickstart.py in VS Code, Run and Debug → "quickstart" → F5``."""
    endpoints = run.endpoints
    if not endpoints:
        return ""
    name = run.config_name(endpoints[0]) if len(endpoints) == 1 else f"{run.name} (all ranks)"
    return f'open {file_to_open(run)} in VS Code, Run and Debug → "{name}" → F5'


def workspace_of(run: "DebugRun") -> Path:
    """The folder VS Code opens for this run: the one of the launch.json Write writes (--launch-json,
    else the workspace root's), so a copied configuration and a written one are the same."""
    return launch.workspace_folder_for(run.launch_json_path or launch.default_launch_json(Path.cwd()))


def shown_launch_json(run: "DebugRun") -> dict:
    """The launch.json fragment as the views show it (paths relative to :func:`workspace_of`)."""
    return run.launch_json(workspace_of(run))


def file_to_open(run: "DebugRun") -> str:
    """The file to set breakpoints in (the cell's file, the script, score.py), relative to the
    folder VS Code opens (the launch.json's workspace) when inside it."""
    path = Path(getattr(run, "score_path", None) or run.spec.mapped_local_root / run.spec.script)
    workspace = workspace_of(run)
    try:
        return str(Path(os.path.abspath(path)).relative_to(workspace))
    except ValueError:
        return str(path)


# -- the view --------------------------------------------------------------------------------------


def render_text(run: "DebugRun", log_lines: int = 0) -> str:
    lines = [f"aml_magics run {run.id} ({run.name}) on {run.target}: {state_label(run)}"]
    if run.description:
        lines.append(run.description)
    if route_line(run):
        lines.append(f"debuggers reached {route_line(run)}")
    for facet in run.facets:  # e.g. a deployment's scoring URI
        lines.extend(facet.text_lines())
    ranks = run.ranks
    if len(ranks) > 1:
        lines.append("ranks:")
        grouped = by_node(run)
        for node, host, statuses in grouped:
            indent = "  "
            if len(grouped) > 1:
                lines.append(f"  node {node}" + (f" ({host}):" if host else ":"))
                indent = "    "
            lines.extend(f"{indent}{rank_row(run, s).text()}; debugger {debugger_words(s)} for "
                         f"{seconds_words(s.seconds)}" for s in roster_order(statuses))
    elif ranks and ranks[0].endpoint is not None:
        lines.append(f"debugpy at {ranks[0].endpoint.address}: {endpoint_now(run, ranks[0]).words}")
    elif not run.spec.debug.enabled:
        lines.append("debugger off (--no-debug)")
    if can_attach(run):
        lines.append(attach_hint(run))
        lines.append("launch.json:")
        lines.append(json.dumps(shown_launch_json(run), indent=4))
    if getattr(run, "crashes", None):
        lines.append(f"crash capsule: open with run.crash(), aml_magics.open_crash({run.id!r}) or %aml_crash {run.id}")
    if log_lines:
        lines.extend(user_lines(run.log_tail(log_lines)))
    return "\n".join(lines)
