"""The docker target: the run in a container built from its environment.

The image (base + dependencies + debugpy + bootstrap) is cached by a hash of all of
that (see docker_images). The source dir is mounted read-write at ``/app``, the
bootstrap is the entry point, debugpy binds 0.0.0.0 *inside* the container and its
port is published on 127.0.0.1 only, on a free host port. The endpoint the user gets
is that host side; the run's cwd stays ``/app`` so pathMappings map the local source
dir to ``/app``. Every container carries the ``aml_magics`` label and is removed at
the run's end, on cancel and at interpreter exit.

``--procs-per-node M`` (one node only): one container whose entry point is a tiny stdlib
launcher (``LAUNCHER``, run with ``python -c`` so nothing extra goes into the image) that
starts M bootstrap processes with torchrun's environment (RANK = LOCAL_RANK = i, WORLD_SIZE
= LOCAL_WORLD_SIZE = M, NODE_RANK 0, MASTER_ADDR 127.0.0.1, a MASTER_PORT free in the
container), prefixes their output lines with ``[rank i] `` and exits when all have ended
(with the first failing rank's code, after a ``aml_magics: rank i exited with code c`` line).
Each debugged rank listens on 5678 + its local rank inside the container, each published on
127.0.0.1 on a host port of its own.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..markers import Endpoint, parse_marker
from ..processes import on_exit
from ..spec import DEFAULT_PORT, RunSpec
from . import docker_images as images
from .base import RunEvents, TargetError
from .local import bootstrap_args

APP_DIR = "/app"
CONTAINER_PORT = 5678
LOOPBACK = "127.0.0.1"
LOG_TAIL = 15
_RANK_EXIT = re.compile(r"^aml_magics: rank (\d+) exited with code (-?\d+)$")

# The launcher of a container with several processes (argv: M, then the command every rank runs).
LAUNCHER = r"""
import os, signal, socket, subprocess, sys, threading
n, cmd = int(sys.argv[1]), sys.argv[2:]
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    master = s.getsockname()[1]
out, lock, codes, procs = sys.stdout.buffer, threading.Lock(), {}, []
for i in range(n):
    env = dict(os.environ, RANK=str(i), LOCAL_RANK=str(i), WORLD_SIZE=str(n), LOCAL_WORLD_SIZE=str(n),
               NODE_RANK="0", GROUP_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(master))
    procs.append(subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT))
def forward(signum, frame):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signum)
signal.signal(signal.SIGTERM, forward)
signal.signal(signal.SIGINT, forward)
def write(data):
    with lock:
        out.write(data)
        out.flush()
def pump(i, p):
    prefix = b"[rank %d] " % i
    for line in p.stdout:
        write(prefix + line if line.endswith(b"\n") else prefix + line + b"\n")
    codes[i] = code = p.wait()
    if code:
        write(b"aml_magics: rank %d exited with code %d\n" % (i, code))
threads = [threading.Thread(target=pump, args=(i, p)) for i, p in enumerate(procs)]
for t in threads:
    t.start()
for t in threads:
    t.join()
failed = [codes[i] for i in range(n) if codes[i]]
sys.exit(0 if not failed else failed[0] if failed[0] > 0 else 128 - failed[0])
"""

_live: dict[str, Any] = {}  # container id → container, for cleanup at exit
_live_lock = threading.Lock()
_hook_registered = False


def _register(container: Any) -> None:
    global _hook_registered
    with _live_lock:
        _live[container.id] = container
        if not _hook_registered:
            on_exit(remove_live_containers)
            _hook_registered = True


def _unregister(container: Any) -> None:
    with _live_lock:
        _live.pop(container.id, None)


def remove_live_containers() -> None:
    """Remove every container this process started and has not removed yet."""
    with _live_lock:
        containers = list(_live.values())
        _live.clear()
    for container in containers:
        _remove(container)


def _remove(container: Any) -> None:
    try:
        container.remove(force=True)
    except Exception:
        pass  # already gone (or the daemon is): nothing left to remove


def gpu_requests(gpus: str | None) -> list[Any]:
    """``--gpus`` as docker's DeviceRequests: all | N | device=0,1. Nothing unless asked."""
    if not gpus:
        return []
    import docker

    capabilities = [["gpu"]]
    if gpus == "all":
        return [docker.types.DeviceRequest(count=-1, capabilities=capabilities)]
    if gpus.isdigit():
        return [docker.types.DeviceRequest(count=int(gpus), capabilities=capabilities)]
    if gpus.startswith("device="):
        ids = [d for d in gpus[len("device="):].split(",") if d]
        if ids:
            return [docker.types.DeviceRequest(device_ids=ids, capabilities=capabilities)]
    raise TargetError(f"--gpus {gpus!r}: use all, a number, or device=ID[,ID...]")


