"""VS Code launch.json: attach configurations, and merging them into a user's file without damage.

A user's launch.json is JSONC (comments, trailing commas) and is hand-edited, so it is never
re-serialised. The file is parsed with positions (``jsonc.py``), the spans of the top-level
``configurations`` and ``compounds`` arrays and of their elements are located, and only the text of
the elements we own (same ``name``) is replaced, or new text is inserted before the closing bracket.
The result is parsed again and checked before it is written. Reading, editing and writing happen
under a lock, so concurrent writers never lose a configuration; the write itself (and the
``.bak`` copy of the old file) goes through ``fileio.py``: atomic, never through a planted link,
refusing a dangling link or a read-only file. Every problem is one line (LaunchJsonError).

Where a launch.json belongs: the workspace root VS Code opens, ``workspace_root(start)``.
"""

from __future__ import annotations

import codecs
import copy
import json
import operator
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import fileio
from .jsonc import JsoncError, Node, Token, error_at, parse_document, parse_jsonc

__all__ = [
    "LaunchJsonError",
    "MergeResult",
    "attach_config",
    "check_launch_json",
    "compound",
    "default_launch_json",
    "fragment",
    "fragment_text",
    "merge_into_file",
    "parse_jsonc",
    "resolve_variables",
    "workspace_folder_for",
    "workspace_root",
]

VERSION = "0.2.0"
WORKSPACE_FOLDER = "${workspaceFolder}"
WORKSPACE_FOLDER_BASENAME = "${workspaceFolderBasename}"
DEFAULT_INDENT = "    "
_LISTS = ("configurations", "compounds")
MERGE_ATTEMPTS = 5  # a launch.json another program keeps saving while we merge: read again this often

# A launch.json that can't be read or safely edited or written: one line, ``<file>:<line>:<col>: ...``
# (or ``cannot write <file>: <reason>``), a ValueError; the parts are attributes (path, line, col).
LaunchJsonError = JsoncError


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


def _indent_unit(text: str, tokens: Iterable[Token]) -> str:
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


def _append(text: str, node: Node, pieces: list[str], indent: str, style: _Style) -> list[_Edit]:
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


def _element_indent(text: str, node: Node, style: _Style) -> str:
    if node.elem_starts:
        return _line_indent(text, node.elem_starts[-1])
    return _line_indent(text, node.start) + style.unit


def _first_by_name(node: Node) -> dict[str, int]:
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


def _plan_list(text: str, node: Node, new: dict[str, dict], style: _Style) -> _ListPlan:
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


def _member_index(root: Node, key: str) -> int | None:
    indexes = [i for i, k in enumerate(root.keys) if k == key]
    return indexes[-1] if indexes else None  # the member whose value the parsed dict holds


def _plan_merge(text: str, path: str, new: dict[str, dict[str, dict]]) -> _Plan:
    document = parse_document(text, path)
    root = document.root
    if not isinstance(root.value, dict):
        raise error_at(path, text, root.start, f"the top level must be an object, found {_type_name(root.value)}")
    style = _Style(_indent_unit(text, document.tokens), _newline(text))
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
            raise error_at(path, text, node.start, f'"{key}" must be an array, found {_type_name(node.value)}')
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
        raise error_at(path, before, len(before), "the file is not valid UTF-8") from None


def merge_into_file(path: str | os.PathLike, configs: Sequence[dict], compounds: Sequence[dict] = ()) -> MergeResult:
    """Add or replace (by name) configurations and compounds in a launch.json, keeping everything else.

    A missing file is created. An existing one is edited as text: comments, formatting and every
    other entry survive byte for byte. The old content is kept in ``<name>.bak`` next to it. Anything
    unparseable, unexpected or unwritable (a dangling link, a read-only file, no such folder) raises
    LaunchJsonError, one line, and leaves the file untouched. Concurrent merges into one file (threads
    or processes) are serialised: none loses another's configurations.
    """
    target = Path(path)
    new = {"configurations": _by_name(configs, "configuration"), "compounds": _by_name(compounds, "compound")}
    try:
        real = fileio.resolve_target(target, refuse_links=True)
        real.parent.mkdir(parents=True, exist_ok=True)
        with fileio.locked(real):
            for _ in range(MERGE_ATTEMPTS - 1):
                try:
                    return _merge_locked(target, real, new)
                except fileio.ChangedMeanwhile:
                    continue  # VS Code saved it meanwhile (outside our lock): merge into what it saved
            return _merge_locked(target, real, new)
    except OSError as exc:
        raise LaunchJsonError(fileio.describe(exc, target), str(target)) from None


def check_launch_json(path: str | os.PathLike) -> None:
    """Refuse now, before a run starts, a launch.json that ``merge_into_file`` would refuse later.

    A missing file is fine (it will be created); a dangling link, a read-only file, one that can't
    be read, isn't UTF-8, doesn't parse or isn't shaped like a launch.json raises LaunchJsonError.
    """
    target = Path(path)
    try:
        raw = fileio.resolve_target(target, refuse_links=True).read_bytes()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise LaunchJsonError(fileio.describe(exc, target, "read"), str(target)) from None
    text, _ = _decode(raw, str(target))
    _plan_merge(text, str(target), {"configurations": {}, "compounds": {}})


def _merge_locked(target: Path, real: Path, new: dict[str, dict[str, dict]]) -> MergeResult:
    try:
        before = os.stat(real)
        raw = real.read_bytes()
    except FileNotFoundError:
        text = fragment_text(list(new["configurations"].values()), list(new["compounds"].values())) + "\n"
        fileio.write_atomic(real, text.encode("utf-8"))
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
    like = os.stat(real)
    if not fileio.same_file_state(before, like):
        raise fileio.ChangedMeanwhile(real, "changed while it was being merged")
    backup = target.with_name(target.name + ".bak")
    fileio.write_atomic(backup, raw, follow=False, like=like)  # a planted .bak link is replaced, not followed
    fileio.write_atomic(real, (codecs.BOM_UTF8 if bom else b"") + plan.text.encode("utf-8"), like=like,
                        refuse_links=True, unchanged=before)
    result.backup = backup
    return result


# -- where launch.json goes ----------------------------------------------------------------------


def workspace_root(start: str | os.PathLike) -> Path:
    """The folder VS Code most likely has open for ``start``: its nearest ancestor (itself included)
    holding a ``.vscode/`` folder or a ``.git`` (a folder, or a worktree's file); else ``start``.

    The home folder's ``.vscode`` does not count: it is VS Code's own per-user folder (extensions),
    present wherever VS Code is installed, not the mark of a workspace.
    """
    origin = Path(os.path.abspath(os.fspath(start)))
    home = _home()
    for folder in (origin, *origin.parents):
        if (folder / ".git").exists() or (folder != home and (folder / ".vscode").is_dir()):
            return folder
    return origin


def default_launch_json(start: str | os.PathLike) -> Path:
    """Where a launch.json for work in ``start`` belongs: ``<workspace root>/.vscode/launch.json``."""
    return workspace_root(start) / ".vscode" / "launch.json"


def _home() -> Path | None:
    try:
        return Path(os.path.abspath(Path.home()))
    except (RuntimeError, KeyError):
        return None
