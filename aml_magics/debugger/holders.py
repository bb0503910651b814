"""debugpy's one-client rule, checked *before* connecting.

debugpy serves one client at a time, and a probe is not harmless: its in-process adapter
(the bootstrap's default) drops its current client for any new connection, and its
separate adapter is wedged by a bare connect-and-close. So who holds a debug port is
found out without touching it:

1. this kernel's own debuggers (a registry of the live ones, by address);
2. on this machine (loopback, one of its addresses, a Docker port published on
   127.0.0.1), the kernel's TCP table: an established connection to the port is a client,
   named by its process when the OS says which;
3. elsewhere (an Azure ML node), what the run itself reported: a rank whose bootstrap
   said a debugger attached, unless that debugger was ours and has left.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import weakref
from typing import Any

from .errors import DebuggerError

_lock = threading.Lock()
_live: dict[tuple[str, int], weakref.ref] = {}  # address -> the Debugger holding it
_released: set[tuple[str, int]] = set()  # addresses our own debuggers attached to and left

ATTACHED_STATE = "attached"
USABLE_RANK_STATES = ("waiting_for_debugger", "crashed_waiting_for_debugger", "attached")


def claim(address: tuple[str, int], debugger: Any) -> None:
    with _lock:
        _live[address] = weakref.ref(debugger)
        _released.discard(address)


def release(address: tuple[str, int], debugger: Any, attached: bool) -> None:
    with _lock:
        holder = _live.get(address)
        if holder is not None and holder() is debugger:
            del _live[address]
            if attached:
                _released.add(address)


def holder_in_kernel(address: tuple[str, int]) -> Any:
    with _lock:
        ref = _live.get(address)
    return ref() if ref is not None else None


def check_free(address: tuple[str, int], run: Any = None, rank: int | None = None, what: str = "") -> None:
    """Raise :class:`DebuggerError` (one line) when someone else holds ``address``."""
    what = what or f"{address[0]}:{address[1]}"
    mine = holder_in_kernel(address)
    if mine is not None and not mine.ended:
        raise DebuggerError(f"{what} is already being debugged from this kernel ({mine.label}); "
                            f"detach that debugger first (its .detach() or %aml_dbg detach)")
    if is_local(address[0]):
        clients = local_clients(address)
        if clients:
            raise DebuggerError(f"{what} is already being debugged by {clients[0]}; debugpy serves one client at "
                                f"a time and a second connection would take the session from it: detach that "
                                f"client first")
        return
    if run is not None and _rank_state(run, rank) == ATTACHED_STATE and address not in _released:
        raise DebuggerError(f"{what}: the run reports a debugger attached (VS Code or another kernel); debugpy "
                            f"serves one client at a time and a second connection would take the session from "
                            f"it: detach that client first")


def check_listening(run: Any, rank: int | None, what: str) -> None:
    """Refuse at once what cannot work: a run that ended, a rank whose debugger is off."""
    if run is None:
        return
    if run.done:
        raise DebuggerError(f"{what}: the run already ended ({run.state}); there is nothing to attach to")
    state = _rank_state(run, rank)
    if state is not None and state not in USABLE_RANK_STATES:
        if state == "running":
            raise DebuggerError(f"{what}: the debugger of this rank is off (nobody attached within --timeout, or it "
                                f"was never on); rerun with a longer --timeout, --post-mortem or --wait-on-breakpoint")
        raise DebuggerError(f"{what}: this rank is {state}; nothing listens for a debugger")


def taken_over_by(address: tuple[str, int], own: set[tuple[str, int]]) -> str | None:
    """After our session was dropped: the other client now connected to ``address``, if visible."""
    if not is_local(address[0]):
        return None
    clients = local_clients(address, exclude=own)
    return clients[0] if clients else None


def _rank_state(run: Any, rank: int | None) -> str | None:
    try:
        statuses = list(run.ranks)
    except Exception:
        return None
    chosen = next((s for s in statuses if rank is None or s.rank == rank), None)
    return chosen.state if chosen is not None else None


def is_local(host: str) -> bool:
    """Whether ``host`` is this machine (its connections are then visible to psutil)."""
    try:
        address = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError):
        return False
    if address.is_loopback:
        return True
    return str(address) in _own_addresses()


def _own_addresses() -> set[str]:
    import psutil

    try:
        return {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}
    except (OSError, psutil.Error):
        return set()


def local_clients(address: tuple[str, int], exclude: set[tuple[str, int]] | None = None) -> list[str]:
    """Who is connected to ``address`` on this machine: ``pid N (name)`` or the peer's address."""
    import psutil

    host = socket.gethostbyname(address[0])
    port = address[1]
    found: list[str] = []
    try:
        connections = psutil.net_connections(kind="tcp")
    except (OSError, psutil.Error):
        return found
    for conn in connections:
        if conn.status != psutil.CONN_ESTABLISHED or not conn.raddr or not conn.laddr:
            continue
        local = (conn.laddr.ip, conn.laddr.port)
        if exclude and local in exclude:
            continue
        if (conn.raddr.ip, conn.raddr.port) == (host, port):  # the client's end
            found.insert(0, _describe(conn.pid, local))
        elif local == (host, port) and not (exclude and (conn.raddr.ip, conn.raddr.port) in exclude):
            found.append(f"a client at {conn.raddr.ip}:{conn.raddr.port}")  # the server's end
    return found


def _describe(pid: int | None, local: tuple[str, int]) -> str:
    import psutil

    if pid is None:
        return f"a client at {local[0]}:{local[1]}"
    try:
        process = psutil.Process(pid)
        name = " ".join(process.cmdline()[:3]) or process.name()
    except psutil.Error:
        name = "?"
    if len(name) > 80:
        name = name[:80] + "…"
    return f"pid {pid} ({name})"
