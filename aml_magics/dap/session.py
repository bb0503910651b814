"""A DAP session with debugpy: connect, the attach handshake, breakpoints, child sessions.

What VS Code does with a ``launch.json`` attach configuration, and no more:

* :func:`connect` retries refused connections until a deadline and keeps the first socket
  that connects. It never connects and closes to "probe": a bare connection wedges
  debugpy's separate adapter, and debugpy's in-process adapter drops its current client
  for any new connection.
* :meth:`Session.attach`: ``initialize`` → ``attach`` (sent, not awaited: debugpy answers
  it only after ``configurationDone``) → the ``initialized`` event → ``setBreakpoints``
  per file → ``setExceptionBreakpoints`` → ``configurationDone`` → the ``attach``
  response. Breakpoints are therefore armed before the debuggee is released.
* with ``subProcess`` (debugpy's default) a child process is announced by a
  ``debugpyAttach`` event; :meth:`Session.attach_child` opens a *new* connection to the
  same adapter and attaches with the event's body.

Paths in breakpoints and stack frames are client-side paths; debugpy maps them with the
configuration's ``pathMappings``.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Union

from .channel import Channel
from .errors import DapError, DapTimeout, Disconnected
from .framing import MessageStream

CLIENT_ID = "aml-magics"
CLIENT_NAME = "aml-magics"
# A breakpoint: a line, or a DAP SourceBreakpoint ({"line", "condition", "hitCondition", "logMessage"}).
SourceBreakpoint = Union[int, Mapping[str, Any]]
Breakpoints = Mapping[str, Sequence[SourceBreakpoint]]

INITIALIZE_ARGUMENTS = {
    "clientID": CLIENT_ID,
    "clientName": CLIENT_NAME,
    "adapterID": "debugpy",
    "pathFormat": "path",
    "linesStartAt1": True,
    "columnsStartAt1": True,
    "supportsVariableType": True,
    "supportsVariablePaging": False,  # debugpy ignores start/count; pages are cut here
    "supportsRunInTerminalRequest": False,
    "supportsStartDebuggingRequest": False,
    "locale": "en-us",
}


def connect(host: str, port: int, timeout: float = 30.0) -> socket.socket:
    """A TCP connection to ``host:port``, retrying refused connections until ``timeout``.

    The first socket that connects is returned for use: never closed to "probe".
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DapTimeout(f"could not connect to {host}:{port} within {timeout:g}s: {last_error}")
        try:
            sock = socket.create_connection((host, int(port)), timeout=min(remaining, 5.0))
        except OSError as exc:  # refused, unreachable, timed out
            last_error = exc
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            continue
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def source_breakpoints(lines: Sequence[SourceBreakpoint]) -> list[dict]:
    """DAP SourceBreakpoints from lines or dicts (``line`` required; other keys kept)."""
    result = []
    for item in lines:
        if isinstance(item, Mapping):
            entry = {k: v for k, v in item.items() if v is not None}
            entry["line"] = int(item["line"])
        else:
            entry = {"line": int(item)}
        result.append(entry)
    return result


def address_of(config: Mapping[str, Any], what: str = "attach configuration") -> tuple[str, int]:
    """``(host, port)`` of an attach configuration (``connect`` or the legacy top-level keys)."""
    connect_to = config.get("connect") or {}
    host = connect_to.get("host") or config.get("host") or "127.0.0.1"
    port = connect_to.get("port") or config.get("port")
    if not port:
        raise DapError(f"{what} names no port: {dict(config)}")
    return str(host), int(port)


