from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aml_magics import launch
from aml_magics.launch import (
    LaunchJsonError,
    attach_config,
    compound,
    fragment,
    fragment_text,
    merge_into_file,
    parse_jsonc,
    resolve_variables,
    workspace_folder_for,
)

# -- helpers -------------------------------------------------------------------------------------


def cfg(name: str, port: int = 5678, **extra) -> dict:
    return {**attach_config(name, "127.0.0.1", port, "/remote/src", "/remote/src"), **extra}


def names(doc: dict, key: str = "configurations") -> list:
    return [c.get("name") for c in doc.get(key, [])]


def write(folder: Path, text: str, encoding_prefix: bytes = b"") -> Path:
    path = folder / ".vscode" / "launch.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encoding_prefix + text.encode("utf-8"))
    return path


def read(path: Path) -> dict:
    return parse_jsonc(path.read_text(encoding="utf-8-sig"), str(path))


# -- configurations ------------------------------------------------------------------------------


def test_attach_config_inside_workspace_uses_workspace_folder_variable(tmp_path):
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    config = attach_config("job", "10.0.0.4", 5679, tmp_path / "src" / "pkg", "/mnt/code", tmp_path)
    assert config == {
        "name": "job",
        "type": "debugpy",
        "request": "attach",
        "connect": {"host": "10.0.0.4", "port": 5679},
        "pathMappings": [{"localRoot": "${workspaceFolder}/src/pkg", "remoteRoot": "/mnt/code"}],
        "justMyCode": False,
    }
    assert list(config) == ["name", "type", "request", "connect", "pathMappings", "justMyCode"]


def test_attach_config_workspace_root_itself(tmp_path):
    config = attach_config("job", "localhost", 5678, tmp_path, "/app", workspace_folder=str(tmp_path))
    assert config["pathMappings"] == [{"localRoot": "${workspaceFolder}", "remoteRoot": "/app"}]


def test_attach_config_relative_local_root_resolved_against_cwd(tmp_path, monkeypatch):
    (tmp_path / "code").mkdir()
    monkeypatch.chdir(tmp_path)
    config = attach_config("job", "localhost", 5678, "code/../code", "/app", workspace_folder=tmp_path)
    assert config["pathMappings"][0]["localRoot"] == "${workspaceFolder}/code"


