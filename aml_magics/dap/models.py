"""What a debugger panel shows, as plain models that say when they change.

JupyterLab's debugger splits the same way (session → service → one model per panel →
thin views): the service updates these models from DAP events and responses; views
subscribe and redraw. A subscriber is ``callback(model, change)``; it is called on the
thread that changed the model (usually the service's worker), so it must be quick and
must not block on a DAP request.

Models hold DAP data as small frozen records, never the raw messages, and only what is
on screen: one call stack, the variables of one frame and the pages of children that
were expanded (at most :data:`PAGE_SIZE` per page, long values cut at
:data:`VALUE_LIMIT` characters).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PAGE_SIZE = 100
VALUE_LIMIT = 1000

Subscriber = Callable[["Model", str], None]


class Model:
    """Something that changes, and the callbacks that want to know."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._subscribers: list[Subscriber] = []

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def _emit(self, change: str) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(self, change)
            except Exception as exc:  # a broken view must not break the session
                print(f"aml_magics.dap: a {type(self).__name__} subscriber raised {exc!r}", file=sys.stderr)


# -- records ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Thread:
    id: int
    name: str


@dataclass(frozen=True)
class StackFrame:
    id: int
    name: str
    path: str | None
    line: int
    column: int = 0

    @classmethod
    def from_dap(cls, frame: Mapping[str, Any]) -> StackFrame:
        source = frame.get("source") or {}
        return cls(int(frame["id"]), str(frame.get("name", "")), source.get("path"), int(frame.get("line") or 0),
                   int(frame.get("column") or 0))


@dataclass(frozen=True)
class Scope:
    name: str
    reference: int
    expensive: bool = False

    @classmethod
    def from_dap(cls, scope: Mapping[str, Any]) -> Scope:
        return cls(str(scope.get("name", "")), int(scope.get("variablesReference") or 0),
                   bool(scope.get("expensive", False)))


@dataclass(frozen=True)
class Variable:
    """One variable as DAP shows it; ``value`` is cut at :data:`VALUE_LIMIT` (``cut`` says so)."""

    name: str
    value: str
    type: str = ""
    reference: int = 0
    evaluate_name: str = ""
    cut: bool = False

    @property
    def expandable(self) -> bool:
        return self.reference > 0

    @classmethod
    def from_dap(cls, variable: Mapping[str, Any], limit: int = VALUE_LIMIT) -> Variable:
        value, cut = cut_text(str(variable.get("value", variable.get("result", ""))), limit)
        return cls(str(variable.get("name", "")), value, str(variable.get("type") or ""),
                   int(variable.get("variablesReference") or 0), str(variable.get("evaluateName") or ""), cut)


@dataclass(frozen=True)
class StopState:
    """Why and where a thread stopped; ``exception`` holds debugpy's exceptionInfo at exception stops."""

    reason: str
    thread_id: int
    description: str = ""
    text: str = ""
    all_threads_stopped: bool = False
    exception: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Page:
    """Children ``start`` .. ``start + len(variables)`` of one reference; ``more``: there are others."""

    reference: int
    start: int
    variables: tuple[Variable, ...]
    more: bool


def cut_text(text: str, limit: int = VALUE_LIMIT) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    return text[:limit] + "…", True


# -- models -------------------------------------------------------------------------------
class CallStackModel(Model):
    """The stopped thread's frames (innermost first), the selected one, and the known threads."""

    def __init__(self) -> None:
        super().__init__()
        self.thread_id: int | None = None
        self.frames: tuple[StackFrame, ...] = ()
        self.total_frames = 0
        self.selected = 0
        self.threads: tuple[Thread, ...] = ()

    @property
    def frame(self) -> StackFrame | None:
        """The selected frame."""
        frames = self.frames
        return frames[self.selected] if 0 <= self.selected < len(frames) else None

    def update(self, thread_id: int, frames: Sequence[StackFrame], total: int | None = None) -> None:
        with self._lock:
            self.thread_id = thread_id
            self.frames = tuple(frames)
            self.total_frames = max(total or 0, len(self.frames))
            self.selected = 0
        self._emit("frames")

    def select(self, index: int) -> StackFrame:
        with self._lock:
            if not 0 <= index < len(self.frames):
                raise IndexError(f"no frame {index} (the stack has {len(self.frames)})")
            self.selected = index
            frame = self.frames[index]
        self._emit("selected")
        return frame

    def set_threads(self, threads: Sequence[Thread]) -> None:
        with self._lock:
            self.threads = tuple(threads)
        self._emit("threads")

    def clear(self) -> None:
        with self._lock:
            self.thread_id, self.frames, self.total_frames, self.selected = None, (), 0, 0
        self._emit("cleared")


