"""aml_magics bootstrap: the entry point of every debug run, on every target.

Standalone on purpose: stdlib + debugpy only, copied next to the user's script.

    python aml_magics_bootstrap.py [--port N] [--bind HOST] [--timeout S] [--no-debug]
                                   [--stop-on-entry] [--post-mortem] [--post-mortem-timeout S]
                                   [--wait-on-breakpoint] [--debug-ranks 0,3]
                                   [--port-per-local-rank] -- SCRIPT [ARGS...]

It starts debugpy, prints one machine-readable marker line per event
(``AML_MAGICS_<KIND> {json}``) plus the lines Microsoft's guide prints
(``Timeout for debug connection: N``, ``ip_address: X``), waits for a client for
at most the timeout, switches the debugger off completely when nobody came, and
runs the user's script as ``__main__`` with its own ``sys.argv``.

Distributed runs: the rank comes from ``--rank`` or the launcher's environment
(``RANK``, ``OMPI_COMM_WORLD_RANK``, ...); with ``--port-per-local-rank`` every process
of a node listens on ``--port`` + its local rank; ``--debug-ranks`` leaves the other
ranks without any debugger. ``--post-mortem``: an uncaught exception waits (at most
``--post-mortem-timeout``) for a client, which stops at the frame that raised.
``breakpoint()`` pauses when a client is attached, waits for one with
``--wait-on-breakpoint``, and is otherwise a no-op (never pdb: nobody types into a run).
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import hashlib
import hmac
import json
import os
import runpy
import select
import signal
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable

BOOTSTRAP_VERSION = "2"
MARKER_PREFIX = "AML_MAGICS_"
SECRETS_ENV = "AML_MAGICS_SECRETS"  # the run's secrets (JSON), when no owner channel carries them
OWNER_ENV = "AML_MAGICS_OWNER"  # "fd:N" (a pipe from the owner) or "stdin" (a container's stdin, held by the owner)
OWNER_GONE_EXIT = 137
RUNTIME_MODULE = "_aml_magics_bootstrap"  # this module, for the deployment server's SERVING marker
LOOPBACK = "127.0.0.1"
ANY_ADDRESS = "0.0.0.0"
_SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address
DEFAULT_POST_MORTEM_TIMEOUT = 600.0
# Where launchers put a process's rank / local rank (torchrun, Open MPI, Intel MPI / MPICH).
RANK_VARIABLES = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
LOCAL_RANK_VARIABLES = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")


_marker_key: bytes | None = None
_out_lock = threading.Lock()


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


def emit(kind: str, **data: object) -> str:
    """Print one marker line, authenticated with the run's key (readers refuse any other).

    Written to the process's original stdout, whatever the user's code did to sys.stdout.
    """
    payload = json.dumps(data, sort_keys=True)
    line = f"{MARKER_PREFIX}{kind} {payload}"
    if _marker_key is not None:
        line += " " + marker_mac(_marker_key, kind, payload)
    stream = sys.__stdout__ or sys.stdout
    with _out_lock:
        stream.write(line + "\n")
        stream.flush()
    return line


def load_secrets(first_line: str = "") -> dict:
    """The run's secrets, handed over by the owner out of band; gone from the environment after.

    The user's code (and anything it starts) must never see them: the key makes markers, the
    TLS material opens the tunnel. They come as the owner channel's first line, else from
    ``AML_MAGICS_SECRETS`` (a remote run, where the job's environment is the only channel).
    """
    global _marker_key
    raw = os.environ.pop(SECRETS_ENV, "")
    raw = first_line.strip() or raw
    if not raw:
        return {}
    try:
        secrets = json.loads(raw)
        key = bytes.fromhex(secrets["marker_key"])
    except (ValueError, KeyError, TypeError):
        print("aml_magics: the run's secrets are unreadable; markers are not authenticated", file=sys.stderr,
              flush=True)
        return {}
    _marker_key = key
    return secrets


# -- the owner: this run lives as long as the kernel or CLI that started it --------------------------

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def owner_channel() -> int | None:
    """The fd of the owner's channel (``AML_MAGICS_OWNER``), moved off stdin; None without one."""
    spec = os.environ.pop(OWNER_ENV, "")
    if spec.startswith("fd:"):
        try:
            fd = int(spec[3:])
            os.fstat(fd)
        except (ValueError, OSError):
            return None
        os.set_inheritable(fd, False)
        return fd
    if spec == "stdin":
        fd = os.dup(0)  # not inheritable; the user's code gets an empty stdin, never the channel
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        return fd
    return None


def read_first_line(fd: int, limit: int = 1 << 20) -> str:
    """The owner's first line (the run's secrets), read byte-wise so nothing after it is consumed."""
    data = bytearray()
    while len(data) < limit:
        chunk = os.read(fd, 1)
        if not chunk or chunk == b"\n":
            break
        data += chunk
    return data.decode("utf-8", "replace")


def watch_owner(fd: int) -> None:
    """End this run (its whole tree) when the owner's channel closes: the owner is gone, whatever
    killed it (SIGKILL included). Plus the kernel's parent-death signal where there is one."""
    if os.getppid() != 1:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    def wait_for_eof() -> None:
        try:
            while os.read(fd, 4096):
                pass
        except OSError:
            pass
        end_tree(OWNER_GONE_EXIT, "the owner of this run is gone")

    service_thread(wait_for_eof, name="aml-magics-owner")


def adopt_orphans() -> None:
    """Become the subreaper of what the user's code starts: a descendant that leaves the process
    group (``setsid``) and is orphaned stays in this tree, where a stop can still find it."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read().decode("ascii", "replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(pid: int | None = None) -> list[int]:
    """Every process below ``pid`` (default: this one), from /proc (stdlib only)."""
    tree, found, todo = _children(), [], [pid or os.getpid()]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _left_running(pid: int) -> bool:
    """A process the script left behind: not debugpy's adapter (``--separate-adapter``: ours), not
    a zombie (it ended; only its exit status is left to collect)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read().split(b"\0")
    except OSError:
        return False
    if stat[stat.rfind(b")") + 2:].startswith(b"Z"):
        return False
    return not any(part.replace(b"\\", b"/").endswith(b"debugpy/adapter") for part in argv)


def kill_descendants() -> int:
    """SIGKILL whatever is left below this process (and collect it); how many of those the
    script had left running."""
    pids = descendants()
    left = sum(1 for pid in pids if _left_running(pid))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except OSError:
            pass
    return left


def end_tree(code: int, why: str) -> None:
    """End the whole run now: every descendant, this process group, this process."""
    try:
        print(f"aml_magics: {why}; ending the run", file=sys.__stderr__, flush=True)
    except Exception:
        pass
    kill_descendants()
    try:
        os.killpg(os.getpgid(0), signal.SIGKILL)
    except OSError:
        pass
    os._exit(code)


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


def env_int(names: tuple[str, ...], default: int = 0) -> int:
    """The first of ``names`` set to an integer in the environment."""
    for name in names:
        try:
            return int(os.environ[name])
        except (KeyError, ValueError):
            continue
    return default


def rank_list(text: str) -> frozenset[int]:
    try:
        ranks = frozenset(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--debug-ranks takes ranks like 0,3, not {text!r}") from None
    if not ranks or min(ranks) < 0:
        raise argparse.ArgumentTypeError(f"--debug-ranks takes ranks like 0,3, not {text!r}")
    return ranks


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="aml_magics_bootstrap", add_help=True)
    parser.add_argument("--port", type=int, default=5678)
    parser.add_argument("--port-auto", action="store_true",
                        help="take the first free port from --port upward (bound here: race-free)")
    parser.add_argument("--bind", default=LOOPBACK)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--no-debug", action="store_true")
    parser.add_argument("--stop-on-entry", action="store_true")
    parser.add_argument("--separate-adapter", action="store_true",
                        help="use debugpy's adapter process (needed to follow subprocesses)")
    parser.add_argument("--rank", type=int, default=None, help="this process's rank (default: from the launcher's env)")
    parser.add_argument("--local-rank", type=int, default=None, help="rank on this node (default: from the env)")
    parser.add_argument("--port-per-local-rank", action="store_true",
                        help="listen on --port + local rank (one command line for every process of a node)")
    parser.add_argument("--debug-ranks", type=rank_list, default=None,
                        help="comma-separated ranks to debug; the others run with no debugger at all")
    parser.add_argument("--post-mortem", action="store_true",
                        help="on an uncaught exception, wait for a debugger and stop where it was raised")
    parser.add_argument("--post-mortem-timeout", type=float, default=DEFAULT_POST_MORTEM_TIMEOUT,
                        help="seconds to wait for a debugger after a crash or at breakpoint() (default 600)")
    parser.add_argument("--wait-on-breakpoint", action="store_true",
                        help="breakpoint() with no debugger attached reports itself and waits for one")
    parser.add_argument("--reattach", action="store_true",
                        help="keep listening after a client detaches (default: one attach per window)")
    parser.add_argument("script")
    parser.add_argument("script_args", nargs=argparse.REMAINDER)
    if "--" in argv:
        split = argv.index("--")
        ns = parser.parse_args(argv[:split] + argv[split + 1:split + 2])
        ns.script_args = argv[split + 2:]
    else:
        ns = parser.parse_args(argv)
    return _resolve_ranks(ns)


def _resolve_ranks(ns: argparse.Namespace) -> argparse.Namespace:
    """Rank and local rank from the flags or the launcher's env; the port of this process."""
    if ns.rank is None:
        ns.rank = env_int(RANK_VARIABLES)
    if ns.local_rank is None:
        ns.local_rank = env_int(LOCAL_RANK_VARIABLES)
    if ns.port_per_local_rank and ns.port:
        ns.port += ns.local_rank
    ns.debug_this_rank = not ns.no_debug and (ns.debug_ranks is None or ns.rank in ns.debug_ranks)
    return ns


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


def hand_to_pydevd(sock: socket.socket) -> None:
    """Make pydevd's next listener the socket we bound (its own bind runs on a thread and, when
    it fails, debugpy.listen() waits forever for a socket that never comes)."""
    import pydevd

    original = pydevd.create_server_socket

    def create_server_socket(host: str, port: int) -> socket.socket:
        pydevd.create_server_socket = original  # once
        return sock

    pydevd.create_server_socket = create_server_socket


# -- the tunnel's node side: TLS 1.3 with pinned per-run certificates, in front of debugpy -------------

RELAY_HANDSHAKE_TIMEOUT = 10.0
DETACH_POLL = 0.25  # how often a direct (untunnelled) session is checked for a client that left


def relay_context(tunnel: dict) -> tuple[ssl.SSLContext, bytes]:
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


class TlsSession:
    """One authenticated TLS connection, shaped like the connected socket pydevd reads from one
    thread and writes from another (``recv``, ``sendall``, ``settimeout``, ``shutdown``,
    ``close``): debugpy speaks to the client over it directly — no plain-TCP hop, no port
    of its own on the node.

    One lock serialises every TLS call (an ``SSLSocket`` must never be read and written at
    once); nobody waits for the socket while holding it. pydevd writes a message as two
    ``sendall()`` calls, header then body: the header is held and leaves in the body's record,
    so the far side wakes once per message. ``on_close`` runs once, whichever side ends it.
    """

    def __init__(self, tls: ssl.SSLSocket, on_close: Callable[[], None]) -> None:
        low_latency(tls)
        tls.setblocking(False)
        self._tls = tls
        self._on_close = on_close
        self._lock = threading.Lock()
        self._held = b""
        self.closed = False

    def recv(self, size: int) -> bytes:
        while True:
            with self._lock:
                if self.closed:
                    return b""
                try:
                    data = self._tls.recv(size)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    data = None  # no whole record yet (or one without data): wait for the socket
                except (OSError, ValueError):
                    data = b""
            if data is None:
                self._wait(readable=True)
                continue
            if not data:
                self.close()
            return data

    def sendall(self, data: bytes, flags: int = 0) -> None:
        data = bytes(data)
        if data.startswith(b"Content-Length: ") and data.endswith(b"\r\n\r\n"):
            self._held += data  # a header: it leaves with its body
            return
        view, self._held = memoryview(self._held + data), b""
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
            if failed:  # the client is gone: the session ends (on_close), and pydevd hears it
                self.close()
                raise OSError(errno.EPIPE, "the debug session is closed")
            self._wait(readable=False)

    def settimeout(self, timeout: float | None) -> None:
        """Blocking as pydevd wants it, on top of a non-blocking TLS socket."""

    def shutdown(self, how: int) -> None:
        """pydevd ends a session by shutting down its writing side: the whole session ends."""
        self.close()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            close_socket(self._tls)  # shutdown first: wakes the other thread's wait
        self._on_close()

    def _wait(self, readable: bool) -> None:
        try:
            select.select([self._tls] if readable else [], [] if readable else [self._tls], [], 1.0)
        except (OSError, ValueError):  # closed under us: the next turn sees it
            time.sleep(0.01)


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
    at a time; ``on_session_end`` when it ends."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, peer_der: bytes, sessions: SessionListener,
                 on_session_end) -> None:
        self.sock = sock
        self.context = context
        self.peer_der = peer_der
        self.sessions = sessions
        self.on_session_end = on_session_end
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
        self.sessions.put(TlsSession(tls, self._session_ended))

    def _session_ended(self) -> None:
        """Called on pydevd's reader or writer thread: what follows (switching debugpy off) runs on
        a thread of ours, never on a thread it disposes of."""
        with self._lock:
            self._active = False
        service_thread(self.on_session_end, name="aml-magics-session-end")


