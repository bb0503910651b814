"""Every rank of a distributed run as one debugger: ``run.attach_all()`` → :class:`DebuggerGroup`.

A DAP client debugs one process; a distributed job is many, and the question is usually
about all of them ("is ``loss`` NaN everywhere or only on rank 3?"). The group holds one DAP
session per debugged rank — it *is* the multi-rank :class:`~.core.Debugger` the run panel's
*Debug here* opens, so the panel and the notebook drive the same sessions — and adds what
is about ranks: the first stop and its rank, one rank's own :class:`Debugger`, continue /
pause / evaluate on every rank at once (in parallel: N ranks cost about one), and
``all_stop``: when one rank stops, the others are paused as soon as they run Python code.

A rank blocked in native code (a collective waiting for the stopped rank) cannot pause
until it returns to Python: :meth:`DebuggerGroup.pause_all` reports it ``busy`` instead of
waiting for it; its pause stays pending and it stops there as soon as it can.

What the group's sessions know (running, stopped at file:line) goes to the run's roster
(``run.ranks``) through :meth:`DebugRun.report_debugger`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ..dap import DapError, DebugService
from ..dap.service import ENDED, STOPPED
from . import holders
from .core import RUNNING, Debugger, Process, Stop, _first_line
from .errors import DebuggerError
from .paths import parse_breakpoint

BUSY = "busy"  # a rank that could not pause in time: in native code (a collective), pause pending
PAUSE_TIMEOUT = 2.0  # how long pause_all waits for a rank to stop before calling it busy


class RankStop(NamedTuple):
    """``(rank, Stop)``; as a :class:`Stop` too (``.line``, ``.pid``...), so code written for a
    one-rank Debugger's ``wait_stopped()`` reads the group's the same way."""

    rank: int
    stop: Stop

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.stop, name)


class DebuggerGroup(Debugger):
    """One debug session per debugged rank of ``run``, driven together. See the module docstring.

    ``wait_stopped(timeout)`` → ``(rank, Stop)`` of the rank that stopped first;
    ``debugger(rank)`` → that rank's :class:`Debugger`; ``continue_all()``, ``pause_all()``,
    ``evaluate_all(expr)``; ``stops`` → ``{rank: Stop}`` of the ranks stopped now.
    """

    def __init__(self, run: Any, ranks: Iterable[int] | None = None, *, all_stop: bool = True) -> None:
        self._chosen = sorted(set(ranks)) if ranks is not None else None
        super().__init__(self._configs, run=run)
        self.all_stop = all_stop
        self._views: dict[int, RankDebugger] = {}
        self._stopped_since: dict[int, float] = {}  # rank -> when it stopped (the first stop is the oldest)
        self._pausing: set[int] = set()  # ranks the group asked to pause (their stops start no all-stop)
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="aml-dbg-group")
        self._ranks_lock = threading.Lock()  # _stopped_since and _pausing: changed from the sessions' threads
        self.subscribe(self._on_change)
        run.debugger_group = self

    # -- attaching -----------------------------------------------------------------------------
    def _configs(self) -> list[dict]:
        """The attach configurations of the chosen ranks, or of every rank waiting for a debugger."""
        run, folder = self.run, Path.cwd()
        ranks = self._chosen
        if ranks is None:
            ranks = [s.rank for s in run.ranks if s.endpoint is not None and s.state in holders.USABLE_RANK_STATES]
        if not ranks:
            raise DebuggerError(f"run {run.id}: no rank waits for a debugger")
        return [run.launch_config(rank=rank, workspace_folder=folder) for rank in ranks]

    def connect(self, timeout: float = 30.0) -> DebuggerGroup:
        """Attach to every rank, breakpoints armed before any rank is released."""
        super().connect(timeout)
        self._on_change(self, "state")
        return self

    # -- ranks ---------------------------------------------------------------------------------
    def _root_of(self, rank: int) -> DebugService:
        for root, root_rank in zip(self.roots, self.ranks, strict=False):
            if root_rank == rank:
                return root
        attached = ", ".join(str(r) for r in self.ranks) or "none"
        raise DebuggerError(f"{self.label}: rank {rank} is not in this group (attached ranks: {attached})")

    def debugger(self, rank: int) -> Debugger:
        """Rank ``rank``'s own :class:`Debugger` (the group's session to it: no second connection)."""
        view = self._views.get(rank)
        if view is None or view.ended:
            view = self._views[rank] = RankDebugger(self, rank, self._root_of(rank))
        return view

    @property
    def stops(self) -> dict[int, Stop]:
        """``{rank: Stop}`` of the ranks stopped now."""
        found = {}
        for root, rank in zip(self.roots, self.ranks, strict=False):
            if rank is not None and root.state == STOPPED:
                stop = self._stop_of(root)
                if stop is not None:
                    found[rank] = stop
        return found

    def wait_stopped(self, timeout: float = 30.0) -> RankStop | None:  # type: ignore[override]
        """``(rank, Stop)`` of the rank that stopped first (waiting up to ``timeout``), now the
        selected one; None once every session ended."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._state in ("armed", "connecting"):
                raise DebuggerError(f"{self.label}: not attached")
            while True:
                stops = self.stops
                if stops:
                    rank = min(stops, key=lambda r: self._stopped_since.get(r, float("inf")))
                    root = self._root_of(rank)
                    if self._selected is not root:
                        self._selected, self.frame_index = root, 0
                    return RankStop(rank, stops[rank])
                if self.ended:
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DebuggerError(f"{self.label}: no rank stopped after {timeout:g}s")
                self._cond.wait(min(left, 0.5))

    # -- every rank at once --------------------------------------------------------------------
    def continue_all(self) -> list[int]:
        """Resume every stopped rank; the ranks resumed."""
        stopped = [(rank, root) for root, rank in zip(self.roots, self.ranks, strict=False)
                   if rank is not None and root.state == STOPPED]
        errors = self._each(lambda item: self._resume(item[1], "continue"), stopped)
        if errors:
            raise DebuggerError(f"{self.label}: continue failed on " + "; ".join(errors))
        return [rank for rank, _root in stopped]

    def pause_all(self, timeout: float = PAUSE_TIMEOUT) -> dict[int, Stop | str]:
        """Pause every rank: ``{rank: Stop}``, or ``"busy"`` for a rank still in native code after
        ``timeout`` seconds (its pause stays pending: it stops when it reaches Python code)."""
        live = [(rank, root) for root, rank in zip(self.roots, self.ranks, strict=False)
                if rank is not None and root.state != ENDED]
        futures = {rank: self._pool.submit(self._pause, rank, root, timeout) for rank, root in live}
        deadline = time.monotonic() + timeout + 1.0
        result: dict[int, Stop | str] = {}
        for rank, future in futures.items():
            try:
                result[rank] = future.result(max(0.0, deadline - time.monotonic()))
            except Exception:
                result[rank] = BUSY
        return result

    def _pause(self, rank: int, root: DebugService, timeout: float) -> Stop | str:
        if root.state == STOPPED:
            return self._stop_of(root) or BUSY
        with self._ranks_lock:
            self._pausing.add(rank)
        try:
            root.pause(timeout=timeout)
        except DapError:
            return BUSY
        with self._cond:
            self._cond.wait_for(lambda: root.state in (STOPPED, ENDED), timeout)
        return (self._stop_of(root) or BUSY) if root.state == STOPPED else BUSY

    def evaluate_all(self, expression: str) -> dict[int, str]:
        """``{rank: value}`` of ``expression`` in the top frame of every stopped rank, asked in
        parallel; a rank where it fails has its error (``"error: ..."``)."""
        stopped = sorted(self.stops)
        values = self._pool.map(lambda rank: self._evaluate(rank, expression), stopped)
        return dict(zip(stopped, values, strict=True))

    def _evaluate(self, rank: int, expression: str) -> str:
        try:
            return self.debugger(rank).evaluate(expression)
        except DebuggerError as exc:
            return f"error: {exc}"

    def _each(self, action, items: list) -> list[str]:
        """``action(item)`` for every item in parallel; the failures' first lines."""
        def run(item) -> str:
            try:
                action(item)
            except (DebuggerError, DapError) as exc:
                return f"rank {item[0]}: {_first_line(exc)}"
            return ""

        return [error for error in self._pool.map(run, items) if error]

    # -- following the ranks -------------------------------------------------------------------
    def _on_change(self, _model: Any, change: str) -> None:
        if change != "state" or not self.roots:
            return
        with self._ranks_lock:
            others = self._follow()
        for root in others:
            self._pool.submit(_ask_pause, root)

    def _follow(self) -> list[DebugService]:
        """Note new stops, report every rank to the run; the ranks to pause (all_stop)."""
        newly = []
        for root, rank in zip(list(self.roots), list(self.ranks), strict=False):
            if rank is None:
                continue
            if root.state == STOPPED:
                if rank not in self._stopped_since:
                    self._stopped_since[rank] = time.time()
                    newly.append(rank)
            else:
                self._stopped_since.pop(rank, None)
            self._report(rank, root)
        started_by_user = [rank for rank in newly if rank not in self._pausing]
        self._pausing.difference_update(newly)
        if not (self.all_stop and started_by_user) or self.ended:
            return []
        others = [(rank, root) for root, rank in zip(self.roots, self.ranks, strict=False)
                  if rank is not None and root.state not in (STOPPED, ENDED) and rank not in self._pausing]
        self._pausing.update(rank for rank, _root in others)
        return [root for _rank, root in others]

    def _report(self, rank: int, root: DebugService) -> None:
        report_session(self, rank, root)

    def _process(self, service: DebugService) -> Process:
        """The panel's selector lists the roster's words: rank, pid, state at file:line, node."""
        process = super()._process(service)
        if process.rank is None:
            return process
        node = self.run.spec.distributed.placement(process.rank)[0]
        return RankProcess(process.pid, process.name, process.state, process.stop, process.rank, node)

    def _finish(self, reason: str) -> None:
        super()._finish(reason)
        for rank in self.ranks:
            if rank is not None and getattr(self.run, "report_debugger", None) is not None:
                self.run.report_debugger(rank, None)
        if getattr(self.run, "debugger_group", None) is self:
            self.run.debugger_group = None
        self._pool.shutdown(wait=False)

    def __repr__(self) -> str:
        ranks = ", ".join(f"{rank}:{root.state}" for root, rank in zip(self.roots, self.ranks, strict=False))
        return f"<DebuggerGroup run {self.run.id} {self.state} ranks {ranks or '-'}>"


