"""The run protocol: run states, the marker lines the bootstrap prints, and the one parser.

A run reports itself through its output: the bootstrap prints one machine-readable line per
event, ``AML_MAGICS_<KIND> {json} <mac>``, where ``<mac>`` authenticates the line with the
run's own key (an HMAC the owner made for this run and handed over out of band, see
:mod:`.invocation`). Output goes through logs that anyone's data may reach — a printed data
row, a dependency's log line — so the reader accepts a line as a marker only when it is a
whole line (after an optional ``[rank N] `` tag) *and* its MAC verifies; anything else is
ordinary output and changes no endpoint, state or file.

Prefix, version and the MAC recipe are the node's (``node/wire.py``: the node package is stdlib-only and
safe to import), so the two sides cannot drift apart. Malformed markers are counted and
ignored: a reader never dies of a line.
"""

from __future__ import annotations

import dataclasses
import enum
import hmac
import json
import re
import sys
import threading
import typing
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from .errors import AmlMagicsError
from .node.wire import BOOTSTRAP_VERSION, MARKER_PREFIX, marker_mac

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - 3.10
    class StrEnum(str, enum.Enum):
        def __str__(self) -> str:
            return str(self.value)


__all__ = [
    "BOOTSTRAP_VERSION", "MARKER_PREFIX", "RunState", "TERMINAL", "DEBUG_STATES", "Endpoint", "Marker",
    "EndpointMarker", "AttachedMarker", "PostMortemMarker", "BreakpointMarker", "ErrorMarker", "ExitMarker",
    "MarkerReader", "RefusedEndpoint", "register_marker",
]


class RunState(StrEnum):
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


TERMINAL = frozenset({RunState.COMPLETED, RunState.FAILED, RunState.CANCELED})
# States the debug markers move a run between (its ranks' states, summed up).
DEBUG_STATES = frozenset({RunState.RUNNING, RunState.WAITING, RunState.ATTACHED, RunState.CRASHED})


# -- endpoints ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """Where a client attaches: ``host:port`` as seen from the owner's machine."""

    host: str
    port: int
    rank: int = 0
    pid: int | None = None
    cwd: str | None = None  # the run's working directory, as the run sees it
    script: str | None = None  # the entry script's path, as the run sees it
    node_address: str | None = None  # the far side ("host:port" on the node), when it differs
    tunnelled: bool = False  # an authenticated TLS relay (reached through the owner's forwarder once mapped)
    route: str = "direct"  # how the forwarder reaches the relay: "direct" (TCP) or "proxy" (the job's SSH service)
    route_detail: str = ""  # e.g. "via the workspace proxy (SSH service, node 1)"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def moved_to(self, host: str, port: int, *, tunnelled: bool | None = None,
                 far: str | None = None) -> "Endpoint":
        """The same listener seen from elsewhere (a published container port, a forwarder): every
        other field is kept; ``node_address`` becomes ``far`` (where the new hop connects to),
        else the far side already known, else where it was seen until now."""
        far = far or self.node_address or self.address
        return replace(self, host=host, port=port, node_address=far,
                       tunnelled=self.tunnelled if tunnelled is None else tunnelled)


# -- markers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Marker:
    """One authenticated event from a run. Subclasses name their ``kind`` and typed fields."""

    kind: ClassVar[str] = ""
    rank: int = 0
    pid: int | None = None


@dataclass(frozen=True)
class EndpointMarker(Marker):
    kind: ClassVar[str] = "ENDPOINT"
    host: str = ""
    port: int = 0
    bind: str | None = None
    cwd: str | None = None
    script: str | None = None
    timeout: float | None = None
    deadline: float | None = None
    reason: str = "start"
    version: str | None = None
    tunnel: bool = False  # the port is the node's authenticated TLS relay, not debugpy itself

    # Marker fields whose Endpoint field has another name; every other shared name is copied as is,
    # so a field added to both travels without another edit.
    _ENDPOINT_NAMES: ClassVar[dict[str, str]] = {"tunnel": "tunnelled"}

    def endpoint(self) -> Endpoint | None:
        if not self.host or not 0 < self.port < 65536:
            return None
        wanted = {item.name for item in dataclasses.fields(Endpoint)}
        values = {self._ENDPOINT_NAMES.get(item.name, item.name): getattr(self, item.name)
                  for item in dataclasses.fields(self)}
        return Endpoint(**{name: value for name, value in values.items() if name in wanted})


@dataclass(frozen=True)
class AttachedMarker(Marker):
    kind: ClassVar[str] = "ATTACHED"
    attached: bool = False
    reason: str = "start"


DETACHED_BY_YOU = "detached by you"  # the owner's words for its own debugger's disconnect (DebugRun)


@dataclass(frozen=True)
class DetachedMarker(Marker):
    """The client left — said ``disconnect``, or its connection was lost (killed, gone silent):
    the run's threads resumed; the node stopped listening (one attach per window) unless
    ``listening`` (``--reattach``). ``reason`` is the words to show: ``debugger gone (connection
    lost) after 12 s``, ``debugger detached after 3 s``."""

    kind: ClassVar[str] = "DETACHED"
    reason: str = ""
    cause: str = ""  # "disconnect" or "connection lost" (empty from an older node)
    seconds: float | None = None  # how long the client was attached
    listening: bool = False

    @property
    def lost(self) -> bool:
        return self.cause == "connection lost"

    @property
    def said_goodbye(self) -> bool:
        """The client left with a DAP ``disconnect`` (not a lost connection)."""
        return self.cause == "disconnect"


