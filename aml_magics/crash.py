"""Opening a crash capsule: ``run.crash()``, ``aml_magics.open_crash(JOB_OR_RUN)``, ``%aml_crash``.

The node writes one capsule per crashed rank (:mod:`aml_magics.node.capsule`) where the owner
said, or under an Azure ML job's ``outputs/``; a CRASH marker announces it. Here it becomes a
:class:`Crash`: the exception, the frames innermost last (:class:`CrashFrame`), each local a
:class:`Value` whose ``str()`` is what the snapshot panel shows. Where capsules are kept:

- local and Docker runs: ``WORKSPACE/.aml_magics/crashes/RUN_ID/rank-N.json`` (the node writes
  there directly; a container gets that folder bind-mounted), found again by run id;
- Azure ML: the job's ``outputs/aml_magics_crash/`` (uploaded with the job, there after the
  job ended and its owner is gone), downloaded with the SDK by job name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .errors import AmlMagicsError
from .protocol import Marker, register_marker

CRASHES_DIR = Path(".aml_magics") / "crashes"
# The node's (node/capsule.py; the owner imports nothing of the node package but its wire module).
FORMAT = "aml_magics.crash/1"
CONTEXT = 5
OUTPUTS_PREFIX = "outputs/aml_magics_crash"


class CrashNotFound(AmlMagicsError, LookupError):
    """No capsule for that run or job (one line: what was looked at)."""


@dataclass(frozen=True)
class CrashMarker(Marker):
    """``AML_MAGICS_CRASH``: a rank wrote its capsule (where, how big, what raised)."""

    kind: ClassVar[str] = "CRASH"
    file: str = ""
    bytes: int = 0
    sha256: str = ""
    type: str = ""
    message: str = ""


register_marker(CrashMarker)


@dataclass(frozen=True)
class Value:
    """One local as the capsule kept it: its type, its safe text and, for an array, tensor or
    frame, the summary (shape, dtype, device); ``str()`` is what the panel shows."""

    type: str
    text: str
    summary: str | None = None

    def __str__(self) -> str:
        return f"{self.summary} · {self.text}" if self.summary else self.text


@dataclass(frozen=True)
class CrashFrame:
    name: str
    path: str
    line: int
    locals: dict[str, Value] = field(default_factory=dict)
    library: bool = False
    source_first: int = 0
    source_lines: tuple[str, ...] = ()
    locals_total: int = 0

    def __str__(self) -> str:
        return f"{self.name} ({self.path}:{self.line})"


@dataclass(frozen=True)
class CrashException:
    type: str
    message: str
    module: str = ""
    chain: tuple[dict, ...] = ()
    traceback: str = ""

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type


@dataclass(frozen=True)
class Crash:
    """A crashed rank's capsule, read-only."""

    exception: CrashException
    frames: list[CrashFrame]
    rank: int
    path: Path | None = None
    script: str = ""
    dropped: tuple[str, ...] = ()
    created: float = 0.0
    host: str = ""

    def source(self, frame: CrashFrame | int = -1) -> str:
        """The lines around ``frame``'s line (the innermost by default), ``>`` at the line."""
        chosen = self.frames[frame] if isinstance(frame, int) else frame
        lines = list(chosen.source_lines)
        first = chosen.source_first
        if not lines and os.path.isfile(chosen.path):  # a capsule cut down to size: the file, if here
            text = Path(chosen.path).read_text(errors="replace").splitlines()
            first = max(1, chosen.line - CONTEXT)
            lines = text[first - 1:chosen.line + CONTEXT]
        return "\n".join(f"{'>' if first + i == chosen.line else ' '}{first + i:5d}  {text}"
                         for i, text in enumerate(lines))

    def __str__(self) -> str:
        return self.text()

    def text(self) -> str:
        """The plain-text snapshot (terminal IPython, the CLI)."""
        out = [f"crash capsule of rank {self.rank}: {self.exception}"]
        out += [f"  {entry.get('relation', 'context')}: {entry.get('type')}: {entry.get('message')}"
                for entry in self.exception.chain]
        for frame in reversed(self.frames):
            mark = " (library)" if frame.library else ""
            out.append(f"- {frame.name} at {frame.path}:{frame.line}{mark}")
            for name, value in frame.locals.items():
                out.append(f"    {name} = {value}")
        out += [f"(dropped: {note})" for note in self.dropped]
        return "\n".join(out)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.text())

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict:
        from .views.crash import mimebundle

        return mimebundle(self)


