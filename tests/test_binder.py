"""The Binder configuration (binder/): repo2docker accepts it, and it really makes a working setup.

1. ``repo2docker --no-build`` turns a copy of the repository into a Dockerfile without errors, and
   that Dockerfile installs binder/requirements.txt and runs binder/postBuild on Python 3.11.
2. A fresh virtual environment built the same way (binder/requirements.txt, then the postBuild
   script itself, plus the notebook server's kernel pieces that repo2docker's base environment
   provides) executes the quickstart and the deployment notebooks from a copy of the repository
   (the Docker and Azure ML ones need an engine / a workspace, which Binder does not have).
   pip's cache is reused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
JUNK = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build", "dist", ".pytest_cache", ".ruff_cache",
                              ".mypy_cache", ".hypothesis", ".aml_magics", ".vscode", ".venv", "venv", "node_modules")
# What Binder can run (no Docker engine there, no Azure ML workspace): these must work from binder/ alone.
BINDER_NOTEBOOKS = ("01-quickstart-local.ipynb", "04-deployment.ipynb")


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> Path:
    """The repository as Binder would clone it (without local build leftovers)."""
    target = tmp_path_factory.mktemp("binder") / "repo"
    shutil.copytree(REPO, target, ignore=JUNK)
    return target


def test_binder_files():
    binder = REPO / "binder"
    assert (binder / "runtime.txt").read_text().strip() == "python-3.11"
    post_build = binder / "postBuild"
    lines = [line.strip() for line in post_build.read_text().splitlines()]
    assert lines[0].startswith("#!") and "set -e" in lines and "pip install ." in lines
    assert os.access(post_build, os.X_OK), "binder/postBuild must be executable"
    assert (binder / "requirements.txt").is_file()


def test_repo2docker_makes_a_dockerfile(repo_copy: Path):
    if shutil.which("repo2docker") is None:
        pytest.skip("repo2docker is not installed (pip install -e '.[test]')")
    # mybinder.org builds as uid 1000 (jovyan); repo2docker would otherwise use the caller's uid.
    result = subprocess.run(["repo2docker", "--no-build", "--debug", "--user-id", "1000", "--user-name", "jovyan",
                             str(repo_copy)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and not re.search(r"(?i)\berror\b", result.stderr), result.stderr
    dockerfile = result.stdout
    assert dockerfile.lstrip().startswith("FROM "), dockerfile[:500]
    assert "python=3.11" in result.stderr or "py-3.11" in dockerfile, "runtime.txt's Python not picked up"
    assert 'pip install --no-cache-dir -r "binder/requirements.txt"' in dockerfile
    assert "RUN ./binder/postBuild" in dockerfile
    assert "COPY --chown=1000:1000 src/ ${REPO_DIR}/" in dockerfile  # postBuild's `pip install .` can write
    assert "setup.py" not in dockerfile  # only binder/ is read


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fresh_venv_from_binder_runs_the_notebooks(repo_copy: Path, tmp_path: Path, request):
    venv = tmp_path / "venv"
    request.addfinalizer(lambda: shutil.rmtree(venv, ignore_errors=True))  # a few hundred MB; pytest keeps tmp dirs
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    bin_dir = venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "AML_MAGICS_VIEW")}
    env.update({
        "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        "VIRTUAL_ENV": str(venv),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_ROOT_USER_ACTION": "ignore",
        "JUPYTER_DATA_DIR": str(tmp_path / "jupyter-data"),  # no user-level kernelspec may shadow the venv's
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "AML_MAGICS_CACHE_DIR": str(tmp_path / "cache"),
        "AML_MAGICS_NOTEBOOK_TIMEOUT": "3",
    })

    def run(*command: str, timeout: float = 300) -> str:
        done = subprocess.run(command, cwd=repo_copy, env=env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    run("pip", "install", "-q", "-r", "binder/requirements.txt")
    run("bash", "binder/postBuild")
    # What repo2docker's base environment brings along: the notebook server's kernel machinery.
    run("pip", "install", "-q", "nbclient", "nbformat", "ipykernel")

    from test_notebooks import EXPECTED

    probe = "import sys, aml_magics\nprint('KERNEL', sys.executable)\nprint('PACKAGE', aml_magics.__file__)"
    for notebook in BINDER_NOTEBOOKS:
        workdir = tmp_path / notebook.removesuffix(".ipynb")
        workdir.mkdir()
        shutil.copy(repo_copy / "notebooks" / notebook, workdir / notebook)
        out = run(str(bin_dir / "python"), str(repo_copy / "tests" / "notebook_exec.py"), str(workdir / notebook),
                  str(workdir), "--extra-cell", probe, timeout=300)
        result = json.loads(out)
        assert result["errors"] == [], f"{notebook}: {result['errors']}"
        text = "\n".join(result["cells"])
        kernel = re.search(r"KERNEL (\S+)", text).group(1)
        package = re.search(r"PACKAGE (\S+)", text).group(1)
        assert Path(kernel).parent == bin_dir, f"{notebook} ran in {kernel}, not the fresh venv"
        assert Path(package).is_relative_to(venv), f"aml_magics came from {package}, not the venv's installation"
        for pattern in EXPECTED[notebook]:
            assert re.search(pattern, text), f"{notebook}: no {pattern!r} in:\n{text}"
