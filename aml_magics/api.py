"""The Python API: ``aml_magics.submit(...)`` builds the same request as the magic;
``aml_magics.debug_pipeline(...)`` submits an Azure ML pipeline with chosen steps debugged."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import engine
from .options import Defaults, build_request, make_parser, options_argv
from .run import DebugRun
from .spec import DEFAULT_PORT, DEFAULT_TIMEOUT


def submit(script: str | None = None, *, code: str | None = None, **options: Any) -> DebugRun:
    """Start a run; ``options`` are the magic's long options with ``_`` for ``-``.

    ``port`` takes an int or "auto", ``pip`` and ``env_var`` lists (``env_var=["K=V"]``
    or ``env={"K": "V"}``), ``args`` a list or a string. Raises OptionsError (a ValueError)
    for bad input.
    """
    ns = _namespace(script, options)
    request = build_request(ns, code, Defaults())
    run = engine.start(request)
    if request.wait:
        try:
            run.wait()
        except KeyboardInterrupt:
            run.cancel()
            raise
    return run


def _namespace(script: str | None, options: dict[str, Any]) -> argparse.Namespace:
    env = options.pop("env", None) or {}
    args = options.pop("args", None)
    argv = options_argv(options)
    for key, value in env.items():
        argv += ["--env-var", f"{key}={value}"]
    if script is not None:
        argv.append(script)
    ns = make_parser("aml_magics.submit").parse_args(argv)
    if isinstance(args, str):
        ns.args = args
        ns.script_args = []
    else:
        ns.script_args = [str(a) for a in (args or ())]
    return ns


def debug_pipeline(steps: Any, debug_steps: list[str] | str | None = None, *, experiment: str | None = None,
                   workspace_config: str | None = None, port: int | None = None, bind: str | None = None,
                   timeout: float | None = None, stop_on_entry: bool = False,
                   pipeline_parameters: dict | None = None, dry_run: bool = False,
                   launch_json: str | Path | None = None, registry: engine.RunRegistry | None = None,
                   cwd: Path | None = None, default_port: int = DEFAULT_PORT,
                   default_timeout: float = DEFAULT_TIMEOUT) -> Any:
    """Submit the Azure ML pipeline made of ``steps`` (the list given to ``Pipeline``) with debugging
    on for the steps named in ``debug_steps`` (default: those whose arguments carry the guide's
    ``--remote_debug``).

    Returns a RunGroup (``.steps[name]`` is each step's DebugRun), or with ``dry_run=True`` a dict
    of what would be submitted, built offline. TargetError (one line) for every problem found
    before submitting; then nothing was submitted.
    """
    from .azureml.pipeline import plan_pipeline

    plan = plan_pipeline(steps, debug_steps, experiment=experiment, workspace_config=workspace_config, port=port,
                         bind=bind, timeout=timeout, stop_on_entry=stop_on_entry,
                         pipeline_parameters=pipeline_parameters, cwd=cwd, default_port=default_port,
                         default_timeout=default_timeout)
    if dry_run:
        try:
            return plan.describe()
        finally:
            plan.cleanup()
    return engine.start_group(plan, "azureml", registry or engine.REGISTRY,
                              launch_json=Path(launch_json) if launch_json is not None else None)


# -- crash capsules ----------------------------------------------------------------------------


def open_crash(job_or_run: Any, rank: int | None = None, workspace_config: str | None = None) -> Any:
    """The crash capsule (an :class:`aml_magics.Crash`) of a run of this session, of a local or
    Docker run id of an earlier session in this workspace (``.aml_magics/crashes/ID``), or of an
    Azure ML job by name (downloaded from the job's outputs with azure-ai-ml). Raises
    :class:`aml_magics.crash.CrashNotFound` (one line) when there is none."""
    from . import crash

    crash_of = getattr(job_or_run, "crash", None)
    if callable(crash_of):
        found = crash_of(rank=rank)
        if found is None:
            raise crash.CrashNotFound(f"run {getattr(job_or_run, 'id', job_or_run)} left no crash capsule")
        return found
    name = str(job_or_run).strip()
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise crash.CrashNotFound(f"not a run id or job name: {job_or_run!r}")
    local = crash.run_folder(name)
    if local.is_dir() and crash.capsules_in(local):
        found = crash.pick(local, rank)
        if found is None:
            raise crash.CrashNotFound(f"run {name}: no capsule of rank {rank} in {local}")
        return found
    return _open_job_crash(name, rank, workspace_config)


def _open_job_crash(name: str, rank: int | None, workspace_config: str | None) -> Any:
    """An Azure ML job's capsules: its outputs downloaded, kept in the workspace like a local run's."""
    import shutil
    import tempfile

    from . import crash
    from .azureml import settings
    from .azureml.v2.service import get_v2_backend
    from .errors import TargetError

    dest = Path(tempfile.mkdtemp(prefix="aml-magics-crash-"))
    try:
        backend = get_v2_backend()
        try:
            ref = settings.locate_workspace(settings.choose_workspace_config(workspace_config), Path.cwd(),
                                            explicit=None)
            backend.download_outputs(backend.open_workspace(ref), name, dest)
        except TargetError as exc:
            raise crash.CrashNotFound(f"job {name}: {exc}") from None
        except Exception as exc:  # the service's not-found, an expired login: one line
            raise crash.CrashNotFound(f"job {name}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
        found = crash.capsules_in(dest)
        if not found:
            raise crash.CrashNotFound(f"job {name} has no crash capsule in its outputs ({crash.OUTPUTS_PREFIX}/)")
        kept = crash.run_folder(name)
        kept.mkdir(parents=True, exist_ok=True)
        for path in found:
            shutil.copyfile(path, kept / path.name)
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    chosen = crash.pick(kept, rank)
    if chosen is None:
        raise crash.CrashNotFound(f"job {name}: no capsule of rank {rank}")
    return chosen
