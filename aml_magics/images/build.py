"""Building images: the build context, the streamed build, the cache lookups and their locks.

Packages are resolved on the host by default (``wheels="host"``, see :mod:`.wheels`) and
installed with ``--no-index`` in a build that has no network at all. When pip on the host fails
for a reason that is not the user's requirement, the build falls back to installing from the
index inside the build (``wheels="index"``), which needs network in the build container; a
requirement pip cannot resolve is final. Conda environments are always created in the build
(conda channels cannot be resolved for another machine from here).

A build leaves nothing: a failed or canceled one removes its intermediate images (found by the
build's own label) and its temp folder; a killed one (its owner SIGKILL-ed) is swept by the next
build (see :mod:`.owners`). And ``%aml_images --remove-unused`` never removes an image a run is
about to start a container from: that run holds a shared lock on the tag's *use* file from before
it looks the image up until its container exists (:class:`ImageUses`).
"""

from __future__ import annotations

import fcntl
import io
import secrets
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .. import venvs
from ..errors import TargetError
from ..lifecycle import CancelToken
from ..spec import EnvironmentSpec
from .client import (
    _ANSI,
    LABEL,
    LOG_TAIL,
    WHEELS_HOST,
    WHEELS_INDEX,
    ImageBuildError,
    docker_host,
    node_files,
    short_reason,
)
from .owners import build_folder_prefix, owner_labels, sweep_build_folders, sweep_build_images
from .recipe import (
    BUILD_LABEL,
    bootstrap_hash,
    canonical,
    dependency_summary,
    dockerfile,
    find_server_python,
    has_credentials,
    image_tag,
    inference_dockerfile,
    inference_tag,
    offline_environment,
    probe_python,
    redact,
)
from .wheels import download_wheels

Log = Callable[[str], None]

def build_context(recipe: str, env: EnvironmentSpec, wheels_dir: Path | None,
                  files: dict[str, bytes] | None = None) -> Any:
    """The build context as a tar in a temporary file (wheels can be large); ``files``: more files by name."""
    tmp = tempfile.TemporaryFile()
    with tarfile.open(fileobj=tmp, mode="w") as tar:
        def add_bytes(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))

        add_bytes("Dockerfile", recipe.encode())
        for name, data in node_files().items():
            add_bytes(f"node/{name}", data)
        for name, data in (files or {}).items():
            add_bytes(name, data)
        if env.requirements.strip():
            add_bytes("requirements.txt", env.requirements.encode())
        if env.conda.strip():
            add_bytes("environment.yml", env.conda.encode())
        if wheels_dir is not None:
            tar.add(str(wheels_dir), arcname="wheels")
    tmp.seek(0)
    return tmp


def run_build(client: Any, tag: str, context: Any, network_mode: str | None, log: Log,
              token: CancelToken | None, build_id: str | None = None) -> str:
    """Build, streaming every line of the build log; returns the image id.

    ``build_id``: the value of the recipe's ``aml_magics.build`` label; a build that fails or is
    canceled removes the intermediate images that carry it before this returns.
    """
    import docker

    tail: list[str] = []
    pending = ""

    def emit(text: str) -> None:
        nonlocal tail
        text = redact(_ANSI.sub("", text))  # the builder colours RUN steps' stderr
        log(text)
        tail = (tail + [text])[-LOG_TAIL:]

    error = None
    stream: Any = None
    stop = None
    try:
        stream = client.api.build(fileobj=context, custom_context=True, tag=tag, rm=True,
                                  forcerm=True, pull=False, decode=True, network_mode=network_mode)
        if token is not None:
            stop = token.on_cancel(_closer(stream))  # a step that prints nothing is left at once too
        for chunk in stream:
            if "stream" in chunk:
                pending += chunk["stream"]
                *complete, pending = pending.split("\n")
                for text in complete:
                    if text.strip():
                        emit(text.rstrip("\r"))
            elif "error" in chunk:
                error = str(chunk["error"]).strip()
                emit(error)
            elif "status" in chunk:
                emit(str(chunk["status"]))
            if token is not None:
                token.raise_if_canceled()
        if token is not None:
            token.raise_if_canceled()
    except docker.errors.APIError as exc:
        error = short_reason(exc)
        emit(error)
    except BaseException:
        _end(stream, token, stop)
        if build_id:
            remove_build_images(client, build_id)
        raise
    _end(stream, token, stop)
    if pending.strip():
        emit(pending.rstrip())
    if error:
        if build_id:
            remove_build_images(client, build_id)
        raise ImageBuildError(f"image build failed: {error.splitlines()[-1] if error else ''}", tail)
    try:
        return client.images.get(tag).id
    except docker.errors.ImageNotFound:
        raise ImageBuildError("image build finished but the image is missing", tail) from None


