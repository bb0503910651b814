"""The azureml target's submission built offline with azureml-core's real classes:
what would be submitted (entry script, arguments, pip packages), --dry-run, settings and
the errors found before anything is submitted. No service and no simulator run here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("azureml.core", reason="azureml-core is not installed (pip install 'aml-magics[azureml]')")

from azureml_support import (  # noqa: E402
    FULL_ARGUMENTS,
    WORKSPACE,
    full_spec,
    train_spec,
    use_simulator,
    write_project,
    write_workspace_config,
)

from aml_magics import cli  # noqa: E402
from aml_magics.azureml import settings  # noqa: E402
from aml_magics.azureml.backend import AzureMLService, get_backend, service_errors  # noqa: E402
from aml_magics.azureml.monitor import STATUS_STATES, followed_logs  # noqa: E402
from aml_magics.azureml.submission import build_submission
from aml_magics.errors import TargetError  # noqa: E402
from aml_magics.invocation import NODE_ENTRY, NODE_FOLDER  # noqa: E402
from aml_magics.options import OptionsError, build_request, parse_cli  # noqa: E402
from aml_magics.spec import DebugOptions, EnvironmentSpec, RunSpec  # noqa: E402
from aml_magics.targets import make_target  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")


def test_script_run_config_wraps_the_script_with_the_bootstrap(tmp_path):
    spec = full_spec(tmp_path)
    source = spec.source_dir
    submission = build_submission(spec, "cpu-cluster", "exp")
    try:
        from azureml.core import Environment, ScriptRunConfig

        config = submission.config
        assert isinstance(config, ScriptRunConfig) and isinstance(submission.environment, Environment)
        assert config.script == NODE_ENTRY
        assert config.arguments == FULL_ARGUMENTS
        assert config.run_config.target == "cpu-cluster"
        snapshot = Path(config.source_directory)
        assert snapshot != source and not (source / NODE_ENTRY).exists()  # never into the user's folder
        assert sorted(p.name for p in snapshot.iterdir()) == [NODE_FOLDER, "data.csv", "train.py"]
        pip = list(submission.environment.python.conda_dependencies.pip_packages)
        assert "numpy==2.0" in pip and "pandas>=2" in pip and "debugpy>=1.8.1" in pip
        assert config.run_config.environment_variables["MODE"] == "debug"
        assert config.run_config.environment_variables["PYDEVD_DISABLE_FILE_VALIDATION"] == "1"
    finally:
        submission.cleanup()
    assert not snapshot.exists()


def test_bind_is_the_node_address_unless_asked_and_amlignore_is_honoured(tmp_path):
    source = tmp_path / "proj"
    write_project(source)
    (source / "big").mkdir()
    (source / "big" / "blob.bin").write_bytes(b"x" * 10)
    (source / ".amlignore").write_text("big/\n")
    submission = build_submission(train_spec(source, debug=DebugOptions(bind="0.0.0.0")), "c1", "e")
    try:
        assert submission.config.arguments[:4] == ["--port", "5678", "--bind", "0.0.0.0"]
        assert "big/blob.bin" not in submission.describe()["snapshot_files"]
    finally:
        submission.cleanup()


def test_no_debug_and_user_managed_registered_environment(tmp_path):
    from azureml.core import Environment

    source = tmp_path / "proj"
    write_project(source)
    registered = Environment("my-env")
    registered.python.user_managed_dependencies = True
    submission = build_submission(train_spec(source), "c1", "e", registered=registered, registered_name="my-env:3")
    try:
        assert submission.environment.name == "my-env-aml-magics-debug" and registered.name == "my-env"
        assert any("debugpy must already be installed" in n for n in submission.notes)
    finally:
        submission.cleanup()
    off = build_submission(train_spec(source, debug=DebugOptions(enabled=False)), "c1", "e")
    try:
        assert off.config.arguments[:2] == ["--no-debug", "--"]
    finally:
        off.cleanup()


def test_requirements_that_cannot_travel_are_refused(tmp_path):
    source = tmp_path / "proj"
    write_project(source)
    spec = train_spec(source, environment=EnvironmentSpec(requirements="numpy\n-r other.txt\n",
                                                          requirements_path="req.txt"))
    with pytest.raises(TargetError, match=r"req.txt line 2: '-r other.txt' cannot be used on Azure ML"):
        build_submission(spec, "c1", "e")


def test_dry_run_json_from_the_cli(tmp_path, monkeypatch, capsys):
    use_simulator(monkeypatch, tmp_path / "sim")
    monkeypatch.chdir(tmp_path)
    write_workspace_config(tmp_path)
    write_project(tmp_path / "proj")
    code = cli.main(["run", "proj/train.py", "--target", "azureml", "--sdk", "v1", "--compute", "gpu-cluster",
                     "--experiment", "exp1", "--pip", "torch", "--dry-run", "--output", "json", "--", "--epochs", "2"])
    out = capsys.readouterr().out
    assert code == 0
    plan = json.loads(out)
    assert plan["backend"] == "simulated Azure ML" and plan["submitted"] is False
    assert plan["workspace"]["workspace_name"] == WORKSPACE["workspace_name"]
    assert plan["compute"] == "gpu-cluster" and plan["experiment"] == "exp1"
    assert plan["entry_script"] == NODE_ENTRY
    assert plan["arguments"][-4:] == ["--", "train.py", "--epochs", "2"]
    assert {"torch", "debugpy>=1.8.1"} <= set(plan["environment"]["pip_packages"])
    assert plan["snapshot_files"] == [f"{NODE_FOLDER}/", "train.py"]
    assert not (tmp_path / "sim" / "runs").exists()  # nothing reached the (simulated) service
    assert cli.main(["run", "proj/train.py", "--target", "azureml", "--compute", "gpu-cluster", "--dry-run"]) == 0
    assert "nothing was submitted" in capsys.readouterr().out


def test_dry_run_of_a_cell_writes_nothing(shell, tmp_path, monkeypatch):
    use_simulator(monkeypatch, tmp_path / "sim")
    monkeypatch.chdir(tmp_path)
    write_workspace_config(tmp_path)
    plan = shell.run_cell_magic("aml_debug_run", "--target azureml --compute cpu-cluster --name cellrun --dry-run",
                                "print('hi')\n")
    assert plan["user_script"] == "cellrun.py" and "cellrun.py" in plan["snapshot_files"]
    assert not (tmp_path / ".aml_magics").exists()
    with pytest.raises(Exception, match="syntax error"):
        shell.run_cell_magic("aml_debug_run", "--target azureml --compute cpu-cluster --dry-run", "def (:\n")


def test_dry_run_is_for_azureml_only_and_never_starts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_project(tmp_path)
    request = build_request(parse_cli(["train.py", "--dry-run"], "t"), None, __import__("aml_magics.options").options.Defaults())
    from aml_magics import dryrun, engine

    with pytest.raises(OptionsError, match="it is for --target azureml"):
        dryrun.plan(request)
    with pytest.raises(OptionsError, match="--dry-run starts nothing"):
        engine.start(request)


# -- settings ---------------------------------------------------------------------------


def test_workspace_config_lookup_walks_up_like_from_config(tmp_path):
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    config = write_workspace_config(tmp_path)
    ref = settings.locate_workspace(None, deep)
    assert ref.config_path == config and ref.workspace_name == "ws-debug" and ref.subscription_id
    scope = tmp_path / "scope.json"
    scope.write_text(json.dumps({"Scope": "/subscriptions/S/resourceGroups/G/providers/"
                                          "Microsoft.MachineLearningServices/workspaces/W"}))
    assert settings.locate_workspace(str(scope), tmp_path).workspace_name == "W"


def test_compute_instance_defaults(tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "NBVM_FILE", tmp_path / "no-nbvm")
    for name in ("AML_MAGICS_COMPUTE", "AML_MAGICS_EXPERIMENT", "JPY_SESSION_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CI_NAME", "my-ci")
    monkeypatch.setenv("CI_RESOURCE_GROUP", "rg-ci")
    monkeypatch.setenv("CI_WORKSPACE", "ws-ci")
    ref = settings.locate_workspace(None, tmp_path)
    assert (ref.workspace_name, ref.resource_group, ref.subscription_id) == ("ws-ci", "rg-ci", None)
    assert "compute instance my-ci" in ref.source
    assert settings.choose_compute(None) == "my-ci"
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/u/Train Model.ipynb")
    assert settings.choose_experiment(None) == "Train-Model"


@pytest.mark.parametrize("kwargs, message", [
    ({"workspace_config": "missing.json"}, "--workspace-config .*missing.json: no such file"),
    # no workspace config: the simulator uses a simulated workspace, the service refuses (test_sdk_v2_path)
    ({"experiment": "bad name!"}, "--experiment 'bad name!'"),
    ({"compute": None}, "--compute NAME is required"),
    ({"environment": "bad env:1"}, "--environment 'bad env:1'"),
])
def test_settings_errors_are_one_line(tmp_path, monkeypatch, kwargs, message):
    use_simulator(monkeypatch, tmp_path / "sim")
    monkeypatch.setattr(settings, "NBVM_FILE", tmp_path / "no-nbvm")
    write_project(tmp_path / "proj")
    options = {"compute": "cpu-cluster", **kwargs}
    target = make_target("azureml", cwd=tmp_path, **options)
    spec = RunSpec(name="t", source_dir=tmp_path / "proj", script="train.py")
    with pytest.raises(TargetError, match=message) as info:
        target.check(spec)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "sim" / "runs").exists()


def test_missing_extra_is_one_clear_line(monkeypatch):
    for name in [m for m in sys.modules if m == "azureml" or m.startswith("azureml.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "azureml", None)
    with pytest.raises(TargetError, match=r"^target 'azureml' needs azureml-core: pip install .*\[azureml\]'$"):
        make_target("azureml", compute="c", sdk="v1")  # without --sdk, an installed azure-ai-ml would be used
    from aml_magics import debug_pipeline

    with pytest.raises(TargetError, match=r"pip install .*\[azureml\]'"):
        debug_pipeline([], "a")


def test_importing_and_loading_the_extension_never_imports_azureml():
    code = ("import sys, aml_magics, aml_magics.magics, aml_magics.targets, aml_magics.options, aml_magics.cli\n"
            "from IPython.testing.globalipapp import get_ipython\n"
            "ip = get_ipython(); ip.run_line_magic('load_ext', 'aml_magics')\n"
            "bad = sorted(m for m in sys.modules if m.startswith('azureml'))\n"
            "print('AZ', bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "AZ []" in out.stdout, out.stdout + out.stderr


def test_status_mapping_and_log_layouts():
    assert STATUS_STATES["Queued"] == "queued" and STATUS_STATES["Preparing"] == "building"
    assert STATUS_STATES["Running"] == "running" and STATUS_STATES["NotStarted"] == "preparing"
    assert followed_logs(["azureml-logs/70_driver_log.txt", "azureml-logs/60_control_log.txt"]) == [
        ("azureml-logs/70_driver_log.txt", "")]
    both = followed_logs(["azureml-logs/70_driver_log.txt", "user_logs/std_log.txt"])
    assert both == [("user_logs/std_log.txt", "")]
    ranks = followed_logs(["user_logs/std_log_process_1.txt", "user_logs/std_log_process_0.txt"])
    assert ranks == [("user_logs/std_log_process_0.txt", "[rank 0] "), ("user_logs/std_log_process_1.txt", "[rank 1] ")]


def test_real_backend_defaults_and_error_lines(monkeypatch):
    monkeypatch.delenv("AML_MAGICS_AZUREML_BACKEND", raising=False)
    monkeypatch.delenv("AML_MAGICS_AZUREML_POLL_SECONDS", raising=False)
    backend = get_backend()
    assert isinstance(backend, AzureMLService) and backend.poll_seconds == 2.0 and not backend.simulated
    from azureml.exceptions import AuthenticationException

    with pytest.raises(TargetError, match=r"^Azure ML: authentication failed while trying to open workspace w: token"):
        with service_errors("open workspace w"):
            raise AuthenticationException("token expired\nmore detail")
    monkeypatch.setenv("AML_MAGICS_AZUREML_BACKEND", "bogus")
    with pytest.raises(TargetError, match="expected 'simulator'"):
        get_backend()


def test_config_defaults_for_compute_and_experiment(shell, tmp_path, monkeypatch):
    use_simulator(monkeypatch, tmp_path / "sim")
    monkeypatch.chdir(tmp_path)
    write_workspace_config(tmp_path)
    write_project(tmp_path)
    shell.run_line_magic("config", "AmlDebugMagics.compute = 'gpu-cluster'")
    shell.run_line_magic("config", "AmlDebugMagics.experiment = 'from-config'")
    try:
        plan = shell.run_line_magic("aml_debug_run", "--target azureml --dry-run train.py")
    finally:
        shell.run_line_magic("config", "AmlDebugMagics.compute = None")
        shell.run_line_magic("config", "AmlDebugMagics.experiment = None")
    assert (plan["compute"], plan["experiment"]) == ("gpu-cluster", "from-config")
