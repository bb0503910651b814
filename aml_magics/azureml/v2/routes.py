"""Which way the owner's forwarder reaches a node of an SDK v2 job (``--connect``).

- ``direct``: TCP to the node's address (the owner shares the cluster's virtual network);
  the job carries no SSH service.
- ``proxy``: the job carries an SSH service with a per-run key; each rank's node is reached
  through the workspace's websocket proxy (:mod:`aml_magics.sshproxy`), never by its address.
- ``auto`` (default): the job carries the SSH service; when a rank's endpoint arrives the
  node's address is tried for at most :data:`DIRECT_PROBE` seconds, and the proxy is used if
  it does not answer. The run says which route it took.

The SSH connection to a node is opened as soon as its route is chosen (so a failure shows
before anyone attaches): wait for the node's SSH service (its status shown as it changes),
take a token from the MLClient's credential, open the websocket, log in with the run's key.
Every attach opens one ``direct-tcpip`` channel on it. Cancel and the end of the run close
everything (websockets, SSH connections, their threads): the run's scope calls :meth:`close`.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from ...sshproxy import RouteError, SshKeyPair, SshSession, open_websocket, websocket_url
from ..backend import first_line

CONNECT_MODES = ("auto", "direct", "proxy")
DIRECT_PROBE = 3.0  # auto: how long the node's address is tried before the proxy is used
SERVICE_POLL = 1.0
SERVICE_WAIT = 900.0  # an attach waits this long at most for the node's SSH session
SERVICE_RUNNING = "Running"
SERVICE_FAILED = {"Failed", "Stopped", "Canceled"}


def direct_reachable(host: str, port: int, timeout: float = DIRECT_PROBE) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` (closed at once: the
    relay counts it as a refused handshake, nothing more)."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


class JobRoutes:
    """One job's routes: the choice per endpoint, and one SSH session per node over the proxy."""

    def __init__(self, backend: Any, client: Any, job: str, key: SshKeyPair, mode: str, placement: Any,
                 say: Any) -> None:
        self.backend = backend
        self.client = client
        self.job = job
        self.key = key
        self.mode = mode
        self.placement = placement  # rank → (node, local rank)
        self.say = say
        self.stop = threading.Event()
        self._nodes: dict[int, NodeRoute] = {}
        self._probed: dict[str, bool] = {}  # node address → answered the probe
        self._lock = threading.Lock()

    def route_for(self, endpoint: Any) -> NodeRoute | None:
        """None: direct. ``auto`` probes the address first (at most DIRECT_PROBE seconds)."""
        node = self.placement(endpoint.rank)[0]
        if self.mode == "direct":
            return None
        if self.mode == "auto":
            if self._direct(endpoint):
                self.say(f"aml_magics: rank {endpoint.rank}: direct route to node {node} ({endpoint.address})")
                return None
            self.say(f"aml_magics: rank {endpoint.rank}: node {node} ({endpoint.address}) does not answer from here "
                     f"within {DIRECT_PROBE:g} s; using the workspace proxy")
        route = self.node(node)
        self.say(f"aml_magics: rank {endpoint.rank}: {route.detail}")
        return route

    def _direct(self, endpoint: Any) -> bool:
        """The probe, once per node address (its other ranks' relays are on the same network)."""
        with self._lock:
            known = self._probed.get(endpoint.host)
        if known is None:
            known = direct_reachable(endpoint.host, endpoint.port)
            with self._lock:
                self._probed[endpoint.host] = known
        return known

    def node(self, index: int) -> NodeRoute:
        with self._lock:
            route = self._nodes.get(index)
            if route is None:
                route = self._nodes[index] = NodeRoute(self, index).start()
            return route

    def close(self) -> None:
        self.stop.set()
        with self._lock:
            routes = list(self._nodes.values())
        for route in routes:
            route.close()


