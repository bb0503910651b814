"""The in-notebook debugger: a DAP client session to a run, as a Python object.

:class:`Debugger` is the service the panel, the ``%aml_dbg`` commands and user code share.
It sits on :mod:`aml_magics.dap` (one :class:`~aml_magics.dap.DebugService` per debugged
process: the run's rank, and each child process debugpy announces) and adds what is about
*runs*: local paths for breakpoints and stops, the one-client rule, the run ending while
attached, a choice among the processes that are paused, and frames of our own bootstrap
hidden from the stack.

Lifecycle: *armed* (breakpoints can be set; nothing is connected) → :meth:`Debugger.connect`
arms them before the run is released → *running* / *stopped* → *ended* (detached, the run
ended, or another client took the session).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from ..dap import DapError, DapTimeout, DebugService, Page, Request, RequestFailed, address_of
from ..dap.channel import CONNECTION_CLOSED
from ..dap.models import BreakpointsModel, BreakpointState, Model, StackFrame, Variable
from ..dap.service import ENDED, STOPPED, evaluated
from . import holders
from .errors import DebuggerError
from .paths import OUTSIDE_SCRIPT, is_bootstrap, is_launcher, local_path, parse_breakpoint, source_line
from .summaries import SUMMARISED_TYPES, parse_summaries, parse_text, statistics_expression, summaries_expression

ARMED = "armed"
CONNECTING = "connecting"
RUNNING = "running"
STOPPED_STATE = "stopped"
ENDED_STATE = "ended"
STEP_TIMEOUT = 30.0
EVALUATE_TIMEOUT = 30.0  # then the evaluate is said to be still running (it holds the stopped thread)
VARIABLES_TIMEOUT = 10.0  # the variables' own deadline (a __repr__ may hang)
CANCEL_TIMEOUT = 10.0
DEFAULT_EXCEPTIONS = ("uncaught",)  # VS Code's default: stop where an uncaught exception is raised
EXCEPTION_FILTERS = ("raised", "uncaught", "userUnhandled")  # debugpy's, in its own names
_GROUPS = frozenset({"special variables", "function variables", "class variables", "protected variables"})

# An attach configuration, several (one per rank), or what makes them at connect time.
ConfigSource = Union[dict, Sequence[dict], Callable[[], Union[dict, Sequence[dict]]]]

_current_lock = threading.Lock()
_current: Debugger | None = None


@dataclass(frozen=True)
class Stop:
    """Where a process stopped: ``reason`` as DAP says it, the local path and line, the line's text."""

    reason: str
    path: str | None
    line: int
    thread_id: int
    text: str
    pid: int | None = None
    description: str = ""

    @property
    def place(self) -> str:
        """``file.py:LINE``, or where a pause landed with no frame of the user's in the stack."""
        return f"{os.path.basename(self.path)}:{self.line}" if self.path else OUTSIDE_SCRIPT


@dataclass(frozen=True)
class Frame:
    name: str
    path: str | None
    line: int


@dataclass(frozen=True)
class ExceptionInfo:
    type: str
    message: str
    traceback: str


@dataclass(frozen=True)
class _Busy:
    """An evaluate that did not answer in time: it holds the stopped thread until it ends."""

    expression: str
    service: DebugService
    request: Request
    since: float


@dataclass(frozen=True)
class Process:
    """One debugged process (the rank, or a child debugpy announced) and whether it is paused."""

    pid: int | None
    name: str
    state: str
    stop: Stop | None
    rank: int | None = None

    @property
    def label(self) -> str:
        where = f" at {self.stop.place}" if self.stop else ""
        rank = f"rank {self.rank} · " if self.rank is not None else ""
        return f"{rank}pid {self.pid or '?'} {os.path.basename(self.name)} — {self.state}{where}"


