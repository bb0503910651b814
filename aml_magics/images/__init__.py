"""Images for the docker target (and deployments): one per environment, built once, found
again by its hash.

- :mod:`.client`: the daemon (one client per DOCKER_* setting) and its errors in one line;
- :mod:`.recipe`: what goes into an image — its tag, its Python, its Dockerfile;
- :mod:`.wheels`: wheels resolved on the host, installed offline in the build;
- :mod:`.build`: building, streamed, cached, locked (and inference images with debugpy added);
- :mod:`.inventory`: this project's images on the daemon (``%aml_images``);
- :mod:`.owners`: who made a container, image or build folder, and the sweep of what a dead owner left.

The docker SDK is imported lazily; nothing here runs at ``import aml_magics``.
"""

from __future__ import annotations

from .build import (
    ImageUses,
    credentials_problem,
    ensure_image,
    ensure_inference_image,
    image_id_of,
    remove_build_images,
    resolve_base,
    run_build,
)
from .client import (
    IMAGE_REPO,
    LABEL,
    NODE_IN_IMAGE,
    ROOT,
    VENV,
    VENV_PYTHON,
    WHEELS_CHOICES,
    WHEELS_HOST,
    WHEELS_INDEX,
    Canceled,
    ImageBuildError,
    connect,
    default_base_image,
    docker_host,
    short_reason,
    shorten,
)
from .inventory import ImageInfo, format_images, images_command, list_images, remove_image, remove_unused
from .owners import owner_labels, sweep
from .recipe import ImagePython, canonical, dockerfile, image_tag, probe_python, redact

__all__ = [
    "NODE_IN_IMAGE", "IMAGE_REPO", "LABEL", "ROOT", "VENV", "VENV_PYTHON", "WHEELS_CHOICES",
    "WHEELS_HOST", "WHEELS_INDEX", "Canceled", "ImageBuildError", "ImageInfo", "ImagePython", "ImageUses",
    "canonical", "connect", "credentials_problem", "default_base_image", "docker_host", "dockerfile", "ensure_image",
    "ensure_inference_image", "format_images", "image_id_of", "image_tag", "images_command", "list_images",
    "owner_labels", "probe_python", "redact", "remove_build_images", "remove_image", "remove_unused",
    "resolve_base", "run_build", "short_reason", "shorten", "sweep",
]
