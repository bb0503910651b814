"""The crash capsule: what an uncaught exception left behind, kept for whoever comes later.

A long job fails at hour seven with nobody attached; ``--post-mortem`` needs someone to come
in time and holds the node while it waits. The capsule is the other half: written before the
process exits (when no debugger is attached, or after a post-mortem window closed unused),
one JSON file per rank, opened the next morning as a read-only snapshot of the debugger
(the owner's :mod:`aml_magics.crash`). It holds the exception (type, message, chained causes),
the stack innermost last (the user's frames first-class, library frames kept but marked, the
node's own and runpy's left out), each frame's source lines and locals rendered by
:mod:`.render` (bounded in time and size, arrays summarised, secret-looking names masked).

Never in it: the environment (an ``os.environ`` local is masked) and the run's own secrets
(the node keeps only their digests: a token of the capsule whose digest is one of them is
replaced, and so is any private key block). At most :data:`MAX_BYTES`: past that the deepest detail
goes first (value texts shortened, library frames' locals and source, the outer frames' locals,
middle frames), each cut said in ``dropped``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import linecache
import os
import re
import socket
import sys
import sysconfig
import time
import traceback
import types
from collections.abc import Collection
from typing import Any

from . import render
from .markers import secret_digest as digest

FORMAT = "aml_magics.crash/1"
MAX_BYTES = 2 * 1024 * 1024
MAX_LOCALS = 500  # per frame
CONTEXT = 5  # source lines each side of a frame's line
MAX_CHAIN = 10
TRACEBACK_LIMIT = 20_000  # characters of the formatted traceback
FILE_NAME = "rank-{rank}.json"
REDACTED = "<redacted>"
_HERE = os.path.dirname(os.path.abspath(__file__))


def prepare() -> None:
    """What a crash would otherwise compute first (the library folders), done before it."""
    _library_roots()


@functools.lru_cache(maxsize=1)
def _library_roots() -> tuple[str, ...]:
    roots = set()
    for name in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            roots.add(os.path.realpath(sysconfig.get_paths()[name]))
        except KeyError:
            continue
    return tuple(sorted(roots))


@functools.lru_cache(maxsize=4096)
def is_library(path: str) -> bool:
    if path.startswith("<"):
        return True
    normal = path.replace("\\", "/")
    if "/site-packages/" in normal or "/dist-packages/" in normal:
        return True
    return os.path.realpath(path).startswith(_library_roots())


def _ours(path: str) -> bool:
    """The node package's own frames, and runpy's (how the script was started): not the user's."""
    return os.path.dirname(os.path.abspath(path)) == _HERE or path in ("<frozen runpy>",) \
        or path.replace("\\", "/").endswith("/runpy.py")


# -- what goes in -------------------------------------------------------------------------
def _message(exc: BaseException) -> str:
    try:
        return render.cut(str(exc), 2000)
    except Exception:
        return "<unprintable>"


def _describe(exc: BaseException, relation: str = "") -> dict:
    kind = type(exc)
    entry = {"type": kind.__qualname__, "module": kind.__module__, "message": _message(exc)}
    if relation:
        entry["relation"] = relation
    return entry


def exception_record(exc: BaseException) -> dict:
    """Type, message, the chain (``__cause__`` / ``__context__``) and the formatted traceback."""
    record = _describe(exc)
    chain: list[dict] = []
    seen, current = {id(exc)}, exc
    while len(chain) < MAX_CHAIN:
        if current.__cause__ is not None:
            nxt, relation = current.__cause__, "cause"
        elif current.__context__ is not None and not current.__suppress_context__:
            nxt, relation = current.__context__, "context"
        else:
            break
        if id(nxt) in seen:
            break
        seen.add(id(nxt))
        chain.append(_describe(nxt, relation))
        current = nxt
    record["chain"] = chain
    try:
        text = formatted_traceback(exc)
    except Exception:
        text = ""
    record["traceback"] = render.cut(text, TRACEBACK_LIMIT)
    return record


