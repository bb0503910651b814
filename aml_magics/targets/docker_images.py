"""Images for the docker target: one per environment, built once, found again by its hash.

An image is the base image + debugpy + the run's dependencies + the bootstrap. Its tag
``aml-magics/env:<hash>`` is a hash of everything that goes into it (the base image's
id, the dependencies, the debugpy version, the bootstrap's content and this recipe's
version), so an unchanged environment is never rebuilt and a changed one always is.

Packages are resolved on the host by default (``wheels="host"``): ``pip download`` of
binary wheels for the image's platform and Python, shipped in the build context and
installed with ``--no-index`` in a build that has no network at all. That works where
the build container cannot reach a package index (a corporate proxy, an air-gapped
network, this project's CI), reuses the host's pip cache and configuration, and fails
early with pip's own message. When no wheel exists for a package the build falls back
to installing from the index inside the build (``wheels="index"``), which needs network
in the build container. Conda environments are always created in the build (conda
channels cannot be resolved for another machine from here).

The docker SDK is imported lazily; nothing here runs at ``import aml_magics``.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import venvs
from ..spec import EnvironmentSpec
from .base import TargetError

Log = Callable[[str], None]

LABEL = "aml_magics"
IMAGE_REPO = "aml-magics/env"
RECIPE_VERSION = "1"  # bump when the Dockerfile below changes meaning
ROOT = "/aml_magics"
VENV = f"{ROOT}/venv"
VENV_PYTHON = f"{VENV}/bin/python"
BOOTSTRAP_IN_IMAGE = f"{ROOT}/bootstrap.py"
BOOTSTRAP = Path(__file__).resolve().parent.parent / "bootstrap.py"
WHEELS_HOST = "host"
WHEELS_INDEX = "index"
WHEELS_CHOICES = (WHEELS_HOST, WHEELS_INDEX)
LOG_TAIL = 15
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class ImageBuildError(Exception):
    """The image could not be made; ``tail`` holds the last lines of the build log."""

    def __init__(self, message: str, tail: list[str] | None = None) -> None:
        super().__init__(message)
        self.tail = tail or []


class Canceled(Exception):
    pass


# -- the daemon ----------------------------------------------------------------------
def docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def short_reason(exc: BaseException) -> str:
    """One short phrase from the docker SDK's (often nested, multi-line) messages."""
    text = str(exc)
    match = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if match:
        return match.group(1).strip()
    explanation = getattr(exc, "explanation", None)
    if explanation:
        text = str(explanation)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first if len(first) <= 160 else first[:157] + "..."


_clients: dict[tuple, Any] = {}
_clients_lock = threading.Lock()


