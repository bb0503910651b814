"""VS Code launch.json: attach configurations, and merging them into a user's file without damage.

A user's launch.json is JSONC (comments, trailing commas) and is hand-edited, so it is never
re-serialised. The file is tokenised, the spans of the top-level ``configurations`` and
``compounds`` arrays and of their elements are located, and only the text of the elements we own
(same ``name``) is replaced, or new text is inserted before the closing bracket. The result is
parsed again and checked before it is written atomically, next to a ``.bak`` copy of the old file.
"""

from __future__ import annotations

import codecs
import contextlib
import copy
import json
import operator
import os
import re
import secrets
import stat
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "LaunchJsonError",
    "MergeResult",
    "attach_config",
    "compound",
    "fragment",
    "fragment_text",
    "merge_into_file",
    "parse_jsonc",
    "resolve_variables",
    "workspace_folder_for",
]

VERSION = "0.2.0"
WORKSPACE_FOLDER = "${workspaceFolder}"
WORKSPACE_FOLDER_BASENAME = "${workspaceFolderBasename}"
DEFAULT_INDENT = "    "
_LISTS = ("configurations", "compounds")
_MAX_DEPTH = 200


class LaunchJsonError(ValueError):
    """A launch.json that can't be read or safely edited.

    The message is one line, ``<file>:<line>:<col>: <what is wrong>``; the parts are also attributes.
    """

    def __init__(self, message: str, path: str | None = None, line: int | None = None, col: int | None = None):
        super().__init__(message)
        self.path = path
        self.line = line
        self.col = col


# -- configurations ------------------------------------------------------------------------------


def attach_config(
    name: str,
    host: str,
    port: int,
    local_root: str | os.PathLike,
    remote_root: str,
    workspace_folder: str | os.PathLike | None = None,
    just_my_code: bool = False,
) -> dict:
    """A VS Code ``debugpy`` attach configuration for a debugpy listening on ``host:port``."""
    return {
        "name": name,
        "type": "debugpy",
        "request": "attach",
        "connect": {"host": host, "port": _check_port(port)},
        "pathMappings": [{"localRoot": _local_root(local_root, workspace_folder), "remoteRoot": remote_root}],
        "justMyCode": just_my_code,
    }


def _check_port(port: int) -> int:
    if isinstance(port, bool):
        raise ValueError(f"port must be an integer in 1..65535, got {port!r}")
    try:
        value = operator.index(port)
    except TypeError:
        raise ValueError(f"port must be an integer in 1..65535, got {port!r}") from None
    if not 0 < value < 65536:
        raise ValueError(f"port must be an integer in 1..65535, got {port!r}")
    return value


def _local_root(local_root: str | os.PathLike, workspace_folder: str | os.PathLike | None) -> str:
    """``${workspaceFolder}[/rel]`` when local_root is inside the workspace folder, else its absolute path."""
    local = Path(local_root).expanduser().resolve()
    if workspace_folder is not None:
        folder = Path(workspace_folder).expanduser().resolve()
        try:
            rel = local.relative_to(folder)
        except ValueError:
            pass
        else:
            return f"{WORKSPACE_FOLDER}/{rel.as_posix()}" if rel.parts else WORKSPACE_FOLDER
    return str(local)


def compound(name: str, config_names: Iterable[str]) -> dict:
    """A VS Code ``compounds`` entry starting all the named configurations together."""
    return {"name": name, "configurations": list(config_names)}


def fragment(configs: Sequence[dict], compounds: Sequence[dict] = ()) -> dict:
    """A whole launch.json document holding ``configs`` (and ``compounds`` when there are any)."""
    doc: dict[str, Any] = {"version": VERSION, "configurations": list(configs)}
    if compounds:
        doc["compounds"] = list(compounds)
    return doc


def fragment_text(configs: Sequence[dict], compounds: Sequence[dict] = ()) -> str:
    return json.dumps(fragment(configs, compounds), indent=4, ensure_ascii=False)


def workspace_folder_for(launch_json_path: str | os.PathLike) -> Path:
    """The folder VS Code calls ``${workspaceFolder}`` for this launch.json."""
    folder = Path(os.path.abspath(os.fspath(launch_json_path))).parent
    return folder.parent if folder.name == ".vscode" else folder


