"""Every user mistake is one clear line (a UsageError), nothing is submitted, nothing is lost."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from aml_magics.engine import REGISTRY


@pytest.fixture
def no_new_runs():
    before = len(REGISTRY.all())
    yield
    assert len(REGISTRY.all()) == before, "a bad request must submit nothing"


@pytest.mark.parametrize(
    "line, message",
    [
        ("--bogus", "unrecognized arguments: --bogus"),
        ("--port 70000", "--port must be between 0 and 65535"),
        ("--port many", "--port must be a number 0-65535 or 'auto'"),
        ("--timeout -1", "--timeout must be 0 or a positive number"),
        ("--timeout soon", "--timeout must be a number of seconds"),
        ("--env-var NOEQUALS", "--env-var takes KEY=VALUE"),
        ("--name 'bad name'", "--name 'bad name'"),
        ("--target mars", "unknown target 'mars'"),
        ("--script ../escape.py", "must be a relative path inside the source dir"),
        ("--requirements missing.txt", "cannot read --requirements"),
        ("--args 'unbalanced", "cannot parse options"),
        ("--timeout 1e12", "--timeout must be 0 or a positive number of seconds up to 604800"),
        ("--post-mortem --post-mortem-timeout inf", "--post-mortem-timeout must be 0 or a positive number"),
        ("--name ''", "--name '': use letters"),
        ("--local-root nowhere", "nowhere: no such folder"),
        ("--bind ::1", "--bind ::1: IPv6 is not supported"),
        ("--bind not-an-address", "expected an IPv4 address"),
    ],
)
def test_option_errors(shell, workdir, no_new_runs, line, message):
    with pytest.raises(UsageError, match=_escape(message)):
        shell.run_cell_magic("aml_debug_run", line, "print(1)\n")


def test_syntax_error_names_the_line_and_writes_nothing(shell, workdir, no_new_runs):
    with pytest.raises(UsageError, match=r"cell\.py: syntax error at line 3"):
        shell.run_cell_magic("aml_debug_run", "", "x = 1\ny = 2\nif x\n    pass\n")
    assert not (workdir / ".aml_magics" / "cells" / "cell.py").exists()


def test_missing_script(shell, workdir, no_new_runs):
    with pytest.raises(UsageError, match="script not found: .*nope.py"):
        shell.run_line_magic("aml_debug_run", "nope.py")


def test_no_script_at_all(shell, workdir, no_new_runs):
    with pytest.raises(UsageError, match="no script"):
        shell.run_line_magic("aml_debug_run", "--port 0")


def test_script_with_syntax_error(shell, workdir, no_new_runs):
    (workdir / "broken.py").write_text("def f(:\n    pass\n")
    with pytest.raises(UsageError, match=r"broken\.py: syntax error at line 1"):
        shell.run_line_magic("aml_debug_run", "broken.py")


def test_unwritable_source_dir(shell, workdir, no_new_runs):
    # root ignores permission bits, so make the "directory" a file: writing into it fails for everyone.
    blocker = workdir / "readonly"
    blocker.write_text("not a directory")
    with pytest.raises(UsageError, match="cannot write the cell to .*choose a writable --source-dir"):
        shell.run_cell_magic("aml_debug_run", "--source-dir readonly", "print(1)\n")


def test_never_overwrites_a_users_file(shell, workdir, no_new_runs):
    (workdir / "src").mkdir()
    mine = workdir / "src" / "train.py"
    mine.write_text("# my real training script\n")
    with pytest.raises(UsageError, match="exists and was not written by this session"):
        shell.run_cell_magic("aml_debug_run", "--source-dir src --script train.py", "print(1)\n")
    assert mine.read_text() == "# my real training script\n"


def test_malformed_launch_json_is_untouched(shell, workdir, no_new_runs):
    (workdir / ".vscode").mkdir()
    path = workdir / ".vscode" / "launch.json"
    broken = '{\n  "configurations": [\n    {"name": "x",,}\n'
    path.write_text(broken)
    with pytest.raises(UsageError, match=r"--launch-json: .*launch\.json.*\(file left untouched\)"):
        shell.run_cell_magic("aml_debug_run", "--launch-json .vscode/launch.json", "print(1)\n")
    assert path.read_text() == broken
    assert sorted(p.name for p in path.parent.iterdir()) == ["launch.json"]


def test_unknown_run_in_other_magics(shell, workdir):
    for magic in ("aml_logs", "aml_cancel", "aml_launch_json"):
        with pytest.raises(UsageError, match="no run 'ghost'"):
            shell.run_line_magic(magic, "ghost")


def test_config_traitlets_set_defaults(shell, workdir):
    shell.run_line_magic("config", "AmlDebugMagics.timeout = 0")
    shell.run_line_magic("config", "AmlDebugMagics.port = 0")
    try:
        run = shell.run_cell_magic("aml_debug_run", "--wait", "print('configured')\n")
        assert run.spec.debug.timeout == 0 and run.spec.debug.port == 0
        assert run.state == "completed"
    finally:
        shell.run_line_magic("config", "AmlDebugMagics.timeout = 300.0")
        shell.run_line_magic("config", "AmlDebugMagics.port = 5678")


def _escape(text: str) -> str:
    import re

    return re.escape(text)
