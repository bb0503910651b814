"""The proxy route's transport: SSH inside a websocket, as ``az ml job connect-ssh`` does it.

Azure ML gives a job's owner an authenticated way onto a node that works from any network:
the job's SSH service, reached through the workspace's websocket proxy. Microsoft's client
(azure-cli-extensions, ``azext_mlv2/manual/custom/_ssh_connector.py``) opens
``{ProxyEndpoint}/nbip/v1.0/ws-tcp`` with ``Authorization: Bearer <ARM token>``, retries only
the opening handshake with a backoff, and carries the SSH byte stream in binary messages;
``ssh`` logs in as ``azureuser``. This module does the same with the same websocket library
(``websockets``) and paramiko as the SSH client, and then asks the node's sshd for a
``direct-tcpip`` channel to the run's TLS relay on the node: the mutual TLS of
:mod:`.tunnel` runs inside that channel unchanged, so the SSH layer only carries it.

What protects what: the bearer token (the workspace lets only the job's owner through) and
the run's own SSH key (made by the owner for this run; only its public half goes into the
job) get the owner onto the node; the node's SSH host key is accepted as offered (it is not
known ahead; it is not what protects the session); the relay's pinned certificate is, as on
the direct route. The private key never leaves this process: no file, no repr, no pickle.
"""

from __future__ import annotations

import io
import random
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from .errors import AmlMagicsError
from .node.wire import close_socket, low_latency

WS_PATH = "/nbip/v1.0/ws-tcp"
SSH_USER = "azureuser"  # the user Azure ML's SSH service logs in (az ml job connect-ssh)
ARM_SCOPE = "https://management.core.windows.net/.default"  # the token the proxy takes
CONNECT_RETRIES = 4  # the opening handshake only, as Microsoft's connector (which tries 5)
RETRY_BASE = 0.5
RETRY_MAX = 8.0


class RouteError(AmlMagicsError, OSError):
    """One line saying why the proxy route failed (token, key, service, network)."""


@dataclass(frozen=True, repr=False)
class SshKeyPair:
    """A per-run Ed25519 key pair: the public half goes into the job's SSH service, the private
    half stays in this process (``repr`` hides it; never serialised)."""

    public: str  # OpenSSH's one-line form, "ssh-ed25519 AAAA... aml-magics"
    private: str  # OpenSSH private key (PEM), never written anywhere

    @classmethod
    def new(cls) -> SshKeyPair:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519

        key = ed25519.Ed25519PrivateKey.generate()
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption()).decode("ascii")
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode("ascii")
        return cls(f"{public} aml-magics", private)

    def pkey(self) -> Any:
        import paramiko  # type: ignore[import-untyped]

        return paramiko.Ed25519Key.from_private_key(io.StringIO(self.private))

    def __repr__(self) -> str:
        return f"<SshKeyPair public={self.public[:24]}... (private hidden)>"

    def __reduce__(self) -> tuple:
        raise TypeError("SSH keys are never serialised")


# -- the websocket ---------------------------------------------------------------------------------


def websocket_url(proxy_endpoint: str, node_index: int) -> str:
    """``{ProxyEndpoint}/nbip/v1.0/ws-tcp`` with the endpoint's ``<nodeIndex>`` filled in."""
    return proxy_endpoint.replace("<nodeIndex>", str(node_index)).rstrip("/") + WS_PATH


def open_websocket(url: str, token: str | None, timeout: float = 15.0,
                   stop: threading.Event | None = None) -> WebSocketStream:
    """The websocket to the node's SSH service; retries only the opening handshake, with backoff.
    A refusal (401/403: token expired, not the job's owner) is final and says so in one line."""
    from websockets.exceptions import InvalidHandshake, InvalidStatus

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    attempt = 0
    while True:
        attempt += 1
        try:
            return WebSocketStream.connect(url, headers, timeout)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise RouteError(f"the workspace proxy refused the token ({status}: expired, or not the job's "
                                 "owner; sign in again as the job's owner)") from None
            last: Exception = exc
        except (OSError, InvalidHandshake) as exc:
            last = exc
        if attempt > CONNECT_RETRIES or (stop is not None and stop.is_set()):
            raise RouteError(f"the workspace proxy could not be reached after {attempt} attempt(s): {last}")
        delay = min(RETRY_MAX, RETRY_BASE * 2 ** (attempt - 1)) + random.uniform(0, RETRY_BASE)
        if stop is not None and stop.wait(delay):
            raise RouteError("canceled while connecting to the workspace proxy")
        if stop is None:
            time.sleep(delay)