@dataclass(frozen=True)
class WindowMarker(Marker):
    """A new attach window the run opened (after a crash, at a breakpoint()): where, until when."""

    host: str | None = None
    port: int | None = None
    attached: bool = False
    timeout: float | None = None
    deadline: float | None = None
    file: str | None = None
    line: int | None = None


@dataclass(frozen=True)
class PostMortemMarker(WindowMarker):
    kind: ClassVar[str] = "POST_MORTEM"
    type: str = "exception"
    module: str = ""
    message: str = ""

    @property
    def what(self) -> str:
        return f"{self.type}: {self.message}".rstrip(": ")


@dataclass(frozen=True)
class BreakpointMarker(WindowMarker):
    kind: ClassVar[str] = "BREAKPOINT"
    function: str | None = None


@dataclass(frozen=True)
class ErrorMarker(Marker):
    kind: ClassVar[str] = "ERROR"
    message: str = ""


@dataclass(frozen=True)
class ExitMarker(Marker):
    kind: ClassVar[str] = "EXIT"
    code: int | None = None
    source: str = "bootstrap"  # or "launcher" (a process ended without its own EXIT: killed)


_KINDS: dict[str, type[Marker]] = {}


def register_marker(cls: type[Marker]) -> type[Marker]:
    """Make a marker kind known to every reader (e.g. a deployment's SERVING)."""
    _KINDS[cls.kind] = cls
    return cls


for _cls in (EndpointMarker, AttachedMarker, DetachedMarker, PostMortemMarker, BreakpointMarker, ErrorMarker,
             ExitMarker):
    register_marker(_cls)


# -- reading -----------------------------------------------------------------------------------

_LINE = re.compile(r"^(?:\[rank (\d+)\] )?" + re.escape(MARKER_PREFIX)
                   + r"([A-Z][A-Z_]*) (\{.*\})(?: ([0-9a-f]{32}))?[ \t\r\n]*$")


class Malformed(AmlMagicsError, ValueError):
    pass


class RefusedEndpoint(AmlMagicsError, ValueError):
    """An authentic ENDPOINT marker that says what the owner does not accept (an untunnelled port
    for a secure run, a host or port the rank was never given)."""


MAX_SOURCES = 4096  # marker sources (processes) a reader remembers the last sequence number of


class MarkerReader:
    """Reads one run's output: authenticated marker lines become typed markers.

    ``key``: the run's marker key; a line whose MAC does not verify is ordinary output. Without
    a key (``None``) unsigned markers are accepted — only for reading a bootstrap started by
    hand. ``rejected`` counts lines that looked like markers but were refused (forged, a
    marker in the middle of a line, bad JSON, wrong field types).
    """

    def __init__(self, key: bytes | None) -> None:
        self._key = key
        self._lock = threading.Lock()
        self.rejected = 0
        self.accepted = 0
        self._last_seq: dict[str, int] = {}  # per source (process): the last sequence number accepted

    def parse(self, line: str) -> Marker | None:
        """The marker ``line`` is, once: a line seen again later (re-printed, replayed) is refused."""
        if MARKER_PREFIX not in line:
            return None
        try:
            marker = self._parse(line, fresh=True)
        except Malformed:
            marker = None
        with self._lock:
            if marker is None:
                self.rejected += 1
            else:
                self.accepted += 1
        return marker

    def is_marker(self, line: str) -> bool:
        """Whether ``line`` is an authentic marker (views hide those; their facts are shown)."""
        return MARKER_PREFIX in line and self._safe(line) is not None

    def _safe(self, line: str) -> Marker | None:
        try:
            return self._parse(line)
        except Malformed:
            return None

    def _parse(self, line: str, fresh: bool = False) -> Marker | None:
        match = _LINE.match(line)
        if match is None:
            raise Malformed("not a whole marker line")
        tag_rank, kind, payload, mac = match.groups()
        if self._key is not None:
            expected = marker_mac(self._key, kind, payload)
            if mac is None or not hmac.compare_digest(mac, expected):
                raise Malformed("MAC does not verify")
        try:
            data = json.loads(payload)
        except (ValueError, RecursionError):
            raise Malformed("bad JSON") from None
        if not isinstance(data, dict):
            raise Malformed("not an object")
        if fresh and self._key is not None:
            self._in_sequence(data.get("src"), data.get("seq"))
        cls = _KINDS.get(kind)
        if cls is None:
            raise Malformed(f"unknown kind {kind}")
        marker = _build(cls, data)
        if tag_rank is not None and "rank" not in data:
            marker = replace(marker, rank=int(tag_rank))
        return marker


    def _in_sequence(self, source: object, seq: object) -> None:
        """An authenticated marker counts up within its source; anything else is a replay."""
        if not isinstance(source, str) or not isinstance(seq, int) or isinstance(seq, bool):
            raise Malformed("no sequence number")
        with self._lock:
            last = self._last_seq.get(source)
            if last is not None and seq <= last:
                raise Malformed(f"sequence number {seq} after {last}: a replayed line")
            if last is None and len(self._last_seq) >= MAX_SOURCES:
                raise Malformed("too many marker sources")
            self._last_seq[source] = seq


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _build(cls: type[Marker], data: dict[str, Any]) -> Marker:
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        if item.name in data:
            values[item.name] = _convert(data[item.name], hints[item.name], item.name)
    try:
        return cls(**values)
    except TypeError as exc:
        raise Malformed(str(exc)) from None


def _convert(value: Any, hint: Any, name: str) -> Any:
    """A JSON value as the field's type; wrong types are Malformed (never a crash later)."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if value is None:
        if optional:
            return None
        raise Malformed(f"{name} is null")
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63:
            return value
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            return float(value)
    elif base is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise Malformed(f"{name}: expected {getattr(base, '__name__', base)}, got {type(value).__name__}")
