"""The docker target: the run in a container built from its environment.

The image (base + dependencies + debugpy + bootstrap) is cached by a hash of all of
that (see images/). The source dir is bind-mounted at ``/app``, the bootstrap is the
entry point, debugpy binds 0.0.0.0 *inside* the container and its port is published on
127.0.0.1 only, on a free host port. The endpoint the user gets is that host side; the run's
cwd stays ``/app`` so pathMappings map the local source dir to ``/app``.

A container lives exactly as long as its owner (the kernel or CLI that started it). The owner
holds the container's stdin (``AML_MAGICS_OWNER=stdin``): the first line it writes is the run's
secrets (never an environment variable, which ``docker inspect`` would show), then it keeps
the attached socket open for the run's life. When the owner goes — canceled, exited, or killed
by any signal, SIGKILL included — the socket closes, stdin reaches EOF, the bootstrap (PID 1)
ends its tree and the daemon removes the container (``auto_remove``) and its published ports.
Every container is labelled with its owner (uid, pid, boot id, pid namespace, start time) so
what a dead owner left anyway (a container created but never started, a daemon that was down)
is swept by the next run and by ``%aml_images`` (images/owners.py).

Least privilege: the container runs as the invoking user's uid:gid (``--container-user root``
for an image that needs root), so what it writes in the mounted folder is the user's; with a
numeric uid the container's HOME is /tmp (writable by anyone there). A source dir that is the
home folder or ``/`` (or holds the home folder) is refused unless ``--mount-any-dir``.

``--procs-per-node M`` (one node only): one container whose entry point is a tiny stdlib
launcher (the node package's ``--launch``: ``node/launcher.py``) that
starts M bootstrap processes with torchrun's environment (RANK = LOCAL_RANK = i, WORLD_SIZE
= LOCAL_WORLD_SIZE = M, NODE_RANK 0, MASTER_ADDR 127.0.0.1, a MASTER_PORT free in the
container), prefixes their output lines with ``[rank i] `` and exits when all have ended
(with the first failing rank's code, after a ``aml_magics: rank i exited with code c`` line).
It is the owner of its ranks the same way: it reads the secrets line from its stdin, hands each
rank its own pipe (``AML_MAGICS_OWNER=fd:N``, the secrets line first) and closes those pipes —
ending every rank — when its stdin reaches EOF. Each debugged rank listens on 5678 + its local
rank inside the container, each published on 127.0.0.1 on a host port of its own.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from .. import images
from ..install import needs
from ..invocation import LOOPBACK, PYTHON_FLAGS, entry_arguments, rank_environment, run_environment
from ..node.wire import OWNER_ENV
from ..output import LineCutter
from ..protocol import Endpoint, EndpointMarker, ExitMarker, MarkerReader, RunState
from ..spec import DEFAULT_PORT, RunSpec
from ..target_base import Capabilities, Outcome, RunContext, TargetError, ThreadedRun, option
from . import register_target

APP_DIR = "/app"
CONTAINER_PORT = 5678
LOG_TAIL = 15
MAX_PROCESSES = 64
EXIT_CODE_WAIT = 60.0  # seconds the daemon may take to report the exit code once the output has ended
CONTAINER_HOME = "/tmp"  # HOME of a numeric uid the image has no home folder for

REMOVAL_WAIT = 10  # seconds a removal the daemon has in progress (auto-remove) may take


def _remove(container: Any) -> None:
    """Remove the container, and return only once it is gone: the daemon may be removing it
    already (it exited: auto-remove), which a second removal does not wait for."""
    try:
        container.remove(force=True)
    except Exception:
        pass  # already gone, or being removed (or the daemon is gone): wait below
    try:
        container.client.api.wait(container.id, timeout=REMOVAL_WAIT, condition="removed")
    except Exception:
        pass  # gone (404) — or the daemon is: nothing left to wait for


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


@dataclass(frozen=True)
class BindMount:
    """A host path in the container (a docker ``Mount``: a path with a colon works)."""

    source: str
    target: str
    read_only: bool = False

    def mount(self) -> Any:
        import docker

        return docker.types.Mount(target=self.target, source=self.source, type="bind", read_only=self.read_only)


@dataclass
class ContainerExtras:
    """What a subclass of DockerTarget adds to the run's container (DockerTarget.container_extras)."""

    script: str | None = None  # the entry script in the container (default: the run's script in app_dir)
    mounts: list[BindMount] = field(default_factory=list)
    ports: dict[str, Any] = field(default_factory=dict)  # "PORT/tcp" → (host address, host port or None)
    labels: dict[str, str] = field(default_factory=dict)
    mount_source: bool = True  # the source dir at app_dir (False: the subclass mounts what it needs)


