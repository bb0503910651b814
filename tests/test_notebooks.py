"""Every notebook in notebooks/ executes top to bottom in a real kernel, as CI runs them.

The kernel gets the widget view a Jupyter user gets (AML_MAGICS_VIEW unset). CI's values (a short
attach timeout, the locally built Docker base image, the simulator) go into each notebook's one
tagged ``parameters`` cell the papermill way (notebook_exec.py inserts a cell after it), so a reader
sees plain values and no CI plumbing. Each notebook runs in a temporary folder (its .aml_magics/,
.vscode/, src/ land there, not in the repository). The Docker notebook uses CI's Docker engine and
locally built base image; the Azure ML one, written for a real workspace, runs against the
simulator, on a network-namespace node where the machine allows it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("nbclient", reason="nbclient is not installed (pip install -e '.[test]')")

from notebook_exec import error_outputs, execute, summary  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
DOCKER_BASE = os.environ.get("AML_MAGICS_TEST_BASE", "aml-magics-test-base:bookworm-py3")

# What each notebook must print (with the attach timeout at 3 s); a new notebook needs an entry.
CI_TIMEOUT = 3  # seconds; the attach timeout every notebook's ATTACH_TIMEOUT parameter gets here
# What each notebook must print (with the attach timeout at 3 s); a new notebook needs an entry.
EXPECTED: dict[str, list[str]] = {
    "01-quickstart-local.ipynb": [
        r"debugpy listening at 127\.0\.0\.1:\d+",
        r"wrote quickstart to /\S+/\.vscode/launch\.json",
        r"Timeout for debug connection: 3",
        r"Debugger attached = False",
        r"done: w=3\.00 b=1\.00",
        r"run quickstart-1: completed",
        r"quickstart-1\s+local\s+completed\s+127\.0\.0\.1:\d+ closed \(nobody attached in 3 s\)",
        r"aml_magics: wrote guide to /\S+/\.vscode/launch\.json",
        r"Argument 1: abc",
    ],
    "02-docker.ipynb": [
        r"debugpy listening at 127\.0\.0\.1:\d+ \(the container's port, published on loopback\)",
        r"pathMappings: \[\{'localRoot': '\$\{workspaceFolder\}/\.aml_magics/cells', 'remoteRoot': '/app'\}\]",
        r"wrote docker-demo to /\S+/\.vscode/launch\.json",
        r"in the container: Python 3\.\d+\.\d+, six 1\.17\.0, cwd /app",
        r"sum of squares: 385",
        r"run docker-demo-1: completed",
        r"aml_magics: reusing image aml-magics/env:\w+",
        r"second run, same image, six 1\.17\.0",
        r"docker-again-2 \(docker-again\) on docker: completed",
        r"aml-magics/env:\w+ .*six==1\.17\.0",
    ],
    "03-azureml-run-and-pipeline.ipynb": [
        r"dry run \(simulated Azure ML\): nothing was submitted",
        r'arguments:\s+\["--port", "5678", "--bind", "node", "--timeout", "3", "--port-auto", "--idle-timeout", "1800", '
        r'"--", "train.py", '
        r'"--lr", "0.05"\]',
        r"on azureml: .*\nsimulated Azure ML",
        r"debugpy listening at (?P<node>[\d.]+):5678 on the node, working directory \S+",
        r"wrote train to /\S+/\.vscode/launch\.json",
        r"run train-1: completed",
        r"Debugger attached = False",
        r"trained: lr=0\.05 w=3\.000",
        r"step train: debugpy listening at (?P<step_node>[\d.]+):5678",
        r"pipeline: Completed",
        r"step train: completed",
    ],
    "04-deployment.ipynb": [
        r"debugpy listening at 127\.0\.0\.1:\d+",
        r"wrote linear to /\S+/\.vscode/launch\.json",
        r"scoring URL: POST http://127\.0\.0\.1:\d+/score",
        r"\{'predictions': \[4\.0, 7\.0, 10\.0\]\}",
        r"\{'predictions': \[2\.5\]\}",
        r"run linear-1: canceled",
    ],
}


@pytest.fixture
def notebook_env(tmp_path: Path, monkeypatch) -> Path:
    """The kernel's environment (it inherits ours) and its working folder."""
    monkeypatch.delenv("AML_MAGICS_VIEW", raising=False)  # conftest's text view is for in-process tests
    monkeypatch.setenv("AML_MAGICS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    workdir = tmp_path / "work"
    workdir.mkdir()
    return workdir


def _run(name: str, workdir: Path, **parameters) -> tuple[dict, str]:
    shutil.copy(NOTEBOOKS / name, workdir / name)
    nb = execute(workdir / name, workdir, timeout=300, parameters={"ATTACH_TIMEOUT": CI_TIMEOUT, **parameters})
    result = summary(nb)
    text = "\n".join(result["cells"])
    assert not error_outputs(nb), f"{name}: {error_outputs(nb)}\n{text}"
    for pattern in EXPECTED[name]:
        assert re.search(pattern, text), f"{name}: no {pattern!r} in:\n{text}"
    return result, text


def _launch_config(workdir: Path, name: str) -> dict:
    written = json.loads((workdir / ".vscode" / "launch.json").read_text())
    return next(c for c in written["configurations"] if c["name"] == name)


def test_every_notebook_has_expectations():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECTED)


def test_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = json.loads(path.read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "python3"
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name} has outputs"