def connect(timeout: float = 15.0) -> Any:
    """A docker client on a daemon that answers (one per DOCKER_* setting, reused), or
    TargetError with one clear line."""
    try:
        import docker
    except ImportError:
        raise TargetError("the docker target needs the docker package: pip install 'aml-magics[docker]'") from None
    key = tuple(os.environ.get(name) for name in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"))
    with _clients_lock:
        client = _clients.pop(key, None)
    try:
        if client is None:
            client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as exc:  # DockerException, or requests' errors from ping()
        if client is not None:
            client.close()
        raise TargetError(
            f"cannot reach the Docker daemon at {docker_host()} ({short_reason(exc)}); "
            "start Docker, or set DOCKER_HOST to a running engine"
        ) from None
    with _clients_lock:
        _clients.setdefault(key, client)
    return client


def default_base_image() -> str:
    return f"python:{sys.version_info.major}.{sys.version_info.minor}-slim"


# -- what goes into an image -----------------------------------------------------------
def bootstrap_hash() -> str:
    return hashlib.sha256(BOOTSTRAP.read_bytes()).hexdigest()[:16]


def image_tag(env: EnvironmentSpec, base: str, base_id: str) -> str:
    key = env.fingerprint(base, base_id, venvs.debugpy_requirement(), bootstrap_hash(), RECIPE_VERSION)
    return f"{IMAGE_REPO}:{key}"


def dependency_summary(env: EnvironmentSpec) -> str:
    parts = list(env.pip)
    if env.requirements.strip():
        parts.append(f"-r {Path(env.requirements_path).name if env.requirements_path else 'requirements.txt'}")
    if env.conda.strip():
        parts.append("conda env")
    return " ".join(parts) or "-"


@dataclass(frozen=True)
class ImagePython:
    """What the base image's Python is, for resolving wheels that will install there."""

    executable: str
    version: tuple[int, int]
    implementation: str
    machine: str
    libc: str
    libc_version: str
    conda: str | None = None

    def platforms(self) -> list[str]:
        arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(self.machine, self.machine)
        tags: list[str] = []
        if self.libc == "glibc":
            try:
                minor = int(self.libc_version.split(".")[1])
            except (IndexError, ValueError):
                minor = 17
            tags += [f"manylinux_2_{m}_{arch}" for m in range(minor, 4, -1)]
            legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
            tags += [f"{name}_{arch}" for level, name in legacy.items() if minor >= level
                     and (arch in ("x86_64", "i686") or name == "manylinux2014")]
        elif self.libc == "musl":
            tags += [f"musllinux_1_{m}_{arch}" for m in (2, 1)]
        tags.append(f"linux_{arch}")
        return tags

    def abis(self) -> list[str]:
        major, minor = self.version
        return [f"cp{major}{minor}", "abi3", "none"]


PROBE = r"""
import glob, json, platform, shutil, sys
libc, version = platform.libc_ver()
if not libc and glob.glob("/lib/ld-musl-*"):
    libc = "musl"
print(json.dumps({"executable": sys.executable, "version": list(sys.version_info[:2]),
                  "implementation": sys.implementation.name, "machine": platform.machine(),
                  "libc": libc, "libc_version": version, "conda": shutil.which("conda")}))
"""


def probe_python(client: Any, image: str) -> ImagePython:
    """Ask the image which Python it has (no network, removed after)."""
    import docker

    last = ""
    for executable in ("python3", "python"):
        container = None
        try:
            container = client.containers.create(image, ["-c", PROBE], entrypoint=[executable],
                                                 labels={LABEL: "1"}, network_disabled=True)
            container.start()
            code = container.wait(timeout=120).get("StatusCode")
            output = container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
            if code == 0:
                data = json.loads(output.strip().splitlines()[-1])
                return ImagePython(data["executable"], tuple(data["version"]), data["implementation"],
                                   data["machine"], data["libc"], data["libc_version"], data.get("conda"))
            last = output.strip().splitlines()[-1] if output.strip() else f"exit code {code}"
        except docker.errors.APIError as exc:
            last = short_reason(exc)
        except (ValueError, KeyError, IndexError) as exc:
            last = f"unexpected answer: {exc}"
        finally:
            if container is not None:
                _remove_quietly(container)
    raise ImageBuildError(f"image {image} has no usable Python (python3/python): {last}")


def _remove_quietly(container: Any) -> None:
    try:
        container.remove(force=True)
    except Exception:
        pass


# -- the Dockerfile --------------------------------------------------------------------
def _run(argv: list[str]) -> str:
    return "RUN " + json.dumps(argv)


def dockerfile(base_ref: str, env: EnvironmentSpec, python: str, wheels: str | None,
               pip_wheel: str | None, labels: dict[str, str] | None = None, user: str = "") -> str:
    """The recipe. ``wheels`` = host: install only from /aml_magics/wheels (no network).

    The labels come first, so the build's intermediate containers carry them too. A base
    image with a non-root USER is built as root and runs as its own user again.
    """
    requirements = [venvs.debugpy_requirement(), *env.pip]
    if env.requirements.strip():
        requirements += ["-r", f"{ROOT}/requirements.txt"]
    labels = {LABEL: "1", **(labels or {})}
    lines = [f"FROM {base_ref}", "LABEL " + " ".join(f"{k}={json.dumps(v)}" for k, v in labels.items())]
    if user:
        lines.append("USER root")
    if env.requirements.strip():
        lines.append(f"COPY requirements.txt {ROOT}/requirements.txt")
    if env.conda.strip():
        lines += [f"COPY environment.yml {ROOT}/environment.yml",
                  _run(["conda", "env", "create", "--quiet", "-p", f"{ROOT}/conda", "-f", f"{ROOT}/environment.yml"])]
        python = f"{ROOT}/conda/bin/python"
    pip_options = ["--disable-pip-version-check", "--no-cache-dir", "--progress-bar", "off"]
    if wheels == WHEELS_HOST:
        assert pip_wheel is not None
        # No pip needed in the image: pip runs from its own wheel, into the venv.
        lines += [f"COPY wheels {ROOT}/wheels",
                  _run([python, "-m", "venv", "--system-site-packages", "--without-pip", VENV]),
                  _run([VENV_PYTHON, f"{ROOT}/wheels/{pip_wheel}/pip", "install", *pip_options,
                        "--no-index", "--find-links", f"{ROOT}/wheels", *requirements])]
    else:
        lines += [_run([python, "-m", "venv", "--system-site-packages", VENV]),
                  _run([VENV_PYTHON, "-m", "pip", "install", *pip_options, *requirements])]
    lines += [
        f"COPY bootstrap.py {BOOTSTRAP_IN_IMAGE}",
        f"ENV PATH={VENV}/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYDEVD_DISABLE_FILE_VALIDATION=1",
        "WORKDIR /app",
    ]
    if user:
        lines.append(f"USER {user}")
    return "\n".join(lines) + "\n"


# -- wheels resolved on the host --------------------------------------------------------
def download_wheels(env: EnvironmentSpec, python: ImagePython, dest: Path, log: Log,
                    cancel: Callable[[], bool] = lambda: False) -> str:
    """``pip download`` binary wheels for the image's platform into ``dest``; returns pip's wheel name."""
    dest.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--progress-bar", "off",
            "--only-binary=:all:", "--python-version", "{}.{}".format(*python.version),
            "--implementation", {"cpython": "cp", "pypy": "pp"}.get(python.implementation, "py")]
    for tag in python.platforms():
        argv += ["--platform", tag]
    for abi in python.abis():
        argv += ["--abi", abi]
    argv += ["-d", str(dest), "pip", venvs.debugpy_requirement(), *env.pip]
    if env.requirements.strip():
        req = dest.parent / "requirements.txt"
        req.write_text(env.requirements)
        argv += ["-r", str(req)]
    log("aml_magics: resolving wheels on the host for Python {}.{} ({}): pip download ...".format(
        *python.version, python.platforms()[0]))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, errors="replace")
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        line = line.rstrip("\n")
        if "is ignored: it is neither a file nor a directory" in line:
            continue  # noise from a pip config naming a local index that is not there
        log(line)
        tail = (tail + [line])[-LOG_TAIL:]
        if cancel():
            proc.kill()
    code = proc.wait()
    if cancel():
        raise Canceled
    if code != 0:
        raise ImageBuildError(f"pip download on the host failed (exit code {code})", tail)
    pips = sorted(p.name for p in dest.glob("pip-*.whl"))
    if not pips:
        raise ImageBuildError("pip download on the host gave no wheel for pip itself", tail)
    return pips[-1]


