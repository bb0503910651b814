"""Turns log lines from any target into structured events.

The bootstrap prints ``AML_MAGICS_<KIND> {json}``; a log line may carry a prefix
(timestamps, rank tags), so the marker is searched anywhere in the line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any

_MARKER = re.compile(r"AML_MAGICS_([A-Z][A-Z_]*) (\{.*\})\s*$")


@dataclass(frozen=True)
class Marker:
    kind: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    rank: int = 0
    pid: int | None = None
    cwd: str | None = None  # the run's working directory, as the run sees it
    script: str | None = None  # the entry script's path, as the run sees it

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def moved_to(self, host: str, port: int) -> "Endpoint":
        """The same listener seen from elsewhere (e.g. a published container port)."""
        return replace(self, host=host, port=port)


def parse_marker(line: str) -> Marker | None:
    start = line.find("AML_MAGICS_")
    if start < 0:
        return None
    match = _MARKER.match(line, start)
    if not match:
        return None
    try:
        data = json.loads(match.group(2))
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    return Marker(match.group(1), data)


def is_marker(line: str) -> bool:
    """A machine-readable line (views hide these; the facts are shown elsewhere)."""
    return parse_marker(line) is not None


def endpoint_from(data: dict[str, Any]) -> Endpoint | None:
    """The endpoint an ``AML_MAGICS_ENDPOINT`` marker's data describes, if valid."""
    try:
        host, port = str(data["host"]), int(data["port"])
    except (KeyError, TypeError, ValueError):
        return None
    if not host or not 0 < port < 65536:
        return None
    return Endpoint(
        host=host,
        port=port,
        rank=int(data.get("rank") or 0),
        pid=data.get("pid"),
        cwd=data.get("cwd"),
        script=data.get("script"),
    )