def _closer(stream: Any) -> Callable[[], None]:
    """Close a streamed build's HTTP response (the daemon then cancels the build). The SDK hands
    out only the generator; its response is that generator's argument."""
    frame = getattr(stream, "gi_frame", None)
    response = frame.f_locals.get("response") if frame is not None else None
    return response.close if response is not None else (lambda: None)


def _end(stream: Any, token: CancelToken | None, stop: Any) -> None:
    if token is not None and stop is not None:
        token.forget(stop)
    if stream is not None:
        try:
            stream.close()  # the generator, and with it the connection: the daemon sees the client go
        except Exception:
            pass
        _closer(stream)()


def remove_build_images(client: Any, build_id: str, wait: float = 20.0) -> int:
    """Remove what one failed or canceled build left: its step container (once the daemon has ended
    it) and its intermediate images (untagged; their untagged parents go with them)."""
    mine = {"label": f"{BUILD_LABEL}={build_id}"}
    deadline = time.monotonic() + wait
    removed = 0
    while True:
        try:
            containers = client.api.containers(all=True, filters=mine)
            if containers and time.monotonic() < deadline:
                time.sleep(0.2)  # the step the daemon is canceling: it commits nothing after it is gone
                continue
            for info in containers:
                client.api.remove_container(info["Id"], force=True)
            leaves = client.api.images(filters={"dangling": True, **mine})
        except Exception:
            return removed  # the daemon is gone: the next build's sweep finds these by their owner
        if not leaves:
            return removed
        for info in leaves:
            try:
                client.api.remove_image(info["Id"])
                removed += 1
            except Exception:
                pass
        if time.monotonic() > deadline:
            return removed


def _lock_path(tag: str, kind: str = "lock") -> Path:
    folder = venvs.cache_root() / "docker"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{tag.split(':')[-1]}.{kind}"


class ImageUses:
    """The image tags a run is about to start a container from, each held with a shared lock on
    its *use* file until :meth:`release` (once the container exists, it pins the image itself).
    ``remove_unused`` takes that lock exclusively, without waiting, or keeps the image."""

    def __init__(self) -> None:
        self._files: list[IO[str]] = []

    def take(self, tag: str) -> None:
        handle = open(_lock_path(tag, "use"), "a")
        fcntl.flock(handle, fcntl.LOCK_SH)
        self._files.append(handle)

    def release(self) -> None:
        files, self._files = self._files, []
        for handle in files:
            handle.close()