class _Stack(traceback.StackSummary):
    """A stack that formats each distinct frame once: formatting one parses its line (for the
    carets), and a recursion's hundreds of identical frames are cut from the text anyway."""

    def format_frame_summary(self, frame_summary: traceback.FrameSummary, **kwargs: Any) -> str:
        format_frame = getattr(super(), "format_frame_summary")  # noqa: B009 - 3.11+ (see formatted_traceback)
        if frame_summary.locals is not None:  # not captured here; never memoized
            return format_frame(frame_summary, **kwargs)
        key = (frame_summary.filename, frame_summary.lineno, frame_summary.name, frame_summary.line,
               *(getattr(frame_summary, name, None) for name in ("end_lineno", "colno", "end_colno")),
               tuple(sorted(kwargs.items())))
        memo: dict = self.__dict__.setdefault("_memo", {})
        if key not in memo:
            memo[key] = format_frame(frame_summary, **kwargs)
        return memo[key]


def formatted_traceback(exc: BaseException) -> str:
    """``traceback.format_exception(exc)``, the same text, each distinct frame formatted once."""
    top = traceback.TracebackException(type(exc), exc, exc.__traceback__, compact=True)
    if hasattr(traceback.StackSummary, "format_frame_summary"):  # 3.11+ (3.10 draws no carets)
        todo: list[traceback.TracebackException | None] = [top]
        seen: set[int] = set()
        while todo:
            current = todo.pop()
            if current is None or id(current) in seen:
                continue
            seen.add(id(current))
            current.stack = _Stack(current.stack)
            todo += [current.__cause__, current.__context__, *(getattr(current, "exceptions", None) or [])]
    return "".join(top.format())


def _value(name: str, value: object) -> dict:
    kind = render.type_name(value)
    if render.is_secret_name(name) or type(value).__name__ == "_Environ":
        return {"type": kind, "text": render.MASK, "summary": None}
    summary = render.summary(value)
    if summary is not None:
        return {"type": kind, "text": render.statistics(value), "summary": summary}
    return {"type": kind, "text": render.render(value), "summary": None}  # the name is checked above


def _locals(frame: types.FrameType) -> tuple[dict, int]:
    try:
        names = dict(frame.f_locals)
    except Exception:
        return {}, 0
    module_level = frame.f_code.co_name == "<module>"
    shown: dict[str, dict] = {}
    total = 0
    for name, value in names.items():
        if module_level and name.startswith("__") and name.endswith("__"):
            continue
        total += 1
        if len(shown) < MAX_LOCALS:
            shown[name] = _value(str(name), value)
    return shown, total


_ASSIGNMENT = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(?::[^=]*)?=(?!=)")
_STRING = re.compile(r"(?P<q>['\"])(?:\\.|(?!(?P=q)).)*(?P=q)")


def _masked_line(text: str) -> str:
    """``api_token = "…"`` in the source: its string literals masked like the value."""
    match = _ASSIGNMENT.match(text)
    if match and render.is_secret_name(match.group(1).rsplit(".", 1)[-1]):
        return _STRING.sub("'******'", text)
    return text


def _source(path: str, line: int, frame: types.FrameType) -> dict | None:
    first = max(1, line - CONTEXT)
    lines = [linecache.getline(path, n, frame.f_globals).rstrip("\n") for n in range(first, line + CONTEXT + 1)]
    while lines and not lines[-1]:
        lines.pop()
    if not any(lines):
        return None
    return {"first": first, "lines": [render.cut(_masked_line(text), 500) for text in lines]}


def frame_records(tb: types.TracebackType | None) -> list[dict]:
    """The stack of ``tb``, innermost last; the node's and runpy's frames left out."""
    frames = []
    sources: dict[tuple[str, int], dict | None] = {}  # a recursion's frames share their lines: read once
    while tb is not None:
        frame, line = tb.tb_frame, tb.tb_lineno
        path = frame.f_code.co_filename
        if not _ours(path):
            variables, total = _locals(frame)
            if (path, line) not in sources:
                sources[path, line] = _source(path, line, frame)
            source = sources[path, line]
            frames.append({"name": frame.f_code.co_name, "path": path, "line": line, "library": is_library(path),
                           "source": source and {"first": source["first"], "lines": list(source["lines"])},
                           "locals": variables, "locals_total": total})
        tb = tb.tb_next
    return frames