class Debugger(Model):
    """A debug session to a run (or any debugpy attach configuration). See the module docstring.

    Subscribers (``callback(debugger, change)``) hear ``"state"``, ``"breakpoints"``, ``"frame"``,
    ``"processes"`` and the models' own changes; they are called from the session's threads.
    """

    def __init__(self, config: ConfigSource, *, run: Any = None, rank: int | None = None,
                 local_root: str | os.PathLike | None = None,
                 exception_filters: Iterable[str] = DEFAULT_EXCEPTIONS) -> None:
        super().__init__()
        self._config_source = config
        self.run = run
        self.rank = rank
        self.local_root = Path(local_root) if local_root is not None else _local_root(run, config)
        self.exception_filters = _filters(exception_filters)
        self.breakpoints = BreakpointsModel()
        self.breakpoints.subscribe(lambda _model, _change: self._emit("breakpoints"))
        self.roots: list[DebugService] = []  # one per rank attached; children hang below them
        self.addresses: list[tuple[str, int]] = []
        self.ranks: list[int | None] = []
        self._state = ARMED
        self.end_reason = ""
        self.frame_index = 0
        self._selected: DebugService | None = None
        self._seen_stop: object = None
        self._services: list[DebugService] = []
        self._cond = threading.Condition()
        self._own_sockets: set[tuple[str, int]] = set()
        self._rank_of_service: dict[int, int | None] = {}
        self._leaving = ""
        self._run_listener: Callable[[Any, str], None] | None = None
        self._busy: _Busy | None = None
        self._disabled: dict[tuple[str, int], dict] = {}  # (path, line) -> the breakpoint, not sent
        self.stop_serial = 0  # grows at every new stop (views re-evaluate their watches on it)

    # -- identity and state ----------------------------------------------------------------
    @property
    def label(self) -> str:
        if self.run is not None:
            if len(self.ranks) > 1:
                return f"run {self.run.id} ranks {','.join(str(r) for r in self.ranks)}"
            return f"run {self.run.id}{f' rank {self.rank}' if self.rank is not None else ''}"
        return f"{self.address[0]}:{self.address[1]}" if self.address else "debugger"

    @property
    def root(self) -> DebugService | None:
        """The first rank's session (``roots`` has them all)."""
        return self.roots[0] if self.roots else None

    @property
    def address(self) -> tuple[str, int] | None:
        return self.addresses[0] if self.addresses else None

    @property
    def state(self) -> str:
        return self._state

    @property
    def ended(self) -> bool:
        return self._state == ENDED_STATE

    @property
    def attached(self) -> bool:
        return self._state in (RUNNING, STOPPED_STATE)

    # -- attaching -------------------------------------------------------------------------
    def connect(self, timeout: float = 30.0) -> Debugger:
        """Attach, with every breakpoint set so far armed before the run is released."""
        with self._cond:
            if self._state != ARMED:
                raise DebuggerError(f"{self.label}: already {self._state}")
            self._state = CONNECTING
        self._emit("state")
        opened: list[tuple[DebugService, int | None]] = []
        try:
            targets = self._targets()
            for _config, address, rank in targets:
                what = self._what(address, rank)
                holders.check_listening(self.run, rank, what)
                holders.check_free(address, self.run, rank, what)
            for _config, address, _rank in targets:
                holders.claim(address, self)
            for config, address, rank in targets:
                opened.append((self._open(config, address, rank, timeout), rank))
        except BaseException:
            for service, _rank in opened:
                service.close()
            for address in self.addresses:
                holders.release(address, self, attached=False)
            with self._cond:
                self._state = ARMED
                self._cond.notify_all()
            self._emit("state")
            raise
        with self._cond:
            self.roots = [service for service, _rank in opened]
            self._selected = self.roots[0]
            self._state = RUNNING
        for service, rank in opened:
            self._own_sockets.add(_socket_name(service) or ("", 0))
            self._adopt(service, rank)
        if self.run is not None and hasattr(self.run, "subscribe"):
            self._run_listener = self._on_run
            self.run.subscribe(self._run_listener)
        _set_current(self)
        self._update()
        return self

    def _targets(self) -> list[tuple[dict, tuple[str, int], int | None]]:
        """(config, address, rank) of every rank to attach to."""
        configs = self._config()
        targets = []
        for config in configs:
            rank = self.rank if len(configs) == 1 and self.rank is not None else _rank_of(self.run, config)
            targets.append((config, address_of(config), rank))
        self.addresses = [address for _config, address, _rank in targets]
        self.ranks = [rank for _config, _address, rank in targets]
        if self.rank is None and len(targets) == 1:
            self.rank = targets[0][2]
        return targets

    def _what(self, address: tuple[str, int], rank: int | None) -> str:
        who = f"run {self.run.id}{f' rank {rank}' if rank is not None else ''}" if self.run is not None else "debugpy"
        return f"{who} ({address[0]}:{address[1]})"

    def _open(self, config: dict, address: tuple[str, int], rank: int | None, timeout: float) -> DebugService:
        what = self._what(address, rank)
        with asking(f"{what}: cannot attach", lambda exc: f"{what}: debugpy refused the attach: {exc.adapter_message}"):
            return DebugService.open(config, self.breakpoints, timeout, name=f"dap-{what}",
                                     exception_filters=self.exception_filters)

    def _config(self) -> list[dict]:
        """The attach configuration(s): one, or one per rank."""
        source = self._config_source
        try:
            config = source() if callable(source) else source
        except Exception as exc:  # e.g. the run has no endpoint yet
            raise DebuggerError(f"{self.label}: nothing to attach to yet: {_first_line(exc)}") from None
        configs = list(config) if isinstance(config, (list, tuple)) else [config]
        if not configs:
            raise DebuggerError(f"{self.label}: nothing to attach to")
        return [_resolve_workspace_folder(dict(c)) for c in configs]

    # -- processes -------------------------------------------------------------------------
    @property
    def processes(self) -> list[Process]:
        return [self._process(service) for service in self._all_services()]

    @property
    def paused(self) -> list[Process]:
        """The processes stopped right now (what the panel's selector lists)."""
        return [p for p in self.processes if p.state == STOPPED]

    def select(self, pid: int) -> Process:
        """Make the process with ``pid`` the one the other calls talk to."""
        for service in self._all_services():
            if _pid(service) == pid:
                with self._cond:
                    self._selected = service
                    self.frame_index = 0
                self._emit("processes")
                return self._process(service)
        raise DebuggerError(f"{self.label}: no debugged process with pid {pid}")

    @property
    def service(self) -> DebugService:
        """The selected process's service (its models are what the panel shows)."""
        service = self._selected
        if service is None:
            raise DebuggerError(f"{self.label}: not attached (call .connect() or use run.attach())")
        return service

    # -- breakpoints -----------------------------------------------------------------------
    def break_at(self, path: str | os.PathLike, line: int, condition: str | None = None,
                 log_message: str | None = None) -> BreakpointState | None:
        """Set (or replace) a breakpoint at a local file's line; armed at once when attached.
        ``condition``: stop only when it holds; ``log_message``: a log point (prints it, ``{expr}``
        interpolated, and never stops)."""
        _path, line, _cond = parse_breakpoint((os.fspath(path), line, condition))
        local = local_path(path, self.local_root)
        self._disabled.pop((local, line), None)
        wanted = [b for b in self.breakpoints.requested(local) if b["line"] != line]
        wanted.append(BreakpointState(line, condition or None, log_message=log_message or None).as_dap())
        wanted.sort(key=lambda b: b["line"])
        self._apply(local, wanted)
        return next((s for s in self.breakpoints.by_path.get(local, ()) if s.line == line), None)

    def enable(self, path: str | os.PathLike, line: int, enabled: bool = True) -> None:
        """Disable a breakpoint (kept in the list, not sent) or enable it again."""
        local = local_path(path, self.local_root)
        if enabled:
            entry = self._disabled.pop((local, line), None)
            if entry is not None:
                self.break_at(local, line, entry.get("condition"), entry.get("logMessage"))
            return
        kept = next((b for b in self.breakpoints.requested(local) if b["line"] == line), None)
        if kept is None:
            raise DebuggerError(f"no breakpoint at {local}:{line}")
        self._apply(local, [b for b in self.breakpoints.requested(local) if b["line"] != line])
        self._disabled[(local, line)] = kept
        self._emit("breakpoints")

    def breakpoint_list(self) -> list[tuple[str, BreakpointState, bool]]:
        """Every breakpoint as ``(local path, state, enabled)``, by file and line."""
        rows = [(path, state, True) for path, states in self.breakpoints.by_path.items() for state in states]
        rows += [(path, BreakpointState(entry["line"], entry.get("condition"), log_message=entry.get("logMessage")),
                  False) for (path, _line), entry in self._disabled.items()]
        return sorted(rows, key=lambda row: (row[0], row[1].line))

    def clear(self, path: str | os.PathLike | None = None, line: int | None = None) -> None:
        """Remove one breakpoint, one file's, or (no arguments) all of them."""
        if path is None:
            if line is not None:
                raise DebuggerError("clear(line=...) needs the path too")
            self._disabled.clear()
            for known in list(self.breakpoints.by_path):
                self._apply(known, [])
            return
        local = local_path(path, self.local_root)
        wanted = [b for b in self.breakpoints.requested(local) if line is not None and b["line"] != line]
        for key in [k for k in self._disabled if k[0] == local and (line is None or k[1] == line)]:
            del self._disabled[key]
        self._apply(local, wanted)

    def _apply(self, path: str, wanted: list[dict]) -> None:
        live = [service for service in self.roots if service.state != ENDED]
        for service in live:
            with asking(f"{self.label}: setBreakpoints failed"):
                service.set_breakpoints(path, wanted)
        if not live:
            self.breakpoints.set(path, wanted, None)

    def set_exceptions(self, exceptions: Iterable[str]) -> tuple[str, ...]:
        """Where exceptions stop from now on (``uncaught``, ``raised``, ``user-uncaught``), armed at once."""
        filters = _filters(exceptions)
        self.exception_filters = filters
        for service in [s for s in self._all_services() if s.state != ENDED]:
            with asking(f"{self.label}: setExceptionBreakpoints failed"):
                service.set_exception_filters(filters)
        self._emit("exceptions")
        return filters

    # -- waiting and stepping --------------------------------------------------------------
    def wait_stopped(self, timeout: float = 30.0) -> Stop | None:
        """The stop of a paused process (the selected one first); ``None`` when the run ended."""
        with self._cond:
            if self._state == ARMED:
                raise DebuggerError(f"{self.label}: not attached")
            if not self._cond.wait_for(lambda: self._stopped_service() is not None
                                       or self._state in (ENDED_STATE, ARMED), timeout):
                raise DebuggerError(f"{self.label}: not stopped after {timeout:g}s (still {self._state})")
            if self._state == ARMED:
                raise DebuggerError(f"{self.label}: the attach failed")
            service = self._stopped_service()
            if service is None:
                return None
            if self._selected is not service:
                self._selected, self.frame_index = service, 0
        return self._stop_of(service)

    def _wait_on(self, service: DebugService, timeout: float) -> Stop | None:
        """The next stop of this process, or ``None`` once it (or the session) ended."""
        with self._cond:
            if not self._cond.wait_for(lambda: service.state in (STOPPED, ENDED), timeout):
                raise DebuggerError(f"{self.label}: not stopped after {timeout:g}s (still running)")
        return self._stop_of(service) if service.state == STOPPED else None

    def step_over(self, timeout: float = STEP_TIMEOUT) -> Stop | None:
        return self._step("next", timeout)

    def step_in(self, timeout: float = STEP_TIMEOUT) -> Stop | None:
        return self._step("stepIn", timeout)

    def step_out(self, timeout: float = STEP_TIMEOUT) -> Stop | None:
        return self._step("stepOut", timeout)

    def _step(self, command: str, timeout: float) -> Stop | None:
        service = self._stopped_or_raise()
        self._resume(service, command)
        return self._wait_on(service, timeout)

    def continue_(self) -> None:
        """Resume the selected process (all its threads, as debugpy does)."""
        service = self._stopped_or_raise()
        self._resume(service, "continue")

    def pause(self, timeout: float = STEP_TIMEOUT) -> Stop | None:
        """Pause the selected process; its stop (reason ``pause``)."""
        service = self._live_or_raise()
        if service.state == STOPPED:
            return self._stop_of(service)
        with asking(f"{self.label}: pause failed"):
            service.pause()
        return self._wait_on(service, timeout)

    def _resume(self, service: DebugService, command: str) -> None:
        with asking(f"{self.label}: {command} failed"):
            service.resume(command)

    def detach(self) -> None:
        """Leave: the run goes on with its debugger off, as after a timeout (nobody is left attached)."""
        if self._state in (ARMED, ENDED_STATE):
            self._finish("detached before attaching" if self._state == ARMED else self.end_reason)
            return
        self._leaving = "detached (the run goes on)"
        told = getattr(self.run, "detaching_debugger", None)  # the run then says "detached by you after N s"
        if told is not None:
            for rank in self.ranks:
                if rank is not None:
                    told(rank)
        for root in self.roots:
            try:
                root.detach()
            except DapError:
                root.close()
        self._finish(self._leaving)

    def close(self) -> None:
        """Drop the connection without a disconnect request (the run's node takes it as one: the run resumes)."""
        self._leaving = self._leaving or "closed"
        for root in self.roots:
            root.close()
        self._finish(self._leaving)

    # -- inspection ------------------------------------------------------------------------
    def stack(self, thread_id: int | None = None) -> list[Frame]:
        """Frames of the stopped thread (or ``thread_id``), innermost first, bootstrap frames hidden."""
        service = self._idle_or_raise()
        with asking(f"{self.label}: stackTrace failed"):
            frames = service.stack(thread_id)
        return [Frame(f.name, f.path, f.line) for _i, f in visible_frames(frames)]

    def select_frame(self, index: int) -> Frame:
        """Make frame ``index`` (0: innermost) the selected one; the variables model follows."""
        service = self._idle_or_raise()
        position, frame = self._frame_at(service, index)
        with asking(f"{self.label}: cannot read frame {index}"):
            service.select_frame(position, timeout=VARIABLES_TIMEOUT)
        self.frame_index = index
        self._emit("frame")
        return Frame(frame.name, frame.path, frame.line)

    def locals(self, frame: int | None = None) -> dict[str, str]:
        """``name -> value`` as debugpy displays them (long values cut), of the selected frame or ``frame``;
        arrays, tensors and frames as their one-line summary (``ndarray (3, 4) float64``), as the panel."""
        variables = [v for v in self._frame_variables(frame) if v.name not in _GROUPS]
        values = {v.name: v.value for v in variables}
        arrays = [v.name for v in variables if v.type in SUMMARISED_TYPES]
        if arrays:
            values.update({name: text for name, text in self.summaries(arrays, frame).items() if text})
        return values

    def summaries(self, expressions: Sequence[str], frame: int | None = None) -> dict[str, str | None]:
        """One line per value (shape, dtype, device) of arrays/tensors/frames, computed in the debuggee
        from metadata only (one evaluate for them all); ``None`` for other values."""
        if not expressions:
            return {}
        text = self.inspect(summaries_expression(expressions), frame, limit=1 << 20, context="watch").value
        return dict(zip(expressions, parse_summaries(text, len(expressions)), strict=True))

    def statistics(self, expression: str, frame: int | None = None) -> str:
        """min/max/mean, NaN/Inf counts and a preview of an array/tensor/frame, computed where the data
        is (on its device; a bounded sample of a huge one)."""
        return parse_text(self.inspect(statistics_expression(expression), frame, limit=1 << 16,
                                       context="watch").value)

    def variables(self, reference: int | None = None, start: int = 0, frame: int | None = None) -> list[Variable]:
        """Children of ``reference`` (≤ 100 from ``start``), or a frame's locals (with their references)."""
        if reference is None:
            return self._frame_variables(frame)
        return list(self.load_page(reference, start).variables)

    def load_page(self, reference: int, start: int = 0) -> Page:
        """One page (≤ 100 from ``start``) of ``reference``'s children (a frame's locals included),
        kept for the views: :meth:`loaded_page` finds it without a request."""
        service = self._idle_or_raise()
        with asking(f"{self.label}: variables failed"):
            return service.load_children(reference, start, timeout=VARIABLES_TIMEOUT)

    def evaluate(self, expression: str, frame: int | None = None) -> str:
        """The value of ``expression`` in a frame, as debugpy displays it; its error as a DebuggerError."""
        return self.inspect(expression, frame, limit=1 << 30).value

    def inspect(self, expression: str, frame: int | None = None, limit: int | None = None,
                context: str = "repl") -> Variable:
        """Like :meth:`evaluate`, as a variable (its ``reference`` expands it; value cut at ``limit``).

        An evaluate that does not answer in :data:`EVALUATE_TIMEOUT` holds the stopped thread
        (every later request would wait behind it): it is said at once, :attr:`busy` names it,
        later requests are refused in one line, and :meth:`cancel_evaluate` interrupts it.
        """
        service = self._idle_or_raise()
        _position, chosen = self._frame_at(service, self.frame_index if frame is None else frame)
        with asking(f"{self.label}: evaluate failed"):
            request = service.send_evaluate(expression, chosen.id, context)
        try:
            body = request.body(EVALUATE_TIMEOUT)
        except RequestFailed as exc:
            raise DebuggerError(_last_line(exc.adapter_message)) from None
        except DapTimeout:
            self._busy = _Busy(expression, service, request, time.monotonic() - EVALUATE_TIMEOUT)
            raise DebuggerError(f"{self.label}: {expression!r} is still running in the debuggee after "
                                f"{EVALUATE_TIMEOUT:g}s and holds the stopped thread: dbg.cancel_evaluate() "
                                f"interrupts it (continue_() and detach() still work)") from None
        except DapError as exc:
            raise DebuggerError(f"{self.label}: evaluate failed: {_first_line(exc)}") from None
        return evaluated(expression, body, limit)

    @property
    def busy(self) -> str | None:
        """The evaluate still running in the debuggee (``'expr' (running for Ns)``), if any."""
        busy = self._busy
        if busy is None:
            return None
        if busy.request.done() or busy.service.state != STOPPED:
            self._busy = None
            return None
        return f"{busy.expression!r} (running for {time.monotonic() - busy.since:.0f}s)"

    def cancel_evaluate(self, timeout: float = CANCEL_TIMEOUT) -> None:
        """Interrupt the evaluate still running (``KeyboardInterrupt`` in the debuggee's thread)."""
        busy = self._busy
        if self.busy is None or busy is None:
            return
        with asking(f"{self.label}: cancel failed"):
            busy.service.interrupt_evaluations(timeout)
        try:
            busy.request.body(timeout)
        except DapTimeout:
            raise DebuggerError(f"{self.label}: {busy.expression!r} did not stop when interrupted (code that "
                                f"ignores interrupts); continue_() or detach()") from None
        except DapError:
            pass  # KeyboardInterrupt, as asked
        self._busy = None

    def exception(self) -> ExceptionInfo:
        """Type, message and traceback text of the exception the selected process stopped at."""
        service = self._stopped_or_raise()
        stop = service.stop
        info = dict(stop.exception) if stop is not None and stop.exception else {}
        if not info:
            if stop is None or stop.reason != "exception":
                raise DebuggerError(f"{self.label}: not stopped at an exception (stopped: "
                                    f"{stop.reason if stop else 'no'})")
            with asking(f"{self.label}: exceptionInfo failed"):
                info = service.exception_info()
        details = info.get("details") or {}
        # pydevd may append a note to the type ("ZeroDivisionError   (note: ...)"): the name is the first word
        kind = (str(info.get("exceptionId") or details.get("typeName") or "").split() or [""])[0]
        return ExceptionInfo(type=kind.rsplit(".", 1)[-1] if kind.startswith("builtins.") else kind,
                             message=str(info.get("description") or details.get("message") or ""),
                             traceback=str(details.get("stackTrace") or ""))

    # -- what the views read (from the models: never a request) ----------------------------
    @property
    def current_stop(self) -> Stop | None:
        """The selected process's stop, or ``None`` unless stopped."""
        service = self._selected
        if self._state != STOPPED_STATE or service is None or service.stop is None:
            return None
        return self._stop_of(service)

    @property
    def frames(self) -> list[Frame]:
        """The selected process's frames as last fetched, bootstrap frames hidden."""
        service = self._selected
        if self._state != STOPPED_STATE or service is None:
            return []
        return [Frame(f.name, f.path, f.line) for _i, f in self._visible(service)]

    @property
    def console(self) -> list[str]:
        """The debug console: what log points printed and debugpy said, every process's, oldest first."""
        return [line for service in self._all_services() for line in service.console]

    @property
    def selected_pid(self) -> int | None:
        service = self._selected
        return _pid(service) if service is not None else None

    @property
    def locals_page(self) -> Page | None:
        """The first page of the selected frame's locals, once loaded."""
        service = self._selected
        return service.variables.locals if self._state == STOPPED_STATE and service is not None else None

    @property
    def locals_note(self) -> str:
        """Why the locals are not shown yet ("loading", not answered in time), or ``""``."""
        service = self._selected
        return service.variables.note if self._state == STOPPED_STATE and service is not None else ""

    def loaded_page(self, reference: int, start: int = 0) -> Page | None:
        """A page :meth:`load_page` (or the stop) loaded, without a request."""
        service = self._selected
        return service.variables.page(reference, start) if service is not None else None

    # -- internals -------------------------------------------------------------------------
    def _all_services(self) -> list[DebugService]:
        with self._cond:
            return list(self._services)

    def _stopped_service(self) -> DebugService | None:
        selected = self._selected
        if selected is not None and selected.state == STOPPED:
            return selected
        return next((s for s in self._services if s.state == STOPPED), None)

    def _stopped_or_raise(self) -> DebugService:
        service = self._live_or_raise()
        if service.state != STOPPED:
            other = self._stopped_service()
            if other is None:
                raise DebuggerError(f"{self.label}: not stopped (the run is {service.state}; "
                                    f"wait_stopped() or pause() first)")
            return other
        return service

    def _idle_or_raise(self) -> DebugService:
        """A stopped process that can answer requests now (no evaluate still holds its thread)."""
        service = self._stopped_or_raise()
        busy = self.busy
        if busy is not None:
            raise DebuggerError(f"{self.label}: {busy} is still running in the debuggee and holds the "
                                f"stopped thread: dbg.cancel_evaluate() interrupts it")
        return service

    def _live_or_raise(self) -> DebugService:
        if self._state == ARMED:
            raise DebuggerError(f"{self.label}: not attached (call .connect() or use run.attach())")
        services = self._all_services()
        if self._state == ENDED_STATE or (services and all(s.state == ENDED for s in services)):
            with self._cond:  # every session ended: the reason follows in a moment
                self._cond.wait_for(lambda: self._state == ENDED_STATE, 5.0)
            raise DebuggerError(f"{self.label}: the debug session ended: {self.end_reason or 'ending'}")
        return self.service

    def _visible(self, service: DebugService) -> list[tuple[int, StackFrame]]:
        return visible_frames(service.callstack.frames)

    def _frame_at(self, service: DebugService, index: int) -> tuple[int, StackFrame]:
        visible = self._visible(service)
        if not 0 <= index < len(visible):
            raise DebuggerError(f"{self.label}: no frame {index} (the stack has {len(visible)})")
        return visible[index]

    def _frame_variables(self, frame: int | None) -> list[Variable]:
        service = self._idle_or_raise()
        index = self.frame_index if frame is None else frame
        position, chosen = self._frame_at(service, index)
        service.wait_locals()  # the stop's own load, if still coming (not a second request for the same)
        model = service.variables
        page = model.locals
        if model.frame_id == chosen.id and page is not None and not page.more:
            return list(page.variables)
        try:
            return service.frame_variables(chosen.id, timeout=VARIABLES_TIMEOUT)
        except DapTimeout:
            raise DebuggerError(f"{self.label}: the variables of frame {index} were not answered in "
                                f"{VARIABLES_TIMEOUT:g}s (a __repr__ in the frame may hang; continue_() and "
                                f"detach() still work)") from None
        except DapError as exc:
            raise DebuggerError(f"{self.label}: cannot read frame {index}: {_first_line(exc)}") from None

    def _stop_of(self, service: DebugService) -> Stop | None:
        stop = service.stop
        if stop is None:
            return None
        visible = self._visible(service)
        top = visible[0][1] if visible else (service.callstack.frames[0] if service.callstack.frames else None)
        path, line = (top.path, top.line) if top is not None else (None, 0)
        if _outside_script(service.callstack.frames):
            path, line = None, 0  # runpy's frame that started the node is no place to show
        return Stop(stop.reason, path, line, stop.thread_id, source_line(path, line) or stop.text or stop.description,
                    _pid(service), stop.description)

    def _process(self, service: DebugService) -> Process:
        name = str(service.process.get("name") or service.name)
        if self.run is not None and service in self.roots:
            name = self.run.spec.script  # debugpy names the bootstrap, which runs it
        return Process(_pid(service), name, service.state,
                       self._stop_of(service) if service.state == STOPPED else None,
                       self._rank_of_service.get(id(service)) if len(self.roots) > 1 else None)

    def _adopt(self, service: DebugService, rank: int | None) -> None:
        with self._cond:
            self._services.append(service)
            self._rank_of_service[id(service)] = rank
        service.subscribe(self._on_service)
        service.callstack.subscribe(lambda _m, change: self._emit(f"callstack.{change}"))
        service.variables.subscribe(lambda _m, change: self._emit(f"variables.{change}"))
        for child in list(service.children):
            if child not in self._services:
                self._adopt(child, rank)

    def _on_service(self, service: Model, change: str) -> None:
        assert isinstance(service, DebugService)
        if change == "state" and _our_exit(service):
            # the run's own SystemExit after the user's exception was reported: never the user's stop
            threading.Thread(target=self._pass_over, args=(service,), daemon=True, name="aml-dbg-pass").start()
            return
        if change == "child":
            rank = self._rank_of_service.get(id(service))
            for child in list(service.children):
                if child not in self._all_services():
                    self._adopt(child, rank)
            self._emit("processes")
        self._update()

    def _pass_over(self, service: DebugService) -> None:
        try:
            service.resume("continue")
        except DapError:
            pass  # the session ends with the run: _on_service hears it
        self._update()

    def _update(self) -> None:
        """Recompute the debugger's state from its processes'; wake waiters; tell subscribers."""
        with self._cond:
            if self._state in (ARMED, CONNECTING, ENDED_STATE):
                return
            services = list(self._services)
            stopped = self._stopped_service()
            if stopped is not None and self._selected is not stopped and (
                    self._selected is None or self._selected.state != STOPPED):
                self._selected = stopped
            selected = self._selected
            stop = selected.stop if selected is not None else None
            if stop is not self._seen_stop:
                self._seen_stop, self.frame_index = stop, 0
                self.stop_serial += 1 if stop is not None else 0
            all_ended = bool(services) and all(s.state == ENDED for s in services)
            self._state = STOPPED_STATE if stopped is not None else RUNNING
            self._cond.notify_all()
        if all_ended:
            self._finish(self._end_reason())
        else:
            self._emit("state")

    def _end_reason(self) -> str:
        if self._leaving:
            return self._leaving
        run = self.run
        if run is not None and getattr(run, "done", False):
            return f"the run ended ({run.state})"
        for address in self.addresses:
            other = holders.taken_over_by(address, self._own_sockets)
            if other is not None:
                return (f"another client ({other}) connected to {address[0]}:{address[1]} and debugpy "
                        f"handed it the session (one client at a time)")
        reason = self.root.end_reason if self.root is not None else ""
        if run is not None and reason in ("the debuggee ended", CONNECTION_CLOSED):
            try:  # the target reports the exit (a cancel's included) a moment after debugpy does
                return f"the run ended ({run.wait(3)})"
            except TimeoutError:
                pass
        return "the debugged process ended" if reason == "the debuggee ended" else (reason or "the session ended")

    def _finish(self, reason: str) -> None:
        with self._cond:
            if self._state == ENDED_STATE:
                return
            attached = self._state != ARMED
            self._state, self.end_reason = ENDED_STATE, reason
            self._cond.notify_all()
        for service in self._all_services():
            if service.state != ENDED:
                service.close()
        for address in self.addresses:
            holders.release(address, self, attached=attached)
        if self.run is not None and self._run_listener is not None:
            self.run.unsubscribe(self._run_listener)
        self._emit("state")

    def _on_run(self, run: Any, what: str) -> None:
        """The run ended while attached: give the socket a moment to close by itself, then close it."""
        if what != "state" or not run.done or self._state == ENDED_STATE:
            return
        timer = threading.Timer(2.0, self._run_ended)
        timer.daemon = True
        timer.start()

    def _run_ended(self) -> None:
        if self._state != ENDED_STATE:
            self._leaving = f"the run ended ({self.run.state})"
            self.close()

    # -- display ---------------------------------------------------------------------------
    def panel(self) -> Any:
        """This debugger's ipywidgets panel (one per debugger)."""
        from .panel import panel_for

        return panel_for(self)

    def __repr__(self) -> str:
        from .text import describe

        return describe(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict:
        from .text import render

        text = render(self)
        from ..frontend import widget_frontend

        if not widget_frontend():
            return {"text/plain": text}
        bundle = dict(self.panel()._repr_mimebundle_() or {})
        bundle["text/plain"] = text
        return bundle


# -- module functions ---------------------------------------------------------------------
def attach(config: ConfigSource, breakpoints: Iterable[Any] = (), timeout: float = 30.0,
           run: Any = None, rank: int | None = None, exceptions: Iterable[str] = DEFAULT_EXCEPTIONS) -> Debugger:
    """Attach to a debugpy attach configuration (``run``: the run it belongs to), breakpoints armed first;
    ``exceptions``: where exceptions stop (``uncaught``, ``raised``, ``user-uncaught``; ``()``: never)."""
    debugger = Debugger(config, run=run, rank=rank if rank is not None else _rank_of(run, config),
                        exception_filters=exceptions)
    for spec in breakpoints:
        path, line, condition = parse_breakpoint(spec)
        debugger.break_at(path, line, condition)
    return debugger.connect(timeout)


def prepare(run: Any, rank: int | None = None, exceptions: Iterable[str] = DEFAULT_EXCEPTIONS) -> Debugger:
    """A debugger for ``run``, not attached yet: set breakpoints, then :meth:`Debugger.connect`.

    The attach configurations are read from the run at connect time (its endpoints may come
    later): ``rank``'s, or every rank that waits for a debugger (one session each, one
    selector of the paused processes, as VS Code's compound configuration does).
    """
    def configs() -> list[dict]:
        folder = Path.cwd()
        if rank is not None:
            return [run.launch_config(rank=rank, workspace_folder=folder)]
        waiting = [s.rank for s in run.ranks if s.endpoint is not None and s.state in holders.USABLE_RANK_STATES]
        return [run.launch_config(rank=waiting[0] if waiting else None, workspace_folder=folder)]

    if rank is None and getattr(run, "world_size", 1) > 1:  # every rank: the run's DebuggerGroup
        from .group import DebuggerGroup

        return DebuggerGroup(run)
    return Debugger(configs, run=run, rank=rank, exception_filters=exceptions)


def current() -> Debugger | None:
    """The debugger attached last in this kernel (what ``%aml_dbg`` talks to)."""
    with _current_lock:
        return _current


def _set_current(debugger: Debugger) -> None:
    global _current
    with _current_lock:
        _current = debugger


def _rank_of(run: Any, config: ConfigSource) -> int | None:
    if run is None or not isinstance(config, dict):
        return None
    try:
        host, port = address_of(config)
    except DapError:
        return None
    return next((e.rank for e in getattr(run, "endpoints", []) if e.port == port), None)


def _local_root(run: Any, config: ConfigSource) -> Path:
    if run is not None:
        return Path(run.spec.mapped_local_root).resolve()
    if isinstance(config, dict):
        mappings = config.get("pathMappings") or []
        if mappings and "${" not in str(mappings[0].get("localRoot", "${")):
            return Path(mappings[0]["localRoot"]).resolve()
    return Path.cwd()


def _resolve_workspace_folder(config: dict) -> dict:
    """``${workspaceFolder}`` (as in a launch.json) is the kernel's working directory."""
    folder = os.getcwd()

    def sub(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("${workspaceFolder}", folder)
        if isinstance(value, dict):
            return {k: sub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [sub(v) for v in value]
        return value

    return sub(config)


def visible_frames(frames: Sequence[StackFrame]) -> list[tuple[int, StackFrame]]:
    """(position, frame) of the frames a user wants: the bootstrap's hidden, and the runpy
    frames it runs the script through when nothing but launcher frames lies beyond them."""
    kept = [(i, f) for i, f in enumerate(frames) if not is_bootstrap(f.path)]
    while len(kept) > 1 and is_launcher(kept[-1][1].path):
        kept.pop()
    return kept


def _outside_script(frames: Sequence[StackFrame]) -> bool:
    """A stack with no frame of the user's: only the node's own and the runpy that started it."""
    return bool(frames) and all(is_bootstrap(f.path) or is_launcher(f.path) for f in frames)


def _our_exit(service: DebugService) -> bool:
    """A stop at the ``SystemExit`` our own node code raises (no frame of the user's in the stack)."""
    stop = service.stop
    if service.state != STOPPED or stop is None or stop.reason != "exception":
        return False
    kind = str((stop.exception or {}).get("exceptionId") or "")
    frames = service.callstack.frames
    return "SystemExit" in kind and _outside_script(frames)


def _pid(service: DebugService) -> int | None:
    pid = service.process.get("systemProcessId")
    return int(pid) if isinstance(pid, int) else None


def _socket_name(service: DebugService) -> tuple[str, int] | None:
    sock = service.session.channel.stream.socket
    try:
        name = sock.getsockname() if sock is not None else None
    except OSError:
        return None
    return (name[0], name[1]) if name else None


@contextmanager
def asking(what: str, refused: Callable[[RequestFailed], str] | None = None) -> Iterator[None]:
    """The one door from the DAP client's errors to :class:`DebuggerError`: ``what: why`` in one
    line (``refused`` words the adapter's own refusal when it needs other words)."""
    try:
        yield
    except RequestFailed as exc:
        raise DebuggerError(refused(exc) if refused is not None else f"{what}: {_first_line(exc)}") from None
    except DapError as exc:
        raise DebuggerError(f"{what}: {_first_line(exc)}") from None


def _filters(names: Iterable[str]) -> tuple[str, ...]:
    """Exception filters in debugpy's names; ``user-uncaught`` is accepted for ``userUnhandled``."""
    aliases = {"user-uncaught": "userUnhandled", "user_uncaught": "userUnhandled", "useruncaught": "userUnhandled"}
    chosen = tuple(aliases.get(str(n).lower(), str(n)) for n in names)
    unknown = [n for n in chosen if n not in EXCEPTION_FILTERS]
    if unknown:
        raise DebuggerError(f"unknown exception filter {unknown[0]!r}: choose from raised, uncaught, user-uncaught")
    return chosen


def _last_line(text: str) -> str:
    """debugpy's evaluate errors are a whole traceback; its last line says what went wrong."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else text


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
