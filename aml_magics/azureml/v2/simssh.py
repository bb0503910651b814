"""The simulator's SSH job service and workspace proxy (we have no Azure here; this stands in).

What Azure ML does for a job with an ``SshJobService``, modelled from its protocol (not from
our client, so the two can disagree):

- every node of the job runs a real OpenSSH ``sshd`` (Debian's ``openssh-server``) in its
  network namespace, on the node's address, port 22, with its own host key, letting in user
  ``azureuser`` with the job's public keys only (``AuthorizedKeysCommand`` prints the job's
  key file: the simulator's folder is private to root, which sshd would refuse as an
  ``AuthorizedKeysFile`` read as the user). ``azureuser`` is created (``useradd --system``,
  no home, no shell, no password) when this machine has no such user — the one system
  change the simulator makes; sshd runs as root, as on a node;
- ``jobs.show_services(name, node_index)`` lists the node's SSH instance — ``Starting``,
  then ``Running`` once its sshd listens (``Failed`` if it cannot start) — with
  ``properties["ProxyEndpoint"]`` holding the literal ``<nodeIndex>`` placeholder;
- the workspace proxy is a real websocket server on loopback (tornado's, the notebook
  server's library; the owner's client is ``websockets``): ``GET
  {ProxyEndpoint}/nbip/v1.0/ws-tcp`` with ``Authorization: Bearer <the simulated identity's
  token>`` is upgraded and piped, binary message by message, to the node's port 22, opened
  from the proxy's own address on the cluster's bridge (the one a closed node lets in);
  anything else is answered 401.

Settings: ``AML_MAGICS_SIM_SSH=fail`` (the service fails), ``=other-key`` (it lets in another key
than the job's), ``AML_MAGICS_SIM_SSH_DELAY`` (seconds before sshd starts after the job runs),
``AML_MAGICS_SIM_TOKEN=stale`` (the identity's credential hands out an expired token: 401).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ...fileio import locked
from ...processes import ProcessGroup

SSHD = "/usr/sbin/sshd"
SSH_USER = "azureuser"
SSH_PORT = 22
START_WAIT = 15.0
_user_lock = threading.Lock()


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip() or default


def unavailable_reason() -> str | None:
    if not Path(SSHD).is_file():
        return f"{SSHD} is not installed (apt-get install -y openssh-server)"
    if os.geteuid() != 0:
        return "the simulated SSH service runs sshd as root"
    return None


def ensure_user(name: str = SSH_USER) -> None:
    """The job's SSH user on this machine (created once, system account, no login shell or password)."""
    with _user_lock, locked(Path(tempfile.gettempdir()) / "aml-magics-sim-user", timeout=60):
        try:
            pwd.getpwnam(name)
            return
        except KeyError:
            pass
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "-p", "*", name],
                       check=True, capture_output=True, timeout=30)


def _host_key(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))


def _other_public_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    public = ed25519.Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode() + " other"


def sshd_config(folder: Path, address: str) -> str:
    return "\n".join([
        f"ListenAddress {address}:{SSH_PORT}",
        f"HostKey {folder / 'host_ed25519'}",
        "PidFile none",
        "AuthorizedKeysFile none",
        f"AuthorizedKeysCommand /bin/cat {folder.parent / 'authorized_keys'}",
        "AuthorizedKeysCommandUser root",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin no",
        f"AllowUsers {SSH_USER}",
        "AllowTcpForwarding local",
        "PermitTTY no",
        "X11Forwarding no",
        "UsePAM no",
        "LogLevel VERBOSE",
        "",
    ])


@dataclass
class NodeSsh:
    """One node's sshd and its service status."""

    index: int
    address: str
    proxy_address: str
    status: str = "Starting"
    error: str | None = None
    process: ProcessGroup | None = None


