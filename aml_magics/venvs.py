"""Virtual environments for runs that declare dependencies, cached by a hash of them.

An unchanged environment is never rebuilt: the directory name is the hash of the
interpreter, the dependencies and the debugpy version, and a finished build is
moved into place atomically, so a half-built environment is never reused.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import AmlMagicsError, Canceled
from .lifecycle import RunScope
from .output import read_lines
from .processes import ProcessGroup
from .spec import EnvironmentSpec

Log = Callable[[str], None]


def cache_root() -> Path:
    explicit = os.environ.get("AML_MAGICS_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "aml_magics"


def debugpy_requirement() -> str:
    try:
        from importlib.metadata import version

        return f"debugpy=={version('debugpy')}"
    except Exception:
        return "debugpy"


def venv_dir(env: EnvironmentSpec, python: str = sys.executable) -> Path:
    key = env.fingerprint(python, sys.version, debugpy_requirement())
    return cache_root() / "venvs" / key


def venv_python(directory: Path) -> Path:
    return directory / "bin" / "python"


def ensure_venv(env: EnvironmentSpec, log: Log, python: str = sys.executable,
                run: Callable[[list[str], Log], int] | None = None, scope: RunScope | None = None) -> Path:
    """The interpreter of a venv with ``env``'s packages and debugpy; built if missing.

    The build's processes belong to ``scope`` (the run's): canceling the run stops them at
    once and raises Canceled here; nothing half-built is ever used.
    """
    target = venv_dir(env, python)
    if venv_python(target).exists():
        log(f"aml_magics: reusing environment {target.name} ({target})")
        return venv_python(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent build of the same env waits for ours
        if venv_python(target).exists():
            log(f"aml_magics: reusing environment {target.name} ({target})")
            return venv_python(target)
        _build(env, target, python, log, run or _streamer(scope))
    return venv_python(target)


def _build(env: EnvironmentSpec, target: Path, python: str, log: Log, run: Callable[[list[str], Log], int]) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        log(f"aml_magics: building environment {target.name} (first use of these dependencies)")
        _check(run([python, "-m", "venv", str(staging)], log), "creating the virtual environment")
        packages = [debugpy_requirement(), *env.pip]
        pip = [str(venv_python(staging)), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
        if env.requirements.strip():
            req = staging / "requirements.txt"
            req.write_text(env.requirements)
            packages += ["-r", str(req)]
        _check(run(pip + packages, log), "installing the dependencies")
        os.replace(staging, target)  # venvs run fine from a moved dir when started as bin/python
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"aml_magics: environment {target.name} ready")


def _check(code: int, what: str) -> None:
    if code != 0:
        raise EnvironmentBuildError(f"{what} failed (exit code {code}); see the log above")


class EnvironmentBuildError(AmlMagicsError, RuntimeError):
    pass


def _streamer(scope: RunScope | None) -> Callable[[list[str], Log], int]:
    """Run a build step as a process of the run (stopped by its cancel), streaming its output."""

    def stream(argv: list[str], log: Log) -> int:
        if scope is not None:
            scope.token.raise_if_canceled()
        group = ProcessGroup(argv, text=False, die_with_owner=True)
        stop = scope.token.on_cancel(group.stop) if scope is not None else None
        try:
            assert group.process.stdout is not None
            for line in read_lines(group.process.stdout):
                log(line)
            code = group.wait()
        finally:
            if scope is not None and stop is not None:
                scope.token.forget(stop)
            group.stop(grace=0.2)
        if scope is not None:
            scope.token.raise_if_canceled()
        return code

    return stream


__all__ = ["Canceled", "EnvironmentBuildError", "ensure_venv", "venv_dir"]