class OwnerChannel:
    """The owner's end of a container's stdin (``AML_MAGICS_OWNER=stdin``): the run's secrets as
    the first line, then only liveness. Held open for the run's life; when it closes (the run
    ends, or the owner process dies and the kernel closes it) the container's stdin reaches EOF
    and the bootstrap ends the run."""

    def __init__(self, client: Any, container_id: str) -> None:
        self._socket = client.api.attach_socket(container_id, params={"stdin": 1, "stream": 1})

    def _raw(self) -> Any:
        return self._socket if hasattr(self._socket, "sendall") else self._socket._sock

    def send(self, payload: str) -> None:
        self._raw().sendall(payload.encode("utf-8") + b"\n")

    def close(self) -> None:
        raw = self._raw()
        try:
            raw.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass
        for part in (raw, self._socket):
            try:
                part.close()
            except Exception:
                pass


class ExitWaiter:
    """The container's exit code, asked for before it starts: a container the daemon removes as it
    exits (``auto_remove``) cannot be asked afterwards. The daemon answers the wait request's
    headers at once (so the wait is registered before ``start``) and its body at the removal."""

    def __init__(self, client: Any) -> None:
        self._api = client.api
        self._response: Any = None
        self._code: int | None = None
        self._done = threading.Event()

    def register(self, container_id: str) -> None:
        url = self._api._url("/containers/{0}/wait", container_id)
        self._response = self._api._post(url, params={"condition": "removed"}, stream=True, timeout=None)
        self._api._raise_for_status(self._response)
        threading.Thread(target=self._read, daemon=True, name="aml-docker-wait").start()

    def _read(self) -> None:
        try:
            self._code = int(json.loads(self._response.content or b"{}")["StatusCode"])
        except Exception:
            self._code = None
        finally:
            self._done.set()

    def code(self, timeout: float | None = None) -> int | None:
        self._done.wait(timeout)
        return self._code

    def close(self) -> None:
        if self._response is not None:
            try:
                self._response.close()
            except Exception:
                pass


class DockerRun(ThreadedRun):
    """A RunHandle for one container (and the image build before it)."""

    def __init__(self, ctx: RunContext, name: str, client_host: str) -> None:
        super().__init__(ctx, name)
        self.client_host = client_host
        self.container: Any = None
        self.host_port: int | None = None  # where the (rank 0) debug port is published
        self.host_ports: dict[int, int] = {}  # container debug port → host port
        self.failed_ranks: dict[int, int] = {}  # rank → exit code (a container with several processes)
        self.exit_codes: dict[int, int] = {}  # rank → the code its EXIT marker reported
        self.stream: Any = None  # the container's demultiplexed output
        self.waiter: ExitWaiter | None = None
        self.image_uses = images.ImageUses()  # the image tag held until the container exists
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
        if isinstance(marker, ExitMarker):
            if marker.code is not None:
                self.exit_codes.setdefault(marker.rank, marker.code)
            if marker.code:
                self.failed_ranks.setdefault(marker.rank, marker.code)
        elif isinstance(marker, EndpointMarker):
            self.endpoint_seen = True
        self.events.line(text)


def default_user() -> str:
    """The invoking user's uid:gid: what the container writes in a mounted folder is theirs."""
    return f"{os.getuid()}:{os.getgid()}"


def numeric_non_root(user: str) -> bool:
    uid = user.split(":", 1)[0]
    return uid.isdigit() and int(uid) != 0


def broad_source_dir(source: Path) -> str | None:
    """What is wrong with mounting ``source`` whole (it is ``/``, the home folder, or holds it), or None."""
    source = source.resolve()
    home = Path.home().resolve()
    if source == Path(source.anchor):
        return "the root folder /"
    if source == home:
        return "your home folder"
    if source in home.parents:
        return f"a folder that holds your home folder ({home})"
    return None


