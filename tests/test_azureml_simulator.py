"""The azureml target with SDK v1 (``--sdk v1``: v2 is the default when both are installed) end to
end against the simulated Azure ML control plane.

The simulator executes exactly what was submitted (snapshot, bootstrap entry script,
arguments, environment variables) in a separate process; where this machine allows, that
"node" runs in its own network namespace with its own 10.211.x.2 address, so the endpoint
read back from the run's logs is not loopback and the DAP client attaches across the veth
pair, through the emitted launch.json, as VS Code would.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("azureml.core", reason="azureml-core is not installed (pip install 'aml-magics[azureml]')")

from azureml_support import (  # noqa: E402
    SCRIPT,
    assert_completed_history,
    debug_to_the_end,
    use_simulated_node,
    use_simulator,
    wait_for,
    wait_for_the_debugger,
    write_project,
)
from conftest import port_is_listening  # noqa: E402

from aml_magics import cli  # noqa: E402
from aml_magics.azureml.simulator import get_simulator  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")




@pytest.mark.parametrize("layout", ["user_logs", "driver"])
def test_breakpoint_through_launch_json_across_the_node_address(shell, project, monkeypatch, node_namespace, layout):
    node = use_simulated_node(monkeypatch, project, node_namespace, layout)
    run = shell.run_line_magic("aml_debug_run", "--target azureml --sdk v1 --compute cpu-cluster --experiment e2e "
                               "--port 0 --timeout 60 proj/train.py -- --lr 0.1")
    assert run.target == "azureml" and "simulated Azure ML" in run.description
    endpoint, config = wait_for_the_debugger(run, node)
    assert "/nodes/" in endpoint.cwd and Path(endpoint.cwd, "train.py").is_file()
    sim_run = _only_run(layout)
    expected_log = "user_logs/std_log.txt" if layout == "user_logs" else "azureml-logs/70_driver_log.txt"
    assert expected_log in sim_run.get_details()["logFiles"]

    debug_to_the_end(run, config, project)
    assert_completed_history(sim_run.history)
    if node_namespace is None:
        assert not port_is_listening("127.0.0.1", endpoint.port)


def _only_run(layout: str):
    runs = [r for r in get_simulator().runs.values() if r.layout == layout]
    return runs[-1]


def test_endpoint_from_the_run_tag_before_the_logs(project, monkeypatch):
    """When the bootstrap could tag the run (azureml-core in the image), the tag is read first;
    its value is the bootstrap's authenticated marker line (a forged one is ignored)."""
    from test_markers import KEY, signed

    from aml_magics.azureml.monitor import RunMonitor
    from aml_magics.protocol import MarkerReader

    events = _Recorder()
    data = {"host": "10.0.0.4", "port": 5678, "rank": 0, "cwd": "/mnt/azureml/cr/j/1/exe/wd", "timeout": 300}
    tagged = signed("ENDPOINT", data)  # one line (markers are numbered: each signing is another)

    class TaggedRun:
        id = "run-1"

        def __init__(self):
            self.calls = 0

        def get_details(self):
            self.calls += 1
            return {"status": "Running" if self.calls < 3 else "Completed", "logFiles": {}}

        def get_tags(self):
            return {"aml_magics.endpoint.0": tagged,  # as the bootstrap tags it
                    "aml_magics.endpoint.1": signed("ENDPOINT", {**data, "rank": 1}, key=b"x" * 32)}  # forged

    backend = type("B", (), {"poll_seconds": 0.01, "read": lambda self, uri, offset: b""})()
    monitor = RunMonitor(backend, TaggedRun(), events, reader=MarkerReader(KEY), poll=0.01).start()
    wait_for(monitor.is_done, 10, "monitor end")
    at = [i for i, line in enumerate(events.lines) if "endpoint from run tag" in line]
    assert len(at) == 1 and "aml_magics.endpoint.0" in events.lines[at[0]]
    assert events.lines[at[0] + 1] == tagged
    assert monitor.endpoint_ranks == {0} and events.end == ("completed", 0)


class _Recorder:
    def __init__(self):
        self.lines, self.states, self.end = [], [], None

    def line(self, text):
        self.lines.append(text)

    def state(self, state, detail=""):
        self.states.append(state)

    def finished(self, state, exit_code=None, detail=""):
        self.end = (state, exit_code)