def test_notebooks_keep_their_parameters_in_one_cell_and_no_ci_plumbing():
    """A reader sees plain values; what CI changes is declared in one tagged cell (papermill's way)."""
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = json.loads(path.read_text())
        code = ["".join(cell["source"]) for cell in nb["cells"] if cell["cell_type"] == "code"]
        tagged = [cell for cell in nb["cells"] if "parameters" in cell["metadata"].get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged parameters"
        assert "ATTACH_TIMEOUT = " in "".join(tagged[0]["source"]), path.name
        for source in code:
            assert "AML_MAGICS_NOTEBOOK" not in source and "os.environ.get" not in source, f"{path.name}: {source}"
            assert "AML_MAGICS_COMPUTE" not in source and "--port auto" not in source, f"{path.name}: {source}"


def test_injected_parameters_follow_the_parameters_cell(tmp_path: Path):
    import nbformat
    from notebook_exec import inject_parameters

    nb = nbformat.read(NOTEBOOKS / "02-docker.ipynb", as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    inject_parameters(nb, {"ATTACH_TIMEOUT": 3, "BASE_IMAGE": "local:base"})
    injected = nb.cells[index + 1]
    assert injected.metadata["tags"] == ["injected-parameters"]
    assert injected.source == "# Injected parameters\nATTACH_TIMEOUT = 3\nBASE_IMAGE = 'local:base'\n"
    with pytest.raises(ValueError, match="not parameters of this notebook: TIMEOUT"):
        inject_parameters(nb, {"TIMEOUT": 3})


def test_quickstart_notebook(notebook_env: Path):
    result, text = _run("01-quickstart-local.ipynb", notebook_env)
    # The debug cell's result is the widget panel (with its text form beside it), as in JupyterLab.
    assert any(WIDGET_MIME in mimes for mimes in result["mimetypes"]), result["mimetypes"]
    port = int(re.search(r"debugpy listening at 127\.0\.0\.1:(\d+)", text).group(1))
    config = _launch_config(notebook_env, "quickstart")
    assert config["type"] == "debugpy" and config["request"] == "attach"
    assert config["connect"] == {"host": "127.0.0.1", "port": port}
    assert (notebook_env / ".aml_magics" / "cells" / "quickstart.py").is_file()


def _docker_problem() -> str | None:
    if shutil.which("docker") is None:
        return "no docker command (the Docker notebook needs a Docker engine; run: bash .ci/docker-engine.sh)"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        return f"`docker info` failed, no Docker engine: {(info.stderr or info.stdout).strip()[-300:]}"
    image = subprocess.run(["docker", "image", "inspect", DOCKER_BASE], capture_output=True, timeout=60)
    if image.returncode != 0:
        return f"test base image {DOCKER_BASE} missing (no registry in CI); run: bash .ci/docker-engine.sh"
    return None


@pytest.mark.docker
def test_docker_notebook(notebook_env: Path, monkeypatch):
    pytest.importorskip("docker", reason="the docker SDK is not installed (pip install 'aml-magics[docker]')")
    problem = _docker_problem()
    if problem:
        if os.environ.get("AML_MAGICS_REQUIRE_DOCKER"):
            pytest.fail(problem)
        pytest.skip(problem)
    _, text = _run("02-docker.ipynb", notebook_env, BASE_IMAGE=DOCKER_BASE)  # its default needs a registry
    port = int(re.search(r"debugpy listening at 127\.0\.0\.1:(\d+)", text).group(1))
    config = _launch_config(notebook_env, "docker-demo")
    assert config["connect"] == {"host": "127.0.0.1", "port": port}
    assert config["pathMappings"][0]["remoteRoot"] == "/app"
    names = subprocess.run(["docker", "ps", "-a", "--filter", "label=aml_magics", "--format", "{{.Names}}"],
                           capture_output=True, text=True, timeout=60).stdout
    assert "docker-demo" not in names and "docker-again" not in names, f"containers left: {names}"



def test_azureml_notebook_against_the_simulator(notebook_env: Path, monkeypatch, node_namespace, tmp_path: Path):
    pytest.importorskip("azureml.pipeline.steps", reason="azureml-pipeline-steps is not installed "
                        "(pip install 'aml-magics[azureml]')")
    from azureml_support import use_simulator

    use_simulator(monkeypatch, tmp_path / "sim", netns=node_namespace.name if node_namespace else "")
    monkeypatch.delenv("AML_MAGICS_AZUREML_BACKEND")  # the notebook's SIMULATOR parameter switches it on
    # No workspace config: as a demo user without a subscription, the notebook makes one up.
    _, text = _run("03-azureml-run-and-pipeline.ipynb", notebook_env, SIMULATOR=True)
    assert json.loads((notebook_env / ".azureml" / "config.json").read_text())["workspace_name"] == "demo"
    node = node_namespace.node_address if node_namespace else "127.0.0.1"
    assert re.search(r"debugpy listening at (\S+):5678 on the node", text).group(1) == node
    assert re.search(r"step train: debugpy listening at (\S+):5678", text).group(1) == node
    config = _launch_config(notebook_env, "train")
    assert config["connect"]["host"] == "127.0.0.1"  # the owner's forwarder into the authenticated tunnel
    assert "reached through the authenticated tunnel: attach at 127.0.0.1:" in text
    assert config["pathMappings"][0]["localRoot"] == "${workspaceFolder}/src"


def test_deployment_notebook(notebook_env: Path):
    pytest.importorskip("azureml_inference_server_http",
                        reason="azureml-inference-server-http is not installed (pip install 'aml-magics[deploy]')")
    _, text = _run("04-deployment.ipynb", notebook_env)
    port = int(re.search(r"debugpy listening at 127\.0\.0\.1:(\d+)", text).group(1))
    config = _launch_config(notebook_env, "linear")
    assert config["connect"] == {"host": "127.0.0.1", "port": port}
    assert config["pathMappings"][0]["localRoot"] == "${workspaceFolder}/.aml_magics/cells/deploy-linear"