@dataclass(frozen=True)
class RankProcess(Process):
    """A rank's process with its node (the group's selector shows it)."""

    node: int = 0

    @property
    def label(self) -> str:
        return f"{super().label} · node {self.node}"


def report_session(debugger: Debugger, rank: int, root: DebugService) -> None:
    """What one of this kernel's sessions knows of ``rank``, into its run's roster."""
    report = getattr(debugger.run, "report_debugger", None)
    if report is None:
        return
    if root.state == ENDED or debugger.ended:
        report(rank, None)
    elif root.state == STOPPED:
        stop = debugger._stop_of(root)
        where = stop.place if stop is not None else ""
        report(rank, "stopped", where, stop.reason if stop is not None else "")
    else:
        report(rank, "attached-running", "", "this kernel's session: running")


def track(debugger: Debugger) -> Debugger:
    """Keep ``debugger``'s run roster told what its sessions know (``run.attach()``'s debugger)."""
    def follow(_model: Any, change: str) -> None:
        if change == "state":
            for root, rank in zip(list(debugger.roots), list(debugger.ranks), strict=False):
                if rank is not None:
                    report_session(debugger, rank, root)

    debugger.subscribe(follow)
    follow(debugger, "state")
    return debugger


def _ask_pause(root: DebugService) -> None:
    try:
        root.pause()
    except DapError:
        pass  # the rank ended meanwhile


