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

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from .. import images
from ..invocation import LOOPBACK, PYTHON_FLAGS, entry_arguments, rank_environment, run_environment
from ..output import LineCutter
from ..protocol import Endpoint, EndpointMarker, ExitMarker, MarkerReader, RunState
from ..spec import DEFAULT_PORT, RunSpec
from ..target_base import Capabilities, Outcome, RunContext, TargetError, ThreadedRun, option
from . import register_target

APP_DIR = "/app"
CONTAINER_PORT = 5678
LOG_TAIL = 15
MAX_PROCESSES = 64

# The launcher of a container with several processes: argv[1] is a JSON list of each rank's
# environment (from invocation.rank_environment), the rest the command every rank runs. Lines
# get a ``[rank i] `` tag; a rank that exits non-zero gets an authenticated EXIT marker (it may
# have died without printing its own); the launcher exits with the first failing rank's code.
LAUNCHER = r"""
import hashlib, hmac, json, os, signal, subprocess, sys, threading
envs, cmd = json.loads(sys.argv[1]), sys.argv[2:]
try:
    key = bytes.fromhex(json.loads(os.environ.get("AML_MAGICS_SECRETS", "{}")).get("marker_key", ""))
except ValueError:
    key = b""
out, lock, codes, procs = sys.stdout.buffer, threading.Lock(), {}, []
for env in envs:
    procs.append(subprocess.Popen(cmd, env=dict(os.environ, **env), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
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
def marker(kind, **data):
    payload = json.dumps(data, sort_keys=True)
    mac = hmac.new(key, ("%s %s" % (kind, payload)).encode(), hashlib.sha256).hexdigest()[:32] if key else ""
    return ("AML_MAGICS_%s %s %s" % (kind, payload, mac)).rstrip().encode() + b"\n"
def pump(i, p):
    prefix = b"[rank %d] " % i
    for line in p.stdout:
        write(prefix + line if line.endswith(b"\n") else prefix + line + b"\n")
    codes[i] = code = p.wait()
    if code:
        write(b"aml_magics: rank %d exited with code %d\n" % (i, code))
        write(marker("EXIT", rank=i, code=code, pid=p.pid, source="launcher"))
threads = [threading.Thread(target=pump, args=(i, p)) for i, p in enumerate(procs)]
for t in threads:
    t.start()
for t in threads:
    t.join()
failed = [codes[i] for i in range(len(procs)) if codes[i]]
sys.exit(0 if not failed else failed[0] if failed[0] > 0 else 128 - failed[0])
"""


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


class DockerRun(ThreadedRun):
    """A RunHandle for one container (and the image build before it)."""

    def __init__(self, ctx: RunContext, name: str, client_host: str) -> None:
        super().__init__(ctx, name)
        self.client_host = client_host
        self.container: Any = None
        self.host_port: int | None = None  # where the (rank 0) debug port is published
        self.host_ports: dict[int, int] = {}  # container debug port → host port
        self.failed_ranks: dict[int, int] = {}  # rank → exit code (a container with several processes)
        self.stream: Any = None  # the container's demultiplexed output
        self.endpoint_seen = False
        self.tail: list[str] = []
        self.reader = MarkerReader(ctx.secrets.marker_key)

    def map_endpoint(self, endpoint: Endpoint) -> Endpoint:
        host_port = self.host_ports.get(endpoint.port)
        if host_port is None:
            return endpoint
        return endpoint.moved_to(self.client_host, host_port)

    def line(self, text: str) -> None:
        self.tail = (self.tail + [text])[-LOG_TAIL:]
        marker = self.reader.parse(text)
        if isinstance(marker, ExitMarker) and marker.code:
            self.failed_ranks.setdefault(marker.rank, marker.code)
        elif isinstance(marker, EndpointMarker):
            self.endpoint_seen = True
        self.events.line(text)