# -- building --------------------------------------------------------------------------
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
              cancel: Callable[[], bool]) -> str:
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
            if cancel():
                raise Canceled
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
                 cancel: Callable[[], bool] = lambda: False) -> str:
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
        _build(client, env, base, base_id, tag, wheels, log, cancel)
        log(f"aml_magics: image {tag} built in {time.monotonic() - started:.1f}s")
    return tag


def _build(client: Any, env: EnvironmentSpec, base: str, base_id: str, tag: str, wheels: str | None,
           log: Log, cancel: Callable[[], bool]) -> None:
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
                pip_wheel = download_wheels(env, python, Path(tmp) / "wheels", log, cancel)
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
            run_build(client, tag, context, network, log, cancel)


# -- an existing inference image, with debugpy added (deployments --image) ---------------------------
INFERENCE_RECIPE_VERSION = "1"  # bump when inference_dockerfile changes meaning
SITE = f"{ROOT}/site"  # debugpy, installed with --target: the image's own Python finds it via PYTHONPATH
SERVER_MODULE = "azureml_inference_server_http"

# Which Python of the image has the inference server: Azure ML's conda env first, then PATH,
# then /azureml-envs/*, then the usual names. Prints FOUND <python> then the probe's JSON.
FIND_SERVER_PYTHON = r"""
has_server() { "$1" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('@MODULE@') is None)" \
    >/dev/null 2>&1; }
for p in "${AZUREML_CONDA_ENVIRONMENT_PATH:+$AZUREML_CONDA_ENVIRONMENT_PATH/bin/python}" \
         "$(command -v python 2>/dev/null)" "$(command -v python3 2>/dev/null)" /azureml-envs/*/bin/python \
         /opt/conda/bin/python /usr/local/bin/python3 /usr/bin/python3; do
    if [ -n "$p" ] && [ -x "$p" ] && has_server "$p"; then
        echo "FOUND $p"
        exec "$p" -c "$PROBE"
    fi
done
echo "NONE"
""".replace("@MODULE@", SERVER_MODULE)