class Debugger:
    """debugpy, listening for at most ``timeout`` seconds, then off if nobody came."""

    def __init__(self, debugpy_module, options: argparse.Namespace, tunnel: dict | None = None) -> None:
        self.debugpy = debugpy_module
        self.options = options
        self.switched_off = False
        self.port: int | None = None  # the port bound last; a new listen() reuses it
        self.tunnel = tunnel  # the node side of the run's TLS tunnel (secrets), or None: direct
        self.relay: Relay | None = None
        self.on_detached: Callable[[], None] | None = None  # called (from a thread) when a client left

    @property
    def tunnelled(self) -> bool:
        return self.tunnel is not None

    def listen(self) -> tuple[str, int]:
        bind = resolve_bind(self.options.bind)
        if not self.switched_off:
            host, port = self._listen(bind, self.options.port)
        else:
            # Listening again after switch_off() (post-mortem, breakpoint()): same port, so a
            # launch.json written for it stays right; any free one if that is gone. Always
            # with the in-process adapter: debugpy cannot start a second adapter process.
            self._allow_listen_again()
            try:
                host, port = self._listen(bind, self.port or self.options.port, in_process=True)
            except Exception:
                self._allow_listen_again()
                host, port = self._listen(bind, 0, in_process=True)
        self.switched_off = False
        self.port = port
        return host, port

    def _listen(self, bind: str, port: int, in_process: bool = False) -> tuple[str, int]:
        if self.tunnel is not None:
            return self._listen_tunnelled(bind, port)
        if in_process or not self.options.separate_adapter:
            sock = bind_listener(bind, port, auto=bool(self.options.port_auto) and not self.switched_off)
            import debugpy.server.api  # noqa: F401 - puts pydevd on the path

            hand_to_pydevd(sock)
            return self.debugpy.listen((bind, sock.getsockname()[1]), in_process_debug_adapter=True)
        if port:  # debugpy's adapter process binds it: check first (it cannot be handed a socket)
            bind_listener(bind, port).close()
        return self.debugpy.listen((bind, port))

    def _listen_tunnelled(self, bind: str, port: int) -> tuple[str, int]:
        """The relay on the run's address and port; debugpy with no port, served the relay's sessions."""
        assert self.tunnel is not None
        relay_sock = bind_listener(bind, port, auto=bool(self.options.port_auto) and not self.switched_off)
        address = relay_sock.getsockname()[:2]
        sessions = SessionListener(address)
        try:
            context, peer = relay_context(self.tunnel)
            import debugpy.server.api  # noqa: F401 - puts pydevd on the path

            hand_to_pydevd(sessions)  # type: ignore[arg-type]  # accept() is all pydevd asks of it
            self.debugpy.listen(address, in_process_debug_adapter=True)
        except BaseException:
            sessions.close()
            relay_sock.close()
            raise
        self.relay = Relay(relay_sock, context, peer, sessions, self._session_ended).start()
        return bind, self.relay.port

    def _session_ended(self) -> None:
        if self.on_detached is not None:
            self.on_detached()

    def watch_detach(self) -> None:
        """A direct session: notice the client leaving (the relay notices it itself)."""
        if self.tunnel is not None:
            return

        def poll() -> None:
            while not self.switched_off and self.debugpy.is_client_connected():
                time.sleep(DETACH_POLL)
            if not self.switched_off:
                self._session_ended()

        service_thread(poll, name="aml-magics-detach")

    @staticmethod
    def _allow_listen_again() -> None:
        """debugpy refuses a second listen(); switch_off() disposed of the first session.

        pydevd's stoptrace() unregisters the disposed debugger, so a new one can start;
        what remains are debugpy's "called" flag and pydevd's remembered host/port.
        """
        import pydevd
        from debugpy.server import api

        api.listen.called = False
        pydevd.SetupHolder.setup = None

    def client_connected(self) -> bool:
        return not self.switched_off and bool(self.debugpy.is_client_connected())

    def wait_for_client(self, timeout: float) -> bool:
        """debugpy.wait_for_client() has no timeout; cancel it from a timer thread."""
        if timeout > 0:
            timer = threading.Timer(timeout, self.debugpy.wait_for_client.cancel)
            timer.daemon = True
            timer.start()
            try:
                self.debugpy.wait_for_client()
            finally:
                timer.cancel()
        return bool(self.debugpy.is_client_connected())

    def switch_off(self) -> None:
        """Stop tracing and close the port: an idle listener slows Python code 2-7x."""
        if self.relay is not None:
            self.relay.close()
            self.relay = None
        try:
            import pydevd  # vendored by debugpy, importable once debugpy listened

            self._close_in_process_listener(pydevd.get_global_debugger())
            pydevd.stoptrace()
            self.switched_off = True
        except Exception as exc:  # never let cleanup kill the user's run
            print(f"aml_magics: could not switch the debugger off: {exc}", file=sys.stderr, flush=True)

    @staticmethod
    def _close_in_process_listener(py_db: object) -> None:
        """The in-process adapter's listener survives stoptrace(); close it ourselves.

        shutdown() first: a bare close() does not wake the thread blocked in accept(),
        and the port would stay open. The kill flag before that: a thread woken with the
        flag still unset loops back to listen() on the same socket.
        """
        waiter = getattr(py_db, "_waiting_for_connection_thread", None)
        server = getattr(waiter, "_server_socket", None)
        if waiter is None or server is None:
            return
        waiter._kill_received = True
        try:
            server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        waiter.do_kill_pydev_thread()
        if isinstance(waiter, threading.Thread) and waiter is not threading.current_thread():
            waiter.join(2.0)

    def stop_on_entry(self) -> None:
        """Pause at the user script's first line, not in this file."""
        import pydevd
        from _pydevd_bundle.pydevd_api import PyDevdAPI

        api = PyDevdAPI()
        api.set_dont_trace_start_end_patterns(pydevd.get_global_debugger(), (), (os.path.abspath(__file__),))
        api.stop_on_entry()

    @staticmethod
    def pause_at(frame: object) -> None:
        """Pause the current thread in ``frame`` (what breakpoint() does with a client attached)."""
        import pydevd

        pydevd.settrace(suspend=True, trace_only_current_thread=True, patch_multiprocessing=False,
                        stop_at_frame=frame, notify_stdin=False)

    @staticmethod
    def stop_at_exception(exc_info: tuple) -> None:
        """Post-mortem: show the attached client the frame that raised, with its locals.

        The traceback is already unwound (as with pdb.post_mortem); the client sees an
        unhandled-exception stop in the innermost frame that is not the debugger's own.
        """
        import pydevd

        py_db = pydevd.get_global_debugger()
        if py_db is None:
            return
        trigger = getattr(py_db, "trigger_exception_handler", None)
        if trigger is not None:  # debugpy >= 1.8.20 does exactly this
            trigger(exc_info, as_uncaught=False)
            return
        frames, user_frame, tb = [], None, exc_info[2]
        while tb is not None:
            frames.append(tb.tb_frame)
            if py_db.get_file_type(tb.tb_frame) != py_db.PYDEV_FILE:
                user_frame = tb.tb_frame
            tb = tb.tb_next
        if user_frame is None:
            return
        thread = threading.current_thread()
        info = py_db.set_additional_thread_info(thread)
        info.is_tracing += 1
        try:
            py_db.do_stop_on_unhandled_exception(thread, user_frame, {id(f): f for f in frames}, exc_info)
        finally:
            info.is_tracing -= 1