class Session:
    """One debugpy session over one :class:`Channel` (use :meth:`open` to connect and attach)."""

    def __init__(self, channel: Channel, name: str | None = None) -> None:
        self.channel = channel
        self.name = name or channel.name
        self.capabilities: dict = {}
        self.breakpoints: dict[str, list[dict]] = {}  # path -> the adapter's Breakpoint objects
        self.config: dict = {}
        self.attached = False
        self.children: list[Session] = []

    @classmethod
    def connect(cls, host: str, port: int, timeout: float = 30.0, name: str | None = None) -> Session:
        """Connect (retrying refused connections) and start the channel; no handshake yet."""
        sock = connect(host, port, timeout)
        stream = MessageStream.from_socket(sock, name=name or f"dap-{host}:{port}")
        return cls(Channel(stream))

    def start(self) -> Session:
        """Start reading (after the caller subscribed to what it must not miss)."""
        self.channel.start()
        return self

    @classmethod
    def open(cls, config: Mapping[str, Any], breakpoints: Breakpoints | None = None, timeout: float = 30.0,
             name: str | None = None, exception_filters: Iterable[str] = (), what: str = "attach configuration",
             prepare: Any = None) -> Session:
        """Connect to the configuration's address and attach; the caller owns the session.

        ``prepare(session)`` runs before the reader starts (to subscribe to early events).
        """
        host, port = address_of(config, what)
        session = cls.connect(host, port, timeout, name)
        try:
            if prepare is not None:
                prepare(session)
            session.start()
            session.attach(config, breakpoints, timeout=timeout, exception_filters=exception_filters)
        except BaseException:
            session.close()
            raise
        return session

    # -- the handshake ------------------------------------------------------------------
    def attach(self, config: Mapping[str, Any], breakpoints: Breakpoints | None = None, timeout: float = 30.0,
               exception_filters: Iterable[str] = ()) -> None:
        """initialize → attach → ``initialized`` → breakpoints → configurationDone → attach response."""
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        wake = threading.Event()
        seen_initialized = threading.Event()

        def on_initialized(_message: dict) -> None:
            seen_initialized.set()
            wake.set()

        unsubscribe = self.channel.on_event(on_initialized, "initialized")
        unsubscribe_close = self.channel.on_close(lambda _reason: wake.set())
        try:
            self.capabilities = self.channel.request("initialize", dict(INITIALIZE_ARGUMENTS), timeout=left())
            self.config = dict(config)
            attach = self.channel.send_request("attach", self.config)
            attach.add_done_callback(lambda _request: wake.set())
            while not seen_initialized.is_set():
                if attach.done():
                    attach.body(0)  # raises when the adapter refused the attach
                if self.channel.closed:
                    raise Disconnected(f"attach: {self.channel.close_reason}", self.channel.close_reason or "")
                if not wake.wait(left()) and deadline <= time.monotonic():
                    raise DapTimeout(f"no 'initialized' event within {timeout:g}s{self.channel.recent_text()}")
                wake.clear()
        finally:
            unsubscribe()
            unsubscribe_close()
        for path, lines in (breakpoints or {}).items():
            self.set_breakpoints(path, lines, timeout=left())
        self.channel.request("setExceptionBreakpoints", {"filters": list(exception_filters)}, timeout=left())
        self.channel.request("configurationDone", timeout=left())
        attach.body(left())
        self.attached = True

    def set_breakpoints(self, path: str, lines: Sequence[SourceBreakpoint], timeout: float = 30.0) -> list[dict]:
        """Replace the breakpoints of one file (client-side path); the adapter's verdict per breakpoint."""
        requested = source_breakpoints(lines)
        body = self.channel.request(
            "setBreakpoints",
            {
                "source": {"path": path, "name": os.path.basename(path)},
                "breakpoints": requested,
                "lines": [entry["line"] for entry in requested],
                "sourceModified": False,
            },
            timeout=timeout,
        )
        self.breakpoints[path] = list(body.get("breakpoints") or [])
        return self.breakpoints[path]

    def attach_child(self, event_body: Mapping[str, Any], breakpoints: Breakpoints | None = None,
                     timeout: float = 30.0, exception_filters: Iterable[str] = (), prepare: Any = None) -> Session:
        """A new session for the child announced by a ``debugpyAttach`` event (same adapter, new connection)."""
        config = dict(event_body)
        child = type(self).open(config, breakpoints, timeout, name=f"dap-child-{config.get('subProcessId', '?')}",
                                exception_filters=exception_filters, what="debugpyAttach body", prepare=prepare)
        self.children.append(child)
        return child

    # -- the end ------------------------------------------------------------------------
    def disconnect(self, terminate: bool = False, timeout: float = 10.0) -> None:
        """``disconnect`` (the debuggee runs on unless ``terminate``), then close the connection."""
        try:
            if not self.channel.closed:
                self.channel.request("disconnect", {"terminateDebuggee": bool(terminate), "restart": False},
                                     timeout=timeout)
        except DapError:
            pass  # the adapter may drop the connection before answering
        finally:
            self.close()

    def close(self) -> None:
        """Close the connection (no ``disconnect`` request); pending requests fail."""
        self.channel.close()

    @property
    def closed(self) -> bool:
        return self.channel.closed
