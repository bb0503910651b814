"""The tunnel's node side: TLS 1.3 with pinned per-run certificates, in front of debugpy.

Where the port leaves the machine, the relay is the only listener: a connection that does not
present the run's client certificate ends in the handshake, and an admitted session is handed
to debugpy in this process (it has no port of its own on the node).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable

from .liveness import CLOSED, LOST, Link, keep_alive
from .wire import close_socket, low_latency, serve_connections, wait_socket

RELAY_HANDSHAKE_TIMEOUT = 10.0


class NodeTunnel:
    """The node's side of the tunnel, built once from the secrets: a TLS context (the private key
    lives in OpenSSL's memory only, never in a Python object user code can walk to) and the
    client certificate it pins."""

    __slots__ = ("context", "peer")

    def __init__(self, tunnel: dict) -> None:
        self.context, self.peer = _build_context(tunnel)

    def __repr__(self) -> str:
        return "<NodeTunnel (hidden)>"

    def __reduce__(self) -> tuple:
        raise TypeError("the tunnel is never serialised")


def relay_context(tunnel: NodeTunnel | dict) -> tuple[ssl.SSLContext, bytes]:
    """The relay's TLS context and the client certificate's DER bytes (built once: NodeTunnel)."""
    if isinstance(tunnel, NodeTunnel):
        return tunnel.context, tunnel.peer
    return _build_context(tunnel)


def _build_context(tunnel: dict) -> tuple[ssl.SSLContext, bytes]:
    """The relay's TLS context: this node's certificate, and only the run's client certificate
    accepted (pinned; no CA). Returns the context and the client certificate's DER bytes."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.num_tickets = 0  # no resumption: each connection authenticates in full
    context.load_verify_locations(cadata=tunnel["peer"])
    folder = tempfile.mkdtemp(prefix="aml-magics-relay-")
    try:  # the ssl module loads keys from files only: one that lives for a moment, 0600 in a 0700 folder
        path = os.path.join(folder, "node.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(tunnel["key"] + tunnel["cert"])
        context.load_cert_chain(path)
    finally:
        for name in os.listdir(folder):
            os.unlink(os.path.join(folder, name))
        os.rmdir(folder)
    return context, ssl.PEM_cert_to_DER_cert(tunnel["peer"])


class TlsSession:
    """One authenticated TLS connection, shaped like the connected socket pydevd reads from one
    thread and writes from another (``recv``, ``sendall``, ``settimeout``, ``shutdown``,
    ``close``): debugpy speaks to the client over it directly — no plain-TCP hop, no port
    of its own on the node.

    One lock serialises every TLS call (an ``SSLSocket`` must never be read and written at
    once); nobody waits for the socket while holding it. pydevd writes a message as two
    ``sendall()`` calls, header then body: the header is held and leaves in the body's record,
    so the far side wakes once per message. The session's ``link`` ends once, whichever side
    ends it: ``connection lost`` when the client did (or went silent), ``closed here`` when pydevd did.
    """

    def __init__(self, tls: ssl.SSLSocket, link: Link) -> None:
        low_latency(tls)
        tls.setblocking(False)
        self._tls = tls
        self.link = link
        self._lock = threading.Lock()
        self._held = b""
        self.closed = False
        self._readable = _Waiter(tls, select.POLLIN)  # pydevd's reader waits here, its writer on the other
        self._writable = _Waiter(tls, select.POLLOUT)

    def recv(self, size: int) -> bytes:
        ready = False  # read only once the socket says so (or a record is decrypted already): a read
        while True:    # that finds nothing costs an SSLWantReadError, on every message
            with self._lock:
                if self.closed:
                    return b""
                data = self._read(size) if ready or self._tls.pending() else None
            if data is None:
                ready = self._readable.wait()
                continue
            if not data:
                self.close(LOST)
            return data

    def _read(self, size: int) -> bytes | None:
        """What the TLS socket has (None: no whole record yet, or one without data); b"" at its end."""
        try:
            return self._tls.recv(size)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return None
        except (OSError, ValueError):
            return b""

    def sendall(self, data: bytes, flags: int = 0) -> None:
        if data[:16] == b"Content-Length: " and data[-4:] == b"\r\n\r\n":
            self._held += data  # a header: it leaves with its body
            return
        view, self._held = memoryview(self._held + data if self._held else data), b""
        while view:
            with self._lock:
                if self.closed:
                    raise OSError(errno.EPIPE, "the debug session is closed")
                try:
                    view = view[self._tls.send(view):]
                    continue
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    failed = False
                except (OSError, ValueError):
                    failed = True
            if failed:  # the client is gone: the session ends (its link), and pydevd hears it
                self.close(LOST)
                raise OSError(errno.EPIPE, "the debug session is closed")
            self._writable.wait()

    def settimeout(self, timeout: float | None) -> None:
        """Blocking as pydevd wants it, on top of a non-blocking TLS socket."""

    def shutdown(self, how: int) -> None:
        """pydevd ends a session by shutting down its writing side: the whole session ends."""
        self.close()

    def close(self, cause: str = CLOSED) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            close_socket(self._tls)  # shutdown first: wakes the other thread's wait
        self.link.end(cause)


class _Waiter:
    """Waits for one TLS session's socket in one direction: a poll object registered once (not one
    per wait; poll(), never select(): fds above 1024 are common), used by one thread."""

    def __init__(self, sock: ssl.SSLSocket, event: int) -> None:
        self._sock = sock
        self._event = event
        self._poller = select.poll()
        self._poller.register(sock.fileno(), event)

    def wait(self, timeout: float = 1.0) -> bool:
        """Whether the socket is ready; False after ``timeout``, or closed under us (the caller's next
        turn sees that)."""
        try:
            return bool(self._poller.poll(int(timeout * 1000)))
        except RuntimeError:  # another thread is polling this direction: wait on our own
            return self._fallback(timeout)
        except (OSError, ValueError):
            time.sleep(0.01)
            return False

    def _fallback(self, timeout: float) -> bool:
        try:
            return wait_socket(self._sock, self._event == select.POLLIN, self._event == select.POLLOUT, timeout)
        except (OSError, ValueError):
            time.sleep(0.01)
            return False


class SessionListener:
    """What pydevd accepts on when tunnelled, in place of a listening socket: the relay's
    authenticated sessions, one at a time. No port: debugpy is reachable through the relay only."""

    def __init__(self, address: tuple[str, int]) -> None:
        self._address = address
        self._ready = threading.Condition()
        self._sessions: list[TlsSession] = []
        self._closed = False

    def put(self, session: TlsSession) -> None:
        with self._ready:
            if not self._closed:
                self._sessions.append(session)
                self._ready.notify()
                return
        session.close()

    def accept(self) -> tuple[TlsSession, tuple[str, int]]:
        with self._ready:
            self._ready.wait_for(lambda: self._sessions or self._closed)
            if self._closed:
                raise OSError(errno.EBADF, "the debug listener is closed")
            return self._sessions.pop(0), self._address

    def listen(self, backlog: int = 1) -> None:
        pass

    def getsockname(self) -> tuple[str, int]:
        return self._address

    def shutdown(self, how: int) -> None:
        self.close()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            waiting, self._sessions = self._sessions, []
            self._ready.notify_all()
        for session in waiting:
            session.close()


class Relay:
    """The node's listener when the port leaves the machine: a connection that does not present
    the run's client certificate is closed during the TLS handshake, before one byte reaches
    debugpy (which has no port of its own: each admitted session is handed to it). One session
    at a time, each with a :class:`Link` from ``new_link`` (whose end the driver handles); TCP
    keepalive finds a client gone silent."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, peer_der: bytes, sessions: SessionListener,
                 new_link: Callable[[], Link]) -> None:
        self.sock = sock
        self.context = context
        self.peer_der = peer_der
        self.sessions = sessions
        self.new_link = new_link
        self.port = sock.getsockname()[1]
        self._lock = threading.Lock()
        self._active = False
        self._closed = False
        self.refused = 0

    def start(self) -> Relay:
        serve_connections(self.sock, self._serve, "aml-magics-relay")
        return self

    def close(self) -> None:
        with self._lock:
            self._closed = True
        close_socket(self.sock)
        self.sessions.close()  # a session not yet taken by debugpy; one it holds ends with it

    def _serve(self, conn: socket.socket) -> None:
        keep_alive(conn)
        low_latency(conn)  # from the handshake on: its flights are several small writes
        conn.settimeout(RELAY_HANDSHAKE_TIMEOUT)
        try:
            tls = self.context.wrap_socket(conn, server_side=True)
            authentic = tls.getpeercert(binary_form=True) == self.peer_der
        except (OSError, ValueError):
            self.refused += 1
            close_socket(conn)
            return
        with self._lock:
            admitted = authentic and not self._active and not self._closed
            self._active = self._active or admitted
        if not admitted:
            self.refused += 1
            close_socket(tls)
            return
        link = self.new_link()
        link.when_ended(self._session_ended)
        self.sessions.put(TlsSession(tls, link))

    def _session_ended(self, link: Link, cause: str) -> None:
        """The session's end (on a thread of ours): the next client may come."""
        with self._lock:
            self._active = False