def tag_azureml_run(endpoint: dict, line: str) -> None:
    """On Azure ML, also put the endpoint in a run tag (cheaper to read than logs).

    Optional and never fatal: only inside a submitted run whose image has azureml-core,
    in a background thread (importing azureml takes seconds); elsewhere it does nothing.
    """
    if not (os.environ.get("AZUREML_RUN_ID") and os.environ.get("AZUREML_SERVICE_ENDPOINT")):
        return

    def tag() -> None:
        try:
            from azureml.core import Run

            run = Run.get_context(allow_offline=False)
            run.tag(f"aml_magics.endpoint.{endpoint.get('rank', 0)}", line)  # the authenticated marker line
        except Exception:
            pass  # azureml-core absent or no run context: the log line is enough

    service_thread(tag, name="aml-magics-run-tag")


class DebugSession:
    """The debugger of this process: started when needed, listening only while waited for.

    At start it listens for ``--timeout`` seconds (unless that is 0 and only a crash or a
    breakpoint() should start it: then nothing runs until that moment). A post-mortem
    or a breakpoint() with ``--wait-on-breakpoint`` listens again, reports the endpoint
    and waits at most ``--post-mortem-timeout`` seconds; nobody came means off again.
    """

    def __init__(self, options: argparse.Namespace, script_path: str, tunnel: dict | None = None) -> None:
        self.options = options
        self.script_path = script_path
        self.tunnel = tunnel  # the node side of the run's TLS tunnel: the port is the relay's
        self.enabled = bool(getattr(options, "debug_this_rank", not options.no_debug))
        self.debugger: Debugger | None = None
        self.listening = False
        self.host: str | None = None
        self.port: int | None = None
        self._lock = threading.RLock()
        self._ignored: set[tuple[str, int]] = set()

    # -- listening ---------------------------------------------------------------
    def listen(self, timeout: float, reason: str) -> tuple[str, int]:
        """Start (or restart) listening and report the endpoint; a no-op while listening."""
        with self._lock:
            if self.listening and self.host is not None and self.port is not None:
                return self.host, self.port
            if self.debugger is None:
                import debugpy

                self.use_debugpy(debugpy)
            assert self.debugger is not None
            started = time.time()
            bound_host, port = self.debugger.listen()
            self.listening = True
            install_breakpointhook(self)  # importing pydevd installed its own hook
            host = report_host(bound_host)
            self.host, self.port = host, port
            print(f"Timeout for debug connection: {timeout:g}", flush=True)
            print(f"ip_address: {host}", flush=True)
            endpoint = dict(host=host, port=port, bind=bound_host, rank=self.options.rank, pid=os.getpid(),
                            cwd=os.getcwd(), script=self.script_path, timeout=timeout,
                            deadline=started + timeout if timeout > 0 else None, reason=reason,
                            version=BOOTSTRAP_VERSION, tunnel=self.debugger.tunnelled)
            tag_azureml_run(endpoint, emit("ENDPOINT", **endpoint))
            return host, port

    def use_debugpy(self, debugpy_module: object) -> None:
        """The debugger of this run, driving ``debugpy_module`` (debugpy itself, or its real
        functions kept aside when the user's own ``import debugpy`` is patched)."""
        self.debugger = Debugger(debugpy_module, self.options, self.tunnel)
        self.debugger.on_detached = self._detached

    def wait(self, timeout: float, reason: str) -> bool:
        """Wait at most ``timeout`` for a client; switch the debugger off if none came."""
        with self._lock:
            assert self.debugger is not None
            attached = self.debugger.wait_for_client(timeout)
            print(f"Debugger attached = {attached}", flush=True)
            emit("ATTACHED", attached=attached, rank=self.options.rank, pid=os.getpid(), reason=reason)
            if not attached:
                self.debugger.switch_off()
                self.listening = False
            else:
                self.debugger.watch_detach()
            return attached

    def _detached(self) -> None:
        """The client left: one attach per window — stop listening, tracing off, as after a
        timeout (``--reattach`` keeps the listener open until the run ends)."""
        if not self._lock.acquire(timeout=5):
            return
        try:
            if not self.listening or self.debugger is None:
                return
            if self.options.reattach:
                emit("DETACHED", rank=self.options.rank, pid=os.getpid(), reason="client left; listening again")
                return
            self.debugger.switch_off()
            self.listening = False
            print("aml_magics: the debugger detached; the run goes on without it (--reattach keeps it listening)",
                  file=sys.stderr, flush=True)
            emit("DETACHED", rank=self.options.rank, pid=os.getpid(), reason="client left; debugger off")
        finally:
            self._lock.release()

    def client_connected(self) -> bool:
        return self.listening and self.debugger is not None and self.debugger.client_connected()

    @property
    def lazy(self) -> bool:
        """``--timeout 0`` with a crash or breakpoint() to wait for: start nothing up front."""
        options = self.options
        return options.timeout <= 0 and (options.post_mortem or options.wait_on_breakpoint)

    def start(self) -> None:
        if not self.enabled or self.lazy:
            return
        self.listen(self.options.timeout, "start")
        if self.wait(self.options.timeout, "start") and self.options.stop_on_entry:
            assert self.debugger is not None
            self.debugger.stop_on_entry()

    # -- post-mortem -------------------------------------------------------------
    def post_mortem(self, exc_info: tuple) -> None:
        """An uncaught exception: report it, wait for a client, stop where it was raised."""
        if not self.enabled:
            return
        exc_type, exc, tb = exc_info
        frame_file, frame_line = _innermost(tb)
        timeout = self.options.post_mortem_timeout
        details = dict(type=getattr(exc_type, "__qualname__", str(exc_type)),
                       module=getattr(exc_type, "__module__", ""), message=_short(exc),
                       file=frame_file, line=frame_line, rank=self.options.rank, pid=os.getpid())
        with self._lock:
            if self.client_connected():
                emit("POST_MORTEM", host=self.host, port=self.port, attached=True, timeout=0, deadline=None,
                     **details)
                attached = True
            else:
                started = time.time()
                host, port = self.listen(timeout, "post_mortem")
                emit("POST_MORTEM", host=host, port=port, attached=False, timeout=timeout,
                     deadline=started + timeout if timeout > 0 else None, **details)
                print(f"aml_magics: rank {self.options.rank} crashed ({details['type']}: {details['message']}); "
                      f"post-mortem: waiting up to {timeout:g}s for a debugger at {host}:{port}", flush=True)
                attached = self.wait(timeout, "post_mortem")
        if attached:
            assert self.debugger is not None
            self.debugger.stop_at_exception(exc_info)

    # -- breakpoint() ------------------------------------------------------------
    def on_breakpoint(self, frame) -> None:
        """``breakpoint()`` in user code: pause, wait for a client, or do nothing."""
        if os.environ.get("PYTHONBREAKPOINT") == "0":
            return
        if self.enabled and self.client_connected():
            Debugger.pause_at(frame)
            return
        where = (frame.f_code.co_filename, frame.f_lineno)
        if not (self.enabled and self.options.wait_on_breakpoint):
            if where not in self._ignored:
                self._ignored.add(where)
                why = "--wait-on-breakpoint to wait for one" if self.enabled else "the debugger is off for this rank"
                print(f"aml_magics: breakpoint() at {where[0]}:{where[1]} ignored: no debugger attached ({why})",
                      file=sys.stderr, flush=True)
            return
        timeout = self.options.post_mortem_timeout
        with self._lock:
            if self.client_connected():  # another thread's breakpoint() got one meanwhile
                attached = True
            else:
                started = time.time()
                host, port = self.listen(timeout, "breakpoint")
                emit("BREAKPOINT", host=host, port=port, file=where[0], line=where[1], function=frame.f_code.co_name,
                     rank=self.options.rank, pid=os.getpid(), timeout=timeout,
                     deadline=started + timeout if timeout > 0 else None)
                print(f"aml_magics: breakpoint() at {where[0]}:{where[1]}: waiting up to {timeout:g}s "
                      f"for a debugger at {host}:{port}", flush=True)
                attached = self.wait(timeout, "breakpoint")
        if attached:
            Debugger.pause_at(frame)


