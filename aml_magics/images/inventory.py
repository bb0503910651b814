"""This project's images on the daemon: listing and cleaning them (``%aml_images``)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from ..errors import TargetError
from .client import IMAGE_REPO, LABEL, connect, short_reason


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
