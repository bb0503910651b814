"""torch.distributed under a debugged run: a paused rank never times out the job.

Stop one rank at a breakpoint and every other rank waits in its next collective; the process
group's timeout (seconds, in many training scripts) fires and the whole job dies with an error
that names nobody. So in a debugged run every process group the user's code creates
(``init_process_group``, ``new_group``, ``new_subgroups``, ``split_group``; DeviceMesh creates
its groups through them) gets a timeout of at least ``--collective-timeout``, with one line
saying what was raised and to what. NCCL's documented watchdog heartbeat is raised to match.
``torch.distributed.breakpoint(rank=r)`` stops rank ``r`` in this run's debugger (never pdb on
a pipe nobody types into), before the barrier the other ranks wait at.

Nothing here imports torch: a meta path finder patches ``torch.distributed`` as it is first
imported (by anyone), as :mod:`.shim` does for debugpy; a run that never imports torch pays
nothing. ``--collective-timeout keep`` leaves every value as the user set it.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import os
import sys
from datetime import timedelta

from .imports import patch_on_import

MIN_DEFAULT = 7200.0  # the default floor: two hours, however short the debug windows
KEEP = "keep"
MODULE = "torch.distributed"
# The functions that make a process group with a timeout (DeviceMesh calls these).
GROUP_MAKERS = ("init_process_group", "new_group", "new_subgroups", "new_subgroups_by_enumeration", "split_group")
# torch's documented ProcessGroupNCCL settings we raise (torch_nccl_environment_variables), from
# the version whose docs list them: the monitor aborts a process whose watchdog shows no
# heartbeat for that long.
NCCL_SETTINGS = {"TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC": (2, 4)}


def collective_timeout(options: argparse.Namespace) -> float | None:
    """Seconds every process group waits at least; None: keep the user's values."""
    given = getattr(options, "collective_timeout", None)
    if given == KEEP:
        return None
    if given is not None:
        return float(given)
    return max(MIN_DEFAULT, float(options.timeout) + float(options.post_mortem_timeout))


def _say(text: str) -> None:
    print(f"aml_magics: {text}", file=sys.stderr, flush=True)


def _shown(seconds: float) -> str:
    return str(timedelta(seconds=seconds))