def find_server_python(client: Any, image: str, shown: str) -> ImagePython:
    """The image's Python whose site-packages has the inference server (no network; removed after)."""
    import docker

    container = None
    try:
        container = client.containers.create(image, ["-c", FIND_SERVER_PYTHON], entrypoint=["/bin/sh"],
                                             environment={"PROBE": PROBE}, labels={LABEL: "1"},
                                             network_disabled=True, user="root")
        container.start()
        code = container.wait(timeout=120).get("StatusCode")
        output = container.logs(stdout=True, stderr=True).decode("utf-8", "replace").strip().splitlines()
    except docker.errors.APIError as exc:
        raise ImageBuildError(f"cannot look for the inference server's Python in {shown}: {short_reason(exc)}") \
            from None
    finally:
        if container is not None:
            _remove_quietly(container)
    found = next((line[len("FOUND "):] for line in output if line.startswith("FOUND ")), None)
    if found is None:
        raise ImageBuildError(
            f"image {shown} has no Python with {SERVER_MODULE} (looked at $AZUREML_CONDA_ENVIRONMENT_PATH, "
            "python/python3 on PATH, /azureml-envs/*/bin/python); --image takes an Azure ML inference image")
    try:
        data = json.loads(output[-1])
        return ImagePython(found, tuple(data["version"]), data["implementation"], data["machine"], data["libc"],
                           data["libc_version"], data.get("conda"))
    except (ValueError, KeyError, IndexError):
        last = output[-1] if output else f"exit code {code}"
        raise ImageBuildError(f"the inference server's Python {found} in {shown} does not answer: {last}") from None


def inference_tag(image_id: str, files: dict[str, bytes]) -> str:
    parts = [image_id, venvs.debugpy_requirement(), bootstrap_hash(), INFERENCE_RECIPE_VERSION]
    parts += [f"{name}:{hashlib.sha256(data).hexdigest()}" for name, data in sorted(files.items())]
    return f"{IMAGE_REPO}:{hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]}"


def inference_dockerfile(image_id: str, python: str, pip_wheel: str, files: dict[str, bytes],
                         labels: dict[str, str], user: str = "") -> str:
    """FROM the inference image: debugpy into its own folder (nothing of the image changes), our files."""
    lines = [f"FROM {image_id}", "LABEL " + " ".join(f"{k}={json.dumps(v)}" for k, v in labels.items())]
    if user:
        lines.append("USER root")
    lines += [f"COPY wheels {ROOT}/wheels",
              _run([python, f"{ROOT}/wheels/{pip_wheel}/pip", "install", "--disable-pip-version-check",
                    "--no-cache-dir", "--progress-bar", "off", "--no-index", "--find-links", f"{ROOT}/wheels",
                    "--target", SITE, venvs.debugpy_requirement()]),
              f"COPY bootstrap.py {BOOTSTRAP_IN_IMAGE}"]
    lines += [f"COPY {name} {ROOT}/{name}" for name in sorted(files)]
    lines.append(f"ENV PYTHONPATH={SITE}${{PYTHONPATH:+:$PYTHONPATH}} PYTHONUNBUFFERED=1 "
                 "PYDEVD_DISABLE_FILE_VALIDATION=1")
    if user:
        lines.append(f"USER {user}")
    return "\n".join(lines) + "\n"


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
                           cancel: Callable[[], bool] = lambda: False) -> tuple[str, str]:
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
            pip_wheel = download_wheels(EnvironmentSpec(), found, wheels_dir, log, cancel)
            recipe = inference_dockerfile(image_id, found.executable, pip_wheel, files, labels, user)
            with build_context(recipe, EnvironmentSpec(), wheels_dir, files) as context:
                run_build(client, tag, context, "none", log, cancel)
        log(f"aml_magics: image {tag} built in {time.monotonic() - started:.1f}s")
    return tag, found.executable