def install_breakpointhook(session: DebugSession) -> None:
    """Make breakpoint() ours: debugpy's hook would pause only with a client attached, and
    Python's default (pdb) would read a stdin nobody types into."""

    def aml_magics_breakpointhook(*args: object, **kwargs: object) -> None:
        session.on_breakpoint(sys._getframe(1))

    sys.breakpointhook = aml_magics_breakpointhook


def _innermost(tb) -> tuple[str | None, int | None]:
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    if last is None:
        return None, None
    return last.tb_frame.f_code.co_filename, last.tb_lineno


def _short(exc: object, limit: int = 500) -> str:
    try:
        text = str(exc)
    except Exception:
        text = "<unprintable>"
    return text if len(text) <= limit else text[:limit] + "…"


def line_buffer_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(line_buffering=True)
            except ValueError:
                pass


def run_user_script(script_path: str, script_args: list[str], on_crash=None) -> int:
    """Run the script as ``python SCRIPT ARGS`` would: its dir first on sys.path.

    ``on_crash(exc_info)`` runs after the traceback of an uncaught exception is printed
    (post-mortem); the exit code stays 1.
    """
    sys.argv = [script_path, *script_args]
    sys.path[0] = os.path.dirname(script_path)
    try:
        runpy.run_path(script_path, run_name="__main__")
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr, flush=True)
        return 1
    except BaseException:
        traceback.print_exc()
        if on_crash is not None:
            try:
                on_crash(sys.exc_info())
            except KeyboardInterrupt:  # canceled while waiting for a debugger
                print("aml_magics: post-mortem wait interrupted", file=sys.stderr, flush=True)
            except Exception as exc:  # the original failure is what the run reports
                print(f"aml_magics: post-mortem failed: {exc!r}", file=sys.stderr, flush=True)
        return 1
    return 0


