"""DebugRun: one run's live state, fed by its target, read by views and users.

Lines arrive from the target's thread; authenticated marker lines (see :mod:`.protocol`)
move the run's state and endpoints, every other line is output. Readers may be on any
thread; every change notifies listeners with one of "state", "line", "endpoint".

A run can be extended without touching its state: :meth:`DebugRun.on_marker` registers a
handler for a marker kind (a deployment's SERVING), :meth:`DebugRun.add_facet` a facet the
views show, :meth:`DebugRun.on_finish` a hook that explains how the run ended.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from . import launch
from .errors import RunFailed
from .failure import user_lines
from .lifecycle import RunScope
from .output import MAX_KEPT_BYTES, MAX_KEPT_LINES, MAX_LINE_BYTES, cut_note, fresh_lines
from .protocol import (
    DEBUG_STATES,
    DETACHED_BY_YOU,
    MARKER_PREFIX,
    TERMINAL,
    AttachedMarker,
    BreakpointMarker,
    DetachedMarker,
    Endpoint,
    EndpointMarker,
    ErrorMarker,
    ExitMarker,
    Marker,
    MarkerReader,
    PostMortemMarker,
    RefusedEndpoint,
    RunState,
)
from .spec import RunSpec
from .target_base import RunHandle

# The states, by their old names (kept: user code compares against these strings).
PREPARING, BUILDING, QUEUED, RUNNING = RunState.PREPARING, RunState.BUILDING, RunState.QUEUED, RunState.RUNNING
WAITING, ATTACHED, CRASHED = RunState.WAITING, RunState.ATTACHED, RunState.CRASHED
COMPLETED, FAILED, CANCELED = RunState.COMPLETED, RunState.FAILED, RunState.CANCELED
STATES = tuple(RunState)
MAX_LOG_LINES = MAX_KEPT_LINES
# A rank's endpoints: its first, plus the few a later window may move to (a post-mortem's port
# when the first is gone). Code in the run can sign markers (it is the same process): what it
# can say is bounded here, never a listener or a launch.json entry per line.
MAX_ENDPOINTS_PER_RANK = 3
Listener = Callable[["DebugRun", str], None]
MarkerHandler = Callable[[Any], None]
FinishHook = Callable[["DebugRun", str, str], str]
_log = logging.getLogger("aml_magics")

__all__ = ["DebugRun", "RankStatus", "RunFailed", "Facet", "RunFacts", "reduce_marker", "summed_state", *[s.name for s in RunState]]


class _RankTuple(NamedTuple):
    rank: int
    endpoint: Endpoint | None
    state: str


# A rank's debugger, as the roster shows it (see RankStatus.debugger).
DBG_STARTING, DBG_NONE, DBG_WAITING = "starting", "none", "waiting"
DBG_ATTACHED, DBG_RUNNING, DBG_STOPPED = "attached", "attached-running", "stopped"
DBG_DETACHED, DBG_CLOSED, DBG_ENDED = "detached", "closed", "ended"
DEBUGGER_STATES = (DBG_STARTING, DBG_NONE, DBG_WAITING, DBG_ATTACHED, DBG_RUNNING, DBG_STOPPED, DBG_DETACHED,
                   DBG_CLOSED, DBG_ENDED)
_UNKNOWN_STOP = "attached by a client this kernel does not drive: whether it is stopped is not known here"


class _DebuggerNow(NamedTuple):
    state: str
    where: str = ""  # file:line (stopped, or waiting at a breakpoint() / crash)
    reason: str = ""
    since: float = 0.0
    exit_code: int | None = None


class RankStatus(_RankTuple):
    """One rank of a run: (rank, endpoint or None, state); ``detail`` says more.

    The endpoint is None for a rank without a debugger (outside --debug-ranks) or one
    that has not reported yet; ``detail`` holds e.g. the exception a crashed rank waits with.
    The roster's columns: ``node`` and ``node_address`` (where the rank runs; None when no
    rank of that node reported one), ``debugger`` (one of DEBUGGER_STATES), ``where``
    (``file:line`` when stopped or waiting at a breakpoint()/crash), ``reason``, ``since``
    (when it entered that state; ``seconds`` in it) and ``exit_code`` once ended. ``stopped``
    and ``attached-running`` come from this kernel's own DAP sessions (``run.attach``,
    ``run.attach_all``); a client elsewhere shows as ``attached``: its stops are not ours to know.
    """

    detail: str = ""
    node: int = 0
    node_address: str | None = None
    debugger: str = DBG_STARTING
    where: str = ""
    reason: str = ""
    since: float = 0.0
    exit_code: int | None = None

    @property
    def seconds(self) -> float:
        """Seconds in the current debugger state."""
        return max(0.0, time.time() - self.since)


class Facet(Protocol):
    """Something a run shows besides its state and endpoints (a deployment's scoring URI)."""

    def text_lines(self) -> list[str]: ...
    def html(self) -> str: ...


class DebugRun:
    """A handle on a run with the debugger enabled."""

    def __init__(self, run_id: str, spec: RunSpec, target: str, *, description: str = "",
                 reader: MarkerReader | None = None) -> None:
        self.id = run_id
        self.spec = spec
        self.target = target
        self.description = description
        self.created = time.time()
        self.exit_code: int | None = None
        self.detail = ""
        self.attached: bool | None = None
        self.attach_deadline: float | None = None
        self.debugger_note = ""  # how the last client left: "debugger gone (connection lost) after 12 s"
        self.reader = reader or MarkerReader(None)
        self.facets: list[Facet] = []
        self.launch_json_path: Path | None = None  # where "write launch.json" writes (--launch-json / %config)
        self.crash_dir: Path | None = None  # where this run's crash capsules are kept (set by the engine)
        self.crashes: list[Any] = []  # the CRASH markers seen (a rank wrote its capsule)
        self._error = ""  # the last ERROR marker's message
        self._state: str = PREPARING
        self._endpoints: list[Endpoint] = []
        self._endpoints_seen: dict[int, list[tuple[str, int]]] = {}  # per rank: (host, port) as reported
        self._rank_states: dict[int, str] = {}  # from each rank's markers
        self._rank_details: dict[int, str] = {}
        self._debuggers: dict[int, _DebuggerNow] = {}  # from each rank's markers
        self._sessions: dict[int, _DebuggerNow] = {}  # from this kernel's DAP sessions (report_debugger)
        self._detaching: set[int] = set()  # ranks this kernel's debugger is detaching from (detaching_debugger)
        self.debugger_group: Any = None  # the DebuggerGroup attached to this run's ranks, if any
        self._lines: deque[tuple[str, bool]] = deque()  # (text, is a marker)
        self._kept_bytes = 0
        self._line_count = 0  # lines ever received (the deque forgets the oldest)
        self._handle: RunHandle | None = None
        self._scope: RunScope | None = None
        self._cond = threading.Condition()
        self._listeners: list[Listener] = []
        self._handlers: dict[type, list[MarkerHandler]] = {}
        self._finish_hooks: list[FinishHook] = []

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
        """The run's output: the machine-readable marker lines and the bootstrap's own traceback
        frames left out (see ``raw_logs``)."""
        with self._cond:
            lines = [text for text, marker in self._lines if not marker]
        return "\n".join(user_lines(lines))

    @property
    def raw_logs(self) -> str:
        """Every line received, marker lines included."""
        with self._cond:
            return "\n".join(text for text, _ in self._lines)

    def log_tail(self, count: int = 20, raw: bool = False) -> list[str]:
        with self._cond:
            lines = [text for text, marker in self._lines if raw or not marker]
        return lines[-count:] if count > 0 else []

    def lines_since(self, seen: int, raw: bool = False) -> tuple[list[str], int]:
        """Lines received after the first ``seen`` ones (output only, unless ``raw``), and the new count."""
        with self._cond:
            fresh = min(self._line_count - seen, len(self._lines))
            items = list(self._lines)[-fresh:] if fresh > 0 else []
            return [text for text, marker in items if raw or not marker], self._line_count

    @property
    def world_size(self) -> int:
        return self.spec.distributed.world_size

    @property
    def ranks(self) -> list[RankStatus]:
        """The roster: every rank, its endpoint (None without a debugger), its own state, its
        node and the node's address, its debugger's state and since when (see RankStatus)."""
        with self._cond:
            by_rank = {e.rank: e for e in self._endpoints}
            numbers = set(range(self.world_size)) | set(self._rank_states) | set(by_rank)
            node_of = {rank: self.spec.distributed.placement(rank)[0] for rank in numbers}
            addresses: dict[int, str] = {}
            for rank, endpoint in by_rank.items():
                addresses.setdefault(node_of[rank], _node_host(endpoint))
            statuses = []
            for rank in sorted(numbers):
                state = self._rank_states.get(rank) or (
                    self._state if self._state in (PREPARING, BUILDING, QUEUED) else RUNNING)
                if self.done and state not in TERMINAL:
                    state = self._state  # the run ended (canceled, ...) with this rank still live
                status = RankStatus(rank, by_rank.get(rank), state)
                status.detail = self._rank_details.get(rank, "")
                status.node, status.node_address = node_of[rank], addresses.get(node_of[rank])
                now = self._debugger_now(rank)
                status.debugger, status.where, status.reason = now.state, now.where, now.reason
                status.since, status.exit_code = now.since, now.exit_code
                statuses.append(status)
            return statuses

    def _debugger_now(self, rank: int) -> _DebuggerNow:
        """A rank's debugger: its end, else this kernel's session, else its markers, else why none."""
        marked = self._debuggers.get(rank)
        if marked is not None and marked.state == DBG_ENDED:
            return marked
        if self.done:
            return _DebuggerNow(DBG_ENDED, "", f"the run {self._state}; this rank reported no exit code",
                                marked.since if marked else self.created)
        session = self._sessions.get(rank)
        if session is not None:
            return session
        if marked is not None:
            return marked
        debug = self.spec.debug
        if not debug.debugs_rank(rank):
            why = "--no-debug" if not debug.enabled else "not in --debug-ranks"
            return _DebuggerNow(DBG_NONE, "", f"no debugger ({why})", self.created)
        return _DebuggerNow(DBG_STARTING, "", "not reported yet", self.created)

    def report_debugger(self, rank: int, state: str | None, where: str = "", reason: str = "") -> None:
        """What one of this kernel's DAP sessions knows of ``rank`` (``attached-running``,
        ``stopped`` at ``where``); None: the session ended, the rank's markers tell again."""
        with self._cond:
            if state is None:
                self._sessions.pop(rank, None)
            else:
                self._sessions[rank] = self._moved(self._sessions.get(rank), state, where, reason)
            self._cond.notify_all()
        self._notify("state")

    def detaching_debugger(self, rank: int) -> None:
        """This kernel's debugger is about to detach from ``rank`` (a DAP ``disconnect``): the node's
        next DETACHED marker for it reads "detached by you after N s". A client elsewhere (VS Code)
        detaching says what the node says, "debugger detached after N s"."""
        with self._cond:
            self._detaching.add(rank)

    def _own_detach(self, marker: DetachedMarker) -> DetachedMarker:
        """The marker in the owner's words when it is this kernel's own detach (a disconnect it sent)."""
        with self._cond:
            ours = marker.rank in self._detaching
            self._detaching.discard(marker.rank)
        if not ours or not marker.said_goodbye or marker.seconds is None:
            return marker
        return replace(marker, reason=f"{DETACHED_BY_YOU} after {marker.seconds:.0f} s")

    @staticmethod
    def _moved(before: _DebuggerNow | None, state: str, where: str = "", reason: str = "",
               exit_code: int | None = None) -> _DebuggerNow:
        """The new debugger state; its time counts from now unless state and place stay the same."""
        same = before is not None and (before.state, before.where) == (state, where)
        return _DebuggerNow(state, where, reason, before.since if same and before else time.time(), exit_code)

    def _mark_debugger(self, rank: int, state: str, where: str = "", reason: str = "",
                       exit_code: int | None = None) -> None:
        with self._cond:
            before = self._debuggers.get(rank)
            if before is not None and before.state == DBG_ENDED:
                return  # a client leaving a process that exited reports DETACHED after its EXIT
            self._debuggers[rank] = self._moved(before, state, where, reason, exit_code)

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
                raise RunFailed(f"run {self.id} ended ({self._state}) without a debug endpoint{self.why()}")
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

    def wait_for(self, predicate: Callable[[], bool], timeout: float | None, message: str) -> None:
        """Block until ``predicate()`` (checked at each change); TimeoutError(``message``) after
        ``timeout`` (``{timeout:g}`` in the message is filled in)."""
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise TimeoutError(message.format(timeout=timeout or 0) + f" (state {self.state})")

    def why(self) -> str:
        """``": <detail>"`` when the run said why it is in its state, else nothing."""
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
    def attach(self, breakpoints: Any = (), rank: int | None = None, timeout: float = 30.0,
               connect: bool = True, exceptions: Any = ("uncaught",)) -> Any:
        """A debugger attached from this kernel (an ``aml_magics.Debugger``), breakpoints armed first.

        ``connect=False``: not attached yet (set breakpoints, then ``.connect()``), for every rank
        that waits unless ``rank`` is given — what the run panel's *Debug here* opens.
        ``exceptions``: where exceptions stop — ``uncaught`` (VS Code's default), ``raised``,
        ``user-uncaught``; ``()`` never.
        """
        from . import debugger

        if not connect:
            return debugger.prepare(self, rank, exceptions=exceptions)
        try:
            self.wait_for_endpoint(timeout, rank=rank)
        except (TimeoutError, RunFailed) as exc:
            raise debugger.DebuggerError(str(exc)) from None
        config = self.launch_config(rank=rank, workspace_folder=Path.cwd())
        from .debugger.group import track

        return track(debugger.attach(config, breakpoints=breakpoints, timeout=timeout, run=self,
                                     exceptions=exceptions))

    def attach_all(self, breakpoints: Any = (), timeout: float = 30.0, all_stop: bool = True) -> Any:
        """An ``aml_magics.DebuggerGroup``: one session per debugged rank (waiting up to ``timeout``
        for their endpoints), ``breakpoints`` armed on each first. ``all_stop``: when one rank
        stops, the others are paused as soon as they run Python code. The run's attached group
        (the panel's *Debug here*) is returned as it is."""
        from .debugger.group import attach_all

        return attach_all(self, breakpoints, timeout, all_stop)

    # -- control ---------------------------------------------------------------
    def crash(self, rank: int | None = None) -> Any:
        """The crash capsule of ``rank`` (None: the lowest crashed rank) as an
        :class:`aml_magics.Crash`, or None when the run left none."""
        from . import crash

        return crash.find_for_run(self, rank)

    def cancel(self) -> None:
        handle = self._handle
        if handle is not None and not self.done:
            handle.cancel()
        elif handle is None and not self.done:
            if self._scope is not None:
                self._scope.cancel()
            self.finished(CANCELED, detail="canceled before start")

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def bind(self, handle: RunHandle, scope: RunScope | None = None) -> None:
        self._handle = handle
        if scope is not None:
            self._scope = scope

    @property
    def handle(self) -> RunHandle | None:
        """The target's handle on the run (what cancel and endpoint mapping go through)."""
        return self._handle

    @property
    def scope(self) -> RunScope | None:
        """What the run owns (its exit stack and cancel token); None for a run not started."""
        return self._scope

    # -- extension points ----------------------------------------------------------------
    def on_marker(self, kind: type[Marker], handler: MarkerHandler) -> None:
        """Call ``handler(marker)`` for each authenticated marker of ``kind``."""
        self._handlers.setdefault(kind, []).append(handler)

    def add_facet(self, facet: Facet) -> None:
        self.facets.append(facet)

    def on_finish(self, hook: FinishHook) -> None:
        """``hook(run, state, detail) -> detail``: called as the run ends, before anyone wakes."""
        self._finish_hooks.append(hook)

    def notify(self, what: str = "state") -> None:
        """Tell listeners something changed (for extensions that keep state of their own)."""
        with self._cond:
            self._cond.notify_all()
        self._notify(what)

    # -- fed by the target, through `events` ---------------------------------------
    @property
    def events(self) -> _Events:
        """What a target reports to (its RunEvents): lines, state changes, the end."""
        return _Events(self)

    def line(self, text: str) -> None:
        text = text.rstrip("\r\n")
        if "\r" + MARKER_PREFIX in text:
            for piece in fresh_lines(text, MARKER_PREFIX):
                self._line(piece)
        else:
            self._line(text)

    def _line(self, text: str) -> None:
        text = _capped(text)
        marker = self.reader.parse(text)
        with self._cond:
            self._lines.append((text, marker is not None))
            self._kept_bytes += _size(text)
            while self._lines and (len(self._lines) > MAX_KEPT_LINES or self._kept_bytes > MAX_KEPT_BYTES):
                self._kept_bytes -= _size(self._lines.popleft()[0])
            self._line_count += 1
            self._cond.notify_all()
        self._notify("line")
        if marker is not None:
            self._on_marker(marker)

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
        for hook in self._finish_hooks:
            try:
                detail = hook(self, state, detail)
            except Exception as exc:  # a broken hook must never keep the run from ending
                _hook_failed("finish hook", self, exc)
        with self._cond:
            if self.done:
                return
            self.exit_code = exit_code
            self._state = state
            if detail:
                # What the run itself said went wrong (an ERROR marker) comes first.
                self.detail = f"{self._error}; {detail}" if self._error and self._error not in detail else detail
            self._cond.notify_all()
        self._notify("state")

    def _on_marker(self, marker: Marker) -> None:
        """A marker moves the run's facts (:func:`reduce_marker`, pure); an endpoint is also mapped
        to where this machine reaches it (a container's published port, the tunnel's forwarder)."""
        if isinstance(marker, DetachedMarker):
            marker = self._own_detach(marker)
        endpoint = self._mapped(marker) if isinstance(marker, EndpointMarker) else None
        if isinstance(marker, EndpointMarker) and endpoint is None and marker.endpoint() is not None:
            return  # refused: it moves nothing
        self._debugger_marker(marker)  # the roster's debugger column (its own facts)
        with self._cond:
            before = self._facts()
            after = reduce_marker(before, marker)
            if endpoint is not None:
                self._endpoints = [e for e in self._endpoints if e.rank != endpoint.rank] + [endpoint]
                self._endpoints.sort(key=lambda e: e.rank)
            self._apply(after)  # state and endpoint change together: a waiter woken by one sees both
            self._cond.notify_all()
        if endpoint is not None:
            self._notify("endpoint")
            self._notify("state")
        elif (after.state, after.detail, after.debugger_note) != (before.state, before.detail, before.debugger_note):
            self._notify("state")
        for handler in self._handlers.get(type(marker), []):
            try:
                handler(marker)
            except Exception as exc:
                _hook_failed(f"{marker.kind} handler", self, exc)

    def _endpoint_refusal(self, parsed: Endpoint) -> str:
        """Why an ENDPOINT marker is refused ("" when it is accepted): a rank the run does not
        have, another host than the rank's first, or more ports than a rank's windows use."""
        if not 0 <= parsed.rank < max(self.world_size, 1):
            return f"rank {parsed.rank} is not a rank of this run"
        with self._cond:
            seen = self._endpoints_seen.setdefault(parsed.rank, [])
            where = (parsed.host, parsed.port)
            if seen and parsed.host != seen[0][0]:
                return f"{parsed.address} is not on the rank's node address {seen[0][0]}"
            if where not in seen:
                if len(seen) >= MAX_ENDPOINTS_PER_RANK:
                    return f"rank {parsed.rank} already reported {len(seen)} endpoints"
                seen.append(where)
        return ""

    def _debugger_marker(self, marker: Marker) -> None:
        """The rank's debugger as its markers tell it (the node knows no DAP stop: see report_debugger)."""
        rank = marker.rank
        if isinstance(marker, EndpointMarker):
            self._mark_debugger(rank, DBG_WAITING, "", f"listening ({marker.reason})")
        elif isinstance(marker, AttachedMarker):
            if marker.attached:
                self._mark_debugger(rank, DBG_ATTACHED, "", _UNKNOWN_STOP)
            else:
                self._mark_debugger(rank, DBG_CLOSED, "", "nobody attached within its window; the debugger is off")
        elif isinstance(marker, DetachedMarker):
            self._mark_debugger(rank, DBG_DETACHED, "", marker.reason)
        elif isinstance(marker, (PostMortemMarker, BreakpointMarker)):
            where = f"{marker.file}:{marker.line}" if marker.file else ""
            what = "post-mortem" if isinstance(marker, PostMortemMarker) else "breakpoint()"
            if marker.attached:
                stopped = "exception" if isinstance(marker, PostMortemMarker) else "breakpoint()"
                self._mark_debugger(rank, DBG_STOPPED, where, stopped)
            else:
                self._mark_debugger(rank, DBG_WAITING, where, f"{what}: waiting for a debugger")
        elif isinstance(marker, ExitMarker):
            self._mark_debugger(rank, DBG_ENDED, "", f"exit code {marker.code}", marker.code)

    def _mapped(self, marker: EndpointMarker) -> Endpoint | None:
        """The endpoint as this machine reaches it; None for none, or one refused (said in a line:
        code in the run can sign markers, what they may say is bounded here)."""
        parsed = marker.endpoint()
        if parsed is None:
            return None
        endpoint, refused = parsed, self._endpoint_refusal(parsed)
        if not refused and self._handle is not None:
            try:
                endpoint = self._handle.map_endpoint(parsed)
            except RefusedEndpoint as exc:
                refused = str(exc)
        if refused:
            self.reader.rejected += 1
            self.line(f"aml_magics: refused an endpoint marker: {refused}")
            return None
        return endpoint

    def _facts(self) -> RunFacts:
        return RunFacts(self._state, self.world_size, self._rank_states, self._rank_details, self.attach_deadline,
                        self.attached, self.detail, self._error, self.debugger_note)

    def _apply(self, facts: RunFacts) -> None:
        self._state, self._rank_states, self._rank_details = facts.state, dict(facts.rank_states), \
            dict(facts.rank_details)
        self.attach_deadline, self.attached, self.detail, self._error = (facts.attach_deadline, facts.attached,
                                                                          facts.detail, facts.error)
        self.debugger_note = facts.debugger_note

    def _notify(self, what: str) -> None:
        for listener in list(self._listeners):
            try:
                listener(self, what)
            except Exception as exc:  # a broken view must never break the run
                _hook_failed("listener", self, exc)

    # -- display ---------------------------------------------------------------
    def __repr__(self) -> str:
        endpoints = ", ".join(e.address for e in self.endpoints) or "-"
        return f"<DebugRun {self.id} {self.name!r} target={self.target} state={self._state} endpoints={endpoints}>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict:
        from .views import mimebundle

        return mimebundle(self)


def _size(text: str) -> int:
    """A line's size in bytes (the cap counts bytes: a 4-byte character is 4)."""
    return len(text.encode("utf-8", "surrogatepass"))

def _node_host(endpoint: Endpoint) -> str:
    """The node's address of a rank's endpoint (the far side of a forwarder when there is one)."""
    far = endpoint.node_address or endpoint.address
    return far.rsplit(":", 1)[0]


# -- the marker → run-state reducer (pure) --------------------------------------------------------


@dataclass(frozen=True)
class RunFacts:
    """What markers move: the run's state, each rank's state and detail, the attach window."""

    state: str
    world_size: int = 1
    rank_states: Mapping[int, str] = field(default_factory=dict)
    rank_details: Mapping[int, str] = field(default_factory=dict)
    attach_deadline: float | None = None
    attached: bool | None = None
    detail: str = ""
    error: str = ""  # the last ERROR marker's message
    debugger_note: str = ""  # how the last client left: "debugger gone (connection lost) after 12 s"

    @property
    def done(self) -> bool:
        return self.state in TERMINAL


def reduce_marker(facts: RunFacts, marker: Marker) -> RunFacts:
    """The facts after ``marker`` (no lock, no I/O, no listener: the run applies and announces them)."""
    if isinstance(marker, EndpointMarker):
        return _endpoint_reported(facts, marker)
    if isinstance(marker, AttachedMarker):
        note = "" if marker.attached else facts.debugger_note
        return _rank_moved(replace(facts, attached=marker.attached, debugger_note=note), marker,
                           ATTACHED if marker.attached else RUNNING)
    if isinstance(marker, DetachedMarker):
        note = marker.reason or "debugger detached"
        idle = " idle" in note  # --idle-timeout: said in the run's detail too, not only in the log
        return _rank_moved(replace(facts, attached=False, debugger_note=note), marker, RUNNING, note, run_detail=idle)
    if isinstance(marker, PostMortemMarker):
        return _rank_moved(facts, marker, ATTACHED if marker.attached else CRASHED, marker.what, run_detail=True,
                           deadline=marker.deadline)
    if isinstance(marker, BreakpointMarker):
        return _rank_moved(facts, marker, ATTACHED if marker.attached else WAITING,
                           f"breakpoint() at {marker.file}:{marker.line}", deadline=marker.deadline)
    if isinstance(marker, ExitMarker):
        if marker.code == 0:
            return _rank_moved(facts, marker, COMPLETED)
        if marker.code == 130:  # KeyboardInterrupt: what a cancel (SIGINT) does to a rank
            return _rank_moved(facts, marker, CANCELED, "interrupted")
        return _rank_moved(facts, marker, FAILED, f"exit code {marker.code}")
    if isinstance(marker, ErrorMarker):
        return replace(facts, error=marker.message, detail=marker.message)
    return facts


def summed_state(rank_states: Mapping[int, str]) -> str:
    """The run's state from its ranks': a crashed rank first, then one waiting for a debugger,
    then one attached, else running."""
    live = {state for state in rank_states.values() if state not in TERMINAL}
    return next((state for state in (CRASHED, WAITING, ATTACHED) if state in live), RUNNING)


def _endpoint_reported(facts: RunFacts, marker: EndpointMarker) -> RunFacts:
    if marker.endpoint() is None:
        return facts
    waits = bool(marker.timeout)
    facts = replace(facts, rank_states={**facts.rank_states, marker.rank: WAITING if waits else RUNNING},
                    attach_deadline=marker.deadline)
    if facts.done:
        return facts
    if waits:
        return replace(facts, state=WAITING)
    if facts.state in DEBUG_STATES:
        return replace(facts, state=summed_state(facts.rank_states))
    return facts


def _rank_moved(facts: RunFacts, marker: Marker, state: str, detail: str = "", run_detail: bool = False,
                deadline: float | None = None) -> RunFacts:
    """A rank moved to ``state``; the run's state follows its ranks (while it runs)."""
    rank = marker.rank
    details = dict(facts.rank_details)
    if detail or state in (RUNNING, ATTACHED):
        details[rank] = detail
    facts = replace(facts, rank_states={**facts.rank_states, rank: state}, rank_details=details,
                    attach_deadline=deadline if state in (WAITING, CRASHED) and deadline else facts.attach_deadline)
    if facts.done or (state in TERMINAL and facts.world_size == 1):
        return facts  # a one-process run ends through its target, not through its EXIT line
    summed = summed_state(facts.rank_states)
    if summed != facts.state and (facts.state in DEBUG_STATES or summed != RUNNING):
        facts = replace(facts, state=summed)
    if run_detail and detail:
        facts = replace(facts, detail=f"rank {rank}: {detail}" if facts.world_size > 1 else detail)
    return facts


def _hook_failed(what: str, run: DebugRun, exc: Exception) -> None:
    """A hook's failure, logged (one line; the traceback at debug level), never raised into the run."""
    _log.warning("aml_magics: a %s of run %s failed: %s: %s", what, run.id, type(exc).__name__, exc)
    _log.debug("the %s's traceback", what, exc_info=exc)


def _capped(text: str) -> str:
    """A line no longer than MAX_LINE_BYTES (a target that did not cut it already)."""
    if len(text) <= MAX_LINE_BYTES:
        return text
    return text[:MAX_LINE_BYTES] + " " + cut_note(len(text.encode("utf-8", "replace")) - MAX_LINE_BYTES)


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
        self._run.notify("state")
