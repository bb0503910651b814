"""Who made a container, an image or a build folder, and whether that owner is provably gone.

Containers die with their owner (its stdin channel, see targets/docker.py) and builds clean up
after themselves, but a dead owner can still leave something: a container created and never
started, a build killed mid-step (its intermediate images), a wheel folder of a SIGKILL-ed
``pip download``, a run from before these rules, a daemon that was down when its owner died.
The next run and ``%aml_images`` sweep those.

Everything carries its owner (``aml_magics.owner``: uid, pid, boot id, pid namespace, start
time) in its labels, and is swept only when that owner is provably gone. Anything else —
another user's, another machine's, a label missing — is left alone.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..owner import Owner, boot_id, start_time
from .client import LABEL

OWNER_PREFIX = f"{LABEL}.owner_"  # + uid, pid, boot, pidns, start
OWNER_UID = f"{OWNER_PREFIX}uid"
BUILD_FOLDER_PREFIX = "aml-magics-build-"
_FOLDER = re.compile(r"^aml-magics-build-(\d+)-(\d+)-([0-9a-f]{8})-")


def owner_labels(owner: Owner | None = None) -> dict[str, str]:
    """The labels of everything a run (or build) of this process (or ``owner``) makes."""
    return (owner or Owner.me()).fields(OWNER_PREFIX)


def labelled_owner(labels: dict[str, str] | None) -> Owner | None:
    """Who made it; ``None`` when made before these labels, or not by us: never provably gone."""
    return Owner.from_fields(labels, OWNER_PREFIX)


def _mine() -> dict[str, Any]:
    return {"label": [LABEL, f"{OWNER_UID}={os.getuid()}"]}


def sweep_containers(client: Any) -> list[str]:
    """Remove this user's containers whose owner is provably gone; their names."""
    removed = []
    for info in client.api.containers(all=True, filters=_mine()):
        owner = labelled_owner(info.get("Labels"))
        if owner is None or not owner.is_mine or not owner.gone:
            continue
        try:
            client.api.remove_container(info["Id"], force=True)
        except Exception:
            continue  # removed meanwhile (auto-remove), or the daemon refuses: the next sweep retries
        removed.append(((info.get("Names") or [info["Id"][:12]])[0]).lstrip("/"))
    return removed


def sweep_build_images(client: Any) -> list[str]:
    """Remove the intermediate images (untagged, no children) of this user's builds whose owner is
    provably gone; their short ids. Their untagged parents go with them."""
    removed = []
    for info in client.api.images(filters={"dangling": True, **_mine()}):
        owner = labelled_owner(info.get("Labels"))
        if owner is None or not owner.is_mine or not owner.gone:
            continue
        try:
            client.api.remove_image(info["Id"])
        except Exception:
            continue
        removed.append(info["Id"].split(":")[-1][:12])
    return removed


def build_folder_prefix() -> str:
    """Temp folders of a build are named by their owner (pid, start time, boot), so a build that
    was killed with its owner is found again by the next one."""
    me = Owner.me()
    return f"{BUILD_FOLDER_PREFIX}{me.pid}-{me.start or 0}-{(me.boot.replace('-', '') or '0' * 8)[:8]}-"


def sweep_build_folders(root: str | None = None) -> list[str]:
    """Remove this user's build folders (in the temp dir) whose owner is gone; their paths."""
    removed = []
    boot = boot_id().replace("-", "")[:8]
    folder = Path(root or tempfile.gettempdir())
    for path in folder.glob(f"{BUILD_FOLDER_PREFIX}*"):
        match = _FOLDER.match(path.name)
        if match is None:
            continue
        try:
            if path.is_symlink() or not path.is_dir() or path.lstat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        pid, start, its_boot = int(match.group(1)), match.group(2), match.group(3)
        if its_boot == boot and start_time(pid) == start:
            continue  # its owner still runs (possibly building right now)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(str(path))
    return removed


def sweep(client: Any) -> dict[str, list[str]]:
    """Everything a dead owner of this user left: containers, build images, build folders."""
    result: dict[str, list[str]] = {}
    for what, sweeper in (("containers", lambda: sweep_containers(client)),
                          ("images", lambda: sweep_build_images(client)),
                          ("folders", sweep_build_folders)):
        try:
            result[what] = sweeper()
        except Exception:
            result[what] = []  # best effort: a sweep never fails a run
    return result
