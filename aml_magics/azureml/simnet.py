"""The simulator's networks: a node with an address of its own, and a cluster of such nodes.

A simulated node is a Linux network namespace, so what runs there sees only its own
interfaces and binds its own private address, as on an Azure ML node:

- :class:`NodeNamespace` — one node joined to this machine by a veth pair on a /30 of
  10.211.0.0/16 (``AML_MAGICS_SIM_NETNS`` names one made by the caller);
- :class:`BridgeCluster` — one job's nodes (``AML_MAGICS_SIM_NETWORK=bridge``), each in its
  own namespace with an ``eth0`` on a private Linux bridge, on a /24 of 10.213.0.0/16 that
  nothing else here uses: node ``i`` is ``10.213.K.(10+i)``, this machine ``10.213.K.1``.
  Nodes reach each other and this machine, and nothing else (no default route).
  ``10.213.K.2`` is a second address of this machine's end: the simulated workspace proxy's,
  from which it reaches a node's SSH service. With ``inbound="proxy"``
  (``AML_MAGICS_SIM_INBOUND=proxy``) every node drops each TCP connection this machine opens
  from its own address (``10.213.K.1``), as a node in another network is out of the owner's
  reach: the only way in is the proxy.

Why the bridge sits in a namespace of its own (the "switch"): on a machine where Docker
runs, ``br_netfilter`` sends bridged frames through the host's iptables ``FORWARD`` chain,
whose policy Docker sets to DROP; a bridge in a fresh namespace sees that namespace's empty
ruleset, and the host's firewall is never touched. This machine joins the bridge through one
veth pair, like any other port.

Nothing may outlive its owner. Every resource is named after the owner's pid, and the owner
leaves a record of who it is (``aml_magics.owner``: boot, start time), so a pid reused by
another process does not keep a dead owner's resources; a cluster is
removed when its job ends or is canceled, at interpreter exit, by a watcher process that
removes it when the owner dies in any way (it waits for the end of a pipe only the owner
holds), and, should both be gone, by the sweep every new cluster runs first: resources of
owners no longer alive, and the processes still inside their namespaces, are removed.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil

from ..errors import AmlMagicsError
from ..fileio import locked, private_folder, write_atomic
from ..owner import Owner
from ..processes import ProcessGroup

CLUSTER_NET = "10.213"  # 10.213.K.0/24 per cluster; 10.211/16 is NodeNamespace's, 172.17/16 Docker's
FIRST_NODE_HOST = 10  # node i is 10.213.K.(10 + i)
PROXY_HOST = 2  # the simulated workspace proxy's address, 10.213.K.2
INBOUND = ("", "proxy")
MAX_NODES = 240
_NS_PREFIX = "amlsimc"  # + <pid>x<k> (the switch), + <pid>x<k>n<i> (node i)
_STALE_NS = re.compile(rf"^{_NS_PREFIX}(\d+)x\d+(?:n\d+)?$")
_HOST_LINK = re.compile(r"^as(\d+)h\d+$")  # this machine's end of a cluster's bridge
_LOCK_PATH = Path(tempfile.gettempdir()) / "aml-magics-simnet"  # its lock: .aml-magics-simnet.lock
LOCK_TIMEOUT = 600.0  # a cluster of many nodes is built under the lock
WATCHER_WAIT = 20.0


class NamespaceUnavailable(AmlMagicsError, RuntimeError):
    """Network namespaces cannot be made here (not root, no iproute2, no CAP_NET_ADMIN)."""


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed (apt-get install -y iproute2)"
    return None


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if result.returncode != 0:
        raise NamespaceUnavailable(f"ip {' '.join(args)}: {result.stderr.strip() or result.returncode}")


def _ip_quiet(*args: str) -> str:
    """``ip ARGS``'s output; errors ignored (removal of what may already be gone)."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    return result.stdout if result.returncode == 0 else ""


# -- one node ---------------------------------------------------------------------------------


