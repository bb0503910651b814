"""Who made a container, an image or a build folder, and whether that owner is provably gone.

Containers die with their owner (its stdin channel, see targets/docker.py) and builds clean up
after themselves, but a dead owner can still leave something: a container created and never
started, a build killed mid-step (its intermediate images), a wheel folder of a SIGKILL-ed
``pip download``, a run from before these rules, a daemon that was down when its owner died.
The next run and ``%aml_images`` sweep those.

A pid alone proves nothing (pids are reused, and the daemon may serve other machines through
DOCKER_HOST, or other pid namespaces). So everything carries its owner's uid, pid, the kernel's
boot id, the pid namespace and the process's start time, and an owner is *gone* only when, on
this same boot and in this same pid namespace, that pid is not running or is another process
(another start time). Anything else — another user's, another machine's, a label missing — is
left alone.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .client import LABEL

OWNER_PID = f"{LABEL}.owner_pid"
OWNER_UID = f"{LABEL}.owner_uid"
OWNER_BOOT = f"{LABEL}.owner_boot"
OWNER_PIDNS = f"{LABEL}.owner_pidns"
OWNER_START = f"{LABEL}.owner_start"
BUILD_FOLDER_PREFIX = "aml-magics-build-"
_FOLDER = re.compile(r"^aml-magics-build-(\d+)-(\d+)-([0-9a-f]{8})-")


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def start_time(pid: int) -> str:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22); "" if none runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes().decode("ascii", "replace")
    except (OSError, ValueError):
        return ""
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else ""


@dataclass(frozen=True)
class Owner:
    uid: int
    pid: int
    boot: str
    pidns: str
    start: str

    @classmethod
    def me(cls) -> Owner:
        pid = os.getpid()
        return cls(os.getuid(), pid, boot_id(), pid_namespace(), start_time(pid))

    def labels(self) -> dict[str, str]:
        return {OWNER_PID: str(self.pid), OWNER_UID: str(self.uid), OWNER_BOOT: self.boot,
                OWNER_PIDNS: self.pidns, OWNER_START: self.start}

    @classmethod
    def from_labels(cls, labels: dict[str, str] | None) -> Owner | None:
        labels = labels or {}
        try:
            return cls(int(labels[OWNER_UID]), int(labels[OWNER_PID]), labels[OWNER_BOOT], labels[OWNER_PIDNS],
                       labels[OWNER_START])
        except (KeyError, ValueError):
            return None  # made before these labels, or not by us: never provably gone

    @property
    def is_mine(self) -> bool:
        """This user's (the only ones a sweep may touch)."""
        return self.uid == os.getuid()

    @property
    def gone(self) -> bool:
        """Provably no longer running: same boot and pid namespace, and the pid is dead or reused."""
        if not (self.boot and self.start) or self.boot != boot_id() or self.pidns != pid_namespace():
            return False
        return start_time(self.pid) != self.start


def owner_labels() -> dict[str, str]:
    """The labels of everything a run (or build) of this process makes."""
    return Owner.me().labels()


def _mine() -> dict[str, Any]:
    return {"label": [LABEL, f"{OWNER_UID}={os.getuid()}"]}


def sweep_containers(client: Any) -> list[str]:
    """Remove this user's containers whose owner is provably gone; their names."""
    removed = []
    for info in client.api.containers(all=True, filters=_mine()):
        owner = Owner.from_labels(info.get("Labels"))
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
        owner = Owner.from_labels(info.get("Labels"))
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
