"""The engine: checked request → target → DebugRun, and the registry of this process's runs.

The magic, the CLI and the Python API all start runs here; none of them talks to a target
directly. Each run gets what it owns (a :class:`~.lifecycle.RunScope`: exit stack and cancel
token) and its secrets (:class:`~.invocation.RunSecrets`: the key its marker lines are
authenticated with) before anything starts. A group of runs submitted together (the debugged
steps of an Azure ML pipeline) is started with :func:`start_group`.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from . import failure, fileio, launch
from .errors import OptionsError, RunFailed, TargetError
from .invocation import RunSecrets
from .lifecycle import RunScope
from .options import RunRequest, check_script_file, check_syntax
from .protocol import Endpoint, MarkerReader
from .run import DebugRun
from .spec import RunSpec
from .target_base import RunContext, RunHandle
from .targets import make_target, target_info
from .tunnel import TunnelCredentials, TunnelledHandle

MakeRun = Callable[..., DebugRun]


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
        threads = [threading.Thread(target=run.cancel, daemon=True) for run in active]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return active

    def remember_cell(self, path: Path) -> None:
        self._written_cells.add(path.resolve())

    def wrote_cell(self, path: Path) -> bool:
        return path.resolve() in self._written_cells


REGISTRY = RunRegistry()


def _new_run(registry: RunRegistry, spec: RunSpec, target: str, make_run: MakeRun = DebugRun,
             **extra: Any) -> tuple[DebugRun, RunContext, _HandleSlot]:
    """A run handle with its scope and secrets (a tunnel's certificates when its debug port leaves
    this machine), and the context its target is given."""
    secrets = RunSecrets.new()
    if needs_tunnel(spec, target):
        secrets.tunnel = TunnelCredentials.new()
    run = make_run(registry.new_id(spec.name), spec, target, reader=MarkerReader(secrets.marker_key), **extra)
    failure.watch(run)  # a failure's exception and a cancel's time, in the run's detail
    scope = RunScope(run.id)
    slot = _HandleSlot(scope, secrets.tunnel, run.line)
    run.bind(slot, scope)
    if not spec.debug.secure and needs_tunnel(replace(spec, debug=replace(spec.debug, secure=True)), target):
        run.line("aml_magics: WARNING --insecure: the debug port is reached directly, without authentication; "
                 "whoever reaches it can run any code in the run")
    return run, RunContext(run.events, scope, secrets), slot


def needs_tunnel(spec: RunSpec, target: str) -> bool:
    """Whether the run's debug port leaves this machine (then the tunnel is on, unless --insecure):
    every target whose capabilities say so (``leaves_machine``: a container, a remote node); any
    other bound to anything but loopback."""
    debug = spec.debug
    if not debug.enabled or not debug.secure:
        return False
    if target_info(target).capabilities.leaves_machine:
        return True
    bind = debug.bind or "127.0.0.1"
    return not (bind.startswith("127.") or bind == "localhost")


def _check_subprocesses(spec: RunSpec, target: str) -> None:
    """Child processes get sessions of their own on debugpy's adapter port, which a client must
    reach directly: the tunnel fronts one session of one process."""
    if spec.debug.subprocesses and needs_tunnel(spec, target):
        raise OptionsError(f"--subprocesses with --bind {spec.debug.bind}: the child processes' sessions cannot go "
                           "through the authenticated tunnel yet; bind loopback, or add --insecure")


def start(request: RunRequest, registry: RunRegistry = REGISTRY, make_run: MakeRun = DebugRun) -> DebugRun:
    """Check everything, write the cell, submit; returns at once with a live DebugRun.

    ``make_run(run_id, spec, target_name, reader=...)`` builds the handle (a DebugRun, or one
    extended for a deployment)."""
    if request.dry_run:  # never submit what was only to be shown
        raise OptionsError("--dry-run starts nothing: show the plan with aml_magics.dryrun.plan(request)")
    target = _make_target(request)
    _check_subprocesses(request.spec, request.target)
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
    run, ctx, slot = _new_run(registry, request.spec, target.name, make_run)
    run.description = run.description or getattr(target, "description", "")  # e.g. "simulated Azure ML"
    run.launch_json_path = request.launch_json or launch.default_launch_json(Path.cwd())
    if request.launch_json is not None:
        run.subscribe(launch_json_writer(request.launch_json))
    try:
        slot.fill(target.submit(request.spec, ctx))
    except TargetError as exc:
        ctx.scope.close()
        raise OptionsError(str(exc)) from None
    except BaseException:
        ctx.scope.close()
        raise
    registry.add(run)
    return run


# -- groups --------------------------------------------------------------------------------------


class GroupHandle(Protocol):
    """What a group submission returns: one RunHandle per member, and the group's own control."""

    @property
    def id(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def steps(self) -> Mapping[str, Any]: ...
    def cancel(self) -> None: ...
    def is_done(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...
    def status(self) -> str: ...


class GroupPlan(Protocol):
    """Runs to submit together (e.g. an Azure ML pipeline's debugged steps)."""

    @property
    def members(self) -> list[tuple[str, RunSpec]]: ...
    def submit(self, contexts: dict[str, RunContext]) -> GroupHandle: ...
    def cleanup(self) -> None: ...


class RunGroup:
    """Runs submitted together: ``.runs[name]`` is each member's DebugRun."""

    def __init__(self, handle: GroupHandle, runs: dict[str, DebugRun]) -> None:
        self.handle = handle
        self.runs = runs

    @property
    def id(self) -> str:
        return self.handle.id

    @property
    def description(self) -> str:
        return self.handle.description

    @property
    def steps(self) -> dict[str, DebugRun]:
        """The member runs by name (a pipeline's steps)."""
        return self.runs

    @property
    def done(self) -> bool:
        return self.handle.is_done() and all(run.done for run in self.runs.values())

    def cancel(self) -> None:
        self.handle.cancel()
        for run in self.runs.values():
            run.cancel()

    def wait(self, timeout: float | None = None) -> str:
        for run in self.runs.values():
            run.wait(timeout)
        self.handle.wait(timeout)
        return self.handle.status()

    def launch_json(self, workspace_folder: str | Path | None = None) -> dict:
        configs = [c for run in self.runs.values() for c in run.launch_configs(workspace_folder)]
        return launch.fragment(configs)

    def __repr__(self) -> str:
        steps = ", ".join(f"{n}: {r.state}" for n, r in self.runs.items())
        return f"<RunGroup {self.id} {steps}>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict:
        from .views import group_mimebundle

        return group_mimebundle(self)


def start_group(plan: GroupPlan, target: str, registry: RunRegistry = REGISTRY,
                launch_json: Path | None = None) -> RunGroup:
    """Submit a group of runs (each with its own scope and secrets); returns at once."""
    runs: dict[str, DebugRun] = {}
    contexts: dict[str, RunContext] = {}
    slots: dict[str, _HandleSlot] = {}
    for name, spec in plan.members:
        run, ctx, slot = _new_run(registry, spec, target)
        runs[name], contexts[name], slots[name] = run, ctx, slot
        run.launch_json_path = launch_json or launch.default_launch_json(Path.cwd())
        if launch_json is not None:
            run.subscribe(launch_json_writer(launch_json))
    try:
        handle = plan.submit(contexts)
    except BaseException:  # TargetError included: the caller says it in one line
        _close_all(contexts)
        raise
    for name, run in runs.items():
        run.description = f"{handle.description}, step {name}"
        slots[name].fill(handle.steps[name])
        registry.add(run)
    return RunGroup(handle, runs)


def _close_all(contexts: dict[str, RunContext]) -> None:
    for ctx in contexts.values():
        ctx.scope.close()


class _HandleSlot:
    """A run's handle from before its target answered: one object, so a marker that arrives
    before ``submit()`` returned is still mapped by the real handle (and, for a tunnelled run,
    reached through its forwarder); cancel before then is the scope's."""

    def __init__(self, scope: RunScope, tunnel: TunnelCredentials | None, say: Callable[[str], None]) -> None:
        self.scope = scope
        self.tunnel = tunnel
        self.say = say
        self._inner: Any = None
        self._ready = threading.Event()

    def fill(self, handle: RunHandle) -> None:
        self._inner = TunnelledHandle(handle, self.tunnel, self.scope, self.say) if self.tunnel else handle
        self._ready.set()

    def __getattr__(self, name: str) -> Any:  # the target's extras (e.g. map_scoring_uri, group)
        if name.startswith("_") or self._inner is None:
            raise AttributeError(name)
        return getattr(self._inner, name)

    def cancel(self) -> None:
        if self._inner is not None:
            self._inner.cancel()
        else:
            self.scope.cancel()

    def is_done(self) -> bool:
        return self._inner.is_done() if self._inner is not None else self.scope.closed

    def map_endpoint(self, endpoint: Endpoint) -> Endpoint:
        self._ready.wait(30)  # the target reports before submit() returned: a moment
        return self._inner.map_endpoint(endpoint) if self._inner is not None else endpoint


# -- helpers -------------------------------------------------------------------------------------


def _make_target(request: RunRequest) -> Any:
    try:
        return make_target(request.target, **request.target_options)
    except TargetError as exc:
        raise OptionsError(str(exc)) from None


def _check_launch_json(path: Path) -> None:
    """Refuse up front what a merge would refuse later (nothing starts, the file is untouched)."""
    try:
        launch.check_launch_json(path)
    except launch.LaunchJsonError as exc:
        raise OptionsError(f"--launch-json: {exc} (file left untouched)") from None


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


def launch_json_writer(path: Path) -> Callable[[DebugRun, str], None]:
    """A run listener that merges the run's configurations into ``path`` as endpoints appear."""
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


__all__ = ["REGISTRY", "RunGroup", "RunRegistry", "launch_json_writer", "start", "start_group", "RunHandle"]
