"""What goes into an image: its tag (a hash of everything in it), its Python, its Dockerfile.

An image is the base image + debugpy + the run's dependencies + the bootstrap. Its tag
``aml-magics/env:<hash>`` is a hash of everything that goes into it (the base image's id, the
dependencies in a canonical order, the debugpy version, the bootstrap's content and this
recipe's version), so an unchanged environment is never rebuilt and a changed one always is.
The order and surrounding whitespace of ``--pip`` values change nothing pip installs, so they
change nothing in the tag either.

Credentials in a requirement's URL (``https://user:TOKEN@host/...``) never go into an image: with
host-resolved wheels pip downloads on the host and the recipe names the downloaded file; what
is shown or stored (labels, log lines) is redacted as pip itself redacts (``user:****@``); and a
build that would need them inside (``--wheels index``) is refused.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .. import venvs
from ..invocation import redact_credentials as redact
from ..spec import EnvironmentSpec
from .client import (
    IMAGE_REPO,
    LABEL,
    NODE_IN_IMAGE,
    ROOT,
    VENV,
    VENV_PYTHON,
    WHEELS_HOST,
    ImageBuildError,
    _remove_quietly,
    node_files,
    short_reason,
)
from .owners import owner_labels

RECIPE_VERSION = "2"  # bump when the Dockerfile below changes meaning
BUILD_LABEL = f"{LABEL}.build"  # one build's id: its intermediate images are found (and removed) by it
# Options a --pip value or a requirements line may carry that only the host's pip download uses.
HOST_ONLY_OPTIONS = ("-i", "--index-url", "--extra-index-url", "-f", "--find-links", "--trusted-host", "--no-index")
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://\S+")


def bootstrap_hash() -> str:
    digest = hashlib.sha256()
    for name, data in node_files().items():
        digest.update(name.encode() + b"\0" + data + b"\0")
    return digest.hexdigest()[:16]


def canonical(env: EnvironmentSpec) -> EnvironmentSpec:
    """The same environment however ``--pip`` was spelled: sorted, stripped, each value once."""
    return replace(env, pip=tuple(sorted({p.strip() for p in env.pip if p.strip()})))


def image_tag(env: EnvironmentSpec, base: str, base_id: str) -> str:
    key = canonical(env).fingerprint(base, base_id, venvs.debugpy_requirement(), bootstrap_hash(), RECIPE_VERSION)
    return f"{IMAGE_REPO}:{key}"


def has_credentials(env: EnvironmentSpec) -> str | None:
    """The first requirement (redacted) whose URL carries credentials, or None."""
    for text in (*env.pip, *env.requirements.splitlines()):
        if redact(text) != text:
            return redact(text.strip())
    return None


def dependency_summary(env: EnvironmentSpec) -> str:
    parts = list(canonical(env).pip)
    if env.requirements.strip():
        parts.append(f"-r {Path(env.requirements_path).name if env.requirements_path else 'requirements.txt'}")
    if env.conda.strip():
        parts.append("conda env")
    return redact(" ".join(parts)) or "-"


def offline_requirement(text: str) -> str | None:
    """What the offline install in the image gets for one requirement resolved on the host: a
    host-only option is dropped; a wheel URL becomes the wheel pip downloaded (so neither the
    network nor the URL's credentials are needed in the build)."""
    text = text.strip()
    if not text or text.startswith(HOST_ONLY_OPTIONS):
        return None
    match = _URL.search(text)
    if match is None:
        return text
    url = match.group(0)
    parts = urlsplit(url)
    name = unquote(parts.path.rsplit("/", 1)[-1])
    if parts.scheme in ("http", "https", "file") and name.endswith(".whl"):
        local = f"{ROOT}/wheels/{name}"
        return text.replace(url, f"file://{local}") if "@" in text[:match.start()] else local
    return redact(text)


def offline_environment(env: EnvironmentSpec) -> EnvironmentSpec:
    """``env`` as the image's offline install sees it (host-resolved wheels)."""
    pip = tuple(r for r in (offline_requirement(p) for p in canonical(env).pip) if r is not None)
    lines = [offline_requirement(line) if not line.lstrip().startswith("#") else None
             for line in env.requirements.splitlines()]
    requirements = "".join(f"{line}\n" for line in lines if line is not None)
    return replace(env, pip=pip, requirements=requirements if env.requirements.strip() else "")


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


def probe_python(client: Any, image: str, shown: str | None = None) -> ImagePython:
    """Ask the image which Python it has (no network, removed after). ``shown``: the image's name
    as the user gave it (``image`` may be its id)."""
    import docker

    shown = shown or image
    last = ""
    missing = []
    for executable in ("python3", "python"):
        container = None
        try:
            container = client.containers.create(image, ["-c", PROBE], entrypoint=[executable],
                                                 labels={LABEL: "1", **owner_labels()}, network_disabled=True)
            container.start()
            code = container.wait(timeout=120).get("StatusCode")
            output = container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
            if code == 0:
                data = json.loads(output.strip().splitlines()[-1])
                return ImagePython(data["executable"], tuple(data["version"]), data["implementation"],
                                   data["machine"], data["libc"], data["libc_version"], data.get("conda"))
            last = output.strip().splitlines()[-1] if output.strip() else f"exit code {code}"
        except docker.errors.APIError as exc:
            reason = str(getattr(exc, "explanation", None) or exc)
            if "executable file not found" in reason or "no such file or directory" in reason:
                missing.append(executable)
            last = short_reason(exc)
        except (ValueError, KeyError, IndexError) as exc:
            last = f"unexpected answer: {exc}"
        finally:
            if container is not None:
                _remove_quietly(container)
    if len(missing) == 2:
        raise ImageBuildError(f"base image {shown} has no Python (neither python3 nor python is on its PATH); "
                              "choose a --base-image with Python 3")
    raise ImageBuildError(f"base image {shown} has no usable Python (python3/python): {last}")



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
        f"COPY node {NODE_IN_IMAGE}",
        f"ENV PATH={VENV}/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYDEVD_DISABLE_FILE_VALIDATION=1",
        "WORKDIR /app",
    ]
    if user:
        lines.append(f"USER {user}")
    return "\n".join(lines) + "\n"




# -- an existing inference image, with debugpy added (deployments --image) ----------------------------
INFERENCE_RECIPE_VERSION = "2"  # bump when inference_dockerfile changes meaning
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
                                             environment={"PROBE": PROBE}, labels={LABEL: "1", **owner_labels()},
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
              f"COPY node {NODE_IN_IMAGE}"]
    lines += [f"COPY {name} {ROOT}/{name}" for name in sorted(files)]
    lines.append(f"ENV PYTHONPATH={SITE}${{PYTHONPATH:+:$PYTHONPATH}} PYTHONUNBUFFERED=1 "
                 "PYDEVD_DISABLE_FILE_VALIDATION=1")
    if user:
        lines.append(f"USER {user}")
    return "\n".join(lines) + "\n"


