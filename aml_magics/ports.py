"""Debug port choice: a busy port is named with its holder, or skipped on request."""

from __future__ import annotations

import errno
import socket
from typing import Any

from .errors import AmlMagicsError
from .node.wire import OWNER_ENV


class PortBusy(AmlMagicsError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now on ``host`` (for a port the OS cannot pick at bind time)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # debugpy binds without SO_REUSEADDR; mirror it so "free" means "debugpy can bind".
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def holder(port: int) -> str | None:
    """Who listens on ``port`` on this machine, when the OS lets us know."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
                if conn.pid is None:  # another user's socket: the OS does not say whose
                    return None
                try:
                    proc = psutil.Process(conn.pid)
                    return _our_run(proc) or f"pid {conn.pid} ({_command(proc)})"
                except psutil.Error:
                    return f"pid {conn.pid}"
    except (psutil.Error, OSError):
        return None
    return None


def _our_run(proc: Any) -> str | None:
    """``another aml-debug run (pid N)`` when the holder is a run's node side (its bootstrap has
    an owner channel in its environment) or a process under it; None for anything else."""
    import psutil

    for candidate in [proc, *proc.parents()[:3]]:
        try:
            if OWNER_ENV not in candidate.environ():
                continue
            owner = candidate.parent()
            started_by = " ".join(owner.cmdline()) if owner is not None else ""
        except psutil.Error:
            continue
        kind = "aml-debug run" if "aml_magics.cli" in started_by or "aml-debug" in started_by else "aml_magics run"
        return f"another {kind} (pid {candidate.pid})"
    return None


def _command(proc: Any) -> str:
    """A process's command line on one short line (a ``python -c`` program has several)."""
    words = " ".join(" ".join(proc.cmdline()[:3]).split()) or proc.name()
    return words if len(words) <= 80 else words[:77] + "..."


def choose_port(host: str, port: int, auto: bool) -> int:
    """The port to use: 0 stays 0 (debugpy picks), a busy one raises or is skipped."""
    if port == 0 or is_free(host, port):
        return port
    if auto:
        for candidate in range(port + 1, min(port + 200, 65536)):
            if is_free(host, candidate):
                return candidate
        raise PortBusy(f"no free port in {port}..{port + 199} on {host}")
    who = holder(port)
    held = f" (held by {who})" if who else " (the OS does not say by which process: another user's, or no permission)"
    raise PortBusy(f"port {port} on {host} is already in use{held}; pick another with --port N, "
                   "or leave --port out (auto: the next free one)")