class VariablesModel(Model):
    """The scopes and locals of one frame, and the pages of children expanded so far."""

    def __init__(self) -> None:
        super().__init__()
        self.frame_id: int | None = None
        self.scopes: tuple[Scope, ...] = ()
        self.locals: Page | None = None
        self.pages: dict[tuple[int, int], Page] = {}
        self.note = ""  # why the locals are not here yet ("loading", not answered in time)

    def update(self, frame_id: int, scopes: Sequence[Scope], local_page: Page | None) -> None:
        with self._lock:
            self.frame_id = frame_id
            self.scopes = tuple(scopes)
            self.locals = local_page
            self.pages = {}
            self.note = ""
        self._emit("frame")

    def set_note(self, note: str) -> None:
        with self._lock:
            self.note = note
        self._emit("note")

    def add_page(self, page: Page) -> None:
        with self._lock:
            self.pages[(page.reference, page.start)] = page
        self._emit("children")

    def page(self, reference: int, start: int = 0) -> Page | None:
        """A page loaded so far (the locals' first page included)."""
        with self._lock:
            local = self.locals
            if local is not None and (local.reference, local.start) == (reference, start):
                return local
            return self.pages.get((reference, start))

    def clear(self) -> None:
        with self._lock:
            self.frame_id, self.scopes, self.locals, self.pages, self.note = None, (), None, {}, ""
        self._emit("cleared")


@dataclass(frozen=True)
class BreakpointState:
    """A breakpoint as asked for, and the adapter's verdict on it."""

    line: int
    condition: str | None = None
    verified: bool | None = None  # None: not sent yet (no session)
    message: str = ""
    id: int | None = None
    log_message: str | None = None  # a log point: prints this, never stops

    @property
    def kind(self) -> str:
        """``log`` (a log point), ``condition`` (stops when it holds) or ``plain``."""
        return "log" if self.log_message else "condition" if self.condition else "plain"

    def as_dap(self) -> dict:
        """This breakpoint as a DAP SourceBreakpoint."""
        entry: dict[str, Any] = {"line": self.line}
        if self.condition:
            entry["condition"] = self.condition
        if self.log_message:
            entry["logMessage"] = self.log_message
        return entry


class BreakpointsModel(Model):
    """Breakpoints per file (paths as the client knows them), with what the adapter said."""

    def __init__(self) -> None:
        super().__init__()
        self.by_path: dict[str, tuple[BreakpointState, ...]] = {}

    def requested(self, path: str) -> list[dict]:
        """The file's breakpoints as DAP SourceBreakpoints."""
        with self._lock:
            states = self.by_path.get(path, ())
        return [s.as_dap() for s in states]

    def set(self, path: str, wanted: Sequence[Mapping[str, Any]], verdicts: Sequence[Mapping[str, Any]] | None) -> None:
        """``wanted`` DAP SourceBreakpoints; ``verdicts`` the adapter's Breakpoints (same order), if sent."""
        states = []
        for index, entry in enumerate(wanted):
            verdict = verdicts[index] if verdicts is not None and index < len(verdicts) else None
            states.append(BreakpointState(
                line=int((verdict or {}).get("line") or entry["line"]),
                condition=entry.get("condition") or None,
                verified=None if verdict is None else bool(verdict.get("verified")),
                message=str((verdict or {}).get("message") or ""),
                id=(verdict or {}).get("id"),
                log_message=entry.get("logMessage") or None,
            ))
        with self._lock:
            if states:
                self.by_path[path] = tuple(states)
            else:
                self.by_path.pop(path, None)
        self._emit("breakpoints")

    def on_event(self, body: Mapping[str, Any]) -> None:
        """A ``breakpoint`` event (``changed``: the adapter moved or verified one of ours)."""
        verdict = body.get("breakpoint") or {}
        if body.get("reason") != "changed" or verdict.get("id") is None:
            return
        with self._lock:
            for path, states in self.by_path.items():
                updated = tuple(
                    BreakpointState(int(verdict.get("line") or s.line), s.condition, bool(verdict.get("verified")),
                                    str(verdict.get("message") or ""), s.id, s.log_message)
                    if s.id == verdict["id"] else s
                    for s in states)
                if updated != states:
                    self.by_path[path] = updated
                    break
            else:
                return
        self._emit("breakpoints")

    def lines(self, path: str) -> list[int]:
        with self._lock:
            return [s.line for s in self.by_path.get(path, ())]

    def all(self) -> dict[str, list[dict]]:
        with self._lock:
            paths = list(self.by_path)
        return {path: self.requested(path) for path in paths}