def from_dict(data: dict, path: Path | None = None) -> Crash:
    if data.get("format") != FORMAT:
        raise ValueError(f"not a crash capsule ({data.get('format')!r})")
    exc = data.get("exception") or {}
    frames = []
    for entry in data.get("frames") or []:
        source = entry.get("source") or {}
        frames.append(CrashFrame(
            name=str(entry.get("name", "?")), path=str(entry.get("path", "?")), line=int(entry.get("line", 0)),
            locals={str(k): Value(str(v.get("type", "")), str(v.get("text", "")), v.get("summary"))
                    for k, v in (entry.get("locals") or {}).items()},
            library=bool(entry.get("library")), source_first=int(source.get("first", 0) or 0),
            source_lines=tuple(str(x) for x in source.get("lines") or ()),
            locals_total=int(entry.get("locals_total", 0) or 0)))
    return Crash(exception=CrashException(str(exc.get("type", "?")), str(exc.get("message", "")),
                                          str(exc.get("module", "")), tuple(exc.get("chain") or ()),
                                          str(exc.get("traceback", ""))),
                 frames=frames, rank=int(data.get("rank", 0)), path=path, script=str(data.get("script", "")),
                 dropped=tuple(data.get("dropped") or ()), created=float(data.get("time", 0.0) or 0.0),
                 host=str(data.get("host", "")))


def load(path: str | os.PathLike) -> Crash:
    path = Path(path)
    return from_dict(json.loads(path.read_text(encoding="utf-8")), path)


def capsules_in(folder: Path) -> list[Path]:
    """The ``rank-N.json`` files of ``folder`` (searched below it, as a download nests them), by rank."""
    found = [p for p in folder.rglob("rank-*.json") if p.is_file()] if folder.is_dir() else []

    def rank(path: Path) -> int:
        try:
            return int(path.stem.split("-", 1)[1])
        except ValueError:
            return 1 << 30

    return sorted(found, key=rank)


def forget_earlier(folder: Path) -> Path:
    """A new run reuses a run id of an earlier session: that run's capsules are not this one's."""
    for path in capsules_in(folder):
        try:
            path.unlink()
        except OSError:
            pass
    return folder


def pick(folder: Path, rank: int | None = None) -> Crash | None:
    """The capsule of ``rank`` in ``folder`` (None: the lowest crashed rank), or None."""
    for path in capsules_in(folder):
        crash = load(path)
        if rank is None or crash.rank == rank:
            return crash
    return None


def run_folder(run_id: str, workspace: Path | None = None) -> Path:
    """Where a local or Docker run's capsules are kept."""
    return (workspace or Path.cwd()) / CRASHES_DIR / run_id


def announced(run: Any, marker: CrashMarker) -> None:
    """A CRASH marker: the run's panel offers the capsule ("crash capsule: open")."""
    run.crashes.append(marker)
    run.notify("crash")


def find_for_run(run: Any, rank: int | None = None) -> Crash | None:
    """A run of this session: its workspace folder (local, Docker), else its Azure ML job's
    outputs, downloaded once into that folder."""
    folder: Path | None = getattr(run, "crash_dir", None)
    if folder is not None:
        found = pick(folder, rank)
        if found is not None:
            return found
    job = getattr(getattr(run, "handle", None), "run", None)  # an Azure ML monitor's job
    backend: Any = getattr(job, "backend", None)
    client = getattr(job, "client", None)
    if job is None or not hasattr(backend, "download_outputs") or folder is None:
        return None
    dest = Path(tempfile.mkdtemp(prefix="aml-magics-crash-"))
    try:
        backend.download_outputs(client, job.id, dest)
        if not capsules_in(dest):
            return None
        folder.mkdir(parents=True, exist_ok=True)
        for path in capsules_in(dest):
            shutil.copyfile(path, folder / path.name)
    except Exception:
        return None
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    return pick(folder, rank)


# -- a stopped node held (--idle-timeout's watch) ------------------------------------------


@dataclass(frozen=True)
class HeldMarker(Marker):
    """``AML_MAGICS_HELD``: a rank's session stopped at ``since`` (wall clock), or resumed (None)."""

    kind: ClassVar[str] = "HELD"
    since: float | None = None


register_marker(HeldMarker)


class HeldFacet:
    """How long each stopped rank has held its node: "rank 0 stopped, node held for 12 min"."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.since: dict[int, float] = {}

    def on_marker(self, marker: HeldMarker) -> None:
        if marker.since is None:
            self.since.pop(marker.rank, None)
        else:
            self.since[marker.rank] = marker.since
        self.run.notify("held")

    def text_lines(self) -> list[str]:
        if self.run.done:
            return []
        now = time.time()
        return [f"rank {rank} stopped: its node held for {_duration(now - since)} "
                f"(--idle-timeout {self.run.spec.debug.idle_timeout:g} s resumes it)"
                for rank, since in sorted(self.since.items())]

    def html(self) -> str:
        import html

        return "".join(f"<div class='aml-held'>{html.escape(line)}</div>" for line in self.text_lines())


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def watch_held(run: Any) -> None:
    facet = HeldFacet(run)
    run.add_facet(facet)
    run.on_marker(HeldMarker, facet.on_marker)