def unused_lock(tag: str) -> IO[str] | None:
    """The tag's use file locked exclusively (no run is starting from it), or None (one is)."""
    handle = open(_lock_path(tag, "use"), "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def resolve_base(client: Any, base: str, log: Log) -> str:
    """The base image's id; pulled first when it is not here."""
    import docker

    try:
        return client.images.get(base).id
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as exc:
        raise ImageBuildError(f"cannot inspect base image {base}: {short_reason(exc)}") from None
    log(f"aml_magics: base image {base} is not here; pulling it")
    from docker.utils import parse_repository_tag

    repository, tag = parse_repository_tag(base)
    seen: set[tuple[str, str]] = set()
    try:
        for event in client.api.pull(repository, tag=tag or "latest", stream=True, decode=True):
            if "error" in event:
                raise ImageBuildError(f"cannot pull base image {base}: {event['error']}")
            key = (str(event.get("id", "")), str(event.get("status", "")))
            if key not in seen:  # one line per layer and status, not per progress tick
                seen.add(key)
                log(" ".join(p for p in key if p))
        return client.images.get(base).id
    except docker.errors.DockerException as exc:
        raise ImageBuildError(f"base image {base} is not here and cannot be pulled ({short_reason(exc)}); "
                              "pull or build it first, or choose another --base-image") from None


def _redacting(log: Log) -> Log:
    return lambda text: log(redact(text))


def credentials_problem(env: EnvironmentSpec, wheels: str | None) -> str | None:
    """Why this environment cannot be built without storing a URL's credentials in the image, or None.

    Host-resolved wheels keep them on the host; a build that installs from the index itself
    (``--wheels index``, or ``--conda``) would write them into the image's build history.
    """
    where = has_credentials(env)
    if where is None or (wheels != WHEELS_INDEX and not env.conda.strip()):
        return None
    how = "--wheels index" if wheels == WHEELS_INDEX else "--conda (installed from the index in the build)"
    return (f"{where}: a URL with credentials would be stored in the image's build history with {how}; "
            "use the default --wheels host (pip resolves it on this machine)")


def ensure_image(client: Any, env: EnvironmentSpec, *, base: str, wheels: str | None, log: Log,
                 on_build: Callable[[], None] = lambda: None,
                 token: CancelToken | None = None, uses: ImageUses | None = None) -> str:
    """The tag of an image for ``env``, built only when no image has that hash yet.

    ``uses``: hold the tag for a container about to start from it (see :class:`ImageUses`).
    """
    import docker

    log = _redacting(log)  # credentials in a URL are never shown, whoever printed them
    env = canonical(env)
    problem = credentials_problem(env, wheels)
    if problem:
        raise ImageBuildError(problem, final=True)
    base_id = resolve_base(client, base, log)
    tag = image_tag(env, base, base_id)
    if uses is not None:
        uses.take(tag)  # before looking: a --remove-unused now waits for our container

    def existing() -> bool:
        try:
            client.images.get(tag)
            return True
        except docker.errors.ImageNotFound:
            return False

    if existing():
        log(f"aml_magics: reusing image {tag}")
        return tag
    with open(_lock_path(tag), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the same environment built by two runs at once: one build
        if existing():
            log(f"aml_magics: reusing image {tag}")
            return tag
        on_build()
        started = time.monotonic()
        log(f"aml_magics: building image {tag} from {base} (first use of this environment: "
            f"{dependency_summary(env)})")
        _build(client, env, base, base_id, tag, wheels, log, token)
        log(f"aml_magics: image {tag} built in {time.monotonic() - started:.1f}s")
    return tag


def build_labels(base: str, base_id: str, deps: str, **more: str) -> dict[str, str]:
    """An image's labels: what it is made of, who built it, and this build's own id."""
    return {
        LABEL: "1",
        f"{LABEL}.base": base,
        f"{LABEL}.base_id": base_id,
        f"{LABEL}.deps": deps,
        f"{LABEL}.debugpy": venvs.debugpy_requirement(),
        f"{LABEL}.bootstrap": bootstrap_hash(),
        **more,
        **owner_labels(),
        BUILD_LABEL: secrets.token_hex(8),
    }


def sweep_builds(client: Any) -> None:
    """What builds of this user's dead owners left (intermediate images, temp folders): best effort."""
    for sweeper in (lambda: sweep_build_images(client), sweep_build_folders):
        try:
            sweeper()
        except Exception:
            pass


def _build(client: Any, env: EnvironmentSpec, base: str, base_id: str, tag: str, wheels: str | None,
           log: Log, token: CancelToken | None) -> None:
    sweep_builds(client)
    labels = build_labels(base, base_id, dependency_summary(env))
    python = probe_python(client, base_id, base)
    mode = wheels
    if env.conda.strip() and not python.conda:
        raise ImageBuildError(f"--conda needs a base image with conda on its PATH; {base} has none "
                              "(an Azure ML base image such as mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04 has)")
    if env.conda.strip():
        if wheels == WHEELS_HOST:
            log("aml_magics: --conda environments are created in the build from conda channels; "
                "installing pip packages from the index too (--wheels host does not apply)")
        mode = WHEELS_INDEX
    with tempfile.TemporaryDirectory(prefix=build_folder_prefix()) as tmp:
        wheels_dir: Path | None = None
        pip_wheel = None
        if mode in (None, WHEELS_HOST):
            try:
                pip_wheel = download_wheels(env, python, Path(tmp) / "wheels", log, token)
                wheels_dir = Path(tmp) / "wheels"
                mode = WHEELS_HOST
            except ImageBuildError as exc:
                if mode == WHEELS_HOST or exc.final:
                    raise
                if credentials_problem(env, WHEELS_INDEX):
                    raise ImageBuildError(f"{exc}; not falling back to the index inside the build: "
                                          f"{credentials_problem(env, WHEELS_INDEX)}", exc.tail) from None
                log(f"aml_magics: {exc}; falling back to installing from the package index inside the build "
                    "(needs network in the build container; --wheels host makes this an error)")
                mode = WHEELS_INDEX
        image_env = offline_environment(env) if mode == WHEELS_HOST else env
        user = (client.images.get(base_id).attrs.get("Config") or {}).get("User") or ""
        recipe = dockerfile(base_id, image_env, python.executable, mode, pip_wheel, labels, user)
        with build_context(recipe, image_env, wheels_dir) as context:
            # Host wheels: the build needs no network at all, so give it none.
            network = "none" if mode == WHEELS_HOST else None
            run_build(client, tag, context, network, log, token, labels[BUILD_LABEL])


def image_id_of(client: Any, image: str) -> str:
    """The id of an image that must already be here (never pulled), or TargetError in one line."""
    import docker

    try:
        return client.images.get(image).id
    except docker.errors.ImageNotFound:
        raise TargetError(f"--image {image} is not in the local Docker engine ({docker_host()}); pull it first "
                          "(docker pull, or package.pull() after Model.package)") from None
    except docker.errors.APIError as exc:
        raise TargetError(f"--image {image}: {short_reason(exc)}") from None


def ensure_inference_image(client: Any, image: str, *, files: dict[str, bytes], log: Log,
                           on_build: Callable[[], None] = lambda: None,
                           token: CancelToken | None = None, uses: ImageUses | None = None) -> tuple[str, str]:
    """(tag, python): a thin image FROM ``image`` with debugpy, the bootstrap and ``files`` in
    /aml_magics, and the image's own Python that has the inference server. Built offline from
    host-resolved wheels, once per (image id, debugpy, our files)."""
    import docker

    image_id = image_id_of(client, image)
    tag = inference_tag(image_id, files)
    python_label = f"{LABEL}.python"
    if uses is not None:
        uses.take(tag)

    def existing() -> str | None:
        try:
            return (client.images.get(tag).labels or {}).get(python_label)
        except docker.errors.ImageNotFound:
            return None

    python = existing()
    if python:
        log(f"aml_magics: reusing image {tag} ({image} + debugpy; server Python {python})")
        return tag, python
    with open(_lock_path(tag), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        python = existing()
        if python:
            log(f"aml_magics: reusing image {tag} ({image} + debugpy; server Python {python})")
            return tag, python
        on_build()
        started = time.monotonic()
        sweep_builds(client)
        found = find_server_python(client, image_id, image)
        log(f"aml_magics: building image {tag}: {image} + debugpy (the inference server's Python: "
            f"{found.executable})")
        labels = build_labels(image, image_id, "inference image + debugpy", **{python_label: found.executable})
        user = (client.images.get(image_id).attrs.get("Config") or {}).get("User") or ""
        with tempfile.TemporaryDirectory(prefix=build_folder_prefix()) as tmp:
            wheels_dir = Path(tmp) / "wheels"
            pip_wheel = download_wheels(EnvironmentSpec(), found, wheels_dir, log, token)
            recipe = inference_dockerfile(image_id, found.executable, pip_wheel, files, labels, user)
            with build_context(recipe, EnvironmentSpec(), wheels_dir, files) as context:
                run_build(client, tag, context, "none", log, token, labels[BUILD_LABEL])
        log(f"aml_magics: image {tag} built in {time.monotonic() - started:.1f}s")
    return tag, found.executable