class _LineSplitter:
    """Whole lines from a stream that arrives in arbitrary chunks."""

    def __init__(self) -> None:
        self.pending = ""

    def feed(self, data: bytes) -> list[str]:
        self.pending += data.decode("utf-8", "replace")
        *lines, self.pending = self.pending.split("\n")
        return [line.rstrip("\r") for line in lines]

    def rest(self) -> list[str]:
        rest, self.pending = self.pending, ""
        return [rest.rstrip("\r")] if rest else []


def published_port(container: Any, port: int) -> int | None:
    """The host port ``port/tcp`` of a started (and reloaded) container is published on."""
    bindings = (container.ports or {}).get(f"{port}/tcp") or []
    return int(bindings[0]["HostPort"]) if bindings else None


@dataclass
class ContainerExtras:
    """What a subclass of DockerTarget adds to the run's container (DockerTarget.container_extras)."""

    script: str | None = None  # the entry script in the container (default: the run's script in app_dir)
    volumes: dict[str, dict[str, str]] = field(default_factory=dict)
    ports: dict[str, Any] = field(default_factory=dict)  # "PORT/tcp" → (host address, host port or None)
    labels: dict[str, str] = field(default_factory=dict)
    mount_source: bool = True  # the source dir at app_dir (False: the subclass mounts what it needs)


class DockerRun:
    """A RunHandle for one container (and the image build before it)."""

    def __init__(self, events: RunEvents, client_host: str) -> None:
        self.events = events
        self.client_host = client_host
        self.container: Any = None
        self.host_port: int | None = None  # where the (rank 0) debug port is published
        self.host_ports: dict[int, int] = {}  # container debug port → host port
        self.failed_ranks: dict[int, int] = {}  # rank → exit code (a container with several processes)
        self.stream: Any = None  # the container's demultiplexed output
        self.canceled = False
        self.endpoint_seen = False
        self.tail: list[str] = []
        self._done = threading.Event()
        self._lock = threading.Lock()

    def cancel(self) -> None:
        with self._lock:
            self.canceled = True
            container = self.container
        if container is not None:
            _remove(container)  # ends the log stream; the run thread reports "canceled"
        self._done.wait(15)

    def is_done(self) -> bool:
        return self._done.is_set()

    def map_endpoint(self, endpoint: Endpoint) -> Endpoint:
        host_port = self.host_ports.get(endpoint.port)
        if host_port is None:
            return endpoint
        return endpoint.moved_to(self.client_host, host_port)

    def line(self, text: str) -> None:
        self.tail = (self.tail + [text])[-LOG_TAIL:]
        exited = _RANK_EXIT.match(text)
        if exited:
            self.failed_ranks.setdefault(int(exited.group(1)), int(exited.group(2)))
        marker = parse_marker(text)
        if marker is not None and marker.kind == "ENDPOINT":
            self.endpoint_seen = True
        self.events.line(text)


