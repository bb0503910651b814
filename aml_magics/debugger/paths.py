"""Breakpoint specs and local paths: what a user types, made into what debugpy is sent.

Breakpoints are given in *local* paths — absolute, or relative to the run's local root
(the folder ``pathMappings`` maps onto the run's working directory) — and debugpy maps
them to the remote side with the attach configuration's ``pathMappings``; stops come back
in local paths the same way.
"""

from __future__ import annotations

import linecache
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..invocation import is_node_file
from .errors import DebuggerError


def parse_breakpoint(spec: Any) -> tuple[str, int, str | None]:
    """``"train.py:12"``, ``"train.py:12 if x > 3"``, ``(path, line)`` or ``(path, line, condition)``."""
    if isinstance(spec, str):
        text, _, condition_text = spec.partition(" if ")
        path, colon, line = text.strip().rpartition(":")
        if not colon or not path:
            raise DebuggerError(f"a breakpoint is FILE:LINE, not {spec!r}")
        return path, _line(line, spec), condition_text.strip() or None
    if isinstance(spec, Sequence) and len(spec) in (2, 3):
        condition = spec[2] if len(spec) == 3 else None
        return str(spec[0]), _line(spec[1], spec), (str(condition) if condition else None)
    raise DebuggerError(f"a breakpoint is 'FILE:LINE' or (path, line[, condition]), not {spec!r}")


def _line(value: Any, spec: Any) -> int:
    try:
        line = int(str(value).strip())
    except ValueError:
        raise DebuggerError(f"the line of breakpoint {spec!r} is not a number") from None
    if line < 1:
        raise DebuggerError(f"the line of breakpoint {spec!r} must be 1 or more")
    return line


def local_path(path: str | os.PathLike, local_root: Path) -> str:
    """An existing local file: absolute as given, or relative to the run's local root."""
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        candidate = local_root / candidate
    resolved = os.path.abspath(candidate)
    if not os.path.isfile(resolved):
        raise DebuggerError(f"no such file: {resolved} (breakpoint paths are local files, absolute or "
                            f"relative to {local_root})")
    return resolved


def source_line(path: str | None, line: int) -> str:
    """The text of a line of a local file, stripped ('' when unknown)."""
    if not path or line < 1:
        return ""
    linecache.checkcache(path)
    return linecache.getline(path, line).strip()


def source_lines(path: str | None) -> list[str]:
    if not path:
        return []
    linecache.checkcache(path)
    return [text.rstrip("\n") for text in linecache.getlines(path)]


# where a pause (a rank all-stop paused, say) landed before the script started or after it ended
OUTSIDE_SCRIPT = "aml_magics' node code, outside the script"


def is_bootstrap(path: str | None) -> bool:
    """A frame of the node package (ours, under its local or its shipped name): hidden."""
    return is_node_file(path)


def is_launcher(path: str | None) -> bool:
    """runpy, which the bootstrap runs the user's script with."""
    return bool(path) and os.path.basename(path or "") == "runpy.py"


def short(path: str | None, root: Path | None = None) -> str:
    """A path as shown: relative to ``root`` when inside it."""
    if not path:
        return "?"
    if root is not None:
        try:
            return str(Path(path).relative_to(root))
        except ValueError:
            pass
    return path