class RankDebugger(Debugger):
    """One rank of a :class:`DebuggerGroup`, as a :class:`Debugger` of its own (the group's session)."""

    def __init__(self, group: DebuggerGroup, rank: int, root: DebugService) -> None:
        super().__init__(lambda: [], run=group.run, rank=rank, local_root=group.local_root,
                         exception_filters=group.exception_filters)
        self.group = group
        self.breakpoints = group.breakpoints  # one set of breakpoints for the group
        index = group.roots.index(root)
        self.roots, self.addresses, self.ranks = [root], [group.addresses[index]], [rank]
        with self._cond:
            self._state, self._selected = RUNNING, root
        self._adopt(root, rank)
        self._update()

    @property
    def label(self) -> str:
        return f"run {self.run.id} rank {self.rank}"

    def connect(self, timeout: float = 30.0) -> Debugger:
        raise DebuggerError(f"{self.label}: attached through its group already")

    def _finish(self, reason: str) -> None:  # the group holds the address, not this view
        with self._cond:
            if self._state == "ended":
                return
            self._state, self.end_reason = "ended", reason
            self._cond.notify_all()
        self._emit("state")


def attach_all(run: Any, breakpoints: Iterable[Any] = (), timeout: float = 30.0,
               all_stop: bool = True) -> DebuggerGroup:
    """The run's group, attached to every debugged rank (waiting up to ``timeout`` for their
    endpoints), ``breakpoints`` armed on each before any rank is released. The run's group from
    the panel's *Debug here* is the one returned (attached now if it was not yet), with the
    breakpoints added."""
    current = getattr(run, "debugger_group", None)
    if isinstance(current, DebuggerGroup) and current.attached:
        current.all_stop = all_stop
        _arm(current, breakpoints)
        return current
    wanted = [rank for rank in range(run.world_size) if run.spec.debug.debugs_rank(rank)]
    if not wanted:
        raise DebuggerError(f"run {run.id} has no debugged rank (--no-debug)")
    try:
        run.wait_for(lambda: {e.rank for e in run.endpoints} >= set(wanted) or run.done, timeout,
                     f"run {run.id}: not every debugged rank reported an endpoint in {{timeout:g}}s")
    except TimeoutError as exc:
        raise DebuggerError(str(exc)) from None
    if isinstance(current, DebuggerGroup) and current.state == "armed":  # Debug here, not attached yet
        group = current
    else:
        group = DebuggerGroup(run, all_stop=all_stop)
    group.all_stop = all_stop
    _arm(group, breakpoints)
    return group.connect(timeout)


def _arm(group: DebuggerGroup, breakpoints: Iterable[Any]) -> None:
    for spec in breakpoints:
        path, line, condition = parse_breakpoint(spec)
        group.break_at(path, line, condition)


__all__ = ["BUSY", "DebuggerGroup", "RankDebugger", "RankProcess", "RankStop", "attach_all", "track"]
