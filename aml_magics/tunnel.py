"""The owner's side of the secure debug channel: per-run certificates and a local forwarder.

debugpy has no authentication: whoever reaches its port owns the process. Wherever a run's
debug port leaves this machine (a container, an Azure ML node, a non-loopback bind), the
bootstrap fronts debugpy with a relay that speaks TLS 1.3 with mutual authentication by
**pinned per-run certificates** (no CA): the owner makes both key pairs for the run here;
the node gets its own key and the client's certificate (with the run's secrets, never in a
spec or a dry run); the client key never leaves this process. The owner runs a forwarder on ``127.0.0.1:<free port>`` that opens the
TLS connection, so VS Code and the in-notebook debugger attach to loopback as always. A
connection without the run's client certificate is closed during the handshake: not one byte
reaches debugpy, which has no port of its own — the relay hands it each authenticated session.

The forwarder lives as long as the run (its scope closes it), accepts a new connection each
time a client (re)attaches, and dies with the owner. Its loopback port is reachable by every
local user, so it serves only connections from the owner's own uid (Linux tells who owns the
other end of a loopback TCP connection: ``/proc/net/tcp``), and opens the TLS session only once
the client has spoken (a silent connection never holds the run's one attach).


How the forwarder reaches the relay is its **route**: ``direct`` (TCP to the node's address:
the owner shares the node's network) or ``proxy`` (:mod:`.sshproxy`: the job's SSH service
through the workspace's websocket proxy, a ``direct-tcpip`` channel to the relay). A target
whose handle has ``route_for(endpoint)`` chooses it per endpoint; the TLS inside, launch.json
and the notebook debugger are the same on both.
"""

from __future__ import annotations

import datetime
import os
import select
import selectors
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from .lifecycle import RunScope
from .node.wire import close_socket, low_latency, serve_connections, wait_socket
from .protocol import Endpoint, RefusedEndpoint
from .target_base import RunHandle

LOOPBACK = "127.0.0.1"
CONNECT_TIMEOUT = 15.0
PEER_UID_KNOWN = os.path.exists("/proc/net/tcp")  # Linux: who owns a loopback peer (elsewhere: not checked)
FIRST_BYTES_TIMEOUT = 5.0  # a client that says nothing for this long is closed before the node is reached
VALIDITY = datetime.timedelta(days=30)


@dataclass(frozen=True, repr=False)
class TunnelCredentials:
    """Both sides' certificates for one run (PEM). ``repr`` shows nothing; never serialised."""

    node_cert: str
    node_key: str
    client_cert: str
    client_key: str

    @classmethod
    def new(cls) -> TunnelCredentials:
        node_key, node_cert = _self_signed("aml-magics node")
        client_key, client_cert = _self_signed("aml-magics client")
        return cls(node_cert, node_key, client_cert, client_key)

    def node_side(self) -> dict:
        """What travels to the node: its own key and certificate, and the client's certificate."""
        return {"cert": self.node_cert, "key": self.node_key, "peer": self.client_cert}

    def client_context(self) -> ssl.SSLContext:
        """The forwarder's TLS context: the run's client certificate; only the node's accepted."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.check_hostname = False  # pinned instead: the node's address is not known ahead
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=self.node_cert)
        with tempfile.TemporaryDirectory(prefix="aml-magics-tunnel-") as folder:
            path = Path(folder) / "client.pem"
            path.touch(mode=0o600)
            path.write_text(self.client_key + self.client_cert)
            context.load_cert_chain(str(path))
        return context

    @property
    def node_der(self) -> bytes:
        return ssl.PEM_cert_to_DER_cert(self.node_cert)

    def __repr__(self) -> str:
        return "<TunnelCredentials (hidden)>"

    def __reduce__(self) -> tuple:
        raise TypeError("tunnel credentials are never serialised")


def _self_signed(name: str) -> tuple[str, str]:
    """An EC P-256 key and a self-signed certificate for it (PEM), valid from a day ago (node
    clocks drift) for VALIDITY."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=True,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("aml-magics")]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode("ascii")
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _quick_ack(sock: socket.socket) -> None:
    """Acknowledge at once (Linux): a client that writes a DAP message's header and body in two
    sends without TCP_NODELAY would otherwise wait for our delayed ACK, 40 ms a message."""
    quickack = getattr(socket, "TCP_QUICKACK", None)
    if quickack is not None and not isinstance(sock, ssl.SSLSocket):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)
        except OSError:
            pass


