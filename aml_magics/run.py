"""DebugRun: one run's live state, fed by its target, read by views and users."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from . import launch
from .markers import Endpoint, endpoint_from, parse_marker
from .spec import RunSpec
from .targets.base import RunEvents, RunHandle

PREPARING = "preparing"
BUILDING = "building"
QUEUED = "queued"
RUNNING = "running"
WAITING = "waiting_for_debugger"
ATTACHED = "attached"
CRASHED = "crashed_waiting_for_debugger"  # post-mortem: an uncaught exception waits for a client
COMPLETED = "completed"
FAILED = "failed"
CANCELED = "canceled"
STATES = (PREPARING, BUILDING, QUEUED, RUNNING, WAITING, ATTACHED, CRASHED, COMPLETED, FAILED, CANCELED)
TERMINAL = frozenset({COMPLETED, FAILED, CANCELED})
# States the debug markers move a run between (its ranks' states, summed up).
_DEBUG_STATES = frozenset({RUNNING, WAITING, ATTACHED, CRASHED})
_RANK_MARKERS = frozenset({"ENDPOINT", "ATTACHED", "POST_MORTEM", "BREAKPOINT", "EXIT"})


class _RankTuple(NamedTuple):
    rank: int
    endpoint: Endpoint | None
    state: str


class RankStatus(_RankTuple):
    """One rank of a run: (rank, endpoint or None, state); ``detail`` says more.

    The endpoint is None for a rank without a debugger (outside --debug-ranks) or one
    that has not reported yet; ``detail`` holds e.g. the exception a crashed rank waits with.
    """

    detail: str = ""

MAX_LOG_LINES = 20_000
Listener = Callable[["DebugRun", str], None]


class RunFailed(RuntimeError):
    """The run ended without what was waited for."""


class DebugRun:
    """A handle on a run with the debugger enabled.

    Events arrive from the target's thread; readers may be on any thread. Every
    change notifies listeners with one of "state", "line", "endpoint".
    """

    def __init__(self, run_id: str, spec: RunSpec, target: str, *, description: str = "") -> None:
        self.id = run_id
        self.spec = spec
        self.target = target
        self.description = description
        self.created = time.time()
        self.exit_code: int | None = None
        self.detail = ""
        self.attached: bool | None = None
        self.attach_deadline: float | None = None
        self._error = ""  # the last ERROR marker's message
        self._state = PREPARING
        self._endpoints: list[Endpoint] = []
        self._rank_states: dict[int, str] = {}  # from each rank's markers
        self._rank_details: dict[int, str] = {}
        self._lines: deque[str] = deque(maxlen=MAX_LOG_LINES)
        self._line_count = 0  # lines ever received (the deque forgets the oldest)
        self._handle: RunHandle | None = None
        self._cond = threading.Condition()
        self._listeners: list[Listener] = []

    # -- read side -------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def state(self) -> str:
        return self._state

    @property
    def done(self) -> bool:
        return self._state in TERMINAL

    @property
    def endpoints(self) -> list[Endpoint]:
        with self._cond:
            return list(self._endpoints)

    @property
    def logs(self) -> str:
        with self._cond:
            return "\n".join(self._lines)

    def log_tail(self, count: int = 20) -> list[str]:
        with self._cond:
            return list(self._lines)[-count:] if count > 0 else []

    def lines_since(self, seen: int) -> tuple[list[str], int]:
        """Lines received after the first ``seen`` ones, and the new count."""
        with self._cond:
            fresh = min(self._line_count - seen, len(self._lines))
            return (list(self._lines)[-fresh:] if fresh > 0 else []), self._line_count

    @property
    def world_size(self) -> int:
        distributed = getattr(self.spec, "distributed", None)
        return distributed.world_size if distributed is not None else 1

    @property
    def ranks(self) -> list[RankStatus]:
        """Every rank: its endpoint (None without a debugger) and its own state."""
        with self._cond:
            by_rank = {e.rank: e for e in self._endpoints}
            numbers = set(range(self.world_size)) | set(self._rank_states) | set(by_rank)
            statuses = []
            for rank in sorted(numbers):
                state = self._rank_states.get(rank) or (
                    self._state if self._state in (PREPARING, BUILDING, QUEUED) else RUNNING)
                if self.done and state not in TERMINAL:
                    state = self._state  # the run ended (canceled, ...) with this rank still live
                status = RankStatus(rank, by_rank.get(rank), state)
                status.detail = self._rank_details.get(rank, "")
                statuses.append(status)
            return statuses

    def seconds_left_to_attach(self) -> float | None:
        if self._state not in (WAITING, CRASHED) or self.attach_deadline is None:
            return None
        return max(0.0, self.attach_deadline - time.time())

    def wait_for_endpoint(self, timeout: float | None = None, rank: int | None = None) -> Endpoint:
        """Block until the run reports where its debugger listens."""

        def found() -> Endpoint | None:
            return next((e for e in self._endpoints if rank is None or e.rank == rank), None)

        with self._cond:
            if not self._cond.wait_for(lambda: found() is not None or self.done, timeout):
                raise TimeoutError(f"run {self.id}: no debug endpoint after {timeout:g}s (state {self._state})")
            endpoint = found()
            if endpoint is None:
                raise RunFailed(f"run {self.id} ended ({self._state}) without a debug endpoint{self._why()}")
            return endpoint

    def wait(self, timeout: float | None = None) -> str:
        """Block until the run ends; returns the final state."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.done, timeout):
                raise TimeoutError(f"run {self.id} still {self._state} after {timeout:g}s")
            return self._state

    def wait_for_change(self, timeout: float) -> None:
        """Sleep until a new line, state or endpoint arrives, or ``timeout`` passes."""
        with self._cond:
            self._cond.wait(timeout)

    def _why(self) -> str:
        return f": {self.detail}" if self.detail else ""

    # -- launch.json -----------------------------------------------------------
    def config_name(self, endpoint: Endpoint) -> str:
        ranks = {e.rank for e in self._endpoints}
        suffix = f" rank {endpoint.rank}" if len(ranks) > 1 or endpoint.rank or self.world_size > 1 else ""
        return f"{self.name}{suffix}"

    def launch_config(self, rank: int | None = None, workspace_folder: str | Path | None = None) -> dict:
        """The VS Code attach configuration for one endpoint (rank 0 or the first)."""
        endpoints = self.endpoints
        if not endpoints:
            raise RunFailed(f"run {self.id} has no debug endpoint yet (state {self._state})")
        chosen = next((e for e in endpoints if rank is None or e.rank == rank), None)
        if chosen is None:
            raise RunFailed(f"run {self.id} has no endpoint for rank {rank}")
        return self._config_for(chosen, workspace_folder)

    def launch_configs(self, workspace_folder: str | Path | None = None) -> list[dict]:
        return [self._config_for(e, workspace_folder) for e in self.endpoints]

    def launch_json(self, workspace_folder: str | Path | None = None) -> dict:
        """The whole launch.json fragment: one configuration per endpoint (plus a compound)."""
        configs = self.launch_configs(workspace_folder)
        return launch.fragment(configs, self._compounds(configs))

    def write_launch_json(self, path: str | Path) -> launch.MergeResult:
        folder = launch.workspace_folder_for(path)
        configs = self.launch_configs(folder)
        if not configs:
            raise RunFailed(f"run {self.id} has no debug endpoint yet (state {self._state})")
        return launch.merge_into_file(path, configs, self._compounds(configs))

    def _compounds(self, configs: list[dict]) -> list[dict]:
        if len(configs) < 2:
            return []
        return [launch.compound(f"{self.name} (all ranks)", [c["name"] for c in configs])]

    def _config_for(self, endpoint: Endpoint, workspace_folder: str | Path | None) -> dict:
        remote_root = endpoint.cwd or str(self.spec.source_dir)
        return launch.attach_config(
            self.config_name(endpoint),
            endpoint.host,
            endpoint.port,
            local_root=self.spec.mapped_local_root,
            remote_root=remote_root,
            workspace_folder=workspace_folder if workspace_folder is not None else Path.cwd(),
        )

    # -- the in-notebook debugger (aml_magics.debugger) -------------------------
    def attach(self, breakpoints: Any = (), rank: int | None = None, timeout: float = 30.0) -> Any:
        """A debugger attached from this kernel (an ``aml_magics.Debugger``), breakpoints armed first."""
        from . import debugger

        try:
            self.wait_for_endpoint(timeout, rank=rank)
        except (TimeoutError, RunFailed) as exc:
            raise debugger.DebuggerError(str(exc)) from None
        config = self.launch_config(rank=rank, workspace_folder=Path.cwd())
        return debugger.attach(config, breakpoints=breakpoints, timeout=timeout, run=self)

    # -- control ---------------------------------------------------------------
    def cancel(self) -> None:
        handle = self._handle
        if handle is not None and not self.done:
            handle.cancel()
        elif handle is None and not self.done:
            self.finished(CANCELED, detail="canceled before start")

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def bind(self, handle: RunHandle) -> None:
        self._handle = handle

    # -- fed by the target, through `events` ---------------------------------------
    @property
    def events(self) -> "RunEvents":
        """What a target reports to (its RunEvents): lines, state changes, the end."""
        return _Events(self)

    def line(self, text: str) -> None:
        text = text.rstrip("\r\n")
        with self._cond:
            self._lines.append(text)
            self._line_count += 1
            self._cond.notify_all()
        self._notify("line")
        marker = parse_marker(text)
        if marker is not None:
            self._on_marker(marker.kind, marker.data)

    def set_state(self, state: str, detail: str = "") -> None:
        with self._cond:
            if self.done:
                return
            self._state = state
            if detail:
                self.detail = detail
            self._cond.notify_all()
        self._notify("state")

    def finished(self, state: str, exit_code: int | None = None, detail: str = "") -> None:
        with self._cond:
            if self.done:
                return
            self.exit_code = exit_code
            self._state = state
            if detail:
                # What the run itself said went wrong (an ERROR marker) comes first.
                self.detail = f"{self._error}; {detail}" if self._error else detail
            self._cond.notify_all()
        self._notify("state")

    def _on_marker(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "ENDPOINT":
            self._on_endpoint(data)
        elif kind == "ATTACHED":
            self.attached = bool(data.get("attached"))
            self._on_rank_marker(data, ATTACHED if self.attached else RUNNING)
        elif kind == "POST_MORTEM":
            what = f"{data.get('type', 'exception')}: {data.get('message', '')}".rstrip(": ")
            self._on_rank_marker(data, ATTACHED if data.get("attached") else CRASHED, what, run_detail=True)
        elif kind == "BREAKPOINT":
            where = f"breakpoint() at {data.get('file')}:{data.get('line')}"
            self._on_rank_marker(data, ATTACHED if data.get("attached") else WAITING, where)
        elif kind == "EXIT":
            code = data.get("code")
            if code == 0:
                self._on_rank_marker(data, COMPLETED)
            elif code == 130:  # KeyboardInterrupt: what a cancel (SIGINT) does to a rank
                self._on_rank_marker(data, CANCELED, "interrupted")
            else:
                self._on_rank_marker(data, FAILED, f"exit code {code}")
        elif kind == "ERROR":
            self._error = self.detail = str(data.get("message", ""))

    def _on_rank_marker(self, data: dict[str, Any], state: str, detail: str = "", run_detail: bool = False) -> None:
        """A rank moved to ``state``; the run's state follows its ranks (while it runs)."""
        rank = _rank_of(data)
        with self._cond:
            self._rank_states[rank] = state
            if detail or state in (RUNNING, ATTACHED):
                self._rank_details[rank] = detail
            deadline = data.get("deadline")
            if state in (WAITING, CRASHED) and deadline:
                self.attach_deadline = float(deadline)
            if self.done or (state in TERMINAL and self.world_size == 1):
                return  # a one-process run ends through its target, not through its EXIT line
            summed = self._summed_state()
            changed = summed != self._state and (self._state in _DEBUG_STATES or summed != RUNNING)
            if changed:
                self._state = summed
            if run_detail and detail:
                self.detail = f"rank {rank}: {detail}" if self.world_size > 1 else detail
                changed = True
            self._cond.notify_all()
        if changed:
            self._notify("state")

    def _summed_state(self) -> str:
        """A crashed rank first, then one waiting for a debugger, then one attached."""
        live = {state for state in self._rank_states.values() if state not in TERMINAL}
        return next((state for state in (CRASHED, WAITING, ATTACHED) if state in live), RUNNING)

    def _on_endpoint(self, data: dict[str, Any]) -> None:
        parsed = endpoint_from(data)
        if parsed is None:
            return
        endpoint = self._handle.map_endpoint(parsed) if self._handle else parsed
        with self._cond:
            self._endpoints = [e for e in self._endpoints if e.rank != endpoint.rank] + [endpoint]
            self._endpoints.sort(key=lambda e: e.rank)
            deadline = data.get("deadline")
            self.attach_deadline = float(deadline) if deadline else None
            self._rank_states[endpoint.rank] = WAITING if data.get("timeout") else RUNNING
            # State and endpoint change together: a waiter woken by one sees both.
            if data.get("timeout") and not self.done:
                self._state = WAITING
            elif not self.done and self._state in _DEBUG_STATES:
                self._state = self._summed_state()
            self._cond.notify_all()
        self._notify("endpoint")
        self._notify("state")

    def _notify(self, what: str) -> None:
        for listener in list(self._listeners):
            try:
                listener(self, what)
            except Exception:  # a broken view must never break the run
                pass

    # -- display ---------------------------------------------------------------
    def __repr__(self) -> str:
        endpoints = ", ".join(e.address for e in self.endpoints) or "-"
        return f"<DebugRun {self.id} {self.name!r} target={self.target} state={self._state} endpoints={endpoints}>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict:
        from .views import mimebundle

        return mimebundle(self)



def _rank_of(data: dict[str, Any]) -> int:
    try:
        return int(data.get("rank") or 0)
    except (TypeError, ValueError):
        return 0


class _Events:
    """The RunEvents face of a DebugRun (its `state` name is taken by the property)."""

    def __init__(self, run: DebugRun) -> None:
        self._run = run

    def line(self, text: str) -> None:
        self._run.line(text)

    def state(self, state: str, detail: str = "") -> None:
        self._run.set_state(state, detail)

    def finished(self, state: str, exit_code: int | None = None, detail: str = "") -> None:
        self._run.finished(state, exit_code, detail)

    def describe(self, text: str) -> None:
        """A new description (e.g. a service URL the target learned while the run goes on)."""
        self._run.description = text
        self._run._notify("state")
