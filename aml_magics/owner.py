"""Who started something, and whether that process is provably gone.

Whatever a run leaves outside its own process tree — a container, an image, a build folder, a
simulated cluster's namespaces — is swept by the next run when its owner is gone. A pid alone
proves nothing: pids are reused, and the same name may be seen from another pid namespace or
(a Docker daemon behind DOCKER_HOST) another machine. So an owner is its uid, pid, the kernel's
boot id, its pid namespace and its start time, and it is *gone* only when, on this same boot and
in this same pid namespace, that pid is not running or is another process (another start time).
Anything else is left alone: never provably gone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

FIELDS = ("uid", "pid", "boot", "pidns", "start")


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

    def fields(self, prefix: str = "") -> dict[str, str]:
        """As strings under ``prefix + name`` (Docker labels, a record file)."""
        return {prefix + name: str(getattr(self, name)) for name in FIELDS}

    @classmethod
    def from_fields(cls, fields: Mapping[str, str] | None, prefix: str = "") -> Owner | None:
        """The owner written by :meth:`fields`; ``None`` if any part is missing or malformed."""
        fields = fields or {}
        try:
            return cls(int(fields[prefix + "uid"]), int(fields[prefix + "pid"]), fields[prefix + "boot"],
                       fields[prefix + "pidns"], fields[prefix + "start"])
        except (KeyError, ValueError, TypeError):
            return None

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