# -- listing and cleaning (%aml_images) ------------------------------------------------
@dataclass(frozen=True)
class ImageInfo:
    tags: tuple[str, ...]
    id: str
    created: str
    size_mb: float
    containers: int  # containers (any state) made from it
    base: str
    deps: str

    @property
    def name(self) -> str:
        return self.tags[0] if self.tags else self.id[7:19]

    @property
    def is_env(self) -> bool:
        """Built by the docker target (or left untagged by an interrupted build), not e.g. a base image."""
        return not self.tags or any(t.startswith(IMAGE_REPO + ":") for t in self.tags)


def list_images(client: Any | None = None) -> list[ImageInfo]:
    client = client or connect()
    users: dict[str, int] = {}
    for container in client.containers.list(all=True):
        image_id = container.attrs.get("Image", "")
        users[image_id] = users.get(image_id, 0) + 1
    infos = []
    for image in client.images.list(filters={"label": LABEL}):
        labels = image.labels or {}
        infos.append(ImageInfo(
            tags=tuple(image.tags),
            id=image.id,
            created=str(image.attrs.get("Created", ""))[:19].replace("T", " "),
            size_mb=image.attrs.get("Size", 0) / 1e6,
            containers=users.get(image.id, 0),
            base=labels.get(f"{LABEL}.base", "-"),
            deps=labels.get(f"{LABEL}.deps", "-"),
        ))
    return sorted(infos, key=lambda i: i.created, reverse=True)


def format_images(infos: list[ImageInfo]) -> str:
    if not infos:
        return "no aml_magics images"
    rows = [("image", "created", "size", "containers", "base", "dependencies")]
    rows += [(i.name, i.created, f"{i.size_mb:.0f} MB", str(i.containers), i.base, i.deps) for i in infos]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def remove_image(ref: str, client: Any | None = None) -> str:
    """Remove one of this project's images (by tag or id); refuses any other image."""
    import docker

    client = client or connect()
    try:
        image = client.images.get(ref)
    except docker.errors.ImageNotFound:
        raise TargetError(f"no image {ref!r}") from None
    if (image.labels or {}).get(LABEL) is None:
        raise TargetError(f"{ref} is not an aml_magics image (no '{LABEL}' label); not removed")
    try:
        client.images.remove(image.id, force=False)
    except docker.errors.APIError as exc:
        raise TargetError(f"cannot remove {ref}: {short_reason(exc)}") from None
    return ref


def remove_unused(client: Any | None = None) -> tuple[list[str], list[str]]:
    """Remove the environment images no container (running or stopped) was made from.

    Returns (removed, kept with the reason): an image that a container started using
    meanwhile is kept, never forced.
    """
    client = client or connect()
    removed, kept = [], []
    for info in list_images(client):
        if info.is_env and info.containers == 0:
            try:
                remove_image(info.id, client)
            except TargetError as exc:
                kept.append(f"{info.name} ({exc})")
                continue
            removed.append(info.name)
    return removed, kept


def images_command(line: str) -> str:
    """``%aml_images [--remove-unused | --remove TAG]``: the text to show."""
    usage = "usage: %aml_images [--remove-unused | --remove TAG]"
    try:
        argv = shlex.split(line)
    except ValueError as exc:
        raise TargetError(f"{exc}; {usage}") from None
    if argv not in ([], ["--remove-unused"]) and not (len(argv) == 2 and argv[0] == "--remove"):
        raise TargetError(usage)
    client = connect()
    if argv[:1] == ["--remove"]:
        return f"removed {remove_image(argv[1], client)}"
    if argv == ["--remove-unused"]:
        removed, kept = remove_unused(client)
        text = f"removed {len(removed)} unused image(s)" + (": " + ", ".join(removed) if removed else "")
        return text + "".join(f"\nkept {k}" for k in kept)
    return format_images(list_images(client))