class DockerTarget:
    name = "docker"
    capabilities: ClassVar[Capabilities] = Capabilities(max_nodes=1, max_processes=MAX_PROCESSES,
                                                        one_machine="one container")
    run_type = DockerRun
    app_dir = APP_DIR  # where the source dir is mounted; the run's working directory
    name_prefix = ""  # containers are named aml-magics-<prefix><run>-<hex>
    mounts_source = True  # the whole source dir at app_dir (a deployment mounts score.py alone)

    def __init__(self, gpus: str | None = None, wheels: str | None = None, container_user: str | None = None,
                 mount_any_dir: bool = False, client: Any = None) -> None:
        if wheels is not None and wheels not in images.WHEELS_CHOICES:
            raise TargetError(f"--wheels {wheels!r}: use one of {', '.join(images.WHEELS_CHOICES)}")
        gpu_requests(gpus)  # a bad value is a mistake found now, not after a build
        if container_user is not None and (not container_user.strip() or any(c.isspace() for c in container_user)):
            raise TargetError(f"--container-user {container_user!r}: use root, a user name, UID or UID:GID")
        self.gpus = gpus
        self.wheels = wheels
        self.user = container_user or default_user()
        self.mount_any_dir = bool(mount_any_dir)
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
        broad = broad_source_dir(spec.source_dir) if self.mounts_source and not self.mount_any_dir else None
        if broad:
            raise TargetError(f"--source-dir {spec.source_dir.resolve()} is {broad}: the container would get all "
                              "of it read-write; put the script in a project folder, or pass --mount-any-dir")
        problem = images.credentials_problem(spec.environment, self.wheels)
        if problem:
            raise TargetError(problem)
        self.client  # noqa: B018 - the daemon must answer before anything starts

    def submit(self, spec: RunSpec, ctx: RunContext) -> DockerRun:
        self.check(spec)
        publish = spec.debug.bind or LOOPBACK
        client_host = LOOPBACK if publish in ("0.0.0.0", "::", "") else publish
        run = self.run_type(ctx, f"docker-{self.name_prefix}{spec.name}", client_host)
        run.scope.callback(run.image_uses.release)
        run.start(lambda: self._run_to_end(run, spec, publish))
        return run

    # -- the run thread ------------------------------------------------------------------
    def _run_to_end(self, run: DockerRun, spec: RunSpec, publish: str) -> Outcome:
        """The run's outcome; the container is removed when the run's scope closes."""
        import docker

        images.sweep(self.client)  # what dead owners of this user left, before adding ours
        try:
            tag, python = self.prepare_image(run, spec)
            try:
                self._start(run, spec, tag, python, publish)
            except docker.errors.ImageNotFound:
                # Removed between the lookup and the container by someone our lock does not reach
                # (another user's --remove-unused): make it again, once.
                run.events.line(f"aml_magics: image {tag} was removed meanwhile; making it again")
                run.image_uses.release()
                tag, python = self.prepare_image(run, spec)
                self._start(run, spec, tag, python, publish)
            code = self._pump(run)
        except images.ImageBuildError as exc:
            run.scope.token.raise_if_canceled()
            run.events.line(f"aml_magics: {exc}")
            tail = "; last lines of the build log:\n" + "\n".join(exc.tail) if exc.tail and not exc.final else ""
            return Outcome(RunState.FAILED, None, str(exc) + tail)
        except TargetError:
            raise
        except Exception as exc:  # the docker SDK's errors, in one line
            run.scope.token.raise_if_canceled()
            message = images.short_reason(exc)
            explanation = getattr(exc, "explanation", None)
            if explanation and str(explanation) not in message:
                message = images.shorten(str(explanation).strip().splitlines()[0])
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
        entrypoint = [python, *PYTHON_FLAGS, images.NODE_IN_IMAGE]
        procs = self.processes(spec)
        if procs > 1:  # the node package's launcher (node/launcher.py) starts every rank
            envs = [rank_environment(spec.distributed, rank) for rank in range(procs)]
            entrypoint = [python, images.NODE_IN_IMAGE, "--launch", json.dumps(envs), "--", *entrypoint]
        return entrypoint, command

    def _start(self, run: DockerRun, spec: RunSpec, tag: str, python: str, publish: str) -> None:
        debug = spec.debug
        host_port = debug.port if debug.port not in (0, DEFAULT_PORT) and not debug.port_auto else None
        extras = self.container_extras(spec)
        script = extras.script or str(PurePosixPath(self.app_dir) / Path(spec.script).as_posix())
        entrypoint, command = self._command(spec, python, script)
        debug_ports = self.debug_ports(spec) if debug.enabled else []
        environment = run_environment(spec)
        environment[OWNER_ENV] = "stdin"  # the secrets come as stdin's first line, never in the environment
        if numeric_non_root(self.user) and "HOME" not in dict(spec.environment.env_vars):
            environment["HOME"] = CONTAINER_HOME  # a uid the image has no home for: "/" is not writable
        labels = {images.LABEL: "1", f"{images.LABEL}.run": spec.name, **images.owner_labels(), **extras.labels}
        mounts = [BindMount(str(spec.source_dir.resolve()), self.app_dir)] if extras.mount_source else []
        mounts += extras.mounts
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
                mounts=[m.mount() for m in mounts],
                ports=ports,
                user=self.user,
                device_requests=gpu_requests(self.gpus) or None,
                stdin_open=True,  # (and StdinOnce): the owner's channel, see OwnerChannel
                auto_remove=True,  # the daemon removes it as it exits, even when nobody is left to ask
                tty=False,
            )
            run.container = run.scope.owned(container, _remove)
        run.image_uses.release()  # the container pins its image from now on
        channel = run.scope.owned(OwnerChannel(self.client, container.id), OwnerChannel.close)
        channel.send(run.ctx.secrets.payload())
        # Attach before start so not one line is lost; demultiplexed so stdout and stderr
        # never cut each other's lines.
        run.stream = self.client.api.attach(container.id, stdout=True, stderr=True, stream=True, logs=True, demux=True)
        run.waiter = ExitWaiter(self.client)
        run.scope.callback(run.waiter.close)
        run.waiter.register(container.id)
        try:
            container.start()
        except Exception as exc:
            raise self._start_error(exc, host_port, debug_ports, publish) from None
        if ports:
            self._published(run, container, debug_ports, host_port)
        self.on_started(run, spec, container, tag, publish)
        run.events.state(RunState.RUNNING)

    def _start_error(self, exc: Exception, host_port: int | None, debug_ports: list[int],
                     publish: str) -> Exception:
        """Docker's refusal to start, said in the user's terms where we know them."""
        text = str(getattr(exc, "explanation", None) or exc)
        if host_port and ("already in use" in text or "already allocated" in text):
            which = f"port {host_port}" if len(debug_ports) < 2 else \
                f"one of the ports {host_port}-{host_port + max(debug_ports) - CONTAINER_PORT}"
            return TargetError(f"{which} on {publish} is already in use on this machine; "
                               "use --port 0 (any free port, the default for docker)")
        if self.gpus and "could not select device driver" in text:
            return TargetError(f"--gpus {self.gpus}: this machine's Docker has no GPU runtime (Docker answered: "
                               f"{images.shorten(text, 90)}); install the NVIDIA Container Toolkit, or run "
                               "without --gpus")
        return exc

    @staticmethod
    def _published(run: DockerRun, container: Any, debug_ports: list[int], host_port: int | None) -> None:
        """Where each debug port is published (a fixed --port is known; a free one is asked)."""
        import docker

        if host_port:
            run.host_ports.update({port: host_port + port - CONTAINER_PORT for port in debug_ports})
        try:
            container.reload()
        except docker.errors.NotFound:
            pass  # it has ended and been removed already: nothing listens any more
        else:
            for port in debug_ports:
                published = published_port(container, port)
                if published is not None:
                    run.host_ports[port] = published
        run.host_port = run.host_ports.get(CONTAINER_PORT)

    # -- what a subclass (deploy_docker) changes ------------------------------------------------
    def prepare_image(self, run: DockerRun, spec: RunSpec) -> tuple[str, str]:
        """The image to run (built when its hash is new) and the Python in it that runs the bootstrap;
        its tag is held in ``run.image_uses`` until the container exists."""
        tag = images.ensure_image(
            self.client, spec.environment,
            base=spec.environment.base_image or images.default_base_image(),
            wheels=self.wheels, log=run.events.line,
            on_build=lambda: run.events.state(RunState.BUILDING),
            token=run.scope.token, uses=run.image_uses,
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
        code = run.waiter.code(EXIT_CODE_WAIT) if run.waiter is not None else None
        if code is None and not run.canceled:
            code = run.exit_codes.get(0)  # the daemon did not say: the bootstrap's own EXIT marker
            if code is None:
                raise TargetError("the container ended but Docker reported no exit code")
        return None if run.canceled else code


OPTIONS = (
    option("--gpus", default=None, help="docker: GPUs for the container (all, N, device=0,1); none unless asked"),
    option("--wheels", choices=images.WHEELS_CHOICES, default=None,
           help="docker: resolve wheels on the host (default; build needs no network) or in the build"),
    option("--container-user", default=None,
           help="docker: the user the container runs as (default: yours, UID:GID; root for images that need it)"),
    option("--mount-any-dir", action="store_true", default=None,
           help="docker: allow a --source-dir that is your home folder or / (mounted read-write)"),
)


def _factory(**options: Any) -> DockerTarget:
    try:
        import docker  # noqa: F401 - the SDK is an extra
    except ImportError:
        raise TargetError(needs("target 'docker' needs the docker SDK", "docker")) from None
    return DockerTarget(**options)


register_target("docker", _factory, options=OPTIONS, capabilities=DockerTarget.capabilities)
