"""Output lines from any source, with a bounded cost.

A run's output is untrusted and unbounded: a script may print a 20 MB line, or millions of
them. Lines are cut at :data:`MAX_LINE_BYTES` (with a visible ``… [N bytes cut]``) while they
are read, before they are ever held whole, and a run keeps at most :data:`MAX_KEPT_BYTES` and
:data:`MAX_KEPT_LINES` of them (the oldest go first).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO

MAX_LINE_BYTES = 16 * 1024
MAX_KEPT_BYTES = 8 * 1024 * 1024
MAX_KEPT_LINES = 20_000
_CHUNK = 64 * 1024


def cut_note(cut: int) -> str:
    return f"… [{cut} bytes cut]"


def fresh_lines(text: str, prefix: str) -> list[str]:
    """``text`` with a marker (``prefix``...) that followed a ``\r`` on its own line: a progress bar
    (``50%\r``) printed without a newline must not swallow the marker after it. Markers always
    start a line; the text before the ``\r`` stays output."""
    head, sep, tail = text.rpartition("\r" + prefix)
    if not sep:
        return [text]
    return [*fresh_lines(head, prefix), prefix + tail] if head.strip("\r") else [prefix + tail]


# Control characters a terminal acts on (C0 but tab, DEL, C1), except a colour (SGR: ESC [ ... m).
_CONTROLS = re.compile(r"\x1b\[[0-9;]*m|[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """A run's line as a terminal may be given it: colours kept, every other escape sequence
    (OSC 52 clipboard writes, title changes, cursor moves) and control character shown as
    ``\\x1b`` text, never acted on. Of carriage-return updates (a progress bar) the last is shown,
    as a terminal would."""
    if "\r" in text:
        text = text.rstrip("\r").rsplit("\r", 1)[-1]
    return _CONTROLS.sub(lambda m: m.group(0) if m.group(0).endswith("m") and len(m.group(0)) > 1
                         else f"\\x{ord(m.group(0)):02x}", text)


def decode(data: bytes) -> str:
    return data.decode("utf-8", "replace").rstrip("\r")


class LineCutter:
    """Whole, capped lines from bytes that arrive in arbitrary chunks."""

    def __init__(self, limit: int = MAX_LINE_BYTES) -> None:
        self.limit = limit
        self._pending = bytearray()
        self._cut = 0  # bytes dropped from the line being assembled

    def feed(self, data: bytes) -> list[str]:
        lines: list[str] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            piece = data[start:] if end < 0 else data[start:end]
            self._take(piece)
            if end < 0:
                return lines
            lines.append(self._finish())
            start = end + 1

    def rest(self) -> list[str]:
        if not self._pending and not self._cut:
            return []
        return [self._finish()]

    def _take(self, piece: bytes) -> None:
        room = self.limit - len(self._pending)
        if len(piece) <= room:
            self._pending += piece
        else:
            self._pending += piece[:max(0, room)]
            self._cut += len(piece) - max(0, room)

    def _finish(self) -> str:
        text = decode(bytes(self._pending))
        if self._cut:
            text += " " + cut_note(self._cut)
        self._pending.clear()
        self._cut = 0
        return text


def read_lines(stream: IO[bytes], limit: int = MAX_LINE_BYTES) -> Iterator[str]:
    """Capped lines of a binary stream until EOF (never more than ``limit`` + one chunk in memory)."""
    cutter = LineCutter(limit)
    while True:
        data = stream.read1(_CHUNK) if hasattr(stream, "read1") else stream.read(_CHUNK)
        if not data:
            break
        yield from cutter.feed(data)
    yield from cutter.rest()