# -- the user's own debugpy calls (scripts written the way Microsoft's guide says) ------------------
#
# Scripts written after Microsoft's guide call debugpy themselves: ``debugpy.listen(('0.0.0.0', 5678))``
# then ``debugpy.wait_for_client()``. Under the bootstrap the real calls would raise (listen() twice),
# bind all interfaces, or wait forever. So the ``debugpy`` module the user imports gets functions that
# cooperate with this run's debugger: listen() answers with the run's own endpoint (never a second
# listener, never the user's address), wait_for_client() waits only within the run's attach window,
# and everything is a no-op where the run has no debugger. The bootstrap's Debugger keeps debugpy's
# real functions. The module is patched when it is first imported (by anyone), so a run that never
# imports debugpy pays nothing.

GUIDE_REASON = "debugpy.wait_for_client"  # the ENDPOINT/ATTACHED reason of a window the user's calls reopened


def _user_endpoint(address: object) -> tuple[object, int]:
    """``(host, port)`` of what the user passed, checked as debugpy checks it."""
    try:
        host, port = address  # type: ignore[misc]
    except (TypeError, ValueError):
        host, port = LOOPBACK, address
    try:
        port = port.__index__()  # type: ignore[attr-defined]
    except Exception:
        raise ValueError("expected port or (host, port)") from None
    if not 0 <= port < 65536:
        raise ValueError("invalid port number")
    return host, port


