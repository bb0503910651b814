"""This project's images on the daemon: listing and cleaning them (``%aml_images``).

Cleaning touches only what this user built (the ``aml_magics.owner_uid`` label): a daemon is
often shared, and another user's cached environment is not ours to delete. It never removes an
image a container was made from, nor one a run is about to start a container from (the run
holds the tag's use lock, see :class:`.build.ImageUses`). Every ``%aml_images`` first sweeps what
this user's dead owners left (:mod:`.owners`).
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from typing import Any

from ..errors import TargetError
from .build import unused_lock
from .client import IMAGE_REPO, LABEL, connect, short_reason
from .owners import OWNER_UID, sweep


@dataclass(frozen=True)
class ImageInfo:
    tags: tuple[str, ...]
    id: str
    created: str
    size_mb: float
    containers: int  # containers (any state) made from it
    base: str
    deps: str
    owner_uid: str = ""  # who built it ("" before owner labels)

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
            owner_uid=labels.get(OWNER_UID, ""),
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

    if not ref.strip():
        raise TargetError("--remove takes an image's tag or id (see %aml_images), not an empty name")
    client = client or connect()
    try:
        image = client.images.get(ref)
    except docker.errors.ImageNotFound:
        raise TargetError(f"no image {ref!r}") from None
    except (docker.errors.APIError, docker.errors.DockerException) as exc:  # a name docker cannot parse
        raise TargetError(f"cannot look up image {ref!r}: {short_reason(exc)}") from None
    labels = image.labels or {}
    if labels.get(LABEL) is None:
        raise TargetError(f"{ref} is not an aml_magics image (no '{LABEL}' label); not removed")
    if labels.get(OWNER_UID, str(os.getuid())) != str(os.getuid()):
        raise TargetError(f"{ref} was built by another user (uid {labels[OWNER_UID]}); not removed")
    try:
        client.images.remove(image.id, force=False)
    except docker.errors.APIError as exc:
        raise TargetError(f"cannot remove {ref}: {short_reason(exc)}") from None
    return ref


def remove_unused(client: Any | None = None) -> tuple[list[str], list[str]]:
    """Remove this user's environment images that no container (running or stopped) was made from
    and no run is about to start from.

    Returns (removed, kept with the reason): an image that a container started using
    meanwhile is kept, never forced. Another user's images (and images made before owner
    labels) are not looked at; untagged ones left are a build of a live owner, still running.
    """
    client = client or connect()
    me = str(os.getuid())
    removed, kept = [], []
    for info in list_images(client):
        if not info.is_env or info.containers or info.owner_uid != me or not info.tags:
            continue
        locks = [unused_lock(tag) for tag in info.tags if tag.startswith(IMAGE_REPO + ":")]
        try:
            if any(lock is None for lock in locks):
                kept.append(f"{info.name} (a run is starting a container from it)")
                continue
            try:
                remove_image(info.id, client)
            except TargetError as exc:
                kept.append(f"{info.name} ({exc})")
                continue
            removed.append(info.name)
        finally:
            for lock in locks:
                if lock is not None:
                    lock.close()
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
    if argv[:1] == ["--remove"] and not argv[1].strip():
        raise TargetError(f"--remove takes an image's tag or id, not an empty name; {usage}")
    client = connect()
    swept = sweep(client)
    notes = "".join(f"\nremoved {len(items)} {what} left by runs whose owner is gone"
                    for what, items in (("container(s)", swept["containers"]),
                                        ("intermediate build image(s)", swept["images"]),
                                        ("build folder(s)", swept["folders"])) if items)
    if argv[:1] == ["--remove"]:
        return f"removed {remove_image(argv[1], client)}" + notes
    if argv == ["--remove-unused"]:
        removed, kept = remove_unused(client)
        text = f"removed {len(removed)} unused image(s)" + (": " + ", ".join(removed) if removed else "")
        return text + "".join(f"\nkept {k}" for k in kept) + notes
    return format_images(list_images(client)) + notes
