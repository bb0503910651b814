"""The small interface every target implements.

A target turns a RunSpec into something running and reports what happens through
RunEvents: log lines (markers included), state changes and the end. It knows nothing of
widgets, magics or launch.json. What a run owns is registered on the run's scope (an exit
stack and a cancel token, :mod:`..lifecycle`), so cancel works the same on every target.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from .errors import Canceled, TargetError
from .invocation import RunSecrets
from .lifecycle import RunScope
from .protocol import Endpoint, RunState
from .spec import RunSpec

__all__ = ["RunEvents", "RunContext", "RunHandle", "Target", "TargetError", "ThreadedRun", "Outcome",
           "Capabilities", "Option"]

CANCEL_WAIT = 15.0  # how long cancel() waits for the run to have ended


class RunEvents(Protocol):
    def line(self, text: str) -> None: ...
    def state(self, state: str, detail: str = "") -> None: ...
    def finished(self, state: str, exit_code: int | None = None, detail: str = "") -> None: ...
    def describe(self, text: str) -> None: ...


@dataclass
class RunContext:
    """Everything a target is handed for one run besides its spec."""

    events: RunEvents
    scope: RunScope
    secrets: RunSecrets


class RunHandle(Protocol):
    def cancel(self) -> None: ...
    def is_done(self) -> bool: ...
    def map_endpoint(self, endpoint: Endpoint) -> Endpoint: ...


@dataclass(frozen=True)
class Option:
    """A command-line option a target takes (composed into the magic's, the CLI's and the API's
    parser by :mod:`..options`): argparse's flags and keyword arguments."""

    flags: tuple[str, ...]
    kwargs: dict = field(default_factory=dict, hash=False, compare=False)
    to_target: bool = True  # a keyword argument of the target's factory (else it shapes the RunSpec)
    config: str | None = None  # its default is the %config trait of this name (AmlDebugMagics.<config>)

    @property
    def dest(self) -> str:
        return self.kwargs.get("dest") or self.flags[-1].lstrip("-").replace("-", "_")

    def check(self, value: Any, name: str | None = None) -> Any:
        """``value`` as the flag would take it (its ``type``, its ``choices``); ValueError or
        argparse.ArgumentTypeError in one line that names ``name`` (default: the flag)."""
        name = name or self.flags[-1]
        convert = self.kwargs.get("type")
        if convert is not None:
            value = convert(value)
        choices = self.kwargs.get("choices")
        if choices is not None and value not in choices:
            raise ValueError(f"{name} must be {' or '.join(repr(c) for c in choices)}, not {value!r}")
        return value


def option(*flags: str, to_target: bool = True, config: str | None = None, **kwargs: Any) -> Option:
    return Option(tuple(flags), kwargs, to_target, config)


@dataclass(frozen=True)
class Capabilities:
    """What a target can do with a run's options (the options layer checks them)."""

    max_nodes: int | None = None  # None: no limit
    max_processes: int | None = None
    dry_run: bool = False  # plan(spec, cell=None) -> dict shows what would be submitted (--dry-run)
    subprocesses: bool = False  # child processes' debug sessions are reachable (--subprocesses)
    leaves_machine: bool = True  # the debug port is reached from elsewhere: the authenticated tunnel is on
    one_machine: str = ""  # with max_nodes=1: what the run is on one machine ("one container")


class Target(Protocol):
    name: str
    capabilities: ClassVar[Capabilities]

    def check(self, spec: RunSpec) -> None:
        """Raise TargetError for anything wrong, before anything starts."""

    def submit(self, spec: RunSpec, ctx: RunContext) -> RunHandle: ...


@dataclass(frozen=True)
class Outcome:
    state: str
    exit_code: int | None = None
    detail: str = ""


class ThreadedRun:
    """A RunHandle whose work runs on a thread of its own.

    Cancel sets the run's token (its callbacks stop what runs) and waits for the work to
    return; when it does, the scope is closed (everything the run held is released) and
    only then is the end reported, so a waiter never sees a finished run with a live part.
    """

    def __init__(self, ctx: RunContext, name: str) -> None:
        self.ctx = ctx
        self.events = ctx.events
        self.scope = ctx.scope
        self.name = name
        self._done = threading.Event()

    @property
    def canceled(self) -> bool:
        return self.scope.canceled

    def start(self, work: Callable[[], Outcome]) -> ThreadedRun:
        threading.Thread(target=self._main, args=(work,), daemon=True, name=f"aml-{self.name}").start()
        return self

    def _main(self, work: Callable[[], Outcome]) -> None:
        try:
            try:
                outcome = work()
            except Canceled:
                outcome = Outcome(RunState.CANCELED)
            except TargetError as exc:
                self.events.line(f"aml_magics: {exc}")
                outcome = Outcome(RunState.FAILED, None, str(exc))
            except Exception as exc:  # surfaced as the run's failure, not a thread traceback
                self.events.line(f"aml_magics: {type(exc).__name__}: {exc}")
                outcome = Outcome(RunState.FAILED, None, str(exc) or type(exc).__name__)
            if self.canceled:
                outcome = Outcome(RunState.CANCELED, outcome.exit_code, self.scope.token.reason or "canceled by user")
            self.scope.close()
            self.events.finished(outcome.state, outcome.exit_code, outcome.detail)
        finally:
            self._done.set()

    def cancel(self) -> None:
        self.scope.cancel()
        self._done.wait(CANCEL_WAIT)

    def is_done(self) -> bool:
        return self._done.is_set()

    def map_endpoint(self, endpoint: Endpoint) -> Endpoint:
        return endpoint