class DockerTarget:
    name = "docker"
    capabilities: ClassVar[Capabilities] = Capabilities(max_nodes=1, max_processes=MAX_PROCESSES)
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

    def submit(self, spec: RunSpec, ctx: RunContext) -> DockerRun:
        self.check(spec)
        publish = spec.debug.bind or LOOPBACK
        client_host = LOOPBACK if publish in ("0.0.0.0", "::", "") else publish
        run = self.run_type(ctx, f"docker-{self.name_prefix}{spec.name}", client_host)
        run.start(lambda: self._run_to_end(run, spec, publish))
        return run

    # -- the run thread ------------------------------------------------------------------
    def _run_to_end(self, run: DockerRun, spec: RunSpec, publish: str) -> Outcome:
        """The run's outcome; the container is removed when the run's scope closes."""
        try:
            tag, python = self.prepare_image(run, spec)
            self._start(run, spec, tag, python, publish)
            code = self._pump(run)
        except images.ImageBuildError as exc:
            run.scope.token.raise_if_canceled()
            run.events.line(f"aml_magics: {exc}")
            return Outcome(RunState.FAILED, None, str(exc) + ("; last lines of the build log:\n" + "\n".join(exc.tail)
                                                               if exc.tail else ""))
        except TargetError:
            raise
        except Exception as exc:  # the docker SDK's errors, in one line
            run.scope.token.raise_if_canceled()
            message = images.short_reason(exc)
            explanation = getattr(exc, "explanation", None)
            if explanation and str(explanation) not in message:
                message = str(explanation)
            run.events.line(f"aml_magics: {message}")
            return Outcome(RunState.FAILED, None, self._tail_detail(run, message))
        if code is None or run.canceled:
            return Outcome(RunState.CANCELED, code)
        if code == 0:
            return Outcome(RunState.COMPLETED, code)
        if run.failed_ranks and self.processes(spec) > 1:
            first = min(run.failed_ranks)
            detail = f"rank {first} failed (exit code {run.failed_ranks[first]})"
            if len(run.failed_ranks) > 1:
                detail += f"; ranks that failed: {', '.join(map(str, sorted(run.failed_ranks)))}"
            return Outcome(RunState.FAILED, code, self._tail_detail(run, detail))
        if not run.endpoint_seen and spec.debug.listens_at_start:
            return Outcome(RunState.FAILED, code, self._tail_detail(
                run, f"container exited with code {code} before reporting a debug endpoint"))
        return Outcome(RunState.FAILED, code, self._tail_detail(run, f"exit code {code}"))

    @staticmethod
    def _tail_detail(run: DockerRun, message: str) -> str:
        if not run.tail:
            return message
        return f"{message}; last lines of its log:\n" + "\n".join(run.tail)

    @staticmethod
    def processes(spec: RunSpec) -> int:
        return spec.distributed.procs_per_node if spec.distributed.world_size > 1 else 1

    def debug_ports(self, spec: RunSpec) -> list[int]:
        """The container ports debugged ranks listen on: 5678 + local rank."""
        return [CONTAINER_PORT + rank for rank in range(self.processes(spec)) if spec.debug.debugs_rank(rank)]

    def _command(self, spec: RunSpec, python: str, script: str) -> tuple[list[str], list[str]]:
        """(entrypoint, command): the bootstrap, or the launcher of several bootstraps."""
        command = [str(a) for a in entry_arguments(spec, "0.0.0.0", CONTAINER_PORT, script=script)]
        entrypoint = [python, *PYTHON_FLAGS, images.BOOTSTRAP_IN_IMAGE]
        procs = self.processes(spec)
        if procs > 1:
            envs = [rank_environment(spec.distributed, rank) for rank in range(procs)]
            entrypoint = [python, "-c", LAUNCHER, json.dumps(envs), *entrypoint]
        return entrypoint, command

    def _start(self, run: DockerRun, spec: RunSpec, tag: str, python: str, publish: str) -> None:
        debug = spec.debug
        host_port = debug.port if debug.port not in (0, DEFAULT_PORT) and not debug.port_auto else None
        extras = self.container_extras(spec)
        script = extras.script or str(PurePosixPath(self.app_dir) / Path(spec.script).as_posix())
        entrypoint, command = self._command(spec, python, script)
        debug_ports = self.debug_ports(spec) if debug.enabled else []
        environment = run_environment(spec)
        environment.update(run.ctx.secrets.environment())
        labels = {images.LABEL: "1", f"{images.LABEL}.run": spec.name, f"{images.LABEL}.owner_pid": str(os.getpid()),
                  **extras.labels}
        volumes = {str(spec.source_dir.resolve()): {"bind": self.app_dir, "mode": "rw"}} if extras.mount_source else {}
        volumes.update(extras.volumes)
        ports: dict[str, Any] = {
            f"{port}/tcp": (publish, host_port + port - CONTAINER_PORT if host_port else None) for port in debug_ports}
        ports.update(extras.ports)
        with run.scope.step():
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
            run.container = run.scope.owned(container, _remove)
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
        run.events.state(RunState.RUNNING)

    # -- what a subclass (deploy_docker) changes ------------------------------------------------
    def prepare_image(self, run: DockerRun, spec: RunSpec) -> tuple[str, str]:
        """The image to run (built when its hash is new) and the Python in it that runs the bootstrap."""
        tag = images.ensure_image(
            self.client, spec.environment,
            base=spec.environment.base_image or images.default_base_image(),
            wheels=self.wheels, log=run.events.line,
            on_build=lambda: run.events.state(RunState.BUILDING),
            token=run.scope.token,
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
        """Stream the container's output until it ends; its exit code (None: canceled)."""
        out, err = LineCutter(), LineCutter()
        try:
            for stdout, stderr in run.stream:
                for cutter, data in ((out, stdout), (err, stderr)):
                    if data:
                        for text in cutter.feed(data):
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



OPTIONS = (
    option("--gpus", default=None, help="docker: GPUs for the container (all, N, device=0,1); none unless asked"),
    option("--wheels", choices=images.WHEELS_CHOICES, default=None,
           help="docker: resolve wheels on the host (default; build needs no network) or in the build"),
)


def _factory(**options: Any) -> DockerTarget:
    try:
        import docker  # noqa: F401 - the SDK is an extra
    except ImportError:
        raise TargetError("target 'docker' needs the docker SDK: install aml-magics[docker] "
                          "(pip install 'aml-magics[docker]')") from None
    return DockerTarget(**options)


register_target("docker", _factory, options=OPTIONS, capabilities=DockerTarget.capabilities)