def test_attach_config_outside_workspace_or_without_one_is_absolute(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    workspace = tmp_path / "ws"
    workspace.mkdir()
    for ws in (workspace, None):
        config = attach_config("job", "localhost", 5678, outside, "/app", workspace_folder=ws, just_my_code=True)
        assert config["pathMappings"][0]["localRoot"] == str(outside.resolve())
        assert config["justMyCode"] is True


def test_attach_config_prefix_sibling_is_not_inside(tmp_path):
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws2").mkdir()
    config = attach_config("job", "localhost", 5678, tmp_path / "ws2", "/app", workspace_folder=tmp_path / "ws")
    assert config["pathMappings"][0]["localRoot"] == str((tmp_path / "ws2").resolve())


@pytest.mark.parametrize("port", [0, 65536, -1, "5678", 5678.0, True])
def test_attach_config_rejects_bad_ports(port):
    with pytest.raises(ValueError):
        attach_config("job", "localhost", port, "/", "/app")


def test_compound_fragment_and_text():
    a, b = cfg("a"), cfg("b", 5679)
    both = compound("all", ["a", "b"])
    assert both == {"name": "all", "configurations": ["a", "b"]}
    assert fragment([a]) == {"version": "0.2.0", "configurations": [a]}
    assert fragment([a, b], [both]) == {"version": "0.2.0", "configurations": [a, b], "compounds": [both]}
    text = fragment_text([cfg("é ü")], [])
    assert json.loads(text) == fragment([cfg("é ü")])
    assert "é ü" in text and '\n    "version"' in text


def test_workspace_folder_for(tmp_path):
    assert workspace_folder_for(tmp_path / ".vscode" / "launch.json") == tmp_path
    assert workspace_folder_for(tmp_path / "configs" / "launch.json") == tmp_path / "configs"
    assert workspace_folder_for(str(tmp_path / "x" / ".." / ".vscode" / "launch.json")) == tmp_path


def test_resolve_variables_is_a_deep_copy():
    config = cfg("job")
    config["pathMappings"][0]["localRoot"] = "${workspaceFolder}/src"
    config["cwd"] = "${workspaceFolder}"
    config["args"] = ["${workspaceFolderBasename}", 1, None]
    resolved = resolve_variables(config, "/home/me/proj")
    assert resolved["pathMappings"][0]["localRoot"] == "/home/me/proj/src"
    assert resolved["cwd"] == "/home/me/proj"
    assert resolved["args"] == ["proj", 1, None]
    assert config["pathMappings"][0]["localRoot"] == "${workspaceFolder}/src"  # the original is untouched
    resolved["connect"]["port"] = 1
    assert config["connect"]["port"] == 5678


# -- parse_jsonc ---------------------------------------------------------------------------------


def test_parse_jsonc_comments_strings_and_trailing_commas():
    text = """
    // header
    {
        /* block
           "fake": 1, */
        "url": "http://example.com//x", // a comment after a string holding //
        "quote": "say \\"hi\\" /* not a comment */",
        "backslash": "C:\\\\dir\\\\",
        "list": [1, 2.5, -3e2, true, false, null,],
        "nested": {"a": [], "b": {},},
        "unicode": "\\u00e9t\\u00e9 and ü",
    }
    // footer
    """
    assert parse_jsonc(text) == {
        "url": "http://example.com//x",
        "quote": 'say "hi" /* not a comment */',
        "backslash": "C:\\dir\\",
        "list": [1, 2.5, -300.0, True, False, None],
        "nested": {"a": [], "b": {}},
        "unicode": "été and ü",
    }


def test_parse_jsonc_matches_json_on_plain_json():
    doc = {"a": [1, {"b": None, "c": "x\ty\n\u2028"}], "é": -0.5, "": True}
    for indent in (None, 2, "\t"):
        assert parse_jsonc(json.dumps(doc, indent=indent, ensure_ascii=False)) == doc


def test_parse_jsonc_accepts_leading_bom_and_crlf():
    assert parse_jsonc('\ufeff{\r\n  "a": 1, // x\r\n}\r\n') == {"a": 1}


@pytest.mark.parametrize(
    "text, line, col, words",
    [
        ('{\n  "a": "abc\n}', 2, 8, "unterminated string"),
        ('{\n  "a": 1\n  "b": 2\n}', 3, 3, "expected ',' or '}'"),
        ('{\n  "a": [1, 2\n', 3, 1, "unexpected end of file"),
        ('{"a": 1} /* open', 1, 10, "unterminated block comment"),
        ('{"a": 1,, "b": 2}', 1, 9, "expected a string key"),
        ("{\"a\": 'single'}", 1, 7, "unexpected character"),
        ('{"a": tru}', 1, 7, "unexpected word 'tru'"),
        ('{"a": [,]}', 1, 8, "expected a value"),
        ('{"a" 1}', 1, 6, "expected ':'"),
        ('{"a": 1} {}', 1, 10, "after the end"),
        ('{"a": "bad \\x escape"}', 1, 12, "invalid string"),
        ("   // only a comment\n", 2, 1, "empty document"),
        ("", 1, 1, "empty document"),
    ],
)
def test_parse_jsonc_errors_name_file_line_and_column(text, line, col, words):
    with pytest.raises(LaunchJsonError) as info:
        parse_jsonc(text, "/ws/.vscode/launch.json")
    message = str(info.value)
    assert message.startswith(f"/ws/.vscode/launch.json:{line}:{col}: "), message
    assert words in message
    assert "\n" not in message
    assert (info.value.line, info.value.col) == (line, col)
    assert isinstance(info.value, ValueError)


def test_parse_jsonc_deep_nesting_is_an_error_not_a_crash():
    with pytest.raises(LaunchJsonError, match="nested too deeply"):
        parse_jsonc("[" * 5000 + "]" * 5000)


LONG_INT = "7" * 5000  # more digits than Python converts to an int (sys.get_int_max_str_digits())


@pytest.mark.parametrize("number", [LONG_INT, "-" + LONG_INT], ids=["positive", "negative"])
def test_parse_jsonc_too_long_integer_is_one_line(number):
    text = '{\n  "configurations": [{"name": "x", "port": ' + number + "}]\n}\n"
    with pytest.raises(LaunchJsonError) as info:
        parse_jsonc(text, "/ws/.vscode/launch.json")
    message = str(info.value)
    assert message.startswith("/ws/.vscode/launch.json:2:44: number too long (5000 digits; at most "), message
    assert "\n" not in message


def test_parse_jsonc_long_but_convertible_numbers_are_read():
    assert parse_jsonc('{"a": 0.' + LONG_INT + ', "b": ' + LONG_INT[:4000] + "}") == {
        "a": float("0." + LONG_INT), "b": int(LONG_INT[:4000])
    }


def test_merge_refuses_a_too_long_integer_and_leaves_the_file_untouched(tmp_path):
    text = VSCODE_DEFAULT.replace('"version": "0.2.0"', f'"version": "0.2.0", "n": {LONG_INT}')
    path = write(tmp_path, text)
    with pytest.raises(LaunchJsonError, match=f"^{re.escape(str(path))}:5:30: number too long") as info:
        merge_into_file(path, [cfg("job")])
    assert "\n" not in str(info.value)
    assert path.read_text() == text
    assert sorted(p.name for p in path.parent.iterdir()) == ["launch.json"]


def test_jsonc_is_its_own_module_and_launch_keeps_its_names():
    from aml_magics import jsonc

    assert launch.LaunchJsonError is jsonc.JsoncError
    assert launch.parse_jsonc is jsonc.parse_jsonc
    document = jsonc.parse_document('{"configurations": [1, 2,]} // end')
    assert document.root.value == {"configurations": [1, 2]}
    assert document.root.children[0].trailing_comma
    assert [t.kind for t in document.tokens][-1] == "comment"


# -- merge_into_file: real-world-shaped files ----------------------------------------------------

VSCODE_DEFAULT = """{
    // Use IntelliSense to learn about possible attributes.
    // Hover to view descriptions of existing attributes.
    // For more information, visit: https://go.microsoft.com/fwlink/?linkid=830387
    "version": "0.2.0",
    "configurations": [
        {
            "name": "Python Debugger: Current File",
            "type": "debugpy",
            "request": "launch",
            "program": "${file}",
            "console": "integratedTerminal"
        }
    ]
}
"""

TEAM_FILE = """{
\t/* Team launch configurations.
\t   Please don't reorder "configurations": [ ... ] */
\t"version": "0.2.0",
\t"configurations": [
\t\t{
\t\t\t"name": "Server", // the API
\t\t\t"type": "debugpy",
\t\t\t"request": "launch",
\t\t\t"module": "app",
\t\t\t"args": ["--port", "${input:port}",],
\t\t},
\t\t/* disabled:
\t\t{ "name": "Old" },
\t\t*/
\t\t{
\t\t\t"name": "Client",
\t\t\t"type": "debugpy",
\t\t\t"request": "launch",
\t\t\t"program": "http://host//client.py",
\t\t},
\t], // end of configurations
\t"compounds": [
\t\t{"name": "Both", "configurations": ["Server", "Client"],},
\t],
\t"inputs": [
\t\t{"id": "port", "type": "promptString", "description": "Port \\"number\\" // not a comment", "default": "8000"},
\t],
}
"""

TEAM_COMMENTS = [
    '/* Team launch configurations.\n\t   Please don\'t reorder "configurations": [ ... ] */',
    "// the API",
    '/* disabled:\n\t\t{ "name": "Old" },\n\t\t*/',
    "// end of configurations",
]


def check_merge(path: Path, configs: list[dict], compounds: list[dict] = ()) -> tuple[dict, dict, str]:
    """Merge, and check the promises that hold for every merge; returns (before, after, new text)."""
    before_bytes = path.read_bytes()
    before = read(path)
    result = merge_into_file(path, configs, compounds)
    after = read(path)
    text = path.read_bytes().decode("utf-8-sig")
    assert result.path == path
    assert result.backup == path.with_name("launch.json.bak")
    assert result.backup.read_bytes() == before_bytes
    new_names = [c["name"] for c in configs]
    untouched = [c for c in before.get("configurations", []) if c.get("name") not in new_names]
    assert [c for c in after["configurations"] if c.get("name") not in new_names] == untouched
    for config in configs:
        assert config in after["configurations"]
    assert {k: v for k, v in after.items() if k not in ("configurations", "compounds")} == {
        k: v for k, v in before.items() if k not in ("configurations", "compounds")
    }
    assert sorted(p.name for p in path.parent.iterdir()) == ["launch.json", "launch.json.bak"]
    return before, after, text


def test_merge_into_vscode_default_file(tmp_path):
    path = write(tmp_path, VSCODE_DEFAULT)
    before, after, text = check_merge(path, [cfg("job")])
    assert names(after) == ["Python Debugger: Current File", "job"]
    for line in VSCODE_DEFAULT.splitlines()[:13]:
        assert line in text
    assert text.startswith(VSCODE_DEFAULT[: VSCODE_DEFAULT.index("        }\n    ]")])
    assert "compounds" not in after
    # The new object uses the file's layout: elements at 8 spaces, members at 12.
    assert '        },\n        {\n            "name": "job",\n            "type": "debugpy",' in text
    assert text.endswith('            "justMyCode": false\n        }\n    ]\n}\n')

    previous = path.read_bytes()
    result = merge_into_file(path, [cfg("job", 6000)])
    assert result.replaced == ["job"] and result.added == []
    assert result.backup.read_bytes() == previous
    after = read(path)
    assert names(after) == ["Python Debugger: Current File", "job"]
    assert after["configurations"][1]["connect"]["port"] == 6000


def test_merge_exact_text_of_a_small_file(tmp_path):
    path = write(tmp_path, '{\n  "version": "0.2.0",\n  "configurations": [\n    {"name": "a"}\n  ]\n}\n')
    merge_into_file(path, [{"name": "b", "port": 1}])
    assert path.read_text() == (
        '{\n  "version": "0.2.0",\n  "configurations": [\n    {"name": "a"},\n'
        '    {\n      "name": "b",\n      "port": 1\n    }\n  ]\n}\n'
    )
    merge_into_file(path, [{"name": "a", "port": 2}])
    assert path.read_text() == (
        '{\n  "version": "0.2.0",\n  "configurations": [\n    {\n      "name": "a",\n      "port": 2\n    },\n'
        '    {\n      "name": "b",\n      "port": 1\n    }\n  ]\n}\n'
    )


def test_merge_into_tabbed_file_with_comments_compounds_and_inputs(tmp_path):
    path = write(tmp_path, TEAM_FILE)
    new = [cfg("job rank 0"), cfg("job rank 1", 5679)]
    both = compound("job (all ranks)", ["job rank 0", "job rank 1"])
    before, after, text = check_merge(path, new, [both])
    for comment in TEAM_COMMENTS:
        assert comment in text
    assert names(after) == ["Server", "Client", "job rank 0", "job rank 1"]
    assert after["compounds"] == before["compounds"] + [both]
    assert after["inputs"] == before["inputs"]
    # Tabs, and the file's trailing-comma style, are used for what was added.
    assert '\t\t},\n\t\t{\n\t\t\t"name": "job rank 0",' in text
    assert '\t\t\t"justMyCode": false\n\t\t},\n\t], // end of configurations' in text
    assert '"configurations": ["Server", "Client"],},\n\t\t{\n\t\t\t"name": "job (all ranks)",' in text
    assert "    " not in text
    # Everything before the first insertion is byte-identical.
    cut = TEAM_FILE.index("\t], // end of configurations")
    assert text[:cut] == TEAM_FILE[:cut]

    # Again with the same names: replaced in place, nothing duplicated.
    check_merge(path, [cfg("job rank 0", 7000), cfg("job rank 1", 7001)], [both])
    after = read(path)
    assert names(after) == ["Server", "Client", "job rank 0", "job rank 1"]
    assert names(after, "compounds") == ["Both", "job (all ranks)"]
    assert [c["connect"]["port"] for c in after["configurations"][2:]] == [7000, 7001]
    for comment in TEAM_COMMENTS:
        assert comment in path.read_text()


def test_merge_replaces_a_user_entry_in_place(tmp_path):
    path = write(tmp_path, TEAM_FILE)
    result = merge_into_file(path, [cfg("Server")])
    assert result.replaced == ["Server"] and result.added == []
    after = read(path)
    assert names(after) == ["Server", "Client"]
    assert after["configurations"][0] == cfg("Server")
    text = path.read_text()
    assert text.startswith(
        TEAM_FILE[: TEAM_FILE.index('\t\t{\n\t\t\t"name": "Server"')] + '\t\t{\n\t\t\t"name": "Server",'
    )
    assert '\t\t\t"justMyCode": false\n\t\t},\n\t\t/* disabled:' in text
    assert "// the API" not in text  # that comment was inside the replaced object
    for comment in TEAM_COMMENTS[0:1] + TEAM_COMMENTS[2:]:
        assert comment in text


def test_merge_crlf_and_bom_are_preserved(tmp_path):
    original = VSCODE_DEFAULT.replace("\n", "\r\n")
    path = write(tmp_path, original, b"\xef\xbb\xbf")
    _, after, text = check_merge(path, [cfg("job")], [compound("all", ["job"])])
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf{\r\n")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert names(after) == ["Python Debugger: Current File", "job"]
    assert after["compounds"] == [compound("all", ["job"])]
    assert "// Use IntelliSense to learn about possible attributes.\r\n" in text


def test_merge_into_empty_configurations(tmp_path):
    path = write(tmp_path, '{\n    "version": "0.2.0",\n    "configurations": []\n}\n')
    _, after, text = check_merge(path, [cfg("job")])
    assert names(after) == ["job"]
    assert text.startswith('{\n    "version": "0.2.0",\n    "configurations": [\n        {\n            "name": "job",')
    assert text.endswith('            "justMyCode": false\n        }\n    ]\n}\n')


def test_merge_into_empty_configurations_with_a_comment_inside(tmp_path):
    original = '{\n  "configurations": [\n    // add yours here\n  ],\n}'
    path = write(tmp_path, original)
    _, after, text = check_merge(path, [cfg("a"), cfg("b")])
    assert names(after) == ["a", "b"]
    assert '"configurations": [\n    // add yours here\n    {\n      "name": "a",' in text
    assert text.endswith('      "justMyCode": false\n    }\n  ],\n}')


def test_merge_into_object_only(tmp_path):
    path = write(tmp_path, "{}")
    _, after, text = check_merge(path, [cfg("job")])
    assert after == {"configurations": [cfg("job")]}
    assert text.startswith('{\n    "configurations": [\n        {\n            "name": "job",')
    assert text.endswith("        }\n    ]\n}")


def test_merge_adds_missing_configurations_after_a_commented_last_member(tmp_path):
    original = '{\n  "version": "0.2.0" // the schema\n  /* the end */\n}\n'
    path = write(tmp_path, original)
    _, after, text = check_merge(path, [cfg("job")], [compound("all", ["job"])])
    assert after["version"] == "0.2.0"
    assert names(after) == ["job"] and names(after, "compounds") == ["all"]
    assert text.startswith('{\n  "version": "0.2.0", // the schema\n  /* the end */\n  "configurations": [\n    {')


def test_merge_adds_compounds_after_a_trailing_comma(tmp_path):
    original = '{\n  "configurations": [\n    {"name": "x"}, // last\n  ],\n  "inputs": [],\n}\n'
    path = write(tmp_path, original)
    _, after, text = check_merge(path, [cfg("job")], [compound("all", ["x", "job"])])
    assert names(after) == ["x", "job"]
    assert '{"name": "x"}, // last\n    {\n      "name": "job",' in text
    assert '  "inputs": [],\n  "compounds": [\n    {\n      "name": "all",' in text
    assert text.endswith("    }\n  ],\n}\n")  # the file's trailing-comma style


def test_merge_last_element_followed_by_comment_without_comma(tmp_path):
    original = '{\n  "configurations": [\n    {"name": "x"} // keep me\n    /* and me */\n  ]\n}\n'
    path = write(tmp_path, original)
    _, after, text = check_merge(path, [cfg("job")])
    assert names(after) == ["x", "job"]
    assert '{"name": "x"}, // keep me\n    /* and me */\n    {\n      "name": "job",' in text


def test_merge_into_one_line_arrays(tmp_path):
    path = write(tmp_path, '{"version": "0.2.0", "configurations": [{"name": "x"}], "compounds": []}')
    _, after, text = check_merge(path, [cfg("job")], [compound("all", ["job"])])
    assert names(after) == ["x", "job"]
    assert names(after, "compounds") == ["all"]
    assert text.startswith('{"version": "0.2.0", "configurations": [{"name": "x"},\n{\n    "name": "job",')


def test_merge_into_brace_on_same_line_style(tmp_path):
    original = '{\n  "configurations": [{\n    "name": "x"\n  }, {\n    "name": "y"\n  }]\n}\n'
    path = write(tmp_path, original)
    _, after, text = check_merge(path, [cfg("y", 1), cfg("z", 2)])
    assert names(after) == ["x", "y", "z"]
    assert text.startswith(
        '{\n  "configurations": [{\n    "name": "x"\n  }, {\n    "name": "y",\n    "type": "debugpy"'
    )


def test_merge_replaces_only_the_first_of_duplicate_names(tmp_path):
    original = '{"configurations": [\n  {"name": "job", "n": 1},\n  {"name": "job", "n": 2}\n]}'
    path = write(tmp_path, original)
    result = merge_into_file(path, [cfg("job")])
    assert result.replaced == ["job"]
    after = read(path)
    assert after["configurations"] == [cfg("job"), {"name": "job", "n": 2}]


def test_merge_keeps_unicode_names_and_writes_utf8(tmp_path):
    path = write(tmp_path, '{"configurations": [{"name": "données \\u00e9"}]}')
    name = 'tâche «1» "quoted" // not a comment 🐍'
    merge_into_file(path, [cfg(name)])
    raw = path.read_bytes().decode("utf-8")
    assert 'tâche «1» \\"quoted\\" // not a comment 🐍' in raw
    assert '"données \\u00e9"' in raw  # the user's escapes are kept as written
    assert names(read(path)) == ["données é", name]


def test_merge_creates_missing_file_and_directories(tmp_path):
    path = tmp_path / "new" / ".vscode" / "launch.json"
    result = merge_into_file(path, [cfg("a"), cfg("b")], [compound("all", ["a", "b"])])
    assert result.backup is None and result.added == ["a", "b"] and result.replaced == []
    assert path.read_text(encoding="utf-8") == fragment_text([cfg("a"), cfg("b")], [compound("all", ["a", "b"])]) + "\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["launch.json"]


def test_merge_unchanged_content_writes_nothing(tmp_path):
    path = tmp_path / "launch.json"
    merge_into_file(path, [cfg("a")])
    before = path.read_bytes()
    result = merge_into_file(path, [cfg("a")])
    assert result.replaced == ["a"] and result.backup is None
    assert path.read_bytes() == before
    assert not path.with_name("launch.json.bak").exists()


def test_merge_preserves_file_mode(tmp_path):
    path = write(tmp_path, VSCODE_DEFAULT)
    path.chmod(0o640)
    merge_into_file(path, [cfg("job")])
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(path.with_name("launch.json.bak").stat().st_mode) == 0o640


@pytest.mark.skipif(os.name != "posix", reason="symlinks")
def test_merge_refuses_a_symlink_and_leaves_both_untouched(tmp_path):
    real = tmp_path / "shared" / "launch.json"
    real.parent.mkdir()
    real.write_text(VSCODE_DEFAULT)
    link = tmp_path / ".vscode" / "launch.json"
    link.parent.mkdir()
    link.symlink_to(real)
    with pytest.raises(LaunchJsonError, match="is a symbolic link"):
        merge_into_file(link, [cfg("job")])
    assert link.is_symlink() and real.read_text() == VSCODE_DEFAULT


def test_merge_backup_is_overwritten_each_time(tmp_path):
    path = write(tmp_path, VSCODE_DEFAULT)
    merge_into_file(path, [cfg("a")])
    second = path.read_bytes()
    merge_into_file(path, [cfg("b")])
    assert path.with_name("launch.json.bak").read_bytes() == second


def test_merge_duplicate_new_names_last_wins():
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "launch.json"
        path.write_text("{}")
        result = merge_into_file(path, [cfg("a", 1), cfg("a", 2)])
        assert result.added == ["a"]
        assert read(path)["configurations"] == [cfg("a", 2)]


def test_merge_rejects_configs_without_a_name(tmp_path):
    path = write(tmp_path, VSCODE_DEFAULT)
    with pytest.raises(ValueError):
        merge_into_file(path, [{"type": "debugpy"}])
    assert path.read_text() == VSCODE_DEFAULT


# -- merge_into_file: files it must refuse -------------------------------------------------------

MALFORMED = {
    "unterminated string": ('{\n  "configurations": [\n    {"name": "x}\n  ]\n}\n', 3, 14),
    "missing bracket": ('{\n  "configurations": [\n    {"name": "x"}\n}\n', 4, 1),
    "top-level array": ('[\n  {"name": "x"}\n]\n', 1, 1),
    "configurations object": ('{\n  "version": "0.2.0",\n  "configurations": {"name": "x"}\n}\n', 3, 21),
    "compounds string": ('{"configurations": [], "compounds": "all"}', 1, 37),
    "unterminated comment": ('{"configurations": []} /* note', 1, 24),
    "empty file": ("", 1, 1),
    "not utf-8": ('{"configurations": [{"name": "\xff"}]}', 1, 31),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_merge_refuses_malformed_files_and_leaves_them_untouched(tmp_path, case):
    text, line, col = MALFORMED[case]
    path = tmp_path / ".vscode" / "launch.json"
    path.parent.mkdir()
    original = text.encode("latin-1") if case == "not utf-8" else text.encode("utf-8")
    path.write_bytes(original)
    with pytest.raises(LaunchJsonError) as info:
        merge_into_file(path, [cfg("job")], [compound("all", ["job"])])
    message = str(info.value)
    assert message.startswith(f"{path}:{line}:{col}: "), message
    assert "\n" not in message
    assert path.read_bytes() == original
    assert sorted(p.name for p in path.parent.iterdir()) == ["launch.json"]


def test_merge_refuses_an_edit_that_fails_verification(tmp_path, monkeypatch):
    path = write(tmp_path, VSCODE_DEFAULT)
    real_apply = launch._apply
    monkeypatch.setattr(launch, "_apply", lambda text, edits: real_apply(text, edits).replace('"${file}"', '"x"'))
    with pytest.raises(LaunchJsonError, match="refusing to write"):
        merge_into_file(path, [cfg("job")])
    monkeypatch.setattr(launch, "_apply", lambda text, edits: real_apply(text, edits) + "]")
    with pytest.raises(LaunchJsonError, match="would not parse"):
        merge_into_file(path, [cfg("job")])
    assert path.read_text() == VSCODE_DEFAULT
    assert sorted(p.name for p in path.parent.iterdir()) == ["launch.json"]


# -- merge_into_file: generated documents --------------------------------------------------------

NAME_POOL = ["job", "job rank 1", 'say "hi"', "a//b", "/* x */", "é ü 🐍", "back\\slash"]
name_text = st.one_of(st.sampled_from(NAME_POOL), st.sampled_from(NAME_POOL), st.text(max_size=12))
comment_text = st.text(
    st.characters(blacklist_characters="\n\r\u2028\u2029\x85", blacklist_categories=("Cs",)), max_size=12
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)
configurations = st.builds(
    lambda name, extra: {"name": name, **{k: v for k, v in extra.items() if k != "name"}},
    name_text,
    st.dictionaries(st.sampled_from(["type", "request", "port", "args", "env", "x"]), values, max_size=3),
)


@st.composite
def documents(draw) -> tuple[str, dict, list[tuple[str, tuple | None]], bool, bool]:
    """(text, value, comments, crlf, bom) for a random JSONC launch.json.

    Each comment comes with its owner, ("configurations", i) or ("compounds", i) when it lies inside
    that element (and legitimately goes away when the element is replaced), else None.
    """
    unit = draw(st.sampled_from(["  ", "    ", "\t", "   "]))
    comments: list[tuple[str, tuple | None]] = []

    def comment(kind: str, owner: tuple | None) -> str:
        body = f"C{len(comments)}:" + draw(comment_text)
        if kind == "block":
            body = body.replace("*/", "* /")
        text = f"//{body}" if kind == "line" else f"/*{body}*/"
        comments.append((text, owner))
        return text

    def gap(depth: int, owner: tuple | None) -> str:
        indent = "\n" + unit * depth
        kind = draw(st.sampled_from(["", " ", "newline", "newline", "newline", "line", "block", "both"]))
        if kind in ("", " "):
            return kind
        if kind == "newline":
            return indent
        if kind == "line":
            return " " + comment("line", owner) + indent
        if kind == "block":
            return " " + comment("block", owner) + draw(st.sampled_from([" ", indent]))
        return indent + comment("block", owner) + indent + comment("line", owner) + indent

    def scalar(value) -> str:
        return json.dumps(value, ensure_ascii=draw(st.booleans()))

    def render(value, depth: int, at: tuple) -> str:
        owner = at[:2] if len(at) >= 2 and at[0] in ("configurations", "compounds") else None
        inner = depth + 1
        if isinstance(value, dict):
            parts = [
                gap(inner, owner) + scalar(k) + gap(inner, owner) + ":" + " " + render(v, inner, (*at, k))
                for k, v in value.items()
            ]
            return "{" + render_items(parts, depth, owner) + "}"
        if isinstance(value, list):
            parts = [gap(inner, owner) + render(v, inner, (*at, i)) for i, v in enumerate(value)]
            return "[" + render_items(parts, depth, owner) + "]"
        return scalar(value)

    def render_items(parts: list[str], depth: int, owner: tuple | None) -> str:
        if not parts:
            return gap(depth, owner)
        trailing = "," if draw(st.booleans()) else ""
        return ",".join(p + draw(st.sampled_from(["", " "])) for p in parts) + trailing + gap(depth, owner)

    doc: dict = {}
    if draw(st.booleans()):
        doc["version"] = "0.2.0"
    if draw(st.integers(0, 9)) > 0:
        doc["configurations"] = draw(st.lists(configurations, max_size=5))
    if draw(st.booleans()):
        doc["compounds"] = draw(st.lists(st.builds(compound, name_text, st.lists(name_text, max_size=2)), max_size=2))
    if draw(st.booleans()):
        doc["inputs"] = [{"id": "x", "type": "promptString"}]
    order = draw(st.permutations(list(doc)))
    doc = {k: doc[k] for k in order}
    text = gap(0, None) + render(doc, 0, ()) + gap(0, None) + draw(st.sampled_from(["", "\n"]))
    crlf, bom = draw(st.booleans()), draw(st.booleans())
    if crlf:
        text = text.replace("\n", "\r\n")  # only separators hold raw newlines
    return text, doc, comments, crlf, bom


def first_index(items: list, name: str) -> int | None:
    return next((i for i, item in enumerate(items) if item["name"] == name), None)


def expected_list(old: list, new: list[dict]) -> list:
    result = list(old)
    first: dict = {}
    for index, item in enumerate(old):
        first.setdefault(item["name"], index)
    for config in new:
        if config["name"] in first:
            result[first[config["name"]]] = config
        else:
            result.append(config)
    return result


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    documents(),
    st.lists(configurations, min_size=1, max_size=3, unique_by=lambda c: c["name"]),
    st.lists(
        st.builds(compound, name_text, st.lists(name_text, max_size=2)), max_size=2, unique_by=lambda c: c["name"]
    ),
)
def test_merge_generated_documents(document, new_configs, new_compounds):
    text, doc, comments, crlf, bom = document
    assert parse_jsonc(text) == doc
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ".vscode" / "launch.json"
        path.parent.mkdir()
        original = (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8")
        path.write_bytes(original)

        result = merge_into_file(path, new_configs, new_compounds)

        raw = path.read_bytes()
        new_text = raw.decode("utf-8-sig")
        after = parse_jsonc(new_text)
        assert after["configurations"] == expected_list(doc.get("configurations", []), new_configs)
        if new_compounds or "compounds" in doc:
            assert after["compounds"] == expected_list(doc.get("compounds", []), new_compounds)
        else:
            assert "compounds" not in after
        assert {k: v for k, v in after.items() if k not in ("configurations", "compounds")} == {
            k: v for k, v in doc.items() if k not in ("configurations", "compounds")
        }
        old_names = [c["name"] for c in doc.get("configurations", [])]
        for config in new_configs:
            count = [c["name"] for c in after["configurations"]].count(config["name"])
            assert count == max(1, old_names.count(config["name"]))
        replaced = {
            (key, first_index(doc.get(key, []), item["name"]))
            for key, new in (("configurations", new_configs), ("compounds", new_compounds))
            for item in new
        }
        for comment, owner in comments:
            if owner not in replaced:
                assert comment in new_text
        assert raw.startswith(b"\xef\xbb\xbf") == bom
        if crlf and "\n" in text:
            assert b"\n" not in raw.replace(b"\r\n", b"")
        elif "\r" not in text:
            assert b"\r" not in raw
        if result.backup is not None:
            assert result.backup.read_bytes() == original
        assert {p.name for p in path.parent.iterdir()} <= {"launch.json", "launch.json.bak"}


# -- where launch.json goes ----------------------------------------------------------------------


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A home folder with VS Code's own ~/.vscode in it (extensions), as every VS Code user has."""
    folder = tmp_path / "home"
    (folder / ".vscode" / "extensions").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(folder))
    return folder


def test_workspace_root_is_the_nearest_git_folder_above(home):
    repo = home / "repo"
    (repo / ".git").mkdir(parents=True)
    notebooks = repo / "notebooks" / "week1"
    notebooks.mkdir(parents=True)
    assert launch.workspace_root(notebooks) == repo
    assert launch.default_launch_json(notebooks) == repo / ".vscode" / "launch.json"


def test_workspace_root_nearest_marker_wins_and_start_counts(home):
    repo = home / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "sub" / ".vscode").mkdir(parents=True)
    (repo / "sub" / "deep").mkdir()
    assert launch.workspace_root(repo / "sub" / "deep") == repo / "sub"
    assert launch.workspace_root(repo / "sub") == repo / "sub"
    assert launch.workspace_root(repo) == repo


def test_workspace_root_git_worktree_file_counts(home):
    worktree = home / "wt"
    worktree.mkdir()
    (worktree / ".git").write_text("gitdir: /elsewhere/.git/worktrees/wt\n")
    (worktree / "nb").mkdir()
    assert launch.workspace_root(worktree / "nb") == worktree


def test_workspace_root_ignores_a_vscode_file_and_the_home_vscode_folder(home):
    project = home / "proj"
    (project / "nb").mkdir(parents=True)
    (project / ".vscode").write_text("not a folder")
    start = project / "nb"
    assert launch.workspace_root(start) == start  # neither proj/.vscode (a file) nor ~/.vscode (VS Code's own)
    assert launch.default_launch_json(start) == start / ".vscode" / "launch.json"


def test_workspace_root_of_a_relative_start_is_absolute(home, monkeypatch):
    repo = home / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "nb").mkdir()
    monkeypatch.chdir(repo / "nb")
    assert launch.workspace_root(".") == repo
    assert launch.default_launch_json(Path(".")).is_absolute()
