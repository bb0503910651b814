"""Shared pieces of the azureml tests (SDK v1 and v2): a project and a workspace config,
the run specs, the simulator switched on, a network-namespace node (or loopback, with the
reason it had to be), and a debugging session through the emitted launch.json."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import BREAK_LINE, wait_for  # noqa: F401 - re-exported for the azureml tests
from conftest import CELL as SCRIPT

from aml_magics.spec import DebugOptions, EnvironmentSpec, RunSpec
from aml_magics.testing.dap import attach_with_launch_config

WORKSPACE = {"subscription_id": "00000000-0000-0000-0000-000000000001", "resource_group": "rg-debug",
             "workspace_name": "ws-debug"}
# The bootstrap's command line for full_spec(): its options, then the script and its arguments untouched.
FULL_ARGUMENTS = ["--port", "5679", "--bind", "node", "--timeout", "120", "--stop-on-entry",
                  "--", "train.py", "--lr", "0.1", "--", "x y"]


def write_workspace_config(folder: Path) -> Path:
    path = folder / ".azureml" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(WORKSPACE))
    return path


def write_project(folder: Path, script: str = SCRIPT, name: str = "train.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(script)
    return folder / name


def train_spec(source: Path, **kw) -> RunSpec:
    """``train.py`` of ``source``, with arguments that must reach the script untouched."""
    return RunSpec(name="train", source_dir=source, script="train.py", args=("--lr", "0.1", "--", "x y"), **kw)


def full_spec(tmp_path: Path) -> RunSpec:
    """A project with a data file beside the script, and a run with packages, variables and debug options."""
    source = tmp_path / "proj"
    write_project(source)
    (source / "data.csv").write_text("a,b\n")
    return train_spec(source, environment=EnvironmentSpec(pip=("numpy==2.0",), requirements="pandas>=2  # data\n",
                                                          env_vars=(("MODE", "debug"),)),
                      debug=DebugOptions(port=5679, timeout=120, stop_on_entry=True))


def setup_project(tmp_path: Path, monkeypatch) -> Path:
    """For a ``project`` fixture: ``tmp_path`` as the working folder, with a workspace config and ``proj/train.py``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AML_MAGICS_CACHE_DIR", str(tmp_path / "cache"))
    write_workspace_config(tmp_path)
    write_project(tmp_path / "proj")
    return tmp_path


def use_simulator(monkeypatch, root: Path, layout: str = "user_logs", netns: str = "") -> None:
    monkeypatch.setenv("AML_MAGICS_AZUREML_BACKEND", "simulator")
    monkeypatch.setenv("AML_MAGICS_SIM_ROOT", str(root))
    monkeypatch.setenv("AML_MAGICS_SIM_LOG_LAYOUT", layout)
    monkeypatch.setenv("AML_MAGICS_SIM_NETNS", netns)
    monkeypatch.setenv("AML_MAGICS_SIM_STATE_SECONDS", "0.05")
    monkeypatch.setenv("AML_MAGICS_AZUREML_POLL_SECONDS", "0.2")
    for name in ("AML_MAGICS_SIM_AUTH", "AML_MAGICS_SIM_COMPUTES", "AML_MAGICS_SIM_NETWORK", "AML_MAGICS_SIM_PYTHON",
                 "AML_MAGICS_COMPUTE", "AML_MAGICS_EXPERIMENT", "AML_MAGICS_WORKSPACE_CONFIG", "CI_NAME",
                 "CI_RESOURCE_GROUP", "CI_WORKSPACE", "JPY_SESSION_NAME"):
        monkeypatch.delenv(name, raising=False)


def use_simulated_node(monkeypatch, project: Path, namespace, layout: str = "user_logs") -> str:
    """The simulator on, its node in ``namespace`` (or on loopback); the node's address."""
    use_simulator(monkeypatch, project / "sim", layout=layout, netns=namespace.name if namespace else "")
    return namespace.node_address if namespace else "127.0.0.1"


def namespace_or_loopback():
    """For a fixture: a network-namespace node with its own address, or None (loopback) with the reason."""
    from aml_magics.azureml.simulator import NamespaceUnavailable, NodeNamespace

    namespace = NodeNamespace()
    try:
        namespace.create()
    except NamespaceUnavailable as exc:
        print(f"\nazureml simulator: no network namespace ({exc}); the simulated node runs on loopback")
        yield None
        return
    try:
        yield namespace
    finally:
        namespace.remove()


def wait_for_the_debugger(run, node: str):
    """The run waits for a debugger at the node's address — its authenticated relay there, reached
    through this process's TLS forwarder on loopback, which the launch.json connects to.
    Returns the endpoint and the launch configuration."""
    endpoint = run.wait_for_endpoint(60)
    assert endpoint.tunnelled and endpoint.host == "127.0.0.1"
    assert endpoint.node_address.rsplit(":", 1)[0] == node  # the node's own private address (10.211.x.2)
    assert run.state == "waiting_for_debugger"
    config = run.launch_config()
    assert config["connect"] == {"host": "127.0.0.1", "port": endpoint.port}
    assert config["pathMappings"] == [{"localRoot": "${workspaceFolder}/proj", "remoteRoot": endpoint.cwd}]
    return endpoint, config


def debug_to_the_end(run, config: dict, project: Path) -> None:
    """A DAP client attaches through ``config``, stops at the breakpoint in the local ``proj/train.py``,
    reads a variable and continues; the run completes with the script's output."""
    local_script = project / "proj" / "train.py"
    client = attach_with_launch_config(config, {str(local_script): [BREAK_LINE]}, workspace_folder=str(project))
    try:
        stop = client.wait_stopped(30)
        assert stop.reason == "breakpoint"
        assert Path(stop.path) == local_script and stop.line == BREAK_LINE  # mapped back to the local file
        assert client.variables_of(stop.frame_id)["total"] == "10"
        wait_for(lambda: run.state == "attached", 15, "attached state")
        client.continue_(stop.thread_id)
        assert run.wait(60) == "completed"
    finally:
        client.close()
    assert run.exit_code == 0
    assert "total=10 ['--lr', '0.1']" in run.logs and "Debugger attached = True" in run.logs


def assert_completed_history(history: list[str]) -> None:
    """A simulated run's states, from submit to a completed end."""
    assert history[:1] == ["NotStarted"] and history[-1] == "Completed"
    assert {"Preparing", "Queued", "Running"} <= set(history)
