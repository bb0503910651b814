"""aml_magics: debug code that runs somewhere else, from one notebook cell.

``%load_ext aml_magics`` registers the magics. Importing this package is cheap: the
targets' heavy libraries (docker, azureml) and ipywidgets load only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__

if TYPE_CHECKING:
    from .crash import Crash as Crash
    from .crash import CrashFrame as CrashFrame
    from .crash import Value as Value
    from .debugger import Debugger as Debugger
    from .debugger import DebuggerError as DebuggerError
    from .debugger import DebuggerGroup as DebuggerGroup
    from .run import DebugRun


def __getattr__(name: str) -> Any:
    """``Debugger``, ``DebuggerGroup`` and ``DebuggerError`` load with their package, on first use
    (``Crash``, ``CrashFrame`` and ``Value`` with theirs)."""
    if name in ("Debugger", "DebuggerError", "DebuggerGroup"):
        from . import debugger

        return getattr(debugger, name)
    if name in ("Crash", "CrashFrame", "Value"):
        from . import crash

        return getattr(crash, name)
    raise AttributeError(f"module 'aml_magics' has no attribute {name!r}")


def submit(script: str | None = None, *, code: str | None = None, **options: Any) -> "DebugRun":
    """Start a debug run from Python; same options as the magic (``port=0``, ``timeout=30``, …)."""
    from .api import submit as _submit

    return _submit(script, code=code, **options)


def debug_pipeline(steps: Any, debug_steps: Any = None, **options: Any) -> Any:
    """Submit an Azure ML pipeline with debugging on for chosen steps (see aml_magics.api.debug_pipeline)."""
    from .api import debug_pipeline as _debug_pipeline

    return _debug_pipeline(steps, debug_steps, **options)


def load_ipython_extension(ipython: Any) -> None:
    from .magics import AmlDebugMagics

    ipython.register_magics(AmlDebugMagics)


def unload_ipython_extension(ipython: Any) -> None:
    """Cancel what is still running, and say which runs those were."""
    from .engine import REGISTRY

    canceled = REGISTRY.cancel_all()
    if canceled:
        print("aml_magics: canceled running run(s): " + ", ".join(f"{r.id} ({r.target})" for r in canceled))
    magics = ipython.magics_manager.registry.pop("AmlDebugMagics", None)
    if magics is not None:
        for kind, names in magics.magics.items():
            for name in names:
                ipython.magics_manager.magics[kind].pop(name, None)


def open_crash(job_or_run: Any, rank: int | None = None, workspace_config: str | None = None) -> Any:
    """The crash capsule of a run, a local/Docker run id or an Azure ML job name (see
    aml_magics.api.open_crash): an ``aml_magics.Crash``."""
    from .api import open_crash as _open_crash

    return _open_crash(job_or_run, rank=rank, workspace_config=workspace_config)
