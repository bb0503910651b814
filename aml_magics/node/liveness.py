"""Noticing a client that is gone: its connection ending without a ``disconnect``, or going silent.

debugpy's in-process adapter (the direct route) hands each accepted connection to pydevd with
``terminate_on_socket_close=False``: when the client dies, pydevd's reader just ends and every
suspended thread stays suspended — the run freezes at its breakpoint for good (plain
``python -m debugpy --listen`` resumes: its adapter process tells pydevd "disconnect"). So each
connection the node accepts, direct or through the TLS relay, gets a :class:`Link`: the first
sign of its end (an empty read, a failed read or write, TCP keepalive giving up) ends the link
once, on a thread of ours, and the driver then does what a ``disconnect`` does.

A client that stops answering without closing (half-open TCP: a suspended laptop, a dropped
route) is found by TCP keepalive on the node's end of the connection: probes after
``KEEPALIVE_IDLE`` s of silence, ``KEEPALIVE_COUNT`` of them ``KEEPALIVE_INTERVAL`` s apart,
and ``TCP_USER_TIMEOUT`` for data the client never acknowledges: gone within ``SILENCE_LIMIT`` s.
The kernel answers probes for a live client, so a user thinking at a breakpoint is never dropped.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from .wire import service_thread

KEEPALIVE_IDLE = 5  # seconds of silence before the first probe
KEEPALIVE_INTERVAL = 3  # seconds between probes
KEEPALIVE_COUNT = 3  # unanswered probes that end the connection
SILENCE_LIMIT = KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT  # 14 s: a silent client is gone after this

DISCONNECT = "disconnect"  # the client said goodbye (a DAP disconnect)
LOST = "connection lost"  # the connection ended (or went silent) without one
CLOSED = "closed here"  # the node ended it itself (switched off, a newer connection, the run's end)


def keep_alive(sock: socket.socket) -> None:
    """TCP keepalive (and a user timeout for unacknowledged data) on one accepted connection."""
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
                        ("TCP_KEEPCNT", KEEPALIVE_COUNT), ("TCP_USER_TIMEOUT", SILENCE_LIMIT * 1000)):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    for level, option, value in options:
        try:
            sock.setsockopt(level, option, value)
        except OSError:  # not a TCP socket, or an option this kernel lacks: the rest still helps
            pass


class Link:
    """One client's connection to this process's debugger, from accept to its end.

    ``end(cause)`` counts once, whoever notices first; the callbacks run on a thread of ours
    (never on pydevd's reader or writer, which switching the debugger off disposes of).
    """

    def __init__(self, on_end: Callable[[Link, str], None] | None = None) -> None:
        self.started = time.monotonic()
        self.goodbye = False  # the client sent a DAP disconnect
        self.cause = ""
        self._callbacks: list[Callable[[Link, str], None]] = [on_end] if on_end is not None else []
        self._lock = threading.Lock()

    def when_ended(self, callback: Callable[[Link, str], None]) -> None:
        with self._lock:
            self._callbacks.insert(0, callback)

    @property
    def ended(self) -> bool:
        return bool(self.cause)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def end(self, cause: str) -> None:
        with self._lock:
            if self.cause:
                return
            self.cause = DISCONNECT if self.goodbye and cause == LOST else cause
            callbacks = list(self._callbacks)
        if callbacks:
            service_thread(self._run, callbacks, name="aml-magics-session-end")

    def _run(self, callbacks: list[Callable[[Link, str], None]]) -> None:
        for callback in callbacks:
            try:
                callback(self, self.cause)
            except Exception:  # never let this kill the user's run
                pass


class WatchedConnection:
    """pydevd's connected socket on the direct route: the real one, whose end ends its link."""

    def __init__(self, sock: socket.socket, link: Link) -> None:
        self._sock = sock
        self.link = link

    def recv(self, size: int, flags: int = 0) -> bytes:
        try:
            data = self._sock.recv(size, flags)
        except OSError:
            self.link.end(LOST)  # reset, or keepalive gave up (ETIMEDOUT)
            raise
        if not data:
            self.link.end(LOST)
        return data

    def sendall(self, data: bytes, flags: int = 0) -> None:
        try:
            self._sock.sendall(data, flags)
        except OSError:
            self.link.end(LOST)
            raise

    def shutdown(self, how: int) -> None:
        self.link.end(CLOSED)  # pydevd ends the session (disposed, or a newer client took over)
        self._sock.shutdown(how)

    def close(self) -> None:
        self.link.end(CLOSED)
        self._sock.close()

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


class WatchedListener:
    """What pydevd accepts on for the direct route: the bound socket, each connection watched."""

    def __init__(self, sock: socket.socket, new_link: Callable[[], Link]) -> None:
        self._sock = sock
        self._new_link = new_link

    def accept(self) -> tuple[WatchedConnection, object]:
        conn, address = self._sock.accept()
        keep_alive(conn)
        return WatchedConnection(conn, self._new_link()), address

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)
