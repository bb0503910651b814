"""What the node side and the owner share: the marker format, the secrets' hand-over, socket plumbing.

The only module of the node package the owner side imports (``protocol``, ``invocation``,
``tunnel``): the marker prefix, version and MAC recipe the owner checks lines with, the
environment names the secrets and the owner channel travel in, and the few socket helpers
both ends of the tunnel use. Stdlib only, like the whole package.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import threading
from collections.abc import Callable

BOOTSTRAP_VERSION = "2"
MARKER_PREFIX = "AML_MAGICS_"
SECRETS_ENV = "AML_MAGICS_SECRETS"  # the run's secrets (JSON), when no owner channel carries them
OWNER_ENV = "AML_MAGICS_OWNER"  # "fd:N" (a pipe from the owner) or "stdin" (a container's stdin, held by the owner)
OWNER_GONE_EXIT = 137


RUNTIME_MODULE = "_aml_magics_bootstrap"  # the markers module, for the deployment server's SERVING marker
PACKAGE = "_aml_magics_node"  # the name this package runs under on a node (run as a folder)
LOOPBACK = "127.0.0.1"
ANY_ADDRESS = "0.0.0.0"


def service_thread(target, *args: object, name: str) -> threading.Thread:
    """A thread of ours, started: invisible to the debugger (never traced, never suspended when a
    breakpoint stops "all threads" — a relay frozen at a breakpoint would freeze the session)."""
    thread = threading.Thread(target=target, args=args, daemon=True, name=name)
    thread.pydev_do_not_trace = True  # type: ignore[attr-defined]
    thread.is_pydev_daemon_thread = True  # type: ignore[attr-defined]
    thread.start()
    return thread


def marker_mac(key: bytes, kind: str, payload: str) -> str:
    """The MAC of one marker line: HMAC-SHA256 over ``KIND PAYLOAD`` with the run's key."""
    return hmac.new(key, f"{kind} {payload}".encode(), hashlib.sha256).hexdigest()[:32]


def low_latency(sock: socket.socket) -> None:
    """No Nagle delay on what we send (DAP messages are small and come in pairs: header, body)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def serve_connections(listener: socket.socket, serve: Callable[[socket.socket], None], name: str) -> None:
    """Accept on ``listener`` until it is closed, each connection served on a thread of its own
    (a service thread: invisible to the debugger); returns at once."""

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            service_thread(serve, conn, name=f"{name}-conn")

    service_thread(accept, name=name)


def close_socket(sock: socket.socket | None) -> None:
    """Shut down and close; shutdown first wakes a thread blocked on it (a bare close does not)."""
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
