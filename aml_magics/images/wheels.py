"""Wheels resolved on the host for the image's platform and Python, installed offline in the build.

That works where the build container cannot reach a package index (a corporate proxy, an
air-gapped network, this project's CI), reuses the host's pip cache and configuration, and
fails early with pip's own message. ``pip download`` is a process of the run: canceling the
run stops it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from .. import venvs
from ..lifecycle import CancelToken
from ..output import read_lines
from ..processes import ProcessGroup
from ..spec import EnvironmentSpec
from .client import LOG_TAIL, ImageBuildError
from .recipe import ImagePython

Log = Callable[[str], None]


def download_wheels(env: EnvironmentSpec, python: ImagePython, dest: Path, log: Log,
                    cancel_token: CancelToken | None = None) -> str:
    """``pip download`` binary wheels for the image's platform into ``dest``; returns pip's wheel name."""
    dest.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--progress-bar", "off",
            "--only-binary=:all:", "--python-version", "{}.{}".format(*python.version),
            "--implementation", {"cpython": "cp", "pypy": "pp"}.get(python.implementation, "py")]
    for tag in python.platforms():
        argv += ["--platform", tag]
    for abi in python.abis():
        argv += ["--abi", abi]
    argv += ["-d", str(dest), "pip", venvs.debugpy_requirement(), *env.pip]
    if env.requirements.strip():
        req = dest.parent / "requirements.txt"
        req.write_text(env.requirements)
        argv += ["-r", str(req)]
    log("aml_magics: resolving wheels on the host for Python {}.{} ({}): pip download ...".format(
        *python.version, python.platforms()[0]))
    group = ProcessGroup(argv, text=False)
    stop = cancel_token.on_cancel(group.stop) if cancel_token is not None else None
    tail: list[str] = []
    try:
        assert group.process.stdout is not None
        for line in read_lines(group.process.stdout):
            if "is ignored: it is neither a file nor a directory" in line:
                continue  # noise from a pip config naming a local index that is not there
            log(line)
            tail = (tail + [line])[-LOG_TAIL:]
        code = group.wait()
    finally:
        if stop is not None and cancel_token is not None:
            cancel_token.forget(stop)
        group.stop(grace=0.2)
    if cancel_token is not None:
        cancel_token.raise_if_canceled()
    if code != 0:
        raise ImageBuildError(f"pip download on the host failed (exit code {code})", tail)
    pips = sorted(p.name for p in dest.glob("pip-*.whl"))
    if not pips:
        raise ImageBuildError("pip download on the host gave no wheel for pip itself", tail)
    return pips[-1]


