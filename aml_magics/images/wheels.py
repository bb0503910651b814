"""Wheels resolved on the host for the image's platform and Python, installed offline in the build.

That works where the build container cannot reach a package index (a corporate proxy, an
air-gapped network, this project's CI), reuses the host's pip cache and configuration, and
fails early with pip's own message. ``pip download`` is a process of the run: canceling the
run stops it.

A requirement of the user's that pip cannot resolve (no such package, no such version, a
malformed line) is final: the error is pip's own line about that package, at once — no other
way of building is tried, since none would find it either, and no later step gets the blame.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

from .. import venvs
from ..lifecycle import CancelToken
from ..output import read_lines
from ..processes import ProcessGroup
from ..spec import EnvironmentSpec
from .client import LOG_TAIL, ImageBuildError
from .recipe import ImagePython, redact

Log = Callable[[str], None]
OURS = ("pip", "debugpy")  # what we add to every image: their failure is not the user's
_FAILED_REQUIREMENT = re.compile(r"(?:requirement|found for|Invalid requirement:?)\s+'?([A-Za-z0-9][A-Za-z0-9._-]*)")


def resolution_error(tail: list[str], code: int) -> ImageBuildError:
    """pip download's failure: final (with pip's own line) when it is about the user's requirement."""
    errors = [line for line in tail if line.startswith("ERROR:")]
    match = next((m for m in (_FAILED_REQUIREMENT.search(line) for line in errors) if m), None)
    name = match.group(1).lower().replace("_", "-") if match else ""
    if errors and name not in OURS:
        hint = " (a package with no wheel for the image's platform can be built in the image: --wheels index)" \
            if "from versions: none" in errors[0] else ""
        return ImageBuildError(f"pip download on the host failed: {errors[0]}{hint}", tail, final=True)
    return ImageBuildError(f"pip download on the host failed (exit code {code})", tail)


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
    group = ProcessGroup(argv, text=False, die_with_owner=True)
    stop = cancel_token.on_cancel(group.stop) if cancel_token is not None else None
    tail: list[str] = []
    try:
        assert group.process.stdout is not None
        for line in read_lines(group.process.stdout):
            if "is ignored: it is neither a file nor a directory" in line:
                continue  # noise from a pip config naming a local index that is not there
            line = redact(line)
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
        raise resolution_error(tail, code)
    pips = sorted(p.name for p in dest.glob("pip-*.whl"))
    if not pips:
        raise ImageBuildError("pip download on the host gave no wheel for pip itself", tail)
    return pips[-1]