def pump(a: socket.socket, b: socket.socket, chunk: int = 65536) -> None:
    """Copy bytes both ways until either side closes. One thread, non-blocking sockets: a TLS
    socket is never read and written from two threads at once, and a TLS record that carries no
    data (a session ticket) never blocks the other direction.

    Every DAP message waits on a turn here, so a turn does the least before the message is on
    its way: one poll (registered once; never select(): fds above 1024 are common in a kernel),
    one read, one write; then what is not urgent (the loopback's quick ACK, the rest of a TLS
    record already decrypted). No per-turn selector bookkeeping, no pending() scan of both ends."""
    for sock in (a, b):
        sock.setblocking(False)
        low_latency(sock)
    poller = select.poll()
    ends = {}
    for source, sink in ((a, b), (b, a)):
        poller.register(source, select.POLLIN)
        ends[source.fileno()] = (source, sink)
    _pump(poller, ends, chunk)


def _pump(poller: select.poll, ends: dict[int, tuple[socket.socket, socket.socket]], chunk: int) -> None:
    while True:
        for fd, _ in poller.poll():
            if not _forward(*ends[fd], chunk):
                return


def _forward(source: socket.socket, sink: socket.socket, chunk: int) -> bool:
    """Move what ``source`` has to ``sink``; False once either side closed."""
    while True:
        try:
            data = source.recv(chunk)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return True  # no whole record yet, or one without data
        except (OSError, ValueError):
            return False
        if not data or not _send_all(sink, data):
            return False
        if not isinstance(source, ssl.SSLSocket):
            _quick_ack(source)  # after the write: the message is on its way first
            return True
        if not source.pending():  # the rest of a record decrypted with this one is read now: poll
            return True           # would not see it


def _send_all(sock: socket.socket, data: bytes) -> bool:
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view):]
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            try:
                wait_socket(sock, True, True, 1.0)
            except (OSError, ValueError):
                return False
        except (OSError, ValueError):
            return False
    return True


class Channel(Protocol):
    """A byte stream that is not a socket (an SSH channel): TLS runs over it in memory."""

    def recv(self, size: int) -> bytes: ...
    def sendall(self, data: bytes) -> None: ...
    def fileno(self) -> int: ...
    def settimeout(self, timeout: float | None) -> None: ...
    def close(self) -> None: ...


class Route(Protocol):
    """How a forwarder's connection reaches the relay: a connected socket or a channel, or OSError."""

    name: str  # "direct" or "proxy"
    detail: str  # what the views say, e.g. "via the workspace proxy (SSH service, node 1)"

    def connect(self, host: str, port: int, timeout: float) -> socket.socket | Channel: ...