@dataclass
class JobSsh:
    """A job's SSH service: one sshd per node, while the job runs."""

    job: str
    folder: Path
    keys: str
    nodes: dict[int, NodeSsh] = field(default_factory=dict)
    stopped: threading.Event = field(default_factory=threading.Event)
    start_lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, nodes: list[tuple[int, str, str | None]], prefixes: dict[int, list[str]]) -> None:
        """sshd on every node given as (index, address, proxy address), after the service's delay."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        keys = self.keys.strip()
        if _env("AML_MAGICS_SIM_SSH") == "other-key":  # the service holds another key than the run's
            keys = _other_public_key()
        (self.folder / "authorized_keys").write_text(keys + "\n")
        for index, address, proxy in nodes:
            self.nodes[index] = NodeSsh(index, address, proxy or "")
        threading.Thread(target=self._start_all, args=(prefixes,), daemon=True,
                         name=f"aml-sim-sshd-{self.job}").start()

    def _start_all(self, prefixes: dict[int, list[str]]) -> None:
        delay = float(_env("AML_MAGICS_SIM_SSH_DELAY", "0") or 0)
        if self.stopped.wait(delay):
            return
        for node in self.nodes.values():
            if not node.proxy_address:
                self._fail(node, "the simulator runs the SSH service on a simulated cluster only "
                                 "(AML_MAGICS_SIM_NETWORK=bridge)")
            elif _env("AML_MAGICS_SIM_SSH") == "fail":
                self._fail(node, "(simulated) the SSH service failed to start on the node")
            else:
                self._start_node(node, prefixes[node.index])

    def _fail(self, node: NodeSsh, why: str) -> None:
        node.error = why
        node.status = "Failed"

    def _start_node(self, node: NodeSsh, prefix: list[str]) -> None:
        reason = unavailable_reason()
        if reason:
            self._fail(node, reason)
            return
        folder = self.folder / f"node-{node.index}"
        folder.mkdir(mode=0o700, exist_ok=True)
        try:
            ensure_user()
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation folder
            _host_key(folder / "host_ed25519")
            (folder / "sshd_config").write_text(sshd_config(folder, node.address))
        except (OSError, subprocess.SubprocessError) as exc:
            self._fail(node, f"sshd could not be set up: {exc}")
            return
        log = folder / "sshd.log"
        with self.start_lock:
            if self.stopped.is_set():
                return
            node.process = ProcessGroup([*prefix, SSHD, "-D", "-E", str(log), "-f", str(folder / "sshd_config")],
                                        stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + START_WAIT
        while time.monotonic() < deadline and not self.stopped.is_set():
            if log.is_file() and "Server listening on" in log.read_text(errors="replace"):
                node.status = "Running"
                return
            if node.process.poll() is not None:
                break
            time.sleep(0.05)
        text = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
        self._fail(node, f"sshd did not start: {text[-1] if text else 'no output'}")

    def stop(self) -> None:
        with self.start_lock:
            self.stopped.set()
        for node in self.nodes.values():
            if node.process is not None:
                node.process.stop(2.0)
            node.status = "Stopped" if node.status != "Failed" else node.status
        shutil.rmtree(self.folder, ignore_errors=True)


# -- the workspace proxy --------------------------------------------------------------------------------


class WorkspaceProxy:
    """The simulated workspace's websocket proxy, on ``127.0.0.1:<free port>``: one per simulator,
    started with its first job that has an SSH service, up for the rest of the process (as the
    workspace's is); it lets nobody in without the token, and reaches only running jobs' nodes."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.jobs: dict[str, JobSsh] = {}
        self.port = 0
        self.open_connections = 0
        self.refused = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()

    def endpoint(self, job: str) -> str:
        """The ProxyEndpoint of a job's SSH service (``<nodeIndex>`` left for the client)."""
        return f"ws://127.0.0.1:{self.port}/jobs/{job}/nodes/<nodeIndex>"

    def start(self) -> WorkspaceProxy:
        with self._lock:
            if self._loop is None:
                threading.Thread(target=self._serve, daemon=True, name="aml-sim-workspace-proxy").start()
        self._ready.wait(30)
        return self

    def _serve(self) -> None:
        import tornado.httpserver
        import tornado.netutil
        import tornado.web

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        app = tornado.web.Application([(r"/jobs/([^/]+)/nodes/(\d+)/nbip/v1\.0/ws-tcp", _handler_class(),
                                        {"proxy": self})], websocket_max_message_size=1 << 24)
        sockets = tornado.netutil.bind_sockets(0, address="127.0.0.1")
        tornado.httpserver.HTTPServer(app).add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        self._ready.set()
        loop.run_forever()

    def node_for(self, job: str, index: int) -> NodeSsh | None:
        ssh = self.jobs.get(job)
        node = ssh.nodes.get(index) if ssh is not None else None
        return node if node is not None and node.status == "Running" else None


def _tornado_handler() -> type:
    import tornado.websocket

    class TcpSocket(tornado.websocket.WebSocketHandler):
        """One websocket: the node's port 22, byte for byte, in binary messages."""

        def initialize(self, proxy: WorkspaceProxy) -> None:
            self.proxy = proxy
            self.writer: asyncio.StreamWriter | None = None
            self.pipe: asyncio.Task | None = None
            self.counted = False

        def prepare(self) -> None:
            expected = f"Bearer {self.proxy.token}"
            if not secrets.compare_digest(self.request.headers.get("Authorization", ""), expected):
                self.proxy.refused += 1
                self.set_status(401)
                self.finish("401 Unauthorized: a bearer token of the job's owner is required\n")

        async def open(self, job: str, index: str) -> None:  # type: ignore[override]
            node = self.proxy.node_for(job, int(index))
            if node is None:
                self.close(1011, "the node's SSH service is not running")
                return
            try:
                reader, self.writer = await asyncio.open_connection(node.address, SSH_PORT,
                                                                    local_addr=(node.proxy_address, 0))
            except OSError as exc:
                self.close(1011, f"the node's SSH service cannot be reached: {exc.strerror or exc}")
                return
            self.proxy.open_connections += 1
            self.counted = True
            self.pipe = asyncio.ensure_future(self._downstream(reader))

        async def _downstream(self, reader: asyncio.StreamReader) -> None:
            try:
                while data := await reader.read(65536):
                    await self.write_message(data, binary=True)
            except (OSError, tornado.websocket.WebSocketClosedError):
                pass
            self.close()

        async def on_message(self, message: str | bytes) -> None:
            if self.writer is not None:
                self.writer.write(message if isinstance(message, bytes) else message.encode())
                await self.writer.drain()

        def on_close(self) -> None:
            if self.writer is not None:
                self.writer.close()
            if self.pipe is not None:
                self.pipe.cancel()
            if self.counted:
                self.counted = False
                self.proxy.open_connections -= 1

    return TcpSocket


_handler: list[type] = []  # tornado is imported when the proxy first serves, not with the simulator


def _handler_class() -> type:
    if not _handler:
        _handler.append(_tornado_handler())
    return _handler[0]
