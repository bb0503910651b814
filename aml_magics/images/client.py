"""The Docker daemon: one client per DOCKER_* setting, and its errors in one line.

The docker SDK is imported lazily; nothing here runs at ``import aml_magics``.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from typing import Any

from ..errors import AmlMagicsError, Canceled, TargetError
from ..install import needs
from ..invocation import IMAGE_ROOT, NODE_IN_IMAGE, node_files

LABEL = "aml_magics"
IMAGE_REPO = "aml-magics/env"
ROOT = IMAGE_ROOT
VENV = f"{ROOT}/venv"
VENV_PYTHON = f"{VENV}/bin/python"
WHEELS_HOST = "host"
WHEELS_INDEX = "index"
WHEELS_CHOICES = (WHEELS_HOST, WHEELS_INDEX)
LOG_TAIL = 15
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class ImageBuildError(AmlMagicsError):
    """The image could not be made; ``tail`` holds the last lines of the build log. ``final``: the
    cause is the user's own (a dependency pip cannot resolve): no other way of building is tried."""

    def __init__(self, message: str, tail: list[str] | None = None, *, final: bool = False) -> None:
        super().__init__(message)
        self.tail = tail or []
        self.final = final



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
    return shorten(first)


def shorten(text: str, limit: int = 160) -> str:
    """``text`` up to ``limit`` characters, cut at a word boundary (never mid-word)."""
    if len(text) <= limit:
        return text
    cut = text[:limit - 2].rsplit(" ", 1)[0].rstrip(" ,;:")
    return cut + " …"


_clients: dict[tuple, Any] = {}
_clients_lock = threading.Lock()


def connect(timeout: float = 15.0) -> Any:
    """A docker client on a daemon that answers (one per DOCKER_* setting, reused), or
    TargetError with one clear line."""
    try:
        import docker
    except ImportError:
        raise TargetError(needs("the docker target needs the docker package", "docker")) from None
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


def _remove_quietly(container: Any) -> None:
    try:
        container.remove(force=True)
    except Exception:
        pass



__all__ = ["NODE_IN_IMAGE", "node_files", "Canceled", "ImageBuildError", "LABEL", "IMAGE_REPO", "connect",
           "default_base_image", "docker_host", "short_reason", "shorten"]
