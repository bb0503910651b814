"""Building images: the build context, the streamed build, the cache lookups and their locks.

Packages are resolved on the host by default (``wheels="host"``, see :mod:`.wheels`) and
installed with ``--no-index`` in a build that has no network at all. When no wheel exists for
a package the build falls back to installing from the index inside the build
(``wheels="index"``), which needs network in the build container. Conda environments are
always created in the build (conda channels cannot be resolved for another machine from here).
"""

from __future__ import annotations

import fcntl
import io
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import venvs
from ..errors import TargetError
from ..lifecycle import CancelToken
from ..spec import EnvironmentSpec
from .client import (
    _ANSI,
    BOOTSTRAP,
    LABEL,
    LOG_TAIL,
    WHEELS_HOST,
    WHEELS_INDEX,
    ImageBuildError,
    docker_host,
    short_reason,
)
from .recipe import (
    bootstrap_hash,
    dependency_summary,
    dockerfile,
    find_server_python,
    image_tag,
    inference_dockerfile,
    inference_tag,
    probe_python,
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
        add_bytes("bootstrap.py", BOOTSTRAP.read_bytes())
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
              token: CancelToken | None) -> str:
    """Build, streaming every line of the build log; returns the image id."""
    import docker

    tail: list[str] = []
    pending = ""

    def emit(text: str) -> None:
        nonlocal tail
        text = _ANSI.sub("", text)  # the builder colours RUN steps' stderr
        log(text)
        tail = (tail + [text])[-LOG_TAIL:]

    error = None
    try:
        stream = client.api.build(fileobj=context, custom_context=True, tag=tag, rm=True,
                                  forcerm=True, pull=False, decode=True, network_mode=network_mode)
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
    except docker.errors.APIError as exc:
        error = short_reason(exc)
        emit(error)
    if pending.strip():
        emit(pending.rstrip())
    if error:
        raise ImageBuildError(f"image build failed: {error.splitlines()[-1] if error else ''}", tail)
    try:
        return client.images.get(tag).id
    except docker.errors.ImageNotFound:
        raise ImageBuildError("image build finished but the image is missing", tail) from None


def _lock_path(tag: str) -> Path:
    folder = venvs.cache_root() / "docker"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / (tag.split(":")[-1] + ".lock")


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


def ensure_image(client: Any, env: EnvironmentSpec, *, base: str, wheels: str | None, log: Log,
                 on_build: Callable[[], None] = lambda: None,
                 token: CancelToken | None = None) -> str:
    """The tag of an image for ``env``, built only when no image has that hash yet."""
    import docker

    base_id = resolve_base(client, base, log)
    tag = image_tag(env, base, base_id)

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


def _build(client: Any, env: EnvironmentSpec, base: str, base_id: str, tag: str, wheels: str | None,
           log: Log, token: CancelToken | None) -> None:
    labels = {
        LABEL: "1",
        f"{LABEL}.base": base,
        f"{LABEL}.base_id": base_id,
        f"{LABEL}.deps": dependency_summary(env),
        f"{LABEL}.debugpy": venvs.debugpy_requirement(),
        f"{LABEL}.bootstrap": bootstrap_hash(),
    }
    python = probe_python(client, base_id)
    mode = wheels
    if env.conda.strip() and not python.conda:
        raise ImageBuildError(f"--conda needs a base image with conda on its PATH; {base} has none "
                              "(an Azure ML base image such as mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04 has)")
    if env.conda.strip():
        if wheels == WHEELS_HOST:
            log("aml_magics: --conda environments are created in the build from conda channels; "
                "installing pip packages from the index too (--wheels host does not apply)")
        mode = WHEELS_INDEX
    with tempfile.TemporaryDirectory(prefix="aml-magics-build-") as tmp:
        wheels_dir: Path | None = None
        pip_wheel = None
        if mode in (None, WHEELS_HOST):
            try:
                pip_wheel = download_wheels(env, python, Path(tmp) / "wheels", log, token)
                wheels_dir = Path(tmp) / "wheels"
                mode = WHEELS_HOST
            except ImageBuildError as exc:
                if mode == WHEELS_HOST:
                    raise
                log(f"aml_magics: {exc}; falling back to installing from the package index inside the build "
                    "(needs network in the build container; --wheels host makes this an error)")
                mode = WHEELS_INDEX
        user = (client.images.get(base_id).attrs.get("Config") or {}).get("User") or ""
        recipe = dockerfile(base_id, env, python.executable, mode, pip_wheel, labels, user)
        with build_context(recipe, env, wheels_dir) as context:
            # Host wheels: the build needs no network at all, so give it none.
            network = "none" if mode == WHEELS_HOST else None
            run_build(client, tag, context, network, log, token)



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
                           token: CancelToken | None = None) -> tuple[str, str]:
    """(tag, python): a thin image FROM ``image`` with debugpy, the bootstrap and ``files`` in
    /aml_magics, and the image's own Python that has the inference server. Built offline from
    host-resolved wheels, once per (image id, debugpy, our files)."""
    import docker

    image_id = image_id_of(client, image)
    tag = inference_tag(image_id, files)
    python_label = f"{LABEL}.python"

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
        found = find_server_python(client, image_id, image)
        log(f"aml_magics: building image {tag}: {image} + debugpy (the inference server's Python: "
            f"{found.executable})")
        labels = {LABEL: "1", f"{LABEL}.base": image, f"{LABEL}.base_id": image_id,
                  f"{LABEL}.deps": "inference image + debugpy", f"{LABEL}.debugpy": venvs.debugpy_requirement(),
                  f"{LABEL}.bootstrap": bootstrap_hash(), python_label: found.executable}
        user = (client.images.get(image_id).attrs.get("Config") or {}).get("User") or ""
        with tempfile.TemporaryDirectory(prefix="aml-magics-build-") as tmp:
            wheels_dir = Path(tmp) / "wheels"
            pip_wheel = download_wheels(EnvironmentSpec(), found, wheels_dir, log, token)
            recipe = inference_dockerfile(image_id, found.executable, pip_wheel, files, labels, user)
            with build_context(recipe, EnvironmentSpec(), wheels_dir, files) as context:
                run_build(client, tag, context, "none", log, token)
        log(f"aml_magics: image {tag} built in {time.monotonic() - started:.1f}s")
    return tag, found.executable