class UserDebugpy:
    """What the user's ``debugpy.listen/wait_for_client/...`` do inside a run.

    listen() returns the run's endpoint (host and port as reported) and opens nothing. If the
    run's debugger is off then (its attach window closed with nobody attached), the next
    wait_for_client() reopens it once on that endpoint for one more ``--timeout`` window,
    reported like the first, in the calling thread (as breakpoint() and post-mortem do: the
    thread that starts tracing is the one that stops it). wait_for_client() returns at once when
    a client is attached and never waits past the window. ``--timeout 0`` means no waiting at
    all, here too. With no debugger for this process (``--no-debug``, a rank outside
    ``--debug-ranks``) every call returns at once.
    """

    PATCHED = ("listen", "wait_for_client", "is_client_connected", "breakpoint", "configure", "log_to", "connect",
               "debug_this_thread", "trace_this_thread", "trigger_exception_handler")

    def __init__(self, session: DebugSession) -> None:
        self.session = session
        self.originals: dict[str, object] = {}
        self._said: set[str] = set()
        self._reopen_pending = False  # listen() found the debugger off: the next wait_for_client() reopens it
        self._reopened = False  # once per process, as debugpy listens once per process
        self._canceled = threading.Event()

    # -- installing ----------------------------------------------------------------------
    def patch(self, module: object) -> None:
        """Replace the public functions of the imported ``debugpy`` module; keep debugpy's own."""
        if getattr(module, "_aml_magics_cooperating", False):
            return
        for name in self.PATCHED:
            if name not in self.originals:
                self.originals[name] = getattr(module, name, None)
            setattr(module, name, self._public(name))
        module._aml_magics_cooperating = True  # type: ignore[attr-defined]

    def _public(self, name: str):
        method = getattr(self, name)

        def function(*args: object, **kwargs: object) -> object:
            return method(*args, **kwargs)

        function.__name__ = name
        function.__qualname__ = name
        function.__module__ = "debugpy"
        function.__doc__ = f"debugpy.{name}, cooperating with the aml_magics run's debugger. " + (method.__doc__ or "")
        if name == "wait_for_client":
            function.cancel = self.cancel_wait  # type: ignore[attr-defined]
        return function

    def original(self, name: str) -> object:
        """debugpy's own function ``name`` (for the bootstrap's Debugger), importing debugpy if needed."""
        if name not in self.originals:
            import debugpy  # noqa: F401 - the import hook patches it and keeps the originals

            if name not in self.originals:  # debugpy was already imported unpatched
                self.patch(debugpy)
        found = self.originals.get(name)
        if found is None:
            raise AttributeError(f"debugpy has no {name}")
        return found

    # -- telling the user, once per call kind ----------------------------------------------
    def say(self, key: str, text: str) -> None:
        if key not in self._said:
            self._said.add(key)
            print(f"aml_magics: {text}", file=sys.stderr, flush=True)

    def _off_reason(self) -> str:
        options = self.session.options
        if options.no_debug:
            return "this run has no debugger (--no-debug)"
        return f"rank {options.rank} has no debugger (not in --debug-ranks)"

    # -- the public functions ------------------------------------------------------------
    def listen(self, address: object = None, *, in_process_debug_adapter: bool = False, **_: object) -> tuple:
        """Returns the run's endpoint; opens no listener of its own, whatever the address."""
        asked = _user_endpoint(address)
        call = f"debugpy.listen({address!r})"
        session = self.session
        if not session.enabled:
            self.say("listen", f"{call} ignored: {self._off_reason()}; nothing listens")
            return asked
        if session.host is None or session.port is None:  # lazy (--timeout 0 with --post-mortem/...)
            self.say("listen", f"{call} ignored: this run's debugger starts only for a crash or a breakpoint() "
                               "(--timeout 0); nothing listens")
            return asked
        where = f"this run's debugger at {session.host}:{session.port} (bound to {resolve_bind(session.options.bind)} " \
                "by the run's options)"
        if session.listening or session.client_connected():
            self.say("listen", f"{call} uses {where}; no second listener")
        elif session.options.timeout > 0 and not self._reopened:
            self._reopen_pending = True
            self.say("listen", f"{call} uses {where}, off now (its attach window closed with nobody attached): "
                               f"debugpy.wait_for_client() reopens it for up to {session.options.timeout:g}s")
        else:
            why = "--timeout 0" if session.options.timeout <= 0 else "its attach window closed with nobody attached"
            self.say("listen", f"{call} ignored: {where} is off ({why}); nothing listens")
        return session.host, session.port

    def wait_for_client(self) -> None:
        """Returns when a client is attached, or when the run's attach window ends (never unbounded)."""
        session = self.session
        if not session.enabled or session.client_connected():
            return
        self._canceled.clear()
        if not self._within_another_window():
            return
        with session._lock:  # as breakpoint() and post-mortem: one window at a time
            if session.client_connected():
                return
            if self._reopen_pending:
                self._reopen_pending, self._reopened = False, True
                timeout = session.options.timeout
                try:
                    session.listen(timeout, GUIDE_REASON)
                    session.wait(timeout, GUIDE_REASON)
                except Exception as exc:  # never let the debugger kill the user's run
                    print(f"aml_magics: could not reopen this run's debugger: {exc}", file=sys.stderr, flush=True)
                return
        self.say("wait_for_client", "debugpy.wait_for_client() returns at once: no client is attached and this "
                                    "run's attach window is closed")

    def _within_another_window(self) -> bool:
        """While another thread waits for a client (breakpoint(), post-mortem: it holds the session's
        lock), wait within that window. False when this wait is over (attached, or canceled)."""
        lock = self.session._lock
        while not lock.acquire(timeout=0.1):
            if self._canceled.is_set() or self.session.client_connected():
                return False
        lock.release()
        return not self.session.client_connected()

    def cancel_wait(self) -> None:
        """``debugpy.wait_for_client.cancel()``: end a wait in progress (from another thread)."""
        self._canceled.set()
        cancel = getattr(self.originals.get("wait_for_client"), "cancel", None)
        if cancel is not None and self.session.listening:
            cancel()

    def is_client_connected(self) -> bool:
        return bool(self.session.enabled and self.session.client_connected())

    def breakpoint(self) -> None:
        """Like ``breakpoint()`` under the bootstrap: pause when attached, ``--wait-on-breakpoint`` rules."""
        self.session.on_breakpoint(sys._getframe(2))  # the user's frame (under the public function)

    def configure(self, properties: object = None, **kwargs: object) -> None:
        self.say("configure", f"debugpy.configure({properties or kwargs!r}) ignored: this run's debugger is "
                              "set up by aml_magics")

    def log_to(self, path: object) -> None:
        self.say("log_to", f"debugpy.log_to({path!r}) ignored: this run's debugger is set up by aml_magics")

    def connect(self, address: object = None, **_: object) -> None:
        self.say("connect", f"debugpy.connect({address!r}) ignored: aml_magics does not connect out; attach "
                            "with the run's launch.json configuration to its endpoint instead")

    def _live(self, name: str, *args: object, **kwargs: object) -> None:
        """Pass to debugpy only while this run's debugger is live (otherwise there is nothing to tell)."""
        if self.session.enabled and self.session.listening:
            real = self.originals.get(name)
            if callable(real):
                real(*args, **kwargs)

    def debug_this_thread(self) -> None:
        self._live("debug_this_thread")

    def trace_this_thread(self, should_trace: bool) -> None:
        self._live("trace_this_thread", should_trace)

    def trigger_exception_handler(self, excinfo: object = None, as_uncaught: bool = True) -> None:
        if self.is_client_connected():
            self._live("trigger_exception_handler", excinfo, as_uncaught=as_uncaught)