class WebSocketStream:
    """A websocket's binary messages as the byte stream paramiko reads (``recv``/``send``/
    ``settimeout``/``close``, as its ``ProxyCommand``).

    websockets' own protocol (its Sans-I/O ``ClientProtocol``: handshake, framing, masking,
    ping replies, closing) driven on the caller's threads: paramiko's transport thread reads,
    whoever writes a channel sends. No thread of its own, so no extra hand-over per message."""

    def __init__(self, sock: socket.socket, protocol: Any, pending: list[bytes]) -> None:
        self.sock = sock
        self.protocol = protocol
        self._buffer = b"".join(pending)
        self._lock = threading.Lock()  # the protocol object: one thread at a time
        self._closed = False  # the name paramiko's Transport.close() reads

    @classmethod
    def connect(cls, url: str, headers: dict[str, str], timeout: float) -> WebSocketStream:
        from websockets.client import ClientProtocol
        from websockets.uri import parse_uri

        uri = parse_uri(url)
        sock = socket.create_connection((uri.host, uri.port), timeout=timeout)
        try:
            if uri.secure:
                import ssl

                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=uri.host)
            low_latency(sock)
            protocol = ClientProtocol(uri, max_size=None)
            request = protocol.connect()
            request.headers.update(headers)
            protocol.send_request(request)
            sock.sendall(b"".join(protocol.data_to_send()))
            pending = cls._handshake(sock, protocol)
        except BaseException:
            close_socket(sock)
            raise
        return cls(sock, protocol, pending)

    @staticmethod
    def _handshake(sock: socket.socket, protocol: Any) -> list[bytes]:
        """Read until the server's response; the data of any message that came with it."""
        from websockets.exceptions import InvalidHandshake
        from websockets.http11 import Response
        from websockets.protocol import State

        pending: list[bytes] = []
        while True:
            data = sock.recv(65536)
            if data:
                protocol.receive_data(data)
            else:
                protocol.receive_eof()
            for event in protocol.events_received():
                if not isinstance(event, Response):
                    pending.append(bytes(event.data))
            if protocol.handshake_exc is not None:
                raise protocol.handshake_exc
            if protocol.state is State.OPEN:
                return pending
            if not data:
                raise InvalidHandshake("the proxy closed the connection during the handshake")

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def recv(self, size: int) -> bytes:
        from websockets.frames import Opcode

        while not self._buffer:
            if self._closed:
                return b""
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise
            except OSError:
                return b""
            with self._lock:
                if data:
                    self.protocol.receive_data(data)
                else:
                    self.protocol.receive_eof()
                events = self.protocol.events_received()
                reply = b"".join(self.protocol.data_to_send())  # pongs, the closing handshake
            if reply:
                self._send_raw(reply)
            for frame in events:
                if frame.opcode in (Opcode.BINARY, Opcode.TEXT, Opcode.CONT):
                    self._buffer += bytes(frame.data)
                elif frame.opcode is Opcode.CLOSE:
                    self._closed = True
            if not data:
                return b""
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def send(self, data: bytes) -> int:
        from websockets.exceptions import InvalidState

        with self._lock:
            try:
                self.protocol.send_binary(bytes(data))
            except InvalidState as exc:
                raise OSError(f"the websocket closed: {exc}") from None
            out = b"".join(self.protocol.data_to_send())
            self.sock.sendall(out)  # under the lock: frames leave in the order they were made
        return len(data)

    def _send_raw(self, data: bytes) -> None:
        with self._lock:
            try:
                self.sock.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        if self.sock.fileno() == -1:
            return
        self._closed = True
        with self._lock:
            try:
                self.protocol.send_close()
                self.sock.sendall(b"".join(self.protocol.data_to_send()))
            except Exception:
                pass
        close_socket(self.sock)


# -- SSH ---------------------------------------------------------------------------------------------


class SshSession:
    """One SSH connection to a node's sshd, over the websocket; channels to the relay on demand."""

    def __init__(self, stream: WebSocketStream, key: SshKeyPair, timeout: float = 15.0, user: str = SSH_USER) -> None:
        import paramiko  # type: ignore[import-untyped]

        self.stream = stream
        self.transport = paramiko.Transport(self.stream)  # type: ignore[arg-type]  # socket-like, as ProxyCommand
        self.transport.name = "aml-magics-ssh-transport"  # its reader thread: one per node, ends with close()
        self.transport.set_keepalive(30)
        try:
            try:
                self.transport.start_client(timeout=timeout)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise RouteError(f"no SSH session with the node's SSH service: {exc or type(exc).__name__}") from None
            try:
                self.transport.auth_publickey(user, key.pkey())
            except paramiko.AuthenticationException:
                raise RouteError(f"the node's SSH service refused the run's key for user {user} (a key of another "
                                 "job or run?)") from None
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise RouteError(f"SSH login to the node failed: {exc or type(exc).__name__}") from None
        except BaseException:
            self.close()
            raise

    @property
    def alive(self) -> bool:
        return self.transport.is_active() and self.transport.is_authenticated()

    def channel(self, host: str, port: int, timeout: float = 15.0) -> Any:
        """A ``direct-tcpip`` channel from the node's sshd to ``host:port`` (the relay)."""
        import paramiko  # type: ignore[import-untyped]

        try:
            return self.transport.open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise RouteError(f"the node's SSH service could not reach {host}:{port}: {exc or type(exc).__name__}") \
                from None

    def close(self) -> None:
        try:
            self.transport.close()
        finally:
            self.stream.close()