class DockerTarget:
    name = "docker"
    run_type = DockerRun
    app_dir = APP_DIR  # where the source dir is mounted; the run's working directory
    name_prefix = ""  # containers are named aml-magics-<prefix><run>-<hex>

    def __init__(self, gpus: str | None = None, wheels: str | None = None, client: Any = None) -> None:
        if wheels is not None and wheels not in images.WHEELS_CHOICES:
            raise TargetError(f"--wheels {wheels!r}: use one of {', '.join(images.WHEELS_CHOICES)}")
        gpu_requests(gpus)  # a bad value is a mistake found now, not after a build
        self.gpus = gpus
        self.wheels = wheels
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = images.connect()
        return self._client

    def check(self, spec: RunSpec) -> None:
        if not spec.script_path.is_file():
            raise TargetError(f"script not found: {spec.script_path}")
        if spec.distributed.nodes > 1:
            raise TargetError(f"--nodes {spec.distributed.nodes}: target 'docker' runs one container on one "
                              "machine; use --procs-per-node for several processes")
        self.client  # noqa: B018 - the daemon must answer before anything starts

    def submit(self, spec: RunSpec, events: RunEvents) -> DockerRun:
        self.check(spec)
        publish = spec.debug.bind or LOOPBACK
        run = self.run_type(events, LOOPBACK if publish in ("0.0.0.0", "::", "") else publish)
        thread = threading.Thread(target=self._run, args=(run, spec, publish), daemon=True,
                                  name=f"aml-docker-{self.name_prefix}{spec.name}")
        thread.start()
        return run

    # -- the run thread ------------------------------------------------------------------
    def _run(self, run: DockerRun, spec: RunSpec, publish: str) -> None:
        outcome: tuple[str, int | None, str] = ("failed", None, "")
        try:
            outcome = self._run_to_end(run, spec, publish)
        finally:
            with run._lock:
                container = run.container
            if container is not None:  # removed before the run is reported ended
                _remove(container)
                _unregister(container)
            if run.canceled:
                outcome = ("canceled", outcome[1], "canceled by user")
            run.events.finished(*outcome)
            run._done.set()

    def _run_to_end(self, run: DockerRun, spec: RunSpec, publish: str) -> tuple[str, int | None, str]:
        """The run's final (state, exit code, detail); whatever happens, never raises."""
        try:
            tag, python = self.prepare_image(run, spec)
            self._start(run, spec, tag, python, publish)
            code = self._pump(run)
        except images.Canceled:
            return ("canceled", None, "canceled by user")
        except images.ImageBuildError as exc:
            if run.canceled:
                return ("canceled", None, "canceled by user")
            run.events.line(f"aml_magics: {exc}")
            return ("failed", None, str(exc) + ("; last lines of the build log:\n" + "\n".join(exc.tail)
                                                if exc.tail else ""))
        except Exception as exc:  # surfaced as the run's failure, not a thread traceback
            if run.canceled:
                return ("canceled", None, "canceled by user")
            message = str(exc) if isinstance(exc, TargetError) else images.short_reason(exc)
            explanation = getattr(exc, "explanation", None)
            if explanation and str(explanation) not in message:
                message = str(explanation)
            run.events.line(f"aml_magics: {message}")
            return ("failed", None, self._tail_detail(run, message))
        if run.canceled:
            return ("canceled", code, "canceled by user")
        if code == 0:
            return ("completed", code, "")
        if run.failed_ranks:
            first = min(run.failed_ranks)
            detail = f"rank {first} failed (exit code {run.failed_ranks[first]})"
            if len(run.failed_ranks) > 1:
                detail += f"; ranks that failed: {', '.join(map(str, sorted(run.failed_ranks)))}"
            return ("failed", code, self._tail_detail(run, detail))
        if not run.endpoint_seen and spec.debug.listens_at_start:
            return ("failed", code, self._tail_detail(
                run, f"container exited with code {code} before reporting a debug endpoint"))
        return ("failed", code, self._tail_detail(run, f"exit code {code}"))

    @staticmethod
    def _tail_detail(run: DockerRun, message: str) -> str:
        if not run.tail:
            return message
        return f"{message}; last lines of its log:\n" + "\n".join(run.tail)

    @staticmethod
    def debug_ports(spec: RunSpec) -> list[int]:
        """The container ports debugged ranks listen on: 5678 + local rank."""
        procs = spec.distributed.procs_per_node if spec.distributed.world_size > 1 else 1
        return [CONTAINER_PORT + rank for rank in range(procs) if spec.debug.debugs_rank(rank)]

    def _start(self, run: DockerRun, spec: RunSpec, tag: str, python: str, publish: str) -> None:
        debug = spec.debug
        host_port = debug.port if debug.port not in (0, DEFAULT_PORT) and not debug.port_auto else None
        extras = self.container_extras(spec)
        script = extras.script or str(PurePosixPath(self.app_dir) / Path(spec.script).as_posix())
        command = [*bootstrap_args(spec, "0.0.0.0", CONTAINER_PORT), "--", script, *spec.args]
        entrypoint = [python, "-X", "frozen_modules=off", images.BOOTSTRAP_IN_IMAGE]
        procs = spec.distributed.procs_per_node if spec.distributed.world_size > 1 else 1
        if procs > 1:
            entrypoint = [python, "-c", LAUNCHER, str(procs), *entrypoint]
        debug_ports = self.debug_ports(spec) if debug.enabled else []
        environment = dict(spec.environment.env_vars)
        environment.update({"PYTHONUNBUFFERED": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"})
        labels = {images.LABEL: "1", f"{images.LABEL}.run": spec.name, f"{images.LABEL}.owner_pid": str(os.getpid()),
                  **extras.labels}
        volumes = {str(spec.source_dir.resolve()): {"bind": self.app_dir, "mode": "rw"}} if extras.mount_source else {}
        volumes.update(extras.volumes)
        ports: dict[str, Any] = {
            f"{port}/tcp": (publish, host_port + port - CONTAINER_PORT if host_port else None) for port in debug_ports}
        ports.update(extras.ports)
        with run._lock:
            if run.canceled:
                raise images.Canceled
            container = self.client.containers.create(
                tag,
                command=command,
                entrypoint=entrypoint,
                name=f"aml-magics-{self.name_prefix}{spec.name}-{secrets.token_hex(3)}",
                labels=labels,
                environment=environment,
                working_dir=self.app_dir,
                volumes=volumes,
                ports=ports,
                device_requests=gpu_requests(self.gpus) or None,
                stdin_open=False,
                tty=False,
            )
            run.container = container
            _register(container)
        # Attach before start so not one line is lost; demultiplexed so stdout and stderr
        # never cut each other's lines.
        run.stream = self.client.api.attach(container.id, stdout=True, stderr=True, stream=True, logs=True, demux=True)
        try:
            container.start()
        except Exception as exc:
            text = str(getattr(exc, "explanation", None) or exc)
            if host_port and ("already in use" in text or "already allocated" in text):
                which = f"port {host_port}" if len(debug_ports) < 2 else \
                    f"one of the ports {host_port}-{host_port + max(debug_ports) - CONTAINER_PORT}"
                raise TargetError(f"{which} on {publish} is already in use on this machine; "
                                  "use --port 0 (any free port, the default for docker)") from None
            raise
        if ports:
            container.reload()
            for port in debug_ports:
                published = published_port(container, port)
                if published is not None:
                    run.host_ports[port] = published
            run.host_port = run.host_ports.get(CONTAINER_PORT)
        self.on_started(run, spec, container, tag, publish)
        run.events.state("running")

    # -- what a subclass (deploy_docker) changes ------------------------------------------------
    def prepare_image(self, run: DockerRun, spec: RunSpec) -> tuple[str, str]:
        """The image to run (built when its hash is new) and the Python in it that runs the bootstrap."""
        tag = images.ensure_image(
            self.client, spec.environment,
            base=spec.environment.base_image or images.default_base_image(),
            wheels=self.wheels, log=run.events.line,
            on_build=lambda: run.events.state("building"),
            cancel=lambda: run.canceled,
        )
        return tag, images.VENV_PYTHON

    def container_extras(self, spec: RunSpec) -> ContainerExtras:
        """What the run's container gets besides the source dir, the debug port and the usual labels."""
        return ContainerExtras()

    def on_started(self, run: DockerRun, spec: RunSpec, container: Any, tag: str, publish: str) -> None:
        """Report the started container (its published ports are known by now)."""
        run.events.line(f"aml_magics: container {container.name} ({tag}) started" + self.published_text(run, publish))

    @staticmethod
    def published_text(run: DockerRun, publish: str) -> str:
        if not run.host_ports:
            return ""
        if len(run.host_ports) == 1 and CONTAINER_PORT in run.host_ports:
            return f"; debug port {CONTAINER_PORT} published on {publish}:{run.host_port}"
        return "; debug ports " + ", ".join(f"{port} (rank {port - CONTAINER_PORT}) on {publish}:{host}"
                                            for port, host in sorted(run.host_ports.items()))

    def _pump(self, run: DockerRun) -> int | None:
        out, err = _LineSplitter(), _LineSplitter()
        try:
            for stdout, stderr in run.stream:
                for splitter, data in ((out, stdout), (err, stderr)):
                    if data:
                        for text in splitter.feed(data):
                            run.line(text)
        except Exception:
            if not run.canceled:
                raise
        for text in out.rest() + err.rest():
            run.line(text)
        if run.canceled:
            return None
        try:
            return int(run.container.wait(timeout=None).get("StatusCode"))
        except Exception:
            if run.canceled:
                return None
            raise
