"""One debug session's live state: models kept up to date from DAP events, and the requests
that change it.

The service is what the views and the wait-style API talk to (the middle layer of
session → service → models → views). Events arrive on the channel's reader thread; the
service queues them to its own worker thread, which does the follow-up requests — a
``stopped`` event becomes ``stackTrace`` → ``scopes`` → ``variables`` of the top frame —
and publishes the stop once the call stack is in the models: the top frame's locals load
on their own thread and follow (a view shows the stack and the current line without waiting
for the names: a stock debugpy sends them all whatever ``count`` asks; the node's sends the page,
see ``aml_magics.node.paging``). A reader that
wants them waits with :meth:`DebugService.wait_locals`, at most :data:`LOCALS_GRACE` (a
``__repr__`` that hangs in the frame): a stop is a stop, the locals follow when (if) they
come, and ``variables.note`` says why they are missing.

Each resume (continue, step, pause's opposite) starts a new *epoch*: a refresh still in
flight for an older stop is dropped rather than shown over a thread that runs again.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .channel import Request
from .errors import DapError, DapTimeout, RequestFailed
from .models import (
    PAGE_SIZE,
    BreakpointsModel,
    CallStackModel,
    Model,
    Page,
    Scope,
    StackFrame,
    StopState,
    Thread,
    Variable,
    VariablesModel,
)
from .session import Breakpoints, Session, SourceBreakpoint, address_of, source_breakpoints

CONNECTING = "connecting"
RUNNING = "running"
STOPPED = "stopped"
ENDED = "ended"
STACK_LEVELS = 50
REQUEST_TIMEOUT = 30.0
LOCALS_GRACE = 2.0  # how long a reader of the stop's locals waits for them (wait_locals)
VARIABLES_TIMEOUT = 10.0  # the locals' own deadline
HELD_RESUME_WAIT = 1.0  # a resume of a thread a hanging request holds: sent, answered when it runs
RESUME_COMMANDS = ("continue", "next", "stepIn", "stepOut")
_WATCHED_EVENTS = ("stopped", "continued", "exited", "terminated", "breakpoint", "process", "debugpyAttach", "output")
CONSOLE_LINES = 200  # the adapter's own output kept (log points print there, not to the run's stdout)


class DebugService(Model):
    """The models of one session (call stack, variables, breakpoints) and its state.

    ``state`` is ``running``, ``stopped`` or ``ended``; subscribers hear ``"state"`` on every
    change and ``"child"`` when a child process's session was added to ``children``.
    """

    def __init__(self, session: Session, breakpoints: BreakpointsModel | None = None,
                 follow_children: bool = True, exception_filters: Iterable[str] = ()) -> None:
        super().__init__()
        self.session = session
        self.name = session.name
        self.callstack = CallStackModel()
        self.variables = VariablesModel()
        self.breakpoints = breakpoints or BreakpointsModel()
        self.follow_children = follow_children
        self.exception_filters = tuple(exception_filters)
        self.children: list[DebugService] = []
        self.parent: DebugService | None = None
        self.process: dict = {}  # the ``process`` event: name, systemProcessId
        self.state = CONNECTING
        self.stop: StopState | None = None
        self.end_reason = ""
        self.exit_code: int | None = None
        self._cond = threading.Condition()
        self._epoch = 0
        self._locals_loaded = threading.Event()  # the current stop's locals came (or failed, or none)
        self._locals_loaded.set()
        self._inspecting: set[Request] = set()  # variables/evaluate requests not answered yet
        self.console: deque[str] = deque(maxlen=CONSOLE_LINES)  # log points' lines, debugpy's warnings
        self._leaving = ""  # why we end the session ourselves (detached, closed)
        self._work: queue.Queue[tuple[Callable[..., None], tuple] | None] = queue.Queue()
        self._unsubscribers = [session.channel.on_event(self._on_event),
                               session.channel.on_close(self._on_close)]
        self._worker = threading.Thread(target=self._work_loop, daemon=True, name=f"{self.name}-service")
        self._worker.start()

    # -- making one ----------------------------------------------------------------------
    @classmethod
    def open(cls, config: Mapping[str, Any], breakpoints: BreakpointsModel | Breakpoints | None = None,
             timeout: float = 30.0, name: str | None = None, follow_children: bool = True,
             exception_filters: Iterable[str] = (), what: str = "attach configuration") -> DebugService:
        """Connect, attach with the breakpoints armed before ``configurationDone``, and follow events
        from the first byte (a short script may stop before the attach response arrives)."""
        model = breakpoints if isinstance(breakpoints, BreakpointsModel) else BreakpointsModel()
        if breakpoints is not None and not isinstance(breakpoints, BreakpointsModel):
            for path, lines in breakpoints.items():
                model.set(path, source_breakpoints(lines), None)
        host, port = address_of(config, what)
        session = Session.connect(host, port, timeout, name)
        service = cls(session, model, follow_children, exception_filters)
        try:
            session.start()
            session.attach(config, model.all(), timeout=timeout, exception_filters=exception_filters)
        except BaseException:
            service.close()
            raise
        for path, verdicts in session.breakpoints.items():
            model.set(path, model.requested(path), verdicts)
        with service._cond:
            if service.state == CONNECTING:
                service.state = RUNNING
        service._emit("state")
        return service

    # -- waiting -------------------------------------------------------------------------
    @property
    def ended(self) -> bool:
        return self.state == ENDED

    def wait_stopped(self, timeout: float = 30.0) -> StopState | None:
        """The current stop once the models hold it; ``None`` when the session ended first."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.state in (STOPPED, ENDED), timeout):
                raise DapTimeout(f"{self.name}: not stopped after {timeout:g}s (still {self.state})")
            return self.stop if self.state == STOPPED else None

    # -- control -------------------------------------------------------------------------
    def resume(self, command: str = "continue", thread_id: int | None = None,
               timeout: float = REQUEST_TIMEOUT) -> None:
        """``continue`` / ``next`` / ``stepIn`` / ``stepOut`` the stopped thread (or ``thread_id``)."""
        if command not in RESUME_COMMANDS:
            raise ValueError(f"not a resume command: {command!r}")
        with self._cond:
            previous = self.stop
            if self.state == ENDED:
                raise DapError(f"{self.name}: the session ended ({self.end_reason})")
            if command != "continue" and previous is None:
                raise DapError(f"{self.name}: cannot {command}: not stopped")
            thread = thread_id if thread_id is not None else (previous.thread_id if previous else None)
            self._epoch += 1
            self.state, self.stop = RUNNING, None
            held = bool(self._inspecting)
            self._inspecting.clear()
            self._cond.notify_all()
        if thread is None:
            thread = self._any_thread(timeout)
        self.callstack.clear()
        self.variables.clear()
        self._emit("state")
        try:
            request = self.session.channel.send_request(command, {"threadId": thread})
            # pydevd answers once the thread runs: a thread held by a hanging request of ours runs
            # when that request ends; the resume is sent, not refused
            request.body(HELD_RESUME_WAIT if held else timeout)
        except DapTimeout:
            if not held:
                raise
        except RequestFailed:
            if previous is not None:  # still stopped there: show it again
                self._work.put((self._refresh, (previous, self._epoch, {"reason": previous.reason,
                                                                        "threadId": previous.thread_id})))
            raise

    def pause(self, thread_id: int | None = None, timeout: float = REQUEST_TIMEOUT) -> None:
        thread = thread_id if thread_id is not None else self._any_thread(timeout)
        self.session.channel.request("pause", {"threadId": thread}, timeout=timeout)

    def _any_thread(self, timeout: float) -> int:
        threads = self.threads(timeout)
        if not threads:
            raise DapError(f"{self.name}: the debuggee has no threads")
        return threads[0].id

    def threads(self, timeout: float = REQUEST_TIMEOUT) -> list[Thread]:
        body = self.session.channel.request("threads", timeout=timeout)
        threads = [Thread(int(t["id"]), str(t.get("name", ""))) for t in body.get("threads") or []]
        self.callstack.set_threads(threads)
        return threads

    # -- inspection ----------------------------------------------------------------------
    def stack(self, thread_id: int | None = None, levels: int = 0, timeout: float = REQUEST_TIMEOUT) -> list[StackFrame]:
        """Frames of a thread, innermost first (``levels`` 0: all); the stopped thread's come from the model
        when they are complete."""
        current = self.callstack
        if (thread_id is None or thread_id == current.thread_id) and current.frames and \
                len(current.frames) >= current.total_frames and not levels:
            return list(current.frames)
        thread = thread_id if thread_id is not None else current.thread_id
        if thread is None:
            raise DapError(f"{self.name}: not stopped")
        frames, _total = self._fetch_stack(thread, levels, timeout)
        return frames

    def select_frame(self, index: int, timeout: float = REQUEST_TIMEOUT) -> Page | None:
        """Make frame ``index`` the selected one and load its locals into the variables model (after the
        stop's own load of the top frame's, which would otherwise land over them)."""
        self.wait_locals()
        frame = self.callstack.select(index)
        scopes = self._scopes(frame.id, timeout)
        page = self._locals_page(scopes, timeout)
        self.variables.update(frame.id, scopes, page)
        return page

    def wait_locals(self, timeout: float = LOCALS_GRACE) -> bool:
        """Wait for the current stop's locals (loaded on their own thread); False after ``timeout``."""
        return self._locals_loaded.wait(timeout)

    def frame_variables(self, frame_id: int, timeout: float = REQUEST_TIMEOUT) -> list[Variable]:
        """Every local of a frame (all pages), without touching the models."""
        scopes = self._scopes(frame_id, timeout)
        page = self._locals_page(scopes, timeout)
        return self._all_pages(page, timeout) if page is not None else []

    def _all_pages(self, page: Page, timeout: float) -> list[Variable]:
        """Every child from ``page`` on. A page size never ends the loop (debugpy ignores ``start``
        and ``count``): a page that brings no name not seen yet does."""
        variables = list(page.variables)
        seen = {v.name for v in variables}
        first = page.variables[0].name if page.start == 0 and page.variables else None
        while page.more:
            page = self._variables_page(page.reference, page.start + len(page.variables), timeout, first=first)
            fresh = [v for v in page.variables if v.name not in seen]
            if not fresh:
                break
            seen.update(v.name for v in fresh)
            variables.extend(fresh)
        return variables

    def load_children(self, reference: int, start: int = 0, count: int = PAGE_SIZE,
                 timeout: float = REQUEST_TIMEOUT) -> Page:
        """One page (≤ :data:`PAGE_SIZE`) of a variable's children, kept in the variables model."""
        page = self._variables_page(reference, start, timeout, count)
        self.variables.add_page(page)
        return page

    def evaluate(self, expression: str, frame_id: int | None = None, context: str = "repl",
                 timeout: float = REQUEST_TIMEOUT, limit: int | None = None) -> Variable:
        """The result as a variable (its ``reference`` expands it); :class:`RequestFailed` carries
        debugpy's message. ``limit`` cuts the value (default :data:`models.VALUE_LIMIT`)."""
        body = self.send_evaluate(expression, frame_id, context).body(timeout)
        return evaluated(expression, body, limit)

    def send_evaluate(self, expression: str, frame_id: int | None = None, context: str = "repl") -> Request:
        """Send an ``evaluate`` without waiting (its answer may never come: an infinite loop)."""
        arguments: dict[str, Any] = {"expression": expression, "context": context}
        if frame_id is None and self.callstack.frame is not None:
            frame_id = self.callstack.frame.id
        if frame_id is not None:
            arguments["frameId"] = frame_id
        return self._send_inspection("evaluate", arguments)

    def _send_inspection(self, command: str, arguments: dict) -> Request:
        """A request that runs code in the stopped thread (``__repr__``, an evaluate). While one is
        unanswered, pydevd may resume the *other* threads and say ``continued`` for all: the
        stopped thread is still stopped, and :meth:`_continued` knows it."""
        request = self.session.channel.send_request(command, arguments)
        with self._cond:
            self._inspecting.add(request)
        request.add_done_callback(self._inspected)
        return request

    def _inspected(self, request: Request) -> None:
        with self._cond:
            self._inspecting.discard(request)

    def interrupt_evaluations(self, timeout: float = REQUEST_TIMEOUT) -> int:
        """Raise ``KeyboardInterrupt`` in every debuggee thread busy in an evaluate; how many.

        Sent with no frame, the request runs on pydevd's command thread, not on the stopped
        thread that the evaluate holds; not as ``repl``, whose output redirection it also holds.
        """
        body = self.session.channel.request("evaluate", {"expression": _INTERRUPT, "context": "watch"},
                                            timeout=timeout)
        return str(body.get("result", "")).count("1")

    def exception_info(self, thread_id: int | None = None, timeout: float = REQUEST_TIMEOUT) -> dict:
        thread = thread_id if thread_id is not None else (self.stop.thread_id if self.stop else None)
        if thread is None:
            raise DapError(f"{self.name}: not stopped")
        return self.session.channel.request("exceptionInfo", {"threadId": thread}, timeout=timeout)

    # -- breakpoints ---------------------------------------------------------------------
    def set_breakpoints(self, path: str, lines: Sequence[SourceBreakpoint], timeout: float = REQUEST_TIMEOUT) -> None:
        """Replace one file's breakpoints, here and in every child session still live."""
        wanted = source_breakpoints(lines)
        verdicts = None
        if self.state in (RUNNING, STOPPED) and not self.session.closed:
            verdicts = self.session.set_breakpoints(path, wanted, timeout=timeout)
        self.breakpoints.set(path, wanted, verdicts)
        for child in list(self.children):
            if child.state in (RUNNING, STOPPED) and not child.session.closed:
                child.session.set_breakpoints(path, wanted, timeout=timeout)

    def set_exception_filters(self, filters: Iterable[str], timeout: float = REQUEST_TIMEOUT) -> None:
        """Where exceptions stop (debugpy's filter ids), here and in every child session still live."""
        self.exception_filters = tuple(filters)
        for service in [self, *self.children]:
            if service.state in (RUNNING, STOPPED) and not service.session.closed:
                service.session.channel.request("setExceptionBreakpoints", {"filters": list(self.exception_filters)},
                                                timeout=timeout)

    # -- the end -------------------------------------------------------------------------
    def detach(self, timeout: float = 10.0) -> None:
        """``disconnect`` without terminating: the debuggee runs on, the session ends."""
        for child in list(self.children):
            child.detach(timeout)
        self._leaving = "detached"  # debugpy says "terminated" to a client that leaves, too
        self.session.disconnect(terminate=False, timeout=timeout)
        self._end("detached")

    def close(self) -> None:
        for child in list(self.children):
            child.close()
        self._leaving = self._leaving or "closed"
        self.session.close()
        self._end("closed")

    # -- events (reader thread) → work (worker thread) ----------------------------------
    def _on_event(self, message: dict) -> None:
        name = message.get("event")
        if name not in _WATCHED_EVENTS:
            return
        body = message.get("body") or {}
        if name == "output":
            if body.get("category") != "telemetry":  # log points come as "stdout" (the run's own output does not)
                self.console.extend(str(body.get("output") or "").splitlines())
                self._emit("console")
        elif name == "breakpoint":
            self.breakpoints.on_event(body)
        elif name == "process":
            self.process = dict(body)
        elif name == "stopped":
            self._work.put((self._refresh, (None, self._epoch, body)))
        elif name == "continued":
            self._work.put((self._continued, (body,)))
        elif name == "exited":
            self.exit_code = body.get("exitCode")
        elif name == "terminated":
            self._work.put((self._end, ("the debuggee ended",)))
        elif name == "debugpyAttach" and self.follow_children:
            threading.Thread(target=self._attach_child, args=(dict(body),), daemon=True,
                             name=f"{self.name}-child").start()

    def _on_close(self, reason: str) -> None:
        self._work.put((self._end, (reason,)))

    def _work_loop(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            function, args = item
            try:
                function(*args)
            except DapError:
                pass  # the session went away under a refresh; _on_close ends the service
            except Exception as exc:
                print(f"aml_magics.dap: {self.name}: {exc!r}", flush=True)

    def _refresh(self, previous: StopState | None, epoch: int, body: dict) -> None:
        """A thread stopped: fetch its stack and the top frame's locals, then publish the stop."""
        if epoch != self._epoch or self.state == ENDED:
            return
        thread_id = body.get("threadId")
        if thread_id is None:
            thread_id = self._any_thread(REQUEST_TIMEOUT)
        frames, total = self._fetch_stack(int(thread_id), STACK_LEVELS, REQUEST_TIMEOUT)
        reason = str(body.get("reason", ""))
        exception = self.exception_info(int(thread_id)) if reason == "exception" else {}
        stop = previous or StopState(reason, int(thread_id), str(body.get("description") or ""),
                                     str(body.get("text") or ""), bool(body.get("allThreadsStopped")), exception)
        with self._cond:
            if epoch != self._epoch or self.state == ENDED:
                return
        self.callstack.update(int(thread_id), frames, total)
        if frames:  # the locals follow the stop: nothing waits for debugpy's whole list of names
            loaded = self._locals_loaded = threading.Event()
            self.variables.set_note("loading")
            threading.Thread(target=self._load_locals, args=(frames[0].id, epoch, loaded), daemon=True,
                             name=f"{self.name}-locals").start()
        with self._cond:
            if epoch != self._epoch or self.state == ENDED:
                return
            self.state, self.stop = STOPPED, stop
            self._cond.notify_all()
        self._emit("state")

    def _load_locals(self, frame_id: int, epoch: int, loaded: threading.Event) -> None:
        """The top frame's locals, on their own deadline (a hanging ``__repr__`` never holds the stop);
        ``loaded`` is set once they are in the model (or will not come)."""
        try:
            scopes = self._scopes(frame_id, VARIABLES_TIMEOUT)
            page = self._locals_page(scopes, VARIABLES_TIMEOUT)
            with self._cond:
                if epoch != self._epoch or self.state == ENDED:
                    return
            self.variables.update(frame_id, scopes, page)
        except DapTimeout:
            if epoch == self._epoch:
                self.variables.set_note(f"the locals were not answered in {VARIABLES_TIMEOUT:g}s "
                                        f"(a __repr__ in the frame may hang)")
        except DapError:
            pass
        finally:
            loaded.set()

    def _continued(self, body: dict) -> None:
        with self._cond:
            stop = self.stop
            if self.state != STOPPED or stop is None:
                return
            if not body.get("allThreadsContinued", True) and body.get("threadId") != stop.thread_id:
                return
            if self._inspecting:  # pydevd let the other threads run while our request holds this one
                return
            self._epoch += 1
            self.state, self.stop = RUNNING, None
            self._cond.notify_all()
        self.callstack.clear()
        self.variables.clear()
        self._emit("state")

    def _end(self, reason: str) -> None:
        with self._cond:
            if self.state == ENDED:
                return
            self._epoch += 1
            self.state, self.stop, self.end_reason = ENDED, None, self._leaving or reason
            self._cond.notify_all()
        self._work.put(None)
        for unsubscribe in self._unsubscribers:
            unsubscribe()
        if not self.session.closed:
            self.session.close()
        self._emit("state")

    def _attach_child(self, body: dict) -> None:
        try:
            child = type(self).open(body, self.breakpoints, REQUEST_TIMEOUT, follow_children=self.follow_children,
                                    exception_filters=self.exception_filters, what="debugpyAttach body",
                                    name=f"dap-child-{body.get('subProcessId', '?')}")
        except DapError as exc:
            print(f"aml_magics.dap: could not attach to child process {body.get('subProcessId')}: {exc}", flush=True)
            return
        child.parent = self
        if self.state == ENDED:
            child.close()
            return
        self.children.append(child)
        self._emit("child")

    # -- requests ------------------------------------------------------------------------
    def _fetch_stack(self, thread_id: int, levels: int, timeout: float) -> tuple[list[StackFrame], int]:
        arguments = {"threadId": thread_id, "startFrame": 0, "levels": levels}
        body = self.session.channel.request("stackTrace", arguments, timeout=timeout)
        frames = [StackFrame.from_dap(f) for f in body.get("stackFrames") or []]
        return frames, int(body.get("totalFrames") or len(frames))

    def _scopes(self, frame_id: int, timeout: float) -> list[Scope]:
        body = self._send_inspection("scopes", {"frameId": frame_id}).body(timeout)
        return [Scope.from_dap(s) for s in body.get("scopes") or []]

    def _locals_page(self, scopes: Sequence[Scope], timeout: float) -> Page | None:
        local = next((s for s in scopes if s.name.lower() == "locals"), scopes[0] if scopes else None)
        if local is None or not local.reference:
            return None
        return self._variables_page(local.reference, 0, timeout)

    def _variables_page(self, reference: int, start: int, timeout: float, count: int = PAGE_SIZE,
                        first: str | None = None) -> Page:
        count = max(1, min(count, PAGE_SIZE))
        if first is None and start:
            known = self.variables.page(reference, 0)
            first = known.variables[0].name if known is not None and known.variables else None
        body = self._send_inspection(  # one more than shown: "more" is what came, never a full page
            "variables", {"variablesReference": reference, "start": start, "count": count + 1}).body(timeout)
        return _page(reference, start, count, body.get("variables") or [], first)


def evaluated(expression: str, body: Mapping[str, Any], limit: int | None = None) -> Variable:
    """An ``evaluate`` response body as a variable (its value cut at ``limit``)."""
    result = {"name": expression, "value": body.get("result", ""), "type": body.get("type"),
              "variablesReference": body.get("variablesReference")}
    return Variable.from_dap(result) if limit is None else Variable.from_dap(result, limit)


# One expression, evaluated in the debuggee: every other thread whose stack runs pydevd's evaluate
# gets KeyboardInterrupt (what pydevd's own PYDEVD_INTERRUPT_THREAD_TIMEOUT does, on demand).
_INTERRUPT = (
    "[__import__('ctypes').pythonapi.PyThreadState_SetAsyncExc(__import__('ctypes').c_ulong(t), "
    "__import__('ctypes').py_object(KeyboardInterrupt)) for t, f in __import__('sys')._current_frames().items() "
    "if t != __import__('threading').get_ident() and any(g.f_code.co_name == '_run_with_interrupt_thread' "
    "for g in iter(lambda s=[f]: (s.append(s[-1].f_back) or s[-2]) if s[-1] is not None else None, None))]")


def _page(reference: int, start: int, count: int, variables: Sequence[Mapping[str, Any]],
          first: str | None = None) -> Page:
    """A page of ``count`` from ``start``, whether the adapter honoured ``start``/``count`` (it sends at
    most ``count + 1``) or, as debugpy does, sent every child from the first (``first`` names the first
    child, when known) — debugpy caps big containers itself."""
    everything = len(variables) > count + 1 or (
        start > 0 and first is not None and bool(variables) and variables[0].get("name") == first)
    if everything:  # slice it here
        chosen = variables[start:start + count]
        more = start + count < len(variables)
    else:
        chosen, more = variables[:count], len(variables) > count
    return Page(reference, start, tuple(Variable.from_dap(v) for v in chosen), more)