class DirectRoute:
    """TCP to the node's address (the owner is on the node's network)."""

    name = "direct"
    detail = "direct to the node's address"

    def connect(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.create_connection((host, port), timeout=timeout)
        low_latency(sock)  # from the TLS handshake on, not only once it is pumped
        return sock


class Forwarder:
    """``127.0.0.1:<port>`` here → TLS (the run's client certificate) → the node's relay, over
    its route (direct TCP by default)."""

    def __init__(self, node_host: str, node_port: int, credentials: TunnelCredentials,
                 on_error: Callable[[str], None] | None = None, route: Route | None = None) -> None:
        self.node = (node_host, node_port)
        self.on_error = on_error
        self.route: Route = route or DirectRoute()
        self.credentials = credentials
        self.context = credentials.client_context()
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.bind((LOOPBACK, 0))
        self._server.listen(4)
        self.port = self._server.getsockname()[1]
        self._closed = False
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()

    def start(self) -> Forwarder:
        serve_connections(self._server, self._serve, f"aml-magics-forward-{self.port}")
        return self

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections = list(self._connections)
        for sock in [self._server, *connections]:
            close_socket(sock)

    def _serve(self, local: socket.socket) -> None:
        remote = None
        try:
            refused = self._refusal(local)
            if refused:
                if self.on_error is not None:
                    self.on_error(f"aml_magics: forwarder on 127.0.0.1:{self.port}: {refused}")
                return
            raw = self.route.connect(*self.node, timeout=CONNECT_TIMEOUT)
            if not isinstance(raw, socket.socket):
                self._serve_channel(local, raw)
                return
            remote = self.context.wrap_socket(raw, server_hostname=None)
            if remote.getpeercert(binary_form=True) != self.credentials.node_der:
                raise ssl.SSLError("the node presented another certificate")
            remote.settimeout(None)
            with self._lock:
                if self._closed:
                    return
                self._connections.update((local, remote))
            pump(local, remote)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            if self.on_error is not None:
                via = f" ({self.route.detail})" if self.route.name != "direct" else ""
                self.on_error(f"aml_magics: tunnel to {self.node[0]}:{self.node[1]}{via} failed: {reason}")
        finally:
            with self._lock:
                self._connections.discard(local)
                if remote is not None:
                    self._connections.discard(remote)
            close_socket(local)
            close_socket(remote)

    def _serve_channel(self, local: socket.socket, channel: Channel) -> None:
        """TLS over a channel, in memory (``ssl.MemoryBIO``), pumped on this thread."""
        with self._lock:
            if self._closed:
                channel.close()
                return
            self._connections.add(local)
        try:
            tls = TlsOverChannel(channel, self.context)
            if tls.peer_der != self.credentials.node_der:
                raise ssl.SSLError("the node presented another certificate")
            tls.pump(local)
        finally:
            with self._lock:
                self._connections.discard(local)
            channel.close()

    def _refusal(self, local: socket.socket) -> str:
        """Why this local connection is not served ("" when it is): another user's, or silent."""
        peer = local.getpeername()[:2]
        uid = loopback_peer_uid(local.getsockname()[:2], peer) if PEER_UID_KNOWN else os.getuid()
        if uid != os.getuid():
            return f"refused a connection from {'an unknown user' if uid is None else f'uid {uid}'}" \
                   " (only this run's owner may attach)"
        return "" if speaks_dap(local) else \
            f"closed a connection that sent no DAP message within {FIRST_BYTES_TIMEOUT:g}s"


class TlsOverChannel:
    """The forwarder's TLS client over a channel: records go through memory buffers; the channel
    carries only ciphertext."""

    def __init__(self, channel: Channel, context: ssl.SSLContext, timeout: float = CONNECT_TIMEOUT) -> None:
        self.channel = channel
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=None)
        channel.settimeout(timeout)
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                if not self._feed():
                    raise ssl.SSLError("the relay closed the connection during the TLS handshake") from None
        self._flush()
        channel.settimeout(None)
        self.peer_der = self.tls.getpeercert(binary_form=True)

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.channel.sendall(data)

    def _feed(self) -> bool:
        data = self.channel.recv(65536)
        if not data:
            self.incoming.write_eof()
            return False
        self.incoming.write(data)
        return True

    def pump(self, local: socket.socket) -> None:
        """Copy both ways until either side closes (or fails: the session is over either way)."""
        low_latency(local)
        try:
            self._pump(local)
        except (OSError, ValueError):
            pass

    def _pump(self, local: socket.socket) -> None:
        with selectors.DefaultSelector() as selector:  # never select.select: it fails for fds >= 1024
            selector.register(local, selectors.EVENT_READ)
            selector.register(self.channel, selectors.EVENT_READ)  # type: ignore[arg-type]  # it has fileno()
            while self._turn(local, {key.fileobj for key, _ in selector.select()}):
                pass

    def _turn(self, local: socket.socket, ready: set) -> bool:
        """One round of the pump; False when either side closed."""
        if local in ready:
            data = local.recv(65536)
            _quick_ack(local)
            if not data:
                return False
            self.tls.write(data)
            self._flush()
        if self.channel in ready:
            if not self._feed() or not self._deliver(local):
                return False
            self._flush()
        return True

    def _deliver(self, local: socket.socket) -> bool:
        while True:
            try:
                data = self.tls.read(65536)
            except ssl.SSLWantReadError:
                return True
            except ssl.SSLZeroReturnError:
                return False
            if not data:
                return False
            local.sendall(data)


