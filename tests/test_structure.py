"""What the structure issue fixed: one cancel for every resource a run owns (a pip build
included), and %config values checked like flags."""

from __future__ import annotations

import psutil
import pytest
from conftest import wait_for

import aml_magics

# A package whose build backend (in-tree: no download) takes forever, so a run that needs it
# stays "building" until canceled.
BACKEND = """
import os, time
def _hang():
    open(os.path.join(os.path.dirname(__file__), "started"), "w").close()
    time.sleep(600)
def get_requires_for_build_wheel(config_settings=None):
    _hang()
    return []
def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _hang()
"""
PYPROJECT = """
[build-system]
requires = []
build-backend = "slow_backend"
backend-path = ["."]
[project]
name = "slowpkg"
version = "0"
"""


def _pips() -> list[psutil.Process]:
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "pip" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            pass
    return found


@pytest.mark.slow  # a virtual-environment build
def test_cancel_while_building_stops_pip_and_ends_canceled(workdir):
    package = workdir / "slowpkg"
    package.mkdir()
    (package / "slow_backend.py").write_text(BACKEND)
    (package / "pyproject.toml").write_text(PYPROJECT)
    run = aml_magics.submit(code="print('never runs')\n", name="building", pip=[str(package)], port=0, timeout=0)
    wait_for(lambda: (package / "started").exists(), 120, "the build backend to start")
    assert run.state == "building" and _pips(), "pip runs while the run is building"
    run.cancel()
    assert run.state == "canceled"
    wait_for(lambda: not _pips(), 5, "pip gone")
    assert "never runs" not in run.logs
    assert not any((workdir / "cache" / "venvs").glob("*/bin/python")), "no half-built environment is kept"


@pytest.mark.parametrize("line, message", [
    ("AmlDebugMagics.port = 70000", "--port must be between 0 and 65535, not 70000"),
    ("AmlDebugMagics.port = 'many'", "--port must be a number 0-65535 or 'auto'"),
    ("AmlDebugMagics.timeout = -3.0", "--timeout must be 0 or a positive number"),
    ("AmlDebugMagics.timeout = 1e12", "--timeout must be 0 or a positive number of seconds up to"),
    ("AmlDebugMagics.bind = '::1'", "IPv6 is not supported"),
    ("AmlDebugMagics.azureml_sdk = 'v3'", "azureml_sdk must be 'v1' or 'v2'"),
])
def test_config_values_are_checked_like_flags(shell, caplog, line, message):
    """A bad %config value is one logged line and is refused (the default is kept), not stored to
    fail later (a raw OverflowError deep in a run, before); the extension still loads after it."""
    with caplog.at_level("ERROR"):
        shell.run_line_magic("config", line)
    assert [r.getMessage() for r in caplog.records if message in r.getMessage()], caplog.text
    assert all("\n" not in r.getMessage() for r in caplog.records)
    magics = shell.magics_manager.registry["AmlDebugMagics"]
    assert magics.port == "auto" and magics.timeout == 300.0 and magics.bind is None  # unchanged
    shell.run_line_magic("unload_ext", "aml_magics")
    shell.run_line_magic("load_ext", "aml_magics")  # the stored bad value does not break a reload
    assert shell.magics_manager.registry["AmlDebugMagics"].port == "auto"


def test_config_port_auto_and_write_target(shell, workdir):
    shell.run_line_magic("config", "AmlDebugMagics.port = 'auto'")
    shell.run_line_magic("config", "AmlDebugMagics.launch_json = 'conf/launch.json'")
    try:
        magics = shell.magics_manager.registry["AmlDebugMagics"]
        assert magics.defaults().port == "auto"
        run = shell.run_cell_magic("aml_debug_run", "--timeout 0 --wait", "print('hi')\n")
        assert run.state == "completed"
        assert run.launch_json_path == workdir / "conf" / "launch.json"  # what the panel's Write button writes
    finally:
        shell.run_line_magic("config", "AmlDebugMagics.port = 'auto'")
        shell.run_line_magic("config", "AmlDebugMagics.launch_json = None")


def test_launch_json_write_defaults_to_the_runs_path(shell, workdir):
    (workdir / ".git").mkdir()  # a repository: the workspace root is here
    (workdir / "notebooks").mkdir()
    import os

    os.chdir(workdir / "notebooks")
    run = shell.run_cell_magic("aml_debug_run", "--port 0 --timeout 0 --wait --name w", "print('hi')\n")
    shell.run_line_magic("aml_launch_json", f"{run.id} --write")
    written = workdir / ".vscode" / "launch.json"  # the workspace root, not the kernel's folder
    assert written.is_file() and '"name": "w"' in written.read_text()


def test_deployment_options_reach_docker_only(shell, workdir):
    from IPython.core.error import UsageError

    (workdir / "score.py").write_text("def init():\n    pass\ndef run(raw):\n    return raw\n")
    with pytest.raises(UsageError, match="--container-user: for --target docker"):
        shell.run_line_magic("aml_debug_deploy", "--container-user root score.py")


def test_the_owner_side_imports_only_the_node_wire():
    """The node package is the node's: outside it, only ``node.wire`` (the shared format) is imported."""
    import ast
    from pathlib import Path

    package = Path(aml_magics.__file__).parent
    offenders = []
    for path in package.rglob("*.py"):
        if path.parent.name == "node" and path.parent.parent == package:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                base = node.module if node.level == 0 else "." * node.level + node.module
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                parts = name.lstrip(".").split(".")
                if "node" in parts and parts[parts.index("node") + 1:parts.index("node") + 2] != ["wire"]:
                    if name.lstrip(".").startswith(("node", "aml_magics.node")):
                        offenders.append(f"{path.relative_to(package)}: {name}")
    assert offenders == [], offenders


def test_the_node_package_runs_as_a_folder_under_a_private_name(tmp_path):
    """Shipped whole and run as ``python FOLDER``: it loads as ``_aml_magics_node`` and its module
    names never shadow the user's (a user module named ``session`` is the user's)."""
    import subprocess
    import sys

    from aml_magics.invocation import copy_node

    folder = copy_node(tmp_path)
    (tmp_path / "session.py").write_text("WHO = 'user'\n")
    (tmp_path / "main.py").write_text(
        "import sys, session\nprint('who', session.WHO, '_aml_magics_node.session' in sys.modules)\n")
    result = subprocess.run([sys.executable, str(folder / "__main__.py"), "--no-debug", "--", str(tmp_path / "main.py")],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "who user True" in result.stdout
