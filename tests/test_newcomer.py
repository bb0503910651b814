"""The command line and the README as a new user meets them (issue 20): help that says what the
tool is, ``--version``, a pager that closes early, a typo, a port held by another run, and install
hints that name the command that works for how aml_magics was installed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from conftest import free_port

from aml_magics._version import __version__
from aml_magics.install import install_command

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "aml_magics.cli"]


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_help_describes_the_tool_and_its_commands_and_version_prints():
    out = _cli("--help")
    assert out.returncode == 0 and out.stderr == ""
    assert "Debug code that runs somewhere else" in out.stdout
    assert re.search(r"^  run ", out.stdout, re.M) and re.search(r"^  deploy ", out.stdout, re.M)
    version = _cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"aml-debug (aml_magics) {__version__}"


def test_help_into_a_pager_that_closes_early_ends_quietly():
    out = subprocess.run(" ".join([*CLI, "run", "--help"]) + " | head -1", shell=True, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.startswith("usage: aml-debug run")
    assert "Traceback" not in out.stderr and "BrokenPipeError" not in out.stderr, out.stderr


def test_a_typo_in_an_option_suggests_the_option(tmp_path):
    (tmp_path / "job.py").write_text("print('x')\n")
    out = _cli("run", "--timout", "5", "job.py", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == "aml-debug: unrecognized option --timout: did you mean --timeout?"


def test_a_port_held_by_another_aml_debug_run_is_named_as_one(tmp_path):
    (tmp_path / "wait.py").write_text("print('done')\n")
    port = free_port()
    first = subprocess.Popen([*CLI, "run", "wait.py", "--port", str(port), "--timeout", "60"], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in first.stdout:  # type: ignore[union-attr]
            if "debugpy listening at" in line:
                break
        second = _cli("run", "wait.py", "--port", str(port), cwd=tmp_path)
        assert second.returncode == 2
        match = re.search(r"held by another aml-debug run \(pid (\d+)\)", second.stderr)
        assert match, second.stderr
        import psutil

        assert int(match.group(1)) in {p.pid for p in psutil.Process(first.pid).children(recursive=True)}
        assert "\n" not in second.stderr.strip()
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(30)


# -- install hints ---------------------------------------------------------------------------------


class _Installed:
    """An installation record as importlib.metadata gives it (PEP 610 direct_url.json)."""

    def __init__(self, record: dict | None) -> None:
        self.record = record

    def read_text(self, name: str) -> str | None:
        return json.dumps(self.record) if name == "direct_url.json" and self.record is not None else None


def test_install_hints_follow_how_it_was_installed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkout = tmp_path / "aml_magics_checkout"
    editable = _Installed({"url": checkout.as_uri(), "dir_info": {"editable": True}})
    assert install_command("docker", editable) == f"pip install -e '{checkout}[docker]'"
    copied = _Installed({"url": checkout.as_uri(), "dir_info": {}})
    assert install_command("docker", copied) == f"pip install '{checkout}[docker]'"
    checkout.mkdir()
    monkeypatch.chdir(checkout)
    assert install_command("notebook", copied) == "pip install '.[notebook]'"  # from the checkout itself
    assert install_command("docker", _Installed(None)) == "pip install 'aml-magics[docker]'"  # from an index
    assert install_command("docker", _Installed({"url": "https://example.invalid/a.whl",
                                                 "archive_info": {}})) == "pip install 'aml-magics[docker]'"


def test_a_missing_extra_names_the_command_for_this_installation(monkeypatch):
    """What the user of this very installation is told (an editable checkout here)."""
    from aml_magics.azureml import sdk
    from aml_magics.errors import TargetError

    monkeypatch.setattr(sdk, "installed", lambda module: False)
    try:
        sdk.choose_sdk("v2")
    except TargetError as exc:
        message = str(exc)
    else:
        raise AssertionError("no error without the SDK")
    assert message == f"--sdk v2 needs azure-ai-ml and azure-identity: {install_command('azureml-v2')}"


def test_the_readme_installs_from_the_checkout_and_starts_jupyter_lab():
    readme = (ROOT / "README.md").read_text()
    assert "pip install '.[notebook]'" in readme and "jupyter lab" in readme
    assert not re.search(r"install `?aml-magics\[", readme)  # no package of that name on an index
    assert 'python -m pytest -m "not slow"' in readme  # the contributors' fast loop


def test_the_fast_loop_leaves_the_slow_tests_out():
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not slow",
                          "tests/test_kernel.py", "tests/test_run_reducer.py"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "test_run_reducer.py" in out.stdout and "test_kernel.py" not in out.stdout, out.stdout