class _OriginalDebugpy:
    """debugpy's own functions, for the bootstrap's Debugger (the module itself cooperates now)."""

    def __init__(self, user: UserDebugpy) -> None:
        self._user = user

    def __getattr__(self, name: str) -> object:
        return self._user.original(name)


class _PatchingLoader:
    """debugpy's own loader, plus the patch once the module has run."""

    def __init__(self, loader, patch) -> None:
        self._loader, self._patch = loader, patch

    def create_module(self, spec):
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        self._patch(module)

    def __getattr__(self, name: str) -> object:
        return getattr(self._loader, name)


class _PatchDebugpyOnImport:
    """A meta path finder: ``import debugpy`` (the first, by anyone) yields the cooperating module."""

    def __init__(self, patch) -> None:
        self._patch = patch

    def find_spec(self, name: str, path=None, target=None):
        if name != "debugpy":
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _PatchingLoader(spec.loader, self._patch)
                return spec
        return None


def cooperate_with_user_debugpy(session: DebugSession) -> UserDebugpy:
    """Before the user's code runs: its ``import debugpy`` gets functions that cooperate with ``session``."""
    user = UserDebugpy(session)
    if session.enabled and session.debugger is None:
        session.use_debugpy(_OriginalDebugpy(user))
    if "debugpy" in sys.modules:
        user.patch(sys.modules["debugpy"])
    sys.meta_path.insert(0, _PatchDebugpyOnImport(user.patch))
    return user