def resolve_variables(config: Any, workspace_folder: str | os.PathLike) -> Any:
    """A deep copy of ``config`` with ``${workspaceFolder}`` (and ``...Basename``) substituted, as VS Code does."""
    folder = os.fspath(workspace_folder)
    basename = os.path.basename(os.path.normpath(folder))

    def sub(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace(WORKSPACE_FOLDER_BASENAME, basename).replace(WORKSPACE_FOLDER, folder)
        if isinstance(value, Mapping):
            return {key: sub(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(sub(item) for item in value)
        return copy.deepcopy(value)

    return sub(config)


# -- JSONC tokens ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: str  # one of "{}[]:," or "string", "number", "word", "comment"
    start: int
    end: int


_STRING = re.compile(r'"(?:[^"\\\n\r]|\\[^\n\r])*"')
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_WORD = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
_LINE_COMMENT = re.compile(r"//[^\n\r]*")
_WORDS = {"true": True, "false": False, "null": None}
_PUNCT = frozenset("{}[]:,")
_SPACE = frozenset(" \t\r\n")


def _line_col(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _error(path: str, text: str, offset: int, reason: str) -> LaunchJsonError:
    line, col = _line_col(text, offset)
    return LaunchJsonError(f"{path}:{line}:{col}: {reason}", path, line, col)


def _tokenize(text: str, path: str) -> list[_Token]:
    """All tokens of ``text``, comments included; whitespace is what lies between them."""
    tokens: list[_Token] = []
    i = 1 if text.startswith("\ufeff") else 0
    n = len(text)
    while i < n:
        c = text[i]
        if c in _SPACE:
            i += 1
            continue
        token = _punct(c, i) or _scan(text, i, path)
        tokens.append(token)
        i = token.end
    return tokens


def _punct(c: str, i: int) -> _Token | None:
    return _Token(c, i, i + 1) if c in _PUNCT else None


def _scan(text: str, i: int, path: str) -> _Token:
    c = text[i]
    if c == '"':
        match = _STRING.match(text, i)
        if match is None:
            raise _error(path, text, i, "unterminated string")
        return _Token("string", i, match.end())
    if text.startswith("//", i):
        return _Token("comment", i, _LINE_COMMENT.match(text, i).end())  # type: ignore[union-attr]
    if text.startswith("/*", i):
        end = text.find("*/", i + 2)
        if end < 0:
            raise _error(path, text, i, "unterminated block comment")
        return _Token("comment", i, end + 2)
    if c == "-" or "0" <= c <= "9":
        match = _NUMBER.match(text, i)
        if match is None:
            raise _error(path, text, i, "invalid number")
        return _Token("number", i, match.end())
    match = _WORD.match(text, i)
    if match is not None:
        if match.group() not in _WORDS:
            raise _error(path, text, i, f"unexpected word {_clip(match.group())!r}")
        return _Token("word", i, match.end())
    raise _error(path, text, i, f"unexpected character {c!r}")


def _clip(s: str, limit: int = 24) -> str:
    return s if len(s) <= limit else s[:limit] + "..."


# -- JSONC syntax tree -----------------------------------------------------------------------------


@dataclass
class _Node:
    """A value and where it is: for containers, where each element starts/ends and the closing bracket."""

    start: int
    end: int
    value: Any
    keys: list[str] = field(default_factory=list)  # objects: member keys, parallel to elem_*
    elem_starts: list[int] = field(default_factory=list)  # arrays: element starts; objects: key starts
    elem_ends: list[int] = field(default_factory=list)  # where each element (member value) ends
    children: list[_Node] = field(default_factory=list)
    close: int = -1  # offset of the closing bracket
    trailing_comma: bool = False


class _Parser:
    def __init__(self, text: str, path: str):
        self.text = text
        self.path = path
        self.all_tokens = _tokenize(text, path)
        self.tokens = [t for t in self.all_tokens if t.kind != "comment"]
        self.pos = 0

    def parse(self) -> _Node:
        if not self.tokens:
            raise self.error(len(self.text), "empty document, expected a JSON object")
        node = self.value(0)
        if self.pos < len(self.tokens):
            token = self.tokens[self.pos]
            raise self.error(token.start, f"unexpected {self.describe(token)} after the end of the document")
        return node

    def error(self, offset: int, reason: str) -> LaunchJsonError:
        return _error(self.path, self.text, offset, reason)

    def describe(self, token: _Token) -> str:
        if token.kind in _PUNCT:
            return f"'{token.kind}'"
        if token.kind == "word":
            return f"'{self.text[token.start : token.end]}'"
        return f"a {token.kind}"

    def next(self, expected: str) -> _Token:
        if self.pos >= len(self.tokens):
            raise self.error(len(self.text), f"unexpected end of file, expected {expected}")
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def value(self, depth: int) -> _Node:
        token = self.next("a value")
        if token.kind in "{[" and depth >= _MAX_DEPTH:
            raise self.error(token.start, "nested too deeply")
        if token.kind == "{":
            return self.container(token, depth + 1, "}")
        if token.kind == "[":
            return self.container(token, depth + 1, "]")
        if token.kind in ("string", "number", "word"):
            return _Node(token.start, token.end, self.scalar(token))
        raise self.error(token.start, f"expected a value, found {self.describe(token)}")

    def container(self, opening: _Token, depth: int, closer: str) -> _Node:
        is_object = closer == "}"
        node = _Node(opening.start, -1, {} if is_object else [])
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

    def item(self, node: _Node, depth: int) -> None:
        child = self.value(depth)
        node.value.append(child.value)
        self.add(node, child.start, child)

    def member(self, node: _Node, depth: int) -> None:
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
    def add(node: _Node, start: int, child: _Node) -> None:
        node.elem_starts.append(start)
        node.elem_ends.append(child.end)
        node.children.append(child)

    def scalar(self, token: _Token) -> Any:
        raw = self.text[token.start : token.end]
        if token.kind == "word":
            return _WORDS[raw]
        try:
            return json.loads(raw, strict=False)
        except json.JSONDecodeError as exc:
            raise self.error(token.start + exc.pos, f"invalid {token.kind}: {exc.msg}") from None


def parse_jsonc(text: str, path: str = "launch.json") -> Any:
    """Parse JSON with comments (``//``, ``/* */``) and trailing commas, as VS Code reads launch.json.

    Raises LaunchJsonError naming ``path`` and the line:col of the problem.
    """
    return _Parser(text, str(path)).parse().value


# -- text layout ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Style:
    unit: str  # one indentation level
    nl: str  # line ending


def _line_start(text: str, pos: int) -> int:
    return max(text.rfind("\n", 0, pos), text.rfind("\r", 0, pos)) + 1


def _starts_line(text: str, pos: int) -> bool:
    return text[_line_start(text, pos) : pos].strip(" \t") == ""


def _line_indent(text: str, pos: int) -> str:
    start = end = _line_start(text, pos)
    while end < len(text) and text[end] in " \t":
        end += 1
    return text[start:end]


def _newline(text: str) -> str:
    crlf = text.count("\r\n")
    return "\r\n" if crlf > text.count("\n") - crlf else "\n"


def _indent_unit(text: str, tokens: Iterable[_Token]) -> str:
    """The file's indentation step: the most common increase of indentation from one line to the next."""
    votes: Counter[str] = Counter()
    previous: str | None = None
    for token in tokens:
        if token.kind == "comment" or not _starts_line(text, token.start):
            continue
        indent = text[_line_start(text, token.start) : token.start]
        if previous is not None and len(indent) > len(previous) and indent.startswith(previous):
            step = indent[len(previous) :]
            if len(step) <= 8 and len(set(step)) == 1:
                votes[step] += 1
        previous = indent
    return votes.most_common(1)[0][0] if votes else DEFAULT_INDENT


def _dump(value: Any, indent: str, style: _Style) -> str:
    """``value`` as JSON whose continuation lines are indented by ``indent`` (the first line is not)."""
    text = json.dumps(value, indent=style.unit, ensure_ascii=False)
    return (style.nl + indent).join(text.split("\n"))


# -- text edits ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Edit:
    start: int
    end: int
    text: str


def _apply(text: str, edits: list[_Edit]) -> str:
    """Apply non-overlapping edits; insertions at the same offset keep the order they were listed in."""
    ordered = sorted(enumerate(edits), key=lambda pair: (pair[1].start, pair[0]), reverse=True)
    limit = len(text)
    for _, edit in ordered:
        if edit.end > limit:
            raise AssertionError("overlapping launch.json edits")
        text = text[: edit.start] + edit.text + text[edit.end :]
        limit = edit.start
    return text


def _append(text: str, node: _Node, pieces: list[str], indent: str, style: _Style) -> list[_Edit]:
    """Edits adding ``pieces`` (element texts) after the last element of an array or object ``node``."""
    body = indent + ("," + style.nl + indent).join(pieces) + ("," if node.trailing_comma else "")
    edits = []
    if node.elem_ends and not node.trailing_comma:
        edits.append(_Edit(node.elem_ends[-1], node.elem_ends[-1], ","))
    if _starts_line(text, node.close):
        at = _line_start(text, node.close)
        edits.append(_Edit(at, at, body + style.nl))
    else:
        tail = style.nl + _line_indent(text, node.close)
        edits.append(_Edit(node.close, node.close, style.nl + body + tail))
    return edits


def _element_indent(text: str, node: _Node, style: _Style) -> str:
    if node.elem_starts:
        return _line_indent(text, node.elem_starts[-1])
    return _line_indent(text, node.start) + style.unit


def _first_by_name(node: _Node) -> dict[str, int]:
    first: dict[str, int] = {}
    for index, item in enumerate(node.value):
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str):
            first.setdefault(name, index)
    return first


@dataclass
class _ListPlan:
    edits: list[_Edit] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)


def _plan_list(text: str, node: _Node, new: dict[str, dict], style: _Style) -> _ListPlan:
    """Replace the first element named like each new one, in place; append the others."""
    plan = _ListPlan()
    first = _first_by_name(node)
    appended = []
    for name, config in new.items():
        index = first.get(name)
        if index is None:
            appended.append(config)
            plan.added.append(name)
            continue
        start, end = node.elem_starts[index], node.elem_ends[index]
        plan.edits.append(_Edit(start, end, _dump(config, _line_indent(text, start), style)))
        plan.replaced.append(name)
    if appended:
        indent = _element_indent(text, node, style)
        plan.edits += _append(text, node, [_dump(c, indent, style) for c in appended], indent, style)
    return plan


def _expected_list(old: list, new: dict[str, dict]) -> list:
    result = list(old)
    first: dict[str, int] = {}
    for index, item in enumerate(old):
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            first.setdefault(item["name"], index)
    for name, config in new.items():
        if name in first:
            result[first[name]] = config
        else:
            result.append(config)
    return result


# -- merging -------------------------------------------------------------------------------------


@dataclass
class MergeResult:
    path: Path
    backup: Path | None  # the previous content (None when the file was created or left as it was)
    added: list[str]  # configuration names appended
    replaced: list[str]  # configuration names whose first occurrence was replaced in place
    compounds_added: list[str] = field(default_factory=list)
    compounds_replaced: list[str] = field(default_factory=list)


@dataclass
class _Plan:
    text: str
    lists: dict[str, _ListPlan]


def _json_default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _by_name(items: Iterable[Mapping], what: str) -> dict[str, dict]:
    """Plain-JSON copies keyed by name (a repeated name: the last one wins, at the first one's place)."""
    result: dict[str, dict] = {}
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise ValueError(f"a launch.json {what} must be a mapping with a string 'name', got {item!r}")
        text = json.dumps(dict(item), default=_json_default, allow_nan=False, ensure_ascii=False)
        result[item["name"]] = json.loads(text)
    return result


def _member_index(root: _Node, key: str) -> int | None:
    indexes = [i for i, k in enumerate(root.keys) if k == key]
    return indexes[-1] if indexes else None  # the member whose value the parsed dict holds


def _plan_merge(text: str, path: str, new: dict[str, dict[str, dict]]) -> _Plan:
    parser = _Parser(text, path)
    root = parser.parse()
    if not isinstance(root.value, dict):
        raise _error(path, text, root.start, f"the top level must be an object, found {_type_name(root.value)}")
    style = _Style(_indent_unit(text, parser.all_tokens), _newline(text))
    edits: list[_Edit] = []
    missing: list[str] = []
    lists: dict[str, _ListPlan] = {}
    for key in _LISTS:
        index = _member_index(root, key)
        if index is None:
            if new[key] or key == "configurations":
                missing.append(key)
            lists[key] = _ListPlan(added=list(new[key]))
            continue
        node = root.children[index]
        if not isinstance(node.value, list):
            raise _error(path, text, node.start, f'"{key}" must be an array, found {_type_name(node.value)}')
        lists[key] = _plan_list(text, node, new[key], style)
        edits += lists[key].edits
    if missing:
        indent = _element_indent(text, root, style)
        members = [f"{json.dumps(key)}: {_dump(list(new[key].values()), indent, style)}" for key in missing]
        edits += _append(text, root, members, indent, style)
    return _Plan(_apply(text, edits), lists)


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values, types included (True is not 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _verify(path: str, old_text: str, new_text: str, new: dict[str, dict[str, dict]]) -> None:
    """Refuse an edit unless it changed exactly what it should have."""
    old = parse_jsonc(old_text, path)
    try:
        result = parse_jsonc(new_text, path)
    except LaunchJsonError as exc:
        raise LaunchJsonError(
            f"{path}:1:1: refusing to write: the edited file would not parse ({exc})", path, 1, 1
        ) from None
    expected = {k: v for k, v in old.items() if k not in _LISTS}
    for key in _LISTS:
        if key in old or new[key] or key == "configurations":
            expected[key] = _expected_list(old.get(key, []), new[key])
    if not isinstance(result, dict) or not _same(result, expected):
        raise LaunchJsonError(f"{path}:1:1: refusing to write: the edit would change more than intended", path, 1, 1)


def _decode(raw: bytes, path: str) -> tuple[str, bool]:
    bom = raw.startswith(codecs.BOM_UTF8)
    body = raw[len(codecs.BOM_UTF8) :] if bom else raw
    try:
        return body.decode("utf-8"), bom
    except UnicodeDecodeError as exc:
        before = body[: exc.start].decode("utf-8", errors="replace")
        raise _error(path, before, len(before), "the file is not valid UTF-8") from None


def merge_into_file(path: str | os.PathLike, configs: Sequence[dict], compounds: Sequence[dict] = ()) -> MergeResult:
    """Add or replace (by name) configurations and compounds in a launch.json, keeping everything else.

    A missing file is created. An existing one is edited as text: comments, formatting and every
    other entry survive byte for byte. Anything unparseable or unexpected raises LaunchJsonError and
    leaves the file untouched. The old content is kept in ``<name>.bak`` next to it.
    """
    target = Path(path)
    new = {"configurations": _by_name(configs, "configuration"), "compounds": _by_name(compounds, "compound")}
    try:
        raw = target.read_bytes()
    except FileNotFoundError:
        text = fragment_text(list(new["configurations"].values()), list(new["compounds"].values())) + "\n"
        _write_file(target, text.encode("utf-8"), None)
        return MergeResult(target, None, list(new["configurations"]), [], list(new["compounds"]), [])
    text, bom = _decode(raw, str(target))
    plan = _plan_merge(text, str(target), new)
    configs_plan, compounds_plan = plan.lists["configurations"], plan.lists["compounds"]
    result = MergeResult(
        target, None, configs_plan.added, configs_plan.replaced, compounds_plan.added, compounds_plan.replaced
    )
    if plan.text == text:
        return result
    _verify(str(target), text, plan.text, new)
    data = (codecs.BOM_UTF8 if bom else b"") + plan.text.encode("utf-8")
    result.backup = _replace_keeping_backup(target, data, raw)
    return result


# -- files ---------------------------------------------------------------------------------------


def _replace_keeping_backup(target: Path, data: bytes, old: bytes) -> Path:
    real = Path(os.path.realpath(target))
    like = real.stat()
    backup = target.with_name(target.name + ".bak")
    _move_into_place(_write_temp(real, data, like), real, before=lambda: _write_file(backup, old, like))
    return backup


def _write_file(target: Path, data: bytes, like: os.stat_result | None) -> None:
    """Atomically make ``target`` hold ``data`` (with ``like``'s mode and owner when given)."""
    real = Path(os.path.realpath(target))
    real.parent.mkdir(parents=True, exist_ok=True)
    _move_into_place(_write_temp(real, data, like), real)


def _move_into_place(tmp: Path, real: Path, before: Callable[[], None] | None = None) -> None:
    """``os.replace`` a written temp file over ``real`` (after ``before``); never leave the temp."""
    try:
        if before is not None:
            before()
        os.replace(tmp, real)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(real.parent)


def _write_temp(real: Path, data: bytes, like: os.stat_result | None) -> Path:
    tmp = real.with_name(f".{real.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, 0o666)  # a new file gets the umask's usual mode
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if like is not None:
            _copy_owner_and_mode(tmp, like)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _copy_owner_and_mode(tmp: Path, like: os.stat_result) -> None:
    if hasattr(os, "chown"):
        current = tmp.stat()
        if (current.st_uid, current.st_gid) != (like.st_uid, like.st_gid):
            with contextlib.suppress(OSError):
                os.chown(tmp, like.st_uid, like.st_gid)
    os.chmod(tmp, stat.S_IMODE(like.st_mode))


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