def test_cancel_while_waiting_for_the_debugger(shell, project, monkeypatch, node_namespace):
    use_simulated_node(monkeypatch, project, node_namespace, "user_logs")
    run = shell.run_line_magic("aml_debug_run", "--target azureml --sdk v1 --compute cpu-cluster --port 0 "
                               "--timeout 120 proj/train.py")
    run.wait_for_endpoint(60)
    sim_run = _only_run("user_logs")
    shell.run_line_magic("aml_cancel", run.id)
    assert run.wait(20) == "canceled"
    assert run.detail.startswith("canceled by user after ")
    assert sim_run.get_status() == "Canceled" and "CancelRequested" in sim_run.history
    assert all(p.poll() is not None for p in sim_run._processes)


def test_failed_run_reports_the_service_error_and_exit_code(project, monkeypatch, node_namespace):
    use_simulated_node(monkeypatch, project, node_namespace, "driver")
    write_project(project / "proj", "import os, sys\nprint('run id', os.environ['AZUREML_RUN_ID'])\nsys.exit(3)\n",
                  name="fail.py")
    code = cli.main(["run", "proj/fail.py", "--target", "azureml", "--sdk", "v1", "--compute", "cpu-cluster",
                     "--no-debug"])
    assert code == 3
    run = _only_run("driver")
    log = (run.dir / "azureml-logs" / "70_driver_log.txt").read_text()
    assert f"run id {run.id}" in log  # the variables Azure ML sets reach the process
    assert run.get_status() == "Failed" and "exited with status code 3" in run.get_details()["error"]["error"]["message"]


@pytest.mark.parametrize("setup, message", [
    ({"AML_MAGICS_SIM_AUTH": "fail"}, "Azure ML: authentication failed while trying to open workspace ws-debug"),
    ({}, "compute 'no-such' not found in workspace ws-debug (computes: cpu-cluster, gpu-cluster)"),
    ({"environment": "NoSuchEnv:2"}, "Azure ML: could not get environment NoSuchEnv:2: Environment NoSuchEnv:2 was not"),
])
def test_service_errors_are_one_line_and_nothing_is_submitted(project, monkeypatch, capsys, setup, message):
    use_simulator(monkeypatch, project / "sim")
    argv = ["run", "proj/train.py", "--target", "azureml", "--sdk", "v1", "--compute", "cpu-cluster"]
    for key, value in setup.items():
        if key.startswith("AML_"):
            monkeypatch.setenv(key, value)
        else:
            argv += [f"--{key}", value]
    if not setup:
        argv[-1] = "no-such"
    before = len(get_simulator().runs)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert len(get_simulator().runs) == before


def test_registered_environment_gets_debugpy(project, monkeypatch):
    use_simulator(monkeypatch, project / "sim")
    code = cli.main(["run", "proj/train.py", "--target", "azureml", "--sdk", "v1", "--compute", "cpu-cluster",
                     "--environment", "AzureML-sklearn-1.5:1", "--port", "0", "--timeout", "0"])
    assert code == 0
    run = list(get_simulator().runs.values())[-1]
    assert run.submitted.pip_packages[-1] == "debugpy>=1.8.1" and "scikit-learn==1.5.1" in run.submitted.pip_packages


def test_text_view_says_simulated(project, monkeypatch):
    from aml_magics.views import render_text

    use_simulator(monkeypatch, project / "sim")
    import aml_magics

    run = aml_magics.submit("proj/train.py", target="azureml", sdk="v1", compute="cpu-cluster", no_debug=True,
                            wait=True)
    assert run.state == "completed"
    assert "simulated Azure ML" in render_text(run)
    assert SCRIPT  # the script ran as written


def test_distributed_run_reports_an_endpoint_per_rank(project, monkeypatch):
    use_simulator(monkeypatch, project / "sim")
    import aml_magics

    run = aml_magics.submit("proj/train.py", target="azureml", sdk="v1", compute="cpu-cluster", procs_per_node=2,
                            port=0, timeout=1, wait=True)
    assert run.state == "completed"
    assert sorted(e.rank for e in run.endpoints) == [0, 1]
    sim_run = list(get_simulator().runs.values())[-1]
    assert sorted(sim_run.get_details()["logFiles"])[-2:] == ["user_logs/std_log_process_0.txt",
                                                              "user_logs/std_log_process_1.txt"]
    assert "[rank 1] " in run.logs