def main(argv: list[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    sys.modules.setdefault(RUNTIME_MODULE, sys.modules[__name__])
    channel = owner_channel()
    secrets = load_secrets(read_first_line(channel) if channel is not None else "")
    if channel is not None:
        watch_owner(channel)
    adopt_orphans()
    line_buffer_output()
    script_path = os.path.abspath(options.script)
    if not os.path.isfile(script_path):
        print(f"aml_magics: script not found: {script_path}", file=sys.stderr, flush=True)
        return 2
    session = DebugSession(options, script_path, secrets.get("tunnel"))
    install_breakpointhook(session)
    cooperate_with_user_debugpy(session)  # the script's own debugpy calls use this run's debugger
    if not session.enabled and not options.no_debug:
        print(f"aml_magics: rank {options.rank} runs without a debugger (not in --debug-ranks)", flush=True)
    try:
        session.start()
    except KeyboardInterrupt:  # canceled while waiting for a debugger: one line, not pydevd's traceback
        print("aml_magics: canceled while waiting for a debugger", file=sys.stderr, flush=True)
        emit("EXIT", code=130, rank=options.rank, pid=os.getpid())
        return 130
    except ListenError as exc:
        print(f"aml_magics: {exc}", file=sys.stderr, flush=True)
        emit("ERROR", message=str(exc), rank=options.rank, pid=os.getpid())
        emit("EXIT", code=2, rank=options.rank, pid=os.getpid())
        return 2
    on_crash = session.post_mortem if session.enabled and options.post_mortem else None
    code = run_user_script(script_path, options.script_args, on_crash)
    left = kill_descendants()
    if left:
        print(f"aml_magics: ended {left} process(es) the script left running", file=sys.stderr, flush=True)
    emit("EXIT", code=code, rank=options.rank, pid=os.getpid())
    return code


if __name__ == "__main__":
    sys.exit(main())