def build(exc: BaseException, rank: int, script: str) -> dict:
    return {"format": FORMAT, "rank": rank, "pid": os.getpid(), "host": socket.gethostname(), "time": time.time(),
            "script": script, "python": sys.version.split()[0], "exception": exception_record(exc),
            "frames": frame_records(exc.__traceback__), "dropped": []}


# -- bounded ---------------------------------------------------------------------------
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S)
_TOKEN = re.compile(r"[A-Za-z0-9+/=_.-]{8,}")


def redact(text: str, digests: Collection[str]) -> str:
    """Every private key block, and every token whose digest is one of the run's secrets', masked
    (only tokens of a secret's length are hashed, each distinct one once; the text is rewritten
    only when one is a secret's)."""
    text = _PRIVATE_KEY.sub(REDACTED, text)
    lengths = {int(d.split(":", 1)[0]) for d in digests}
    if not lengths:
        return text
    found = {token for token in set(_TOKEN.findall(text)) if len(token) in lengths and digest(token) in digests}
    if not found:
        return text
    return _TOKEN.sub(lambda match: REDACTED if match.group(0) in found else match.group(0), text)


def _encode(capsule: dict, digests: Collection[str]) -> bytes:
    return redact(json.dumps(capsule, ensure_ascii=False, default=str), digests).encode("utf-8")


def _shorten_texts(capsule: dict, limit: int) -> None:
    for frame in capsule["frames"]:
        for value in frame["locals"].values():
            value["text"] = render.cut(value["text"], limit)


def _drop_locals(frames: list[dict]) -> None:
    for frame in frames:
        frame["locals"] = {}


def _reductions(capsule: dict) -> list[tuple[str, Any]]:
    """The cuts, deepest detail first: each one (note, action)."""
    frames = capsule["frames"]
    library = [f for f in frames if f["library"]]
    user = [f for f in frames if not f["library"]]
    return [
        ("value texts cut to 60 characters", lambda: _shorten_texts(capsule, 60)),
        ("locals of library frames", lambda: _drop_locals(library)),
        ("source of library frames", lambda: [f.update(source=None) for f in library]),
        ("locals of all but the innermost 3 user frames", lambda: _drop_locals(user[:-3])),
        ("frames between the outermost 5 and the innermost 5",
         lambda: capsule.update(frames=frames[:5] + frames[-5:]) if len(frames) > 10 else None),
        ("value texts cut to 20 characters", lambda: _shorten_texts(capsule, 20)),
        ("all locals", lambda: _drop_locals(capsule["frames"])),
        ("the formatted traceback", lambda: capsule["exception"].update(traceback="")),
    ]


def encode_bounded(capsule: dict, digests: Collection[str] = (), max_bytes: int = MAX_BYTES) -> bytes:
    """The capsule as JSON of at most ``max_bytes``, the deepest detail dropped first (noted);
    ``digests``: of the run's secrets (:func:`redact`)."""
    data = _encode(capsule, digests)
    for note, cut in _reductions(capsule):
        if len(data) <= max_bytes:
            break
        cut()
        capsule["dropped"].append(f"{note} (the capsule was over {max_bytes} bytes)")
        data = _encode(capsule, digests)
    return data


def write(exc: BaseException, directory: str, rank: int, script: str, digests: Collection[str] = ()) -> dict:
    """Write this rank's capsule into ``directory``; what the CRASH marker says about it."""
    capsule = build(exc, rank, script)
    data = encode_bounded(capsule, digests)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, FILE_NAME.format(rank=rank))
    partial = path + ".partial"
    with open(partial, "wb") as handle:
        handle.write(data)
    os.replace(partial, path)
    return {"file": path, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "type": capsule["exception"]["type"], "message": render.cut(capsule["exception"]["message"], 300)}