DAP_HEADER = b"Content-Length:"


def speaks_dap(sock: socket.socket, timeout: float = FIRST_BYTES_TIMEOUT) -> bool:
    """Whether ``sock``'s client starts a DAP message (its header, peeked: nothing is consumed)
    within ``timeout``; a silent or foreign client never reaches the node."""
    deadline = time.monotonic() + timeout
    seen = b""
    while len(seen) < len(DAP_HEADER):
        left = deadline - time.monotonic()
        try:
            if left <= 0 or not wait_socket(sock, timeout=left):
                return False
            seen = sock.recv(len(DAP_HEADER), socket.MSG_PEEK)
        except (OSError, ValueError):
            return False
        if not seen or not DAP_HEADER.lower().startswith(seen.lower()):
            return False  # closed, or not a DAP client
        if len(seen) < len(DAP_HEADER):
            time.sleep(0.01)  # the rest of the header is on its way
    return True


def _tcp_address(text: str) -> tuple[str, int]:
    """``0100007F:1F90`` (/proc/net/tcp, IPv4) as ``("127.0.0.1", 8080)``."""
    host, port = text.split(":")
    return socket.inet_ntoa(int(host, 16).to_bytes(4, "little")), int(port, 16)


def loopback_peer_uid(ours: tuple[str, int], peer: tuple[str, int]) -> int | None:
    """The uid owning the other end of our loopback TCP connection ``ours`` ← ``peer``: the
    socket whose local address is ``peer`` and remote address ``ours`` (Linux, /proc/net/tcp).
    None when it cannot be told (no /proc, gone already): never served then."""
    try:
        with open("/proc/net/tcp", encoding="ascii") as table:
            rows = table.read().splitlines()[1:]
    except OSError:
        return None
    for row in rows:
        fields = row.split()
        if len(fields) < 8:
            continue
        try:
            if _tcp_address(fields[1]) == tuple(peer) and _tcp_address(fields[2]) == tuple(ours):
                return int(fields[7])
        except ValueError:
            continue
    return None


class TunnelledHandle:
    """A target's RunHandle, with every relay endpoint it reports reached through a forwarder."""

    def __init__(self, inner: RunHandle, credentials: TunnelCredentials, scope: RunScope,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.inner = inner
        self.credentials = credentials
        self.scope = scope
        self.on_error = on_error
        self._forwarders: dict[tuple[str, int], Forwarder] = {}
        self._lock = threading.Lock()

    def __getattr__(self, name: str):  # noqa: ANN204 - the inner handle's extras (e.g. map_scoring_uri)
        return getattr(self.inner, name)

    def cancel(self) -> None:
        self.inner.cancel()

    def is_done(self) -> bool:
        return self.inner.is_done()

    def map_endpoint(self, endpoint: Endpoint) -> Endpoint:
        """The endpoint through a forwarder; an untunnelled one is refused (this run is secure:
        only code in the run could have signed it, and it must never reach launch.json)."""
        if not endpoint.tunnelled:
            raise RefusedEndpoint(f"{endpoint.address} is not tunnelled, and this run is secure")
        seen = self.inner.map_endpoint(endpoint)  # e.g. a container's published port
        key = (seen.host, seen.port)
        with self._lock:
            forwarder = self._forwarders.get(key)
        if forwarder is None:
            choose = getattr(self.inner, "route_for", None)
            route = choose(seen) if callable(choose) else None  # may take a bounded moment (auto's probe)
            with self._lock:
                forwarder = self._forwarders.get(key)
                if forwarder is None:
                    forwarder = Forwarder(seen.host, seen.port, self.credentials, self.on_error, route).start()
                    self.scope.callback(forwarder.close)
                    self._forwarders[key] = forwarder
        route = forwarder.route
        return replace(seen.moved_to(LOOPBACK, forwarder.port, tunnelled=True, far=seen.address), route=route.name,
                       route_detail=route.detail if route.name != "direct" else "")
