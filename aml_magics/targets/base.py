"""The small interface every target implements.

A target turns a RunSpec into something running and reports what happens through
RunEvents: log lines (markers included), state changes and the end. It knows
nothing of widgets, magics or launch.json.
"""

from __future__ import annotations

from typing import Protocol

from ..markers import Endpoint
from ..spec import RunSpec


class TargetError(Exception):
    """A user-facing problem (one clear line) found before or while submitting."""


class RunEvents(Protocol):
    def line(self, text: str) -> None: ...
    def state(self, state: str, detail: str = "") -> None: ...
    def finished(self, state: str, exit_code: int | None = None, detail: str = "") -> None: ...


class RunHandle(Protocol):
    def cancel(self) -> None: ...
    def is_done(self) -> bool: ...
    def map_endpoint(self, endpoint: Endpoint) -> Endpoint: ...


class Target(Protocol):
    name: str

    def check(self, spec: RunSpec) -> None:
        """Raise TargetError for anything wrong, before anything starts."""

    def submit(self, spec: RunSpec, events: RunEvents) -> RunHandle: ...
