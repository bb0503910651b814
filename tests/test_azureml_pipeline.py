"""Pipeline steps with debugging switched on: real PythonScriptStep objects, the simulated
service running them as child runs, a real DAP client attaching to a step's node."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("azureml.pipeline.steps", reason="azureml-pipeline-steps is not installed "
                    "(pip install 'aml-magics[azureml]')")

from azureml.pipeline.core import PipelineData, PipelineParameter  # noqa: E402
from azureml.pipeline.steps import PythonScriptStep  # noqa: E402
from azureml_support import use_simulator, wait_for, write_workspace_config  # noqa: E402

from aml_magics import debug_pipeline  # noqa: E402
from aml_magics.azureml.simulator import get_simulator  # noqa: E402
from aml_magics.errors import TargetError  # noqa: E402
from aml_magics.testing.dap import attach_with_launch_config  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")


TRAIN = """\
import argparse, os
parser = argparse.ArgumentParser()
parser.add_argument("--out")
parser.add_argument("--lr", type=float)
parser.add_argument("--remote_debug", action="store_true")
parser.add_argument("--remote_debug_connection_timeout", type=int, default=300)
parser.add_argument("--remote_debug_port", type=int, default=5678)
args = parser.parse_args()
os.makedirs(args.out, exist_ok=True)
model = f"lr={args.lr}"
open(os.path.join(args.out, "model.txt"), "w").write(model)
print("trained", model, "remote_debug", args.remote_debug)
"""
TRAIN_BREAK = 10  # model = ...
SCORE = """\
import argparse, os
parser = argparse.ArgumentParser()
parser.add_argument("--model")
args = parser.parse_args()
print("scored with", open(os.path.join(args.model, "model.txt")).read())
"""


@pytest.fixture
def steps(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_workspace_config(tmp_path)
    for folder, name, text in (("step1", "train.py", TRAIN), ("step2", "score.py", SCORE)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_text(text)
    mid = PipelineData("mid")
    lr = PipelineParameter("lr", default_value=0.1)
    train = PythonScriptStep(script_name="train.py", name="train", compute_target="cpu-cluster",
                             source_directory="step1", outputs=[mid],
                             arguments=["--out", mid, "--lr", lr, "--remote_debug",
                                        "--remote_debug_connection_timeout", 300, "--remote_debug_port", 5678])
    score = PythonScriptStep(script_name="score.py", name="score", compute_target="cpu-cluster",
                             source_directory="step2", inputs=[mid], arguments=["--model", mid])
    return train, score


def test_dry_run_wraps_the_chosen_step_and_keeps_its_arguments(steps, tmp_path, monkeypatch):
    use_simulator(monkeypatch, tmp_path / "sim")
    train, score = steps
    before = list(train._arguments)
    plan = debug_pipeline([train, score], dry_run=True)  # chosen by the guide's --remote_debug
    assert [s["step"] for s in plan["steps"]] == ["train"] and plan["other_steps"] == ["score"]
    step = plan["steps"][0]
    assert step["entry_script"] == "aml_magics_node/__main__.py"
    assert step["arguments"][:7] == ["--port", "5678", "--bind", "node", "--timeout", "300", "--"]
    assert step["arguments"][7:9] == ["train.py", "--out"] and step["arguments"][10] == "--lr"
    assert not any(a.startswith("--remote_debug") for a in step["arguments"])  # the script won't start debugpy
    assert "debugpy>=1.8.1" in step["pip_packages"] and step["allow_reuse"] is False
    assert train._arguments == before and train._script_name == "train.py"  # the user's step is untouched
    assert not (tmp_path / "sim" / "runs").exists()


def test_pipeline_step_breakpoint_through_launch_json(steps, tmp_path, monkeypatch, node_namespace, shell):
    use_simulator(monkeypatch, tmp_path / "sim", netns=node_namespace.name if node_namespace else "")
    node = node_namespace.node_address if node_namespace else "127.0.0.1"
    train, score = steps
    shell.user_ns["my_steps"] = [train, score]
    result = shell.run_line_magic("aml_debug_pipeline", "my_steps --steps train,score --timeout 60 --port 0 "
                                  "--parameter lr=0.5 --experiment pipe-e2e")
    assert set(result.steps) == {"train", "score"}
    assert "simulated Azure ML" in result.description
    run = result.steps["train"]
    endpoint = run.wait_for_endpoint(60)
    assert endpoint.tunnelled and endpoint.node_address.rsplit(":", 1)[0] == node  # its relay, on the node
    config = run.launch_config()
    assert config["pathMappings"] == [{"localRoot": "${workspaceFolder}/step1", "remoteRoot": endpoint.cwd}]
    assert train._script_name == "train.py" and train._source_directory == "step1"  # restored after submit
    local = tmp_path / "step1" / "train.py"
    client = attach_with_launch_config(config, {str(local): [TRAIN_BREAK]}, workspace_folder=str(tmp_path))
    try:
        stop = client.wait_stopped(30)
        assert Path(stop.path) == local and stop.line == TRAIN_BREAK
        assert client.variables_of(stop.frame_id)["args"].startswith("Namespace(")
        client.continue_(stop.thread_id)
        assert run.wait(60) == "completed"
    finally:
        client.close()
    assert "trained lr=0.5 remote_debug False" in run.logs  # pipeline parameter resolved, guide flags removed
    score_run = result.steps["score"]
    score_endpoint = score_run.wait_for_endpoint(60)  # the second step reports its own endpoint
    assert score_endpoint.cwd != endpoint.cwd
    score_run.cancel()
    assert score_run.wait(30) == "canceled"
    pipeline = get_simulator().runs[result.id]
    assert [c.name for c in pipeline.get_children()] == ["train", "score"]
    wait_for(lambda: pipeline.get_status() == "Canceled", 20, "pipeline canceled")


def test_pipeline_errors_are_one_line(steps, tmp_path, monkeypatch):
    use_simulator(monkeypatch, tmp_path / "sim")
    train, score = steps
    with pytest.raises(TargetError, match=r"no step named 'nope' \(steps: train, score\)"):
        debug_pipeline([train, score], "nope")
    with pytest.raises(TargetError, match="which steps"):
        debug_pipeline([score], None)
    wrong = PythonScriptStep(script_name="train.py", name="other", compute_target="no-such", source_directory="step1")
    with pytest.raises(TargetError, match="step other: compute 'no-such' not found in workspace ws-debug"):
        debug_pipeline([wrong], "other")
    monkeypatch.setenv("AML_MAGICS_SIM_AUTH", "fail")
    with pytest.raises(TargetError, match="authentication failed"):
        debug_pipeline([train, score], "train")
    assert not (tmp_path / "sim" / "runs").exists()