class NodeNamespace:
    """A network namespace "node" joined to this machine by a veth pair, on a /30 of 10.211.0.0/16.

    The node's address is ``10.211.N.2``, this machine's end ``10.211.N.1``: traffic between
    them never leaves the machine. Use as a context manager; everything is removed on exit.
    """

    _counter = itertools.count(1)

    def __init__(self, index: int | None = None) -> None:
        n = index if index is not None else (os.getpid() + next(self._counter)) % 250 + 1
        self.index = n
        self.name = f"amlsim{os.getpid()}x{n}"
        self.host_if = f"amlh{n}x{os.getpid() % 10000}"[:15]
        self.node_if = f"amln{n}x{os.getpid() % 10000}"[:15]
        self.host_address = f"10.211.{n}.1"
        self.node_address = f"10.211.{n}.2"

    unavailable_reason = staticmethod(unavailable_reason)

    def create(self) -> NodeNamespace:
        reason = unavailable_reason()
        if reason:
            raise NamespaceUnavailable(reason)
        try:
            _ip("netns", "add", self.name)
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.node_if)
            _ip("link", "set", self.node_if, "netns", self.name)
            _ip("addr", "add", f"{self.host_address}/30", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            _ip("-n", self.name, "addr", "add", f"{self.node_address}/30", "dev", self.node_if)
            _ip("-n", self.name, "link", "set", self.node_if, "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        for args in (["netns", "del", self.name], ["link", "del", self.host_if]):
            subprocess.run(["ip", *args], capture_output=True, timeout=20)

    def __enter__(self) -> NodeNamespace:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.remove()


# -- a cluster on a bridge --------------------------------------------------------------------------


class BridgeCluster:
    """One job's nodes, each in a namespace of its own, on a private bridge (see the module)."""

    _counter = itertools.count(1)

    def __init__(self, nodes: int, inbound: str = "") -> None:
        if not 1 <= nodes <= MAX_NODES:
            raise NamespaceUnavailable(f"a simulated cluster has 1 to {MAX_NODES} nodes, not {nodes}")
        if inbound not in INBOUND:
            raise NamespaceUnavailable(f"AML_MAGICS_SIM_INBOUND={inbound!r}: expected proxy (or unset)")
        self.inbound = inbound
        pid = os.getpid()
        k = next(self._counter)
        self.nodes = nodes
        self.switch = f"{_NS_PREFIX}{pid}x{k}"
        self.namespaces = [f"{self.switch}n{i}" for i in range(nodes)]
        self.host_if = f"as{pid}h{k}"
        self.subnet: int | None = None
        self._watcher: ProcessGroup | None = None
        self._watch_fd = -1
        self._lock = threading.Lock()
        self._removed = False

    # -- what the simulator uses -------------------------------------------------------
    @property
    def host_address(self) -> str:
        return f"{CLUSTER_NET}.{self._subnet()}.1"

    @property
    def proxy_address(self) -> str:
        """The simulated workspace proxy's side of the bridge (a second address of this machine)."""
        return f"{CLUSTER_NET}.{self._subnet()}.{PROXY_HOST}"

    def node_address(self, node: int) -> str:
        return f"{CLUSTER_NET}.{self._subnet()}.{FIRST_NODE_HOST + node}"

    @property
    def node_addresses(self) -> list[str]:
        return [self.node_address(i) for i in range(self.nodes)]

    def exec_prefix(self, node: int) -> list[str]:
        """The command prefix that runs a program on ``node``."""
        return ["ip", "netns", "exec", self.namespaces[node]]

    def describe(self) -> str:
        return f"{self.nodes} node(s) on bridge {CLUSTER_NET}.{self._subnet()}.0/24: " + \
            ", ".join(f"node {i} {a}" for i, a in enumerate(self.node_addresses))

    def _subnet(self) -> int:
        if self.subnet is None:
            raise RuntimeError("the cluster is not created yet")
        return self.subnet

    # -- life ------------------------------------------------------------------------------
    def create(self) -> BridgeCluster:
        reason = unavailable_reason()
        if reason:
            raise NamespaceUnavailable(reason)
        with _machine_lock():
            sweep_stale()
            _record_owner()
            self.subnet = _free_subnet()
            with _live_lock:
                _live.add(self)
            try:
                self._start_watcher()
                self._build()
            except BaseException:
                self.remove()
                raise
        return self

    def _build(self) -> None:
        sw = self.switch
        _ip("netns", "add", sw)
        _ip("-n", sw, "link", "add", "br0", "type", "bridge")
        _ip("-n", sw, "link", "set", "br0", "up")
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", "host", "netns", sw)
        _ip("-n", sw, "link", "set", "host", "master", "br0", "up")
        _ip("addr", "add", f"{self.host_address}/24", "dev", self.host_if)
        _ip("addr", "add", f"{self.proxy_address}/24", "dev", self.host_if)  # secondary: never a default source
        _ip("link", "set", self.host_if, "up")
        for i, ns in enumerate(self.namespaces):
            _ip("netns", "add", ns)
            _ip("-n", sw, "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", sw, "link", "set", f"p{i}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{self.node_address(i)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            if self.inbound == "proxy":
                _closed_to_owner(ns, self.host_address)

    def _start_watcher(self) -> None:
        """A process that removes the cluster once the owner is gone (EOF on a pipe only the
        owner holds), however it went; in a session of its own, so no signal to the owner's
        group reaches it."""
        read_fd, self._watch_fd = os.pipe()
        script = f"trap : INT TERM HUP\ncat <&{read_fd} >/dev/null 2>&1\n{self._removal_script()}"
        try:
            self._watcher = ProcessGroup(["sh", "-c", script], stdout=subprocess.DEVNULL, pass_fds=(read_fd,))
        finally:
            os.close(read_fd)

    def _removal_script(self) -> str:
        names = " ".join(shlex.quote(n) for n in [*self.namespaces, self.switch])
        return (f"for ns in {names}; do\n"
                "  pids=$(ip netns pids \"$ns\" 2>/dev/null)\n"
                "  [ -n \"$pids\" ] && kill -9 $pids 2>/dev/null\n"
                "  ip netns del \"$ns\" 2>/dev/null\n"
                "done\n"
                f"ip link del {shlex.quote(self.host_if)} 2>/dev/null\n"
                "exit 0\n")

    def remove(self) -> None:
        """Every process still in a node, the namespaces (with the bridge and veths in them)
        and this machine's end; then the watcher ends. Idempotent."""
        with self._lock:
            if self._removed:
                return
            self._removed = True
        for ns in [*self.namespaces, self.switch]:
            _remove_namespace(ns)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=20)
        self._stop_watcher()
        with _live_lock:
            _live.discard(self)

    def _stop_watcher(self) -> None:
        if self._watch_fd >= 0:
            os.close(self._watch_fd)  # the watcher's EOF: it finds nothing left to remove, and ends
            self._watch_fd = -1
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            try:
                watcher.wait(WATCHER_WAIT)
            except subprocess.TimeoutExpired:
                watcher.stop(0.5)

    def __enter__(self) -> BridgeCluster:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _closed_to_owner(namespace: str, owner_address: str) -> None:
    """The node drops every TCP connection opened from the owner's address (its own firewall, in
    its namespace: this machine's rules are never touched); connections it opens still work."""
    result = subprocess.run(["ip", "netns", "exec", namespace, "iptables", "-w", "-A", "INPUT", "-s", owner_address,
                             "-p", "tcp", "--syn", "-j", "DROP"], capture_output=True, text=True, timeout=20)
    if result.returncode != 0:
        raise NamespaceUnavailable(f"AML_MAGICS_SIM_INBOUND=proxy needs iptables in the node's namespace: "
                                   f"{result.stderr.strip() or result.returncode}")


def _remove_namespace(name: str) -> None:
    """Kill what still runs in namespace ``name``, then delete it."""
    pids = [int(p) for p in _ip_quiet("netns", "pids", name).split() if p.isdigit()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, 9)
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)


# -- the machine-wide part: one lock, free subnets, stale resources ---------------------------


@contextlib.contextmanager
def _machine_lock() -> Iterator[None]:
    """Serialises sweeps and subnet choices of every process on this machine (a lock file in the
    temp dir, opened without following links)."""
    with locked(_LOCK_PATH, timeout=LOCK_TIMEOUT):
        yield


def _free_subnet() -> int:
    used = set()
    for line in _ip_quiet("-o", "-4", "addr", "show").splitlines():
        match = re.search(rf"\binet {re.escape(CLUSTER_NET)}\.(\d+)\.", line)
        if match:
            used.add(int(match.group(1)))
    free = next((k for k in range(1, 255) if k not in used), None)
    if free is None:
        raise NamespaceUnavailable(f"no free /24 left in {CLUSTER_NET}.0.0/16 for a simulated cluster")
    return free


def _owners_folder() -> Path:
    return private_folder(Path(tempfile.gettempdir()) / f"aml-magics-simnet-owners-{os.getuid()}")


def _record_owner() -> None:
    """Who this process is, for other processes' sweeps: resource names carry only the pid."""
    write_atomic(_owners_folder() / f"{os.getpid()}.json", json.dumps(Owner.me().fields()).encode(), follow=False)


def _recorded_owners() -> dict[int, tuple[Path, Owner]]:
    """Every owner record (its file, who it names), read once per sweep; none if the folder is
    refused (then pids alone decide, as for resources made before records)."""
    try:
        records = list(_owners_folder().glob("*.json"))
    except OSError:
        return {}
    owners = {}
    for record in records:
        try:
            owner = Owner.from_fields(json.loads(record.read_text()))
        except (OSError, ValueError):
            continue
        if owner is not None and record.stem == str(owner.pid):
            owners[owner.pid] = (record, owner)
    return owners


def _owner_alive(pid: int, records: dict[int, tuple[Path, Owner]]) -> bool:
    """Not provably gone: by its record (a reused pid is another process), else by the pid alone
    (resources made before records: a reused pid keeps them until that process ends)."""
    if pid == os.getpid():
        return True
    if pid in records:
        return not records[pid][1].gone
    return psutil.pid_exists(pid)


def stale_resources(records: dict[int, tuple[Path, Owner]] | None = None) -> tuple[list[str], list[str]]:
    """(namespaces, this machine's links) of clusters whose owner is no longer alive."""
    records = _recorded_owners() if records is None else records
    namespaces = []
    for line in _ip_quiet("netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        match = _STALE_NS.match(name)
        if match and not _owner_alive(int(match.group(1)), records):
            namespaces.append(name)
    links = []
    for line in _ip_quiet("-o", "link", "show").splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        match = _HOST_LINK.match(name)
        if match and not _owner_alive(int(match.group(1)), records):
            links.append(name)
    return namespaces, links


def sweep_stale() -> list[str]:
    """Remove the clusters of dead owners (and what still runs in them), and the records of owners
    provably gone; what was removed."""
    records = _recorded_owners()
    namespaces, links = stale_resources(records)
    for name in namespaces:
        _remove_namespace(name)
    for name in links:
        subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=20)
    for record, owner in records.values():
        if owner.gone:
            record.unlink(missing_ok=True)
    return namespaces + links


def own_resources() -> tuple[list[str], list[str]]:
    """(namespaces, links) of this process's clusters that exist now."""
    prefix = f"{_NS_PREFIX}{os.getpid()}x"
    namespaces = [line.split()[0] for line in _ip_quiet("netns", "list").splitlines()
                  if line.split() and line.split()[0].startswith(prefix)]
    links = [m.group(0) for m in re.finditer(rf"\bas{os.getpid()}h\d+\b", _ip_quiet("-o", "link", "show"))]
    return namespaces, sorted(set(links))


_live: set[BridgeCluster] = set()
_live_lock = threading.Lock()


@atexit.register
def remove_all() -> None:
    """At interpreter exit: every cluster still up is removed (its watcher would too)."""
    with _live_lock:
        clusters = list(_live)
    for cluster in clusters:
        cluster.remove()