class NodeRoute:
    """The proxy route to one node: its SSH session (opened in the background, reopened if it
    dropped), a ``direct-tcpip`` channel per connection."""

    name = "proxy"

    def __init__(self, routes: JobRoutes, index: int) -> None:
        self.routes = routes
        self.index = index
        self.detail = f"via the workspace proxy (SSH service, node {index})"
        self.error: str | None = None
        self._session: SshSession | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> NodeRoute:
        self._thread = threading.Thread(target=self._establish, daemon=True,
                                        name=f"aml-magics-ssh-node-{self.index}")
        self._thread.start()
        return self

    def _establish(self) -> None:
        try:
            session = self._open()
            with self._lock:
                if self.routes.stop.is_set():
                    session.close()
                    return
                self._session = session
            self.routes.say(f"aml_magics: node {self.index}: SSH session open {self.detail.removeprefix('via ')}")
        except RouteError as exc:
            self.error = str(exc)
            if not self.routes.stop.is_set():
                self.routes.say(f"aml_magics: node {self.index}: {exc}")
        except Exception as exc:  # never a thread traceback: the run shows it
            self.error = first_line(exc)
            if not self.routes.stop.is_set():
                self.routes.say(f"aml_magics: node {self.index}: the proxy route failed: {self.error}")
        finally:
            self._ready.set()

    def _open(self) -> SshSession:
        endpoint = self._wait_for_service()
        routes = self.routes
        try:
            token = routes.backend.access_token(routes.client)
        except Exception as exc:
            raise RouteError(f"no token for the workspace proxy: {first_line(exc)}") from None
        ws = open_websocket(websocket_url(endpoint, self.index), token, stop=routes.stop)
        if routes.stop.is_set():
            ws.close()
            raise RouteError("canceled")
        return SshSession(ws, routes.key)

    def _wait_for_service(self) -> str:
        """The node's ProxyEndpoint once its SSH service runs; its status shown as it changes."""
        routes = self.routes
        shown = None
        waited = 0.0
        while not routes.stop.is_set():
            try:
                status, endpoint, error = routes.backend.ssh_service(routes.client, routes.job, self.index)
            except Exception as exc:
                status, endpoint, error = f"unknown ({first_line(exc)})", None, None
            if status == SERVICE_RUNNING and endpoint:
                return endpoint
            if status in SERVICE_FAILED:
                raise RouteError(f"the job's SSH service {status.lower()} on node {self.index}"
                                 + (f": {error}" if error else ""))
            if status != shown:
                shown = status
                routes.say(f"aml_magics: node {self.index}: waiting for the node's SSH service "
                           f"(status: {status or 'not listed yet'})")
            if waited >= SERVICE_WAIT:
                raise RouteError(f"the node's SSH service did not start in {SERVICE_WAIT:g} s")
            routes.stop.wait(SERVICE_POLL)
            waited += SERVICE_POLL
        raise RouteError("canceled")

    def connect(self, host: str, port: int, timeout: float) -> Any:
        """A channel to ``host:port`` on the node (the relay), through the SSH session (the
        forwarder runs TLS over it in memory: no socket pair, no thread of its own)."""
        if not self._wait_ready():
            raise RouteError("canceled" if self.routes.stop.is_set() else "the node's SSH session is not open yet")
        with self._lock:
            session = self._session
        if session is None:
            raise RouteError(self.error or "no SSH session with the node")
        if not session.alive:  # dropped (idle proxy timeout, node restart): one new session
            session = self._reopen(session)
        return session.channel(host, port, timeout)

    def _wait_ready(self) -> bool:
        waited = 0.0
        while not self._ready.wait(0.5):
            waited += 0.5
            if self.routes.stop.is_set() or waited >= SERVICE_WAIT:
                return False
        return True

    def _reopen(self, old: SshSession) -> SshSession:
        old.close()
        session = self._open()
        with self._lock:
            if self.routes.stop.is_set():
                session.close()
                raise RouteError("canceled")
            self._session = session
        return session

    def close(self) -> None:
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)
