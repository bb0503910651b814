"""Why a run ended, said the way a user needs it: the exception a failed script raised
(``KeyError: 'b'``), its traceback without our own frames, and when a cancel happened.

A script runs under the bootstrap (``runpy.run_path``), so every traceback it prints starts with
frames that are ours, not the user's: the bootstrap's ``run_user_script`` and runpy's three.
They explain nothing and push the user's own frames below the fold, so the views, the CLI and
``run.logs`` leave them out (``run.raw_logs`` keeps every line as it came). The run's state
detail gets the exception's one line (``failed: KeyError: 'b' (exit code 1)``), so the header of
a failed run says why without opening the log.

Lines of a distributed run may carry a ``[rank i] `` prefix; each rank's lines are read apart.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .invocation import is_node_file

TRACEBACK_HEADER = "Traceback (most recent call last):"
_PREFIX = re.compile(r"^\[rank \d+\] ")
_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line \d+, in \S+')
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(: .*)?$")  # KeyError: 'b', pkg.mod.Custom, StopIteration
_NAMES_EXCEPTION = re.compile(r"\b\w*(Error|Exception|Interrupt)\b: ")
CANCELED_BY_USER = "canceled by user"


def own_frame(path: str) -> bool:
    """A frame of the node package (a local run, a snapshot's copy, an image's) or of runpy."""
    return is_node_file(path) or path.replace("\\", "/").endswith("/runpy.py") or path in ("runpy.py", "<frozen runpy>")


def _split(line: str) -> tuple[str, str]:
    """``[rank 2] text`` → (``[rank 2] ``, ``text``); no prefix → ("", line)."""
    match = _PREFIX.match(line)
    return (match.group(0), line[match.end():]) if match else ("", line)


class FrameFilter:
    """Line by line, as lines stream: False for the lines of our own traceback frames (the
    ``File`` line and the source and caret lines under it)."""

    def __init__(self) -> None:
        self._hiding: dict[str, bool] = {}  # per prefix (rank)

    def keep(self, line: str) -> bool:
        prefix, text = _split(line)
        frame = _FRAME.match(text)
        if frame:
            self._hiding[prefix] = own_frame(frame.group("file"))
            return not self._hiding[prefix]
        if self._hiding.get(prefix) and text.startswith("    "):
            return False
        self._hiding[prefix] = False
        return True


def user_lines(lines: Iterable[str]) -> list[str]:
    """``lines`` without our own traceback frames."""
    keep = FrameFilter().keep
    return [line for line in lines if keep(line)]


@dataclass(frozen=True)
class Failure:
    """The last exception a run printed: its one line and its traceback (user frames only)."""

    exception: str  # "KeyError: 'b'"
    traceback: str
    rank_prefix: str = ""  # "[rank 2] " when a rank printed it

    @property
    def summary(self) -> str:
        rank = self.rank_prefix.strip()[1:-1]
        return f"{rank}: {self.exception}" if rank else self.exception


def last_failure(lines: Iterable[str]) -> Failure | None:
    """The last traceback in ``lines`` (uncaught, as Python prints it), or None."""
    lines = list(lines)
    starts = [i for i, line in enumerate(lines) if _split(line)[1] == TRACEBACK_HEADER]
    if not starts:
        return None
    start = starts[-1]
    prefix = _split(lines[start])[0]
    block = [lines[start]]
    for line in lines[start + 1:]:
        own, text = _split(line)
        if own != prefix:
            continue  # another rank's line in between
        block.append(line)
        if not text.startswith(" "):  # the first unindented line: the exception
            if not _EXCEPTION.match(text):
                return None
            return Failure(text.strip(), "\n".join(user_lines(block)), prefix)
    return None


def explain(run: Any, state: str, detail: str) -> str:
    """A finish hook (``run.on_finish``): a failure's exception, a cancel's time, first in the detail."""
    if state == "failed" and not _NAMES_EXCEPTION.search(detail):  # e.g. a deployment's own "init() failed: ..."
        failure = last_failure(run.log_tail(500))
        if failure is not None:
            return with_failure(detail, failure)
    elif state == "canceled" and detail.startswith(CANCELED_BY_USER):
        said = canceled_line(time.time() - run.created)
        run.line(said)  # the run's output ends with it, in every view
        return said
    return detail


def with_failure(detail: str, failure: Failure) -> str:
    """``KeyError: 'b' (exit code 1)``; a detail naming a rank first keeps it first:
    ``rank 1 failed (exit code 1) — RuntimeError: lost``."""
    if not detail:
        return failure.summary
    if detail.startswith("rank "):
        same_rank = failure.rank_prefix and detail.startswith(failure.rank_prefix.strip()[1:-1] + " ")
        return f"{detail} — {failure.exception if same_rank else failure.summary}"
    return f"{failure.summary} ({detail})"


def canceled_line(elapsed: float) -> str:
    return f"{CANCELED_BY_USER} after {elapsed:.0f} s" if elapsed >= 10 else f"{CANCELED_BY_USER} after {elapsed:.1f} s"


def watch(run: Any) -> None:
    """Explain how ``run`` ends (registered by the engine on every run)."""
    run.on_finish(explain)


__all__ = ["Failure", "FrameFilter", "explain", "last_failure", "own_frame", "user_lines", "watch"]