class Collectives:
    """The patches of one process: the floor, what was said, torch's originals."""

    def __init__(self, floor: float | None, stop_here=None) -> None:
        self.floor = floor  # None: --collective-timeout keep
        self.stop_here = stop_here  # (user frame, stop frame) -> None: this run's breakpoint()
        self.originals: dict[str, object] = {}
        self._said: set[tuple[str, str]] = set()

    # -- process groups ----------------------------------------------------------------------
    def raise_timeout(self, what: str, function, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """``args``/``kwargs`` with a timeout of at least the floor; one line when raised."""
        try:
            bound = inspect.signature(function).bind_partial(*args, **kwargs)
        except TypeError:
            return args, kwargs  # torch reports the bad call itself
        if "timeout" not in inspect.signature(function).parameters:
            return args, kwargs
        floor = self.floor
        if floor is None:
            return args, kwargs
        user = bound.arguments.get("timeout")
        seconds = user.total_seconds() if isinstance(user, timedelta) else None
        if seconds is not None and seconds >= floor:
            return args, kwargs
        bound.arguments["timeout"] = timedelta(seconds=floor)
        was = "torch's default timeout" if user is None else f"timeout={_shown(seconds or 0)}"
        key = (what, was)
        if key not in self._said:
            self._said.add(key)
            _say(f"torch.distributed.{what}: {was} raised to {_shown(floor)} (--collective-timeout "
                 f"{floor:g}): a rank paused in the debugger must not time out the others")
        return bound.args, bound.kwargs

    def wrap_maker(self, name: str, original):
        @functools.wraps(original)
        def make_group(*args, **kwargs):
            args, kwargs = self.raise_timeout(name, original, args, kwargs)
            return original(*args, **kwargs)

        make_group._aml_magics_original = original  # type: ignore[attr-defined]
        return make_group

    # -- torch.distributed.breakpoint --------------------------------------------------------
    def wrap_breakpoint(self, module, original):
        """torch's breakpoint(), its pdb replaced by this run's debugger: rank ``rank`` stops here,
        before the barrier (torch's own, with its timeouts) that every rank then waits at."""
        collectives = self

        @functools.wraps(original)
        def breakpoint(rank: int = 0, skip: int = 0, timeout_s=3600):
            floor = collectives.floor
            if timeout_s is not None and floor is not None:
                timeout_s = max(float(timeout_s), floor)  # torch sets it on every group: never lower ours
            if skip > 0 and _skip(module, skip):
                return None
            if collectives.stop_here is not None and module.get_rank() == rank:
                collectives.stop_here(sys._getframe(1), sys._getframe(0))  # reported at the caller's line
            return original(rank=-1, skip=0, timeout_s=timeout_s)  # no rank stops in pdb; the barrier

        breakpoint._aml_magics_original = original  # type: ignore[attr-defined]
        return breakpoint

    # -- installing ---------------------------------------------------------------------------
    def patch(self, distributed) -> None:
        if getattr(distributed, "_aml_magics_collectives", False):
            return
        distributed._aml_magics_collectives = True
        c10d = getattr(distributed, "distributed_c10d", None)
        if c10d is None:  # torch built without distributed support
            return
        for name in GROUP_MAKERS if self.floor is not None else ():
            original = getattr(c10d, name, None)
            if original is None:
                continue
            self.originals[name] = original
            wrapped = self.wrap_maker(name, original)
            for module in _distributed_modules():
                if getattr(module, name, None) is original:
                    setattr(module, name, wrapped)
        original_breakpoint = getattr(distributed, "breakpoint", None)
        if original_breakpoint is not None:
            self.originals["breakpoint"] = original_breakpoint
            distributed.breakpoint = self.wrap_breakpoint(distributed, original_breakpoint)
        if self.floor is not None:
            raise_nccl_settings(self.floor, _torch_version())


def _skip(module, skip: int) -> bool:
    """torch's own ``skip`` counting (its cache, its key): True while calls are still skipped."""
    import traceback

    cache = getattr(module, "_breakpoint_cache", None)
    if cache is None:
        return False
    key = hash(str(traceback.format_exc()))
    cache[key] = cache.get(key, 0) + 1
    return cache[key] <= skip


def _distributed_modules() -> list:
    return [module for name, module in list(sys.modules.items())
            if module is not None and (name == MODULE or name.startswith(MODULE + "."))]


def _torch_version() -> tuple[int, int]:
    text = getattr(sys.modules.get("torch.version"), "__version__", "") or ""
    if not text:
        try:
            from importlib.metadata import version

            text = version("torch")
        except Exception:
            return (0, 0)
    parts = text.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (0, 0)


def raise_nccl_settings(floor: float, version: tuple[int, int], environ=os.environ) -> list[str]:
    """The documented NCCL settings of this torch version raised to ``floor``; what changed."""
    changed = []
    for name, since in NCCL_SETTINGS.items():
        if version < since:
            continue
        current = environ.get(name)
        try:
            value = float(current) if current else None
        except ValueError:
            value = None
        if value is not None and value >= floor:
            continue
        environ[name] = str(int(floor))
        changed.append(name)
        if current:
            _say(f"{name}={current} raised to {int(floor)} (--collective-timeout): NCCL's monitor must not "
                 "abort a rank whose peer is paused in the debugger")
    return changed


def patch_collectives(options: argparse.Namespace, stop_here=None) -> Collectives | None:
    """Before the user's code runs, in a debugged run: torch.distributed patched as it is imported.

    ``stop_here(user_frame, stop_frame)``: this run's breakpoint() (the session's). None (nothing
    patched) for ``--no-debug``; ``--collective-timeout keep`` patches only breakpoint().
    """
    if options.no_debug:
        return None
    collectives = Collectives(collective_timeout(options), stop_here)
    patch_on_import(MODULE, collectives.patch)
    return collectives
