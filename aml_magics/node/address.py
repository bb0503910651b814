"""Addressing: which address of this machine a client reaches, and the listening socket itself.

A node reports its own private address (read from its interfaces, never from the host name,
which maps to 127.0.1.1 on many images); the socket is bound here, once, so a port taken
between a probe and a bind can never happen.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

from .wire import ANY_ADDRESS, LOOPBACK

_SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address


def _interface_addresses() -> list[str]:
    addresses = []
    for _, name in socket.if_nameindex():
        if name == "lo":
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                packed = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", name[:15].encode()))
            except OSError:
                continue
        addresses.append(socket.inet_ntoa(packed[20:24]))
    return addresses


def node_address() -> str:
    """This machine's own private address (what a remote client must connect to).

    Read from the interfaces rather than resolving the host name, which on many
    images maps to 127.0.1.1. Sends no traffic anywhere.
    """
    override = os.environ.get("AML_MAGICS_NODE_ADDRESS")
    if override:
        return override
    try:
        candidates = [a for a in _interface_addresses() if not a.startswith("127.")]
    except (OSError, AttributeError):
        candidates = []
    if candidates:
        return candidates[0]
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return LOOPBACK


def resolve_bind(bind: str) -> str:
    """``node`` means this machine's private address; anything else is taken as given."""
    return node_address() if bind == "node" else bind


def report_host(bound_host: str) -> str:
    """The address a client should use for what we bound."""
    explicit = os.environ.get("AML_MAGICS_REPORT_HOST")
    if explicit:
        return explicit
    if bound_host in (ANY_ADDRESS, "", "::"):
        return node_address()
    return bound_host


class ListenError(RuntimeError):
    """debugpy cannot listen where asked (port taken, address not on this machine)."""


AUTO_PORT_RANGE = 200  # --port-auto tries this many ports from --port upward


def bind_listener(host: str, port: int, auto: bool = False) -> socket.socket:
    """The listening socket itself, bound here (never probed and bound again later: two runs
    could both see a port free). ``auto``: the first free port from ``port`` upward.

    Mirrors pydevd's own socket (IPv4, SO_REUSEADDR) so debugpy serves it unchanged.
    """
    last: OSError | None = None
    candidates = range(port, min(port + AUTO_PORT_RANGE, 65536)) if auto and port else [port]
    for candidate in candidates:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, candidate))
            sock.listen(1)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
            if exc.errno != errno.EADDRINUSE:
                break
    what = f"{host}:{port}" if not (auto and port) else f"{host}:{port}..{candidates[-1]}"
    reason = getattr(last, "strerror", None) or last
    raise ListenError(f"cannot listen on {what}: {reason}")
