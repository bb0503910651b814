"""The engine: checked request → target → DebugRun, and the registry of this process's runs.

The magic, the CLI and the Python API all start runs here; none of them talks to a
target directly.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

from . import fileio, launch
from .options import OptionsError, RunRequest, check_script_file, check_syntax
from .processes import on_exit
from .run import DebugRun, RunFailed
from .targets import TargetError, make_target


class RunRegistry:
    """Every run started by this process (kernel), by id."""

    def __init__(self) -> None:
        self._runs: dict[str, DebugRun] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._written_cells: set[Path] = set()

    def new_id(self, name: str) -> str:
        with self._lock:
            return f"{name}-{next(self._ids)}"

    def add(self, run: DebugRun) -> None:
        with self._lock:
            self._runs[run.id] = run

    def all(self) -> list[DebugRun]:
        with self._lock:
            return list(self._runs.values())

    def active(self) -> list[DebugRun]:
        return [r for r in self.all() if not r.done]

    def find(self, key: str) -> DebugRun:
        """By id, or the newest run with that name."""
        with self._lock:
            if key in self._runs:
                return self._runs[key]
            named = [r for r in self._runs.values() if r.name == key]
        if named:
            return named[-1]
        raise OptionsError(f"no run {key!r} in this session (see %aml_runs)")

    def cancel_all(self) -> list[DebugRun]:
        active = self.active()
        for run in active:
            run.cancel()
        return active

    def remember_cell(self, path: Path) -> None:
        self._written_cells.add(path.resolve())

    def wrote_cell(self, path: Path) -> bool:
        return path.resolve() in self._written_cells


REGISTRY = RunRegistry()
on_exit(REGISTRY.cancel_all)


def start(request: RunRequest, registry: RunRegistry = REGISTRY, make_run=DebugRun) -> DebugRun:
    """Check everything, write the cell, submit; returns at once with a live DebugRun.

    ``make_run(run_id, spec, target_name)`` builds the handle (a DebugRun subclass, e.g. a deployment)."""
    if getattr(request, "dry_run", False):  # never submit what was only to be shown
        raise OptionsError("--dry-run starts nothing: show the plan with aml_magics.dryrun.plan(request)")
    target = _make_target(request)
    if request.launch_json is not None:
        _check_launch_json(request.launch_json)
    if request.cell is not None and request.cell_file is not None:
        check_syntax(request.cell, str(request.cell_file))
        _write_cell(request.cell_file, request.cell, registry, request.cell_dir_is_ours)
    else:
        check_script_file(request.spec.script_path)
    try:
        target.check(request.spec)
    except TargetError as exc:
        raise OptionsError(str(exc)) from None
    run = make_run(registry.new_id(request.spec.name), request.spec, target.name)
    run.description = run.description or getattr(target, "description", "")  # e.g. "simulated Azure ML"
    if request.launch_json is not None:
        run.subscribe(_launch_json_writer(request.launch_json))
    try:
        handle = target.submit(request.spec, run.events)
    except TargetError as exc:
        raise OptionsError(str(exc)) from None
    run.bind(handle)
    registry.add(run)
    return run


def _make_target(request: RunRequest):
    try:
        return make_target(request.target, **request.target_options)
    except TargetError as exc:
        raise OptionsError(str(exc)) from None


def _check_launch_json(path: Path) -> None:
    if path.exists():
        try:
            launch.parse_jsonc(path.read_text(encoding="utf-8-sig"), str(path))
        except launch.LaunchJsonError as exc:
            raise OptionsError(f"--launch-json: {exc} (file left untouched)") from None
        except OSError as exc:
            raise OptionsError(f"--launch-json: cannot read {path}: {exc.strerror or exc}") from None


def _write_cell(path: Path, cell: str, registry: RunRegistry, dir_is_ours: bool) -> None:
    """Write the cell's script; never overwrite a user's file this session did not write."""
    if path.exists() and not dir_is_ours and not registry.wrote_cell(path):
        try:
            same = path.read_text() == cell
        except (OSError, UnicodeDecodeError):
            same = False
        if not same:
            raise OptionsError(f"{path} exists and was not written by this session; "
                               "pick another --script or --source-dir (nothing was overwritten)")
    try:  # a new temp file, moved over the script; a link there is replaced, never followed
        data = (cell if cell.endswith("\n") else cell + "\n").encode("utf-8")
        fileio.write_atomic(path, data, follow=False)
    except (OSError, UnicodeEncodeError) as exc:
        raise OptionsError(f"cannot write the cell to {path}: {getattr(exc, 'strerror', None) or exc} "
                           "(choose a writable --source-dir)") from None
    registry.remember_cell(path)


def _launch_json_writer(path: Path):
    written: set[tuple] = set()

    def on_event(run: DebugRun, what: str) -> None:
        if what != "endpoint":
            return
        key = tuple(e.address for e in run.endpoints)
        if key in written:
            return
        written.add(key)
        try:
            result = run.write_launch_json(path)
        except (launch.LaunchJsonError, OSError, RunFailed) as exc:
            run.line(f"aml_magics: launch.json not written: {exc}")
            return
        names = ", ".join(result.added + result.replaced)
        run.line(f"aml_magics: wrote {names} to {result.path}")

    return on_event
