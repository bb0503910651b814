"""Source lines as highlighted HTML, one string per line, for the debugger panel's source view.

Pygments (an IPython dependency) lexes the whole file once — a string or a comment spanning
lines keeps its colour on every line — and each token becomes a ``<span>`` with an inline
style, so a line's HTML stands alone (the source view puts each line in its own element).
Cached by the file's text (an edited file is lexed again).
"""

from __future__ import annotations

import html
from functools import lru_cache

from .paths import source_lines


def highlighted_lines(path: str | None) -> list[str]:
    """The file's lines as HTML (escaped, coloured); plain escaped text if Pygments cannot lex it."""
    lines = source_lines(path)
    if not path or not lines:
        return []
    return list(_highlight("\n".join(lines), path.endswith((".py", ".pyw"))))


@lru_cache(maxsize=16)
def _highlight(text: str, python: bool) -> tuple[str, ...]:
    try:
        from pygments.lexers import PythonLexer, TextLexer
        from pygments.styles import get_style_by_name
    except ImportError:
        return tuple(html.escape(line) for line in text.split("\n"))
    style = get_style_by_name("default")
    lexer = PythonLexer(stripnl=False, ensurenl=False) if python else TextLexer()
    rows: list[list[str]] = [[]]
    for kind, value in lexer.get_tokens(text):
        css = _css(style.style_for_token(kind))
        for index, piece in enumerate(value.split("\n")):
            if index:
                rows.append([])
            if piece:
                escaped = html.escape(piece)
                rows[-1].append(f"<span style='{css}'>{escaped}</span>" if css else escaped)
    return tuple("".join(row) for row in rows)


def _css(spec: dict) -> str:
    parts = []
    if spec.get("color"):
        parts.append(f"color:#{spec['color']}")
    if spec.get("bold"):
        parts.append("font-weight:bold")
    if spec.get("italic"):
        parts.append("font-style:italic")
    return ";".join(parts)
