"""JSONC, the JSON dialect of VS Code's launch.json: a tokenizer and a parser that keep positions.

Why its own module: merging into a user's launch.json (``launch.py``) edits the file as text, so it
needs more than the value — where every element starts and ends, where each closing bracket is,
whether a trailing comma is there, and the comments. This module only reads; it never writes or
re-serialises anything. Every error is one line, ``<file>:<line>:<col>: <what is wrong>``, for any
input: unterminated strings and comments, nesting deeper than ``MAX_DEPTH``, numbers with more
digits than Python converts (``sys.get_int_max_str_digits()``), bytes that are not text.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from .errors import AmlMagicsError

__all__ = ["Document", "JsoncError", "Node", "Token", "error_at", "parse_document", "parse_jsonc"]

MAX_DEPTH = 200


class JsoncError(AmlMagicsError, ValueError):
    """A JSONC text that can't be read (``launch.LaunchJsonError`` is this class).

    The message is one line, ``<file>:<line>:<col>: <what is wrong>``; the parts are also attributes
    (``line`` and ``col`` are None for a problem with the file as a whole, e.g. it can't be written).
    """

    def __init__(self, message: str, path: str | None = None, line: int | None = None, col: int | None = None):
        super().__init__(message)
        self.path = path
        self.line = line
        self.col = col


def line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of ``offset`` in ``text``."""
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def error_at(path: str, text: str, offset: int, reason: str) -> JsoncError:
    """The one-line error for a problem at ``offset`` of ``text``."""
    line, col = line_col(text, offset)
    return JsoncError(f"{path}:{line}:{col}: {reason}", path, line, col)


# -- tokens ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    kind: str  # one of "{}[]:," or "string", "number", "word", "comment"
    start: int
    end: int


_STRING = re.compile(r'"(?:[^"\\\n\r]|\\[^\n\r])*"')
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_WORD = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
_LINE_COMMENT = re.compile(r"//[^\n\r]*")
WORDS = {"true": True, "false": False, "null": None}
_PUNCT = frozenset("{}[]:,")
_SPACE = frozenset(" \t\r\n")


def tokenize(text: str, path: str) -> list[Token]:
    """All tokens of ``text``, comments included; whitespace is what lies between them."""
    tokens: list[Token] = []
    i = 1 if text.startswith("\ufeff") else 0
    n = len(text)
    while i < n:
        c = text[i]
        if c in _SPACE:
            i += 1
            continue
        token = Token(c, i, i + 1) if c in _PUNCT else _scan(text, i, path)
        tokens.append(token)
        i = token.end
    return tokens


def _scan(text: str, i: int, path: str) -> Token:
    c = text[i]
    if c == '"':
        match = _STRING.match(text, i)
        if match is None:
            raise error_at(path, text, i, "unterminated string")
        return Token("string", i, match.end())
    if text.startswith("//", i):
        return Token("comment", i, _LINE_COMMENT.match(text, i).end())  # type: ignore[union-attr]
    if text.startswith("/*", i):
        end = text.find("*/", i + 2)
        if end < 0:
            raise error_at(path, text, i, "unterminated block comment")
        return Token("comment", i, end + 2)
    if c == "-" or "0" <= c <= "9":
        match = _NUMBER.match(text, i)
        if match is None:
            raise error_at(path, text, i, "invalid number")
        return Token("number", i, match.end())
    match = _WORD.match(text, i)
    if match is not None:
        if match.group() not in WORDS:
            raise error_at(path, text, i, f"unexpected word {_clip(match.group())!r}")
        return Token("word", i, match.end())
    raise error_at(path, text, i, f"unexpected character {c!r}")


def _clip(s: str, limit: int = 24) -> str:
    return s if len(s) <= limit else s[:limit] + "..."


# -- syntax tree -----------------------------------------------------------------------------------


@dataclass
class Node:
    """A value and where it is: for containers, where each element starts/ends and the closing bracket."""

    start: int
    end: int
    value: Any
    keys: list[str] = field(default_factory=list)  # objects: member keys, parallel to elem_*
    elem_starts: list[int] = field(default_factory=list)  # arrays: element starts; objects: key starts
    elem_ends: list[int] = field(default_factory=list)  # where each element (member value) ends
    children: list[Node] = field(default_factory=list)
    close: int = -1  # offset of the closing bracket
    trailing_comma: bool = False


@dataclass
class Document:
    """A parsed text: its root node and every token (comments included)."""

    root: Node
    tokens: list[Token]


class _Parser:
    def __init__(self, text: str, path: str):
        self.text = text
        self.path = path
        self.all_tokens = tokenize(text, path)
        self.tokens = [t for t in self.all_tokens if t.kind != "comment"]
        self.pos = 0

    def parse(self) -> Node:
        if not self.tokens:
            raise self.error(len(self.text), "empty document, expected a JSON object")
        node = self.value(0)
        if self.pos < len(self.tokens):
            token = self.tokens[self.pos]
            raise self.error(token.start, f"unexpected {self.describe(token)} after the end of the document")
        return node

    def error(self, offset: int, reason: str) -> JsoncError:
        return error_at(self.path, self.text, offset, reason)

    def describe(self, token: Token) -> str:
        if token.kind in _PUNCT:
            return f"'{token.kind}'"
        if token.kind == "word":
            return f"'{self.text[token.start : token.end]}'"
        return f"a {token.kind}"

    def next(self, expected: str) -> Token:
        if self.pos >= len(self.tokens):
            raise self.error(len(self.text), f"unexpected end of file, expected {expected}")
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def value(self, depth: int) -> Node:
        token = self.next("a value")
        if token.kind in "{[" and depth >= MAX_DEPTH:
            raise self.error(token.start, "nested too deeply")
        if token.kind == "{":
            return self.container(token, depth + 1, "}")
        if token.kind == "[":
            return self.container(token, depth + 1, "]")
        if token.kind in ("string", "number", "word"):
            return Node(token.start, token.end, self.scalar(token))
        raise self.error(token.start, f"expected a value, found {self.describe(token)}")

    def container(self, opening: Token, depth: int, closer: str) -> Node:
        is_object = closer == "}"
        node = Node(opening.start, -1, {} if is_object else [])
        while True:
            if self.peek() == closer:  # empty, or after a trailing comma
                break
            node.trailing_comma = False
            if is_object:
                self.member(node, depth)
            else:
                self.item(node, depth)
            token = self.next(f"',' or '{closer}'")
            if token.kind == closer:
                self.pos -= 1
                break
            if token.kind != ",":
                raise self.error(token.start, f"expected ',' or '{closer}', found {self.describe(token)}")
            node.trailing_comma = True
        close = self.next(f"'{closer}'")
        node.close, node.end = close.start, close.end
        return node

    def peek(self) -> str | None:
        return self.tokens[self.pos].kind if self.pos < len(self.tokens) else None

    def item(self, node: Node, depth: int) -> None:
        child = self.value(depth)
        node.value.append(child.value)
        self.add(node, child.start, child)

    def member(self, node: Node, depth: int) -> None:
        key_token = self.next("a string key or '}'")
        if key_token.kind != "string":
            raise self.error(key_token.start, f"expected a string key or '}}', found {self.describe(key_token)}")
        colon = self.next("':'")
        if colon.kind != ":":
            raise self.error(colon.start, f"expected ':', found {self.describe(colon)}")
        child = self.value(depth)
        key = self.scalar(key_token)
        node.value[key] = child.value  # a repeated key: the last one wins, as in VS Code
        node.keys.append(key)
        self.add(node, key_token.start, child)

    @staticmethod
    def add(node: Node, start: int, child: Node) -> None:
        node.elem_starts.append(start)
        node.elem_ends.append(child.end)
        node.children.append(child)

    def scalar(self, token: Token) -> Any:
        raw = self.text[token.start : token.end]
        if token.kind == "word":
            return WORDS[raw]
        if token.kind == "number":
            self.check_digits(token, raw)
        try:
            return json.loads(raw, strict=False)
        except json.JSONDecodeError as exc:
            raise self.error(token.start + exc.pos, f"invalid {token.kind}: {exc.msg}") from None
        except ValueError as exc:  # anything else json refuses: still this file's problem, in one line
            raise self.error(token.start, f"invalid {token.kind}: {str(exc).splitlines()[0]}") from None

    def check_digits(self, token: Token, raw: str) -> None:
        """An integer longer than Python converts (4300 digits by default) is this file's error, not ours."""
        limit = getattr(sys, "get_int_max_str_digits", lambda: 0)()
        digits = len(raw) - raw.startswith("-")
        if limit and digits > limit and raw.lstrip("-").isdigit():
            raise self.error(token.start, f"number too long ({digits} digits; at most {limit} are read)")


def parse_document(text: str, path: str = "launch.json") -> Document:
    """The syntax tree of a JSONC text, with its tokens; raises JsoncError (one line) on bad input."""
    parser = _Parser(text, str(path))
    return Document(parser.parse(), parser.all_tokens)


def parse_jsonc(text: str, path: str = "launch.json") -> Any:
    """Parse JSON with comments (``//``, ``/* */``) and trailing commas, as VS Code reads launch.json.

    Raises JsoncError (``launch.LaunchJsonError``) naming ``path`` and the line:col of the problem.
    """
    return parse_document(text, path).root.value
