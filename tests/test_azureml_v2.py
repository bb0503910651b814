"""The azureml target with SDK v2 (azure-ai-ml): command() jobs.

Offline: azure-ai-ml's real job objects (``command()``, Environment, PyTorch/MPI
distribution, VsCodeJobService) built without credentials and checked; the SDK choice;
the workspace from ``MLClient.from_config()`` or explicit ids; every error path as one line
(the authentication failure through a real MLClient whose credential fails, with the network
shut off). End to end: the v2 control-plane simulator executes exactly the submitted job
(its code folder, command, environment variables, distribution) on a simulated node, in its
own network namespace where this machine allows, and a real DAP client attaches through the
emitted launch.json.
"""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("azure.ai.ml", reason="azure-ai-ml is not installed (pip install 'aml-magics[azureml-v2]')")
pytest.importorskip("azure.identity", reason="azure-identity is not installed (pip install 'aml-magics[azureml-v2]')")

from azureml_support import (  # noqa: E402
    FULL_ARGUMENTS,
    WORKSPACE,
    assert_completed_history,
    debug_to_the_end,
    full_spec,
    train_spec,
    use_simulated_node,
    use_simulator,
    wait_for,
    wait_for_the_debugger,
    write_project,
    write_workspace_config,
)
from conftest import port_is_listening  # noqa: E402

from aml_magics import cli  # noqa: E402
from aml_magics.azureml import sdk, settings  # noqa: E402
from aml_magics.azureml.v2.job import (  # noqa: E402
    DEFAULT_IMAGE,
    SSH_SERVICE,
    VSCODE_SERVICE,
    build_environment,
    build_job,
)
from aml_magics.azureml.v2.service import MLClientBackend, get_v2_backend  # noqa: E402
from aml_magics.azureml.v2.simulator import get_v2_simulator  # noqa: E402
from aml_magics.errors import TargetError  # noqa: E402
from aml_magics.invocation import NODE_ENTRY, NODE_FOLDER, entry_arguments  # noqa: E402
from aml_magics.protocol import MarkerReader  # noqa: E402
from aml_magics.spec import DebugOptions, DistributedSpec, EnvironmentSpec, RunSpec  # noqa: E402
from aml_magics.targets import make_target  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning", "ignore::DeprecationWarning")
V2 = ["--target", "azureml", "--sdk", "v2"]


def _pip(conda: dict) -> list[str]:
    return next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))


# -- the job, built offline with azure-ai-ml's classes ---------------------------------------------


def test_command_job_runs_the_bootstrap_in_the_snapshot_with_debugpy(tmp_path):
    from azure.ai.ml.entities import Command, Environment

    spec = full_spec(tmp_path)
    source = spec.source_dir
    submission = build_job(spec, "cpu-cluster", "exp", tags={"k": "v"})
    job = submission.job
    try:
        assert isinstance(job, Command) and job.type == "command"
        argv = shlex.split(job.command)
        assert argv[:2] == ["python", NODE_ENTRY]
        assert argv[2:] == FULL_ARGUMENTS
        assert argv[2:] == entry_arguments(spec, "node", 5679)  # the very arguments the v1 path passes
        snapshot = Path(job.code)
        assert snapshot == submission.snapshot and snapshot != source and not (source / NODE_ENTRY).exists()
        assert sorted(p.name for p in snapshot.iterdir()) == [NODE_FOLDER, "data.csv", "train.py"]
        assert (job.compute, job.experiment_name, job.display_name) == ("cpu-cluster", "exp", "train")
        env = job.environment
        assert isinstance(env, Environment) and env.image == DEFAULT_IMAGE
        pip = _pip(env.conda_file)
        assert {"numpy==2.0", "pandas>=2", "debugpy>=1.8.1"} <= set(pip)
        assert f"python={sys.version_info.major}.{sys.version_info.minor}" in env.conda_file["dependencies"]
        assert job.environment_variables["MODE"] == "debug"
        assert job.environment_variables["PYDEVD_DISABLE_FILE_VALIDATION"] == "1"
        assert job.distribution is None and not job.services and job.tags == {"k": "v"}
        serialized = submission.job_dict()
        assert serialized["compute"] == "azureml:cpu-cluster" and serialized["experiment_name"] == "exp"
        assert serialized["component"]["command"] == job.command
    finally:
        submission.cleanup()
    assert not snapshot.exists()


@pytest.mark.parametrize("kind, cls", [("pytorch", "PyTorchDistribution"), ("mpi", "MpiDistribution")])
def test_distributed_job_sets_instances_and_processes(tmp_path, kind, cls):
    write_project(tmp_path / "proj")
    spec = train_spec(tmp_path / "proj", distributed=DistributedSpec(nodes=2, procs_per_node=4),
                 debug=DebugOptions(debug_ranks=(0, 3)))
    submission = build_job(spec, "gpu-cluster", "exp", distribution=kind, vscode_service=True)
    try:
        job = submission.job
        assert type(job.distribution).__name__ == cls and job.distribution.process_count_per_instance == 4
        assert job.resources.instance_count == 2
        argv = shlex.split(job.command)
        assert "--port-per-local-rank" in argv and argv[argv.index("--debug-ranks") + 1] == "0,3"
        assert job.services[VSCODE_SERVICE].nodes == "all"  # a VS Code service on every node
        described = submission.describe()
        assert described["distributed"] == {"type": cls, "instance_count": 2, "process_count_per_instance": 4}
        assert described["job"]["distribution"]["type"] == kind
        assert described["job"]["services"] == {VSCODE_SERVICE: {"type": "vs_code", "nodes": "all"}}
    finally:
        submission.cleanup()


def test_registered_environments_get_debugpy_their_own_way(tmp_path):
    from azure.ai.ml.entities import BuildContext, Environment

    write_project(tmp_path / "proj")
    spec = train_spec(tmp_path / "proj")
    conda = {"dependencies": ["python=3.10", "pip", {"pip": ["pandas"]}]}
    team = Environment(name="team", version="2", image="img:1", conda_file=conda)
    plan = build_environment(spec, team, "team:2")
    assert plan.kind == "registered+conda" and plan.environment.image == "img:1"
    assert _pip(plan.environment.conda_file) == ["pandas", "debugpy>=1.8.1"] and _pip(conda) == ["pandas"]

    curated = Environment(name="AzureML-sklearn-1.5", version="1", image="curated/sklearn:1")
    plan = build_environment(train_spec(tmp_path / "proj", environment=EnvironmentSpec(pip=("rich",))), curated, None)
    try:
        assert plan.kind == "registered+docker" and isinstance(plan.environment.build, BuildContext)
        dockerfile = (Path(plan.environment.build.path) / "Dockerfile").read_text()
        assert dockerfile == "FROM curated/sklearn:1\nRUN python -m pip install --no-cache-dir rich 'debugpy>=1.8.1'\n"
    finally:
        import shutil

        shutil.rmtree(plan.build_dir)

    has_debugpy = Environment(name="ok", version="1", image="i", conda_file={"dependencies": [{"pip": ["debugpy"]}]})
    assert build_environment(spec, has_debugpy, "ok:1").environment is has_debugpy  # used as registered

    own_docker = Environment(name="docker-env", version="1", build=BuildContext(path=str(tmp_path)))
    plan = build_environment(spec, own_docker, "docker-env:1")
    assert plan.environment is own_docker and "debugpy must already be installed" in plan.notes[0]
    with pytest.raises(TargetError, match="built from its own Docker context; --pip/--requirements cannot"):
        build_environment(train_spec(tmp_path / "proj", environment=EnvironmentSpec(pip=("x",))), own_docker, None)


def test_conda_file_and_base_image_and_no_debug(tmp_path):
    write_project(tmp_path / "proj")
    conda = "name: mine\ndependencies:\n  - python=3.10\n  - numpy\n"
    spec = train_spec(tmp_path / "proj", environment=EnvironmentSpec(conda=conda, base_image="my/img"))
    plan = build_environment(spec)
    assert plan.environment.image == "my/img"
    assert plan.environment.conda_file["dependencies"] == ["python=3.10", "numpy", "pip", {"pip": ["debugpy>=1.8.1"]}]
    off = build_job(train_spec(tmp_path / "proj", debug=DebugOptions(enabled=False)), "c1", "e")
    try:
        assert shlex.split(off.job.command)[2:4] == ["--no-debug", "--"]
        assert "debugpy>=1.8.1" not in _pip(off.job.environment.conda_file)
    finally:
        off.cleanup()
    with pytest.raises(TargetError, match="Azure ML reads as an input/output binding"):
        build_job(RunSpec(name="t", source_dir=tmp_path / "proj", script="train.py", args=("${{inputs.x}}",)),
                  "c1", "e")
    with pytest.raises(TargetError, match="--conda: not a conda environment file"):
        build_environment(train_spec(tmp_path / "proj", environment=EnvironmentSpec(conda="- a\n- b\n")))


# -- following a job ----------------------------------------------------------------------------


def test_every_job_status_is_mapped():
    from azure.ai.ml.operations._run_history_constants import RunHistoryConstants

    from aml_magics.azureml.monitor import STATUS_STATES, TERMINAL

    assert set(RunHistoryConstants.TERMINAL_STATUSES) <= set(TERMINAL)
    assert set(RunHistoryConstants.ALL_STATUSES) <= set(STATUS_STATES) | set(TERMINAL)
    assert TERMINAL["Paused"] == "canceled"


def test_monitor_shows_each_nodes_vscode_service_in_the_description():
    from aml_magics.azureml.v2.monitor import JobMonitor
    from aml_magics.run import DebugRun

    class Job:
        id = "job-1"

        def __init__(self):
            self.polls = 0

        def get_details(self):
            self.polls += 1
            status = ["Queued", "Running", "Running", "Running"][min(self.polls - 1, 3)]
            return {"status": status if self.polls < 8 else "Completed", "logFiles": {}}

        def get_tags(self):
            return {}

        def service_endpoints(self, node):
            if self.polls < 3 and node == 1:
                return {}  # node 1's service comes up a poll later
            return {VSCODE_SERVICE: f"https://n{node}.example.invalid/"}

    run = DebugRun("r1", RunSpec(name="t", source_dir=Path("."), script="t.py"), "azureml", description="Azure ML")
    backend = type("B", (), {"poll_seconds": 0.01, "read": lambda self, uri, offset: b""})()
    monitor = JobMonitor(backend, Job(), run.events, reader=MarkerReader(None), services=(VSCODE_SERVICE,), nodes=2, description="Azure ML",
                         poll=0.01).start()
    wait_for(monitor.is_done, 10, "monitor end")
    assert run.state == "completed"
    assert run.description == "Azure ML; VS Code on the node: https://n0.example.invalid/, https://n1.example.invalid/"
    lines = [line for line in run.logs.splitlines() if "VS Code service" in line]
    assert lines == ["aml_magics: VS Code service (node 0): https://n0.example.invalid/",
                     "aml_magics: VS Code service (node 1): https://n1.example.invalid/"]


# -- the SDK choice ----------------------------------------------------------------------------


def test_sdk_choice(monkeypatch):
    monkeypatch.delenv(sdk.SDK_ENV, raising=False)
    installed = {"azureml.core": True, "azure.ai.ml": True, "azure.identity": True}
    monkeypatch.setattr(sdk, "installed", lambda module: installed[module])
    assert sdk.choose_sdk(None) == "v2"  # both: v2 (SDK v1 reached end of support on 2026-06-30)
    assert sdk.choose_sdk("v2") == "v2"
    monkeypatch.setenv(sdk.SDK_ENV, "v2")
    assert sdk.choose_sdk(None) == "v2"
    monkeypatch.delenv(sdk.SDK_ENV)
    installed["azureml.core"] = False
    assert sdk.choose_sdk(None) == "v2"  # only one installed: that one
    with pytest.raises(TargetError, match=r"^target 'azureml' needs azureml-core: pip install .*\[azureml\]'$"):
        make_target("azureml", compute="c", sdk="v1")
    installed["azureml.core"], installed["azure.identity"] = True, False
    assert sdk.choose_sdk(None) == "v1"
    from aml_magics.install import install_command

    with pytest.raises(TargetError) as info:
        make_target("azureml", compute="c", sdk="v2")
    assert str(info.value) == f"--sdk v2 needs azure-ai-ml and azure-identity: {install_command('azureml-v2')}"
    installed["azureml.core"] = False
    with pytest.raises(TargetError) as info:
        make_target("azureml", compute="c")
    assert str(info.value) == (f"target 'azureml' needs an Azure ML SDK: {install_command('azureml-v2')} "
                               f"(azure-ai-ml, SDK v2) or {install_command('azureml')} (azureml-core, SDK v1)")
    monkeypatch.setenv(sdk.SDK_ENV, "v3")
    with pytest.raises(TargetError, match="expected v1 .azureml-core. or v2 .azure-ai-ml."):
        sdk.choose_sdk(None)


def test_missing_libraries_are_found_without_importing_them(monkeypatch):
    monkeypatch.setitem(sys.modules, "azure.ai.ml", None)
    assert not sdk.installed("azure.ai.ml") and sdk.installed("azure.identity")
    with pytest.raises(TargetError, match=r"pip install .*\[azureml-v2\]'"):
        make_target("azureml", compute="c", sdk="v2")


def test_config_default_and_v2_only_options_with_v1(shell, tmp_path, monkeypatch):
    use_simulator(monkeypatch, tmp_path / "sim")
    monkeypatch.chdir(tmp_path)
    write_workspace_config(tmp_path)
    write_project(tmp_path)
    shell.run_line_magic("config", "AmlDebugMagics.azureml_sdk = 'v2'")
    try:
        plan = shell.run_line_magic("aml_debug_run", "--target azureml --compute cpu-cluster --dry-run train.py")
    finally:
        shell.run_line_magic("config", "AmlDebugMagics.azureml_sdk = None")
    assert plan["sdk"] == "v2" and plan["job"]["type"] == "command"
    for flag, message in (("--vscode-service", "--vscode-service needs --sdk v2"),
                          ("--distribution mpi", "--distribution mpi needs --sdk v2")):
        with pytest.raises(Exception, match=message):
            shell.run_line_magic("aml_debug_run", f"--target azureml --sdk v1 --compute c1 {flag} train.py")


def test_importing_and_loading_the_extension_never_imports_azure_ai_ml():
    code = ("import sys, aml_magics, aml_magics.magics, aml_magics.targets, aml_magics.options, aml_magics.cli\n"
            "from IPython.testing.globalipapp import get_ipython\n"
            "ip = get_ipython(); ip.run_line_magic('load_ext', 'aml_magics')\n"
            "print('AZ', sorted(m for m in sys.modules if m.startswith(('azure', 'azureml'))))\n"
            "from aml_magics.azureml.sdk import available; print(available())\n"  # finds, imports no SDK
            "print('SDK', sorted(m for m in sys.modules if m.startswith(('azure.ai.', 'azure.identity', "
            "'azureml.'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "AZ []" in out.stdout and "SDK []" in out.stdout, out.stdout + out.stderr
    assert "'v2': True}" in out.stdout


# -- workspace and credentials ------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test (the credential must fail before a request is sent)."""
    def refuse(self, address):
        raise AssertionError(f"network contacted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


class _FailingCredential:
    """What DefaultAzureCredential raises when no credential in its chain can sign in."""

    def get_token(self, *scopes, **kwargs):
        from azure.identity import CredentialUnavailableError

        raise CredentialUnavailableError("DefaultAzureCredential failed to retrieve a token from the included "
                                         "credentials.\nAttempted credentials:\n\tEnvironmentCredential: ...")

    def get_token_info(self, *scopes, **kwargs):
        return self.get_token(*scopes)


def test_ml_client_from_config_and_explicit_ids_offline(tmp_path, monkeypatch, no_network):
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    config = write_workspace_config(tmp_path)
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    backend = MLClientBackend()
    assert isinstance(backend.credential(), DefaultAzureCredential)
    client = backend.open_workspace(settings.locate_workspace(None, deep))  # the same lookup as from_config()
    assert isinstance(client, MLClient) and backend.open_workspace(settings.locate_workspace(None, deep)) is client
    assert (client.subscription_id, client.resource_group_name, client.workspace_name) == (
        WORKSPACE["subscription_id"], WORKSPACE["resource_group"], WORKSPACE["workspace_name"])
    ref = settings.locate_workspace(None, tmp_path, explicit=settings.explicit_workspace(
        "00000000-0000-0000-0000-0000000000aa", "rg2", "ws2"))
    other = backend.open_workspace(ref)
    assert (other.subscription_id, other.resource_group_name, other.workspace_name) == (
        "00000000-0000-0000-0000-0000000000aa", "rg2", "ws2")
    assert config.is_file()


def test_authentication_failure_through_a_real_ml_client_is_one_line(tmp_path, monkeypatch, no_network):
    write_workspace_config(tmp_path)
    backend = MLClientBackend()
    monkeypatch.setattr(backend, "credential", lambda: _FailingCredential())
    client = backend.open_workspace(settings.locate_workspace(None, tmp_path))
    with pytest.raises(TargetError) as info:
        backend.check_compute(client, "cpu-cluster", "ws-debug")  # the first request: its token fails
    assert str(info.value) == ("Azure ML: authentication failed while trying to get compute cpu-cluster of workspace "
                               "ws-debug: DefaultAzureCredential failed to retrieve a token from the included "
                               "credentials. (sign in with `az login`, or use a service principal)")


@pytest.mark.parametrize("argv, message", [
    # none at all: the simulator uses a simulated workspace, the service refuses (test_sdk_v2_path)
    (["--subscription", "00000000-0000-0000-0000-000000000001", "--workspace", "w"],
     "--subscription, --resource-group and --workspace go together (missing: --resource-group)"),
    (["--subscription", "abc", "--resource-group", "g", "--workspace", "w"], "--subscription 'abc' is not a subscr"),
    (["--workspace-config", "x.json", "--subscription", "00000000-0000-0000-0000-000000000001",
      "--resource-group", "g", "--workspace", "w"], "give either --workspace-config or --subscription"),
])
def test_workspace_errors_are_one_line(tmp_path, monkeypatch, capsys, argv, message):
    use_simulator(monkeypatch, tmp_path / "sim")
    monkeypatch.setattr(settings, "NBVM_FILE", tmp_path / "no-nbvm")
    monkeypatch.chdir(tmp_path)
    write_project(tmp_path / "proj")
    assert cli.main(["run", "proj/train.py", *V2, "--compute", "cpu-cluster", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_explicit_workspace_ids_for_both_sdks(tmp_path, monkeypatch, capsys, version):
    if version == "v1":
        pytest.importorskip("azureml.core")
    use_simulator(monkeypatch, tmp_path / "sim")
    monkeypatch.chdir(tmp_path)
    write_project(tmp_path / "proj")  # and no config.json anywhere
    assert cli.main(["run", "proj/train.py", "--target", "azureml", "--sdk", version, "--compute", "cpu-cluster",
                     "--subscription", WORKSPACE["subscription_id"], "--resource-group", "rg-x", "--workspace", "ws-x",
                     "--dry-run", "--output", "json"]) == 0
    workspace = json.loads(capsys.readouterr().out)["workspace"]
    assert workspace == {"workspace_name": "ws-x", "resource_group": "rg-x", "subscription_id": WORKSPACE["subscription_id"],
                         "config": None, "found_by": "--subscription/--resource-group/--workspace"}


def test_compute_instance_workspace_without_subscription_needs_ids(tmp_path, monkeypatch):
    monkeypatch.delenv("AML_MAGICS_AZUREML_BACKEND", raising=False)
    ref = settings.WorkspaceRef("ws-ci", "rg-ci", None, None, "compute instance ci")
    with pytest.raises(TargetError, match="workspace ws-ci .compute instance ci.: its subscription is not known"):
        get_v2_backend().open_workspace(ref)


# -- against the simulated v2 control plane ---------------------------------------------------




def _last_job():
    return list(get_v2_simulator().runs.values())[-1]


def test_breakpoint_through_launch_json_with_the_vscode_service(shell, project, monkeypatch, node_namespace):
    node = use_simulated_node(monkeypatch, project, node_namespace)
    run = shell.run_line_magic("aml_debug_run", "--target azureml --sdk v2 --compute cpu-cluster --experiment e2e "
                               "--vscode-service --port 0 --timeout 60 proj/train.py -- --lr 0.1")
    assert run.target == "azureml" and "simulated Azure ML, SDK v2" in run.description
    endpoint, config = wait_for_the_debugger(run, node)
    job = _last_job()
    assert Path(endpoint.cwd, "train.py").is_file() and Path(endpoint.cwd, NODE_ENTRY).is_file()
    assert job.experiment == "e2e" and job.command.startswith(f"python {NODE_ENTRY} --port 0 --bind node")
    assert "user_logs/std_log.txt" in job.get_details()["logFiles"]
    wait_for(lambda: "VS Code on the node: https://" in run.description, 15, "the VS Code service URL")
    assert f"aml_magics: VS Code service: {job.service_url(VSCODE_SERVICE, 0)}" in run.logs
    from aml_magics.views import render_text
    from aml_magics.views.widget import DebugRunPanel

    assert job.service_url(VSCODE_SERVICE, 0) in render_text(run)  # beside the endpoint, in both views
    assert job.service_url(VSCODE_SERVICE, 0) in DebugRunPanel(run).header_html.value

    debug_to_the_end(run, config, project)
    assert_completed_history(job.history)
    assert "aml_magics: job page: file://" in run.logs
    if node_namespace is None:
        assert not port_is_listening("127.0.0.1", endpoint.port)


def test_cancel_goes_through_begin_cancel(shell, project, monkeypatch, node_namespace):
    use_simulated_node(monkeypatch, project, node_namespace)
    run = shell.run_line_magic("aml_debug_run", "--target azureml --sdk v2 --compute cpu-cluster --port 0 "
                               "--timeout 120 proj/train.py")
    run.wait_for_endpoint(60)
    job = _last_job()
    shell.run_line_magic("aml_cancel", run.id)
    assert run.wait(20) == "canceled" and run.detail.startswith("canceled by user after ")
    assert job.get_status() == "Canceled" and "CancelRequested" in job.history
    assert f"cancel requested for Azure ML run {job.id}" in run.logs
    assert all(p.poll() is not None for p in job._processes)


def test_failed_job_reports_the_service_error_and_exit_code(project, monkeypatch):
    use_simulator(monkeypatch, project / "sim")
    write_project(project / "proj", "import os, sys\nprint('job', os.environ['AZUREML_RUN_ID'])\nsys.exit(3)\n",
                  name="fail.py")
    assert cli.main(["run", "proj/fail.py", *V2, "--compute", "cpu-cluster", "--no-debug"]) == 3
    job = _last_job()
    assert f"job {job.id}" in (job.dir / "user_logs" / "std_log.txt").read_text()
    backend = get_v2_backend()
    client = backend.open_workspace(settings.locate_workspace(None, project))
    details = backend.job_details(client, job.id)  # the run-history details, as the monitor reads them
    assert details["status"] == "Failed" and "exited with status code 3" in details["error"]["error"]["message"]


@pytest.mark.parametrize("kind", ["pytorch", "mpi"])
def test_distributed_job_reports_an_endpoint_per_rank(project, monkeypatch, kind):
    use_simulator(monkeypatch, project / "sim")
    import aml_magics

    run = aml_magics.submit("proj/train.py", target="azureml", sdk="v2", compute="cpu-cluster", procs_per_node=2,
                            distribution=kind, port=0, timeout=1, wait=True)
    assert run.state == "completed"
    assert sorted(e.rank for e in run.endpoints) == [0, 1]  # each rank from its launcher's variables
    job = _last_job()
    assert job.distribution == kind
    assert sorted(job.get_details()["logFiles"])[-2:] == ["user_logs/std_log_process_0.txt",
                                                          "user_logs/std_log_process_1.txt"]
    assert "[rank 1] " in run.logs


def test_registered_environment_is_fetched_and_gets_debugpy(project, monkeypatch, capsys):
    use_simulator(monkeypatch, project / "sim")
    code = cli.main(["run", "proj/train.py", *V2, "--compute", "cpu-cluster", "--environment",
                     "AzureML-sklearn-1.5:1", "--port", "0", "--timeout", "0"])
    assert code == 0
    job = _last_job()
    assert job.submitted.pip_packages == ["debugpy>=1.8.1"]  # read back from the submitted Docker build context
    build_log = (job.dir / "azureml-logs" / "20_image_build_log.txt").read_text()
    assert "WARNING" not in build_log
    assert "a Docker build FROM it pip-installs debugpy>=1.8.1" in capsys.readouterr().out


@pytest.mark.parametrize("setup, message", [
    ({"AML_MAGICS_SIM_AUTH": "fail"}, "Azure ML: authentication failed while trying to get compute cpu-cluster of "
                                      "workspace ws-debug: (simulated) DefaultAzureCredential failed"),
    ({"compute": "no-such"}, "compute 'no-such' not found in workspace ws-debug (computes: cpu-cluster, gpu-cluster)"),
    ({"environment": "NoSuchEnv:2"}, "Azure ML: could not get environment NoSuchEnv:2: (ResourceNotFound) "
                                     "Environment NoSuchEnv:2 was not found"),
])
def test_service_errors_are_one_line_and_nothing_is_submitted(project, monkeypatch, capsys, setup, message):
    use_simulator(monkeypatch, project / "sim")
    argv = ["run", "proj/train.py", *V2, "--compute", setup.get("compute", "cpu-cluster")]
    if "environment" in setup:
        argv += ["--environment", setup["environment"]]
    for key, value in setup.items():
        if key.startswith("AML_"):
            monkeypatch.setenv(key, value)
    before = len(get_v2_simulator().runs)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert len(get_v2_simulator().runs) == before


def test_dry_run_shows_the_job_as_azure_ai_ml_would_submit_it(project, monkeypatch, capsys):
    import yaml

    use_simulator(monkeypatch, project / "sim")
    argv = ["run", "proj/train.py", *V2, "--compute", "gpu-cluster", "--experiment", "exp1", "--pip", "torch",
            "--vscode-service", "--dry-run"]
    assert cli.main([*argv, "--output", "json", "--", "--epochs", "2"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["backend"] == "simulated Azure ML (SDK v2)" and plan["submitted"] is False and plan["sdk"] == "v2"
    assert plan["workspace"]["workspace_name"] == WORKSPACE["workspace_name"]
    assert plan["snapshot_files"] == [f"{NODE_FOLDER}/", "train.py"]
    job = plan["job"]
    assert job["type"] == "command" and job["compute"] == "azureml:gpu-cluster" and job["experiment_name"] == "exp1"
    assert shlex.split(job["component"]["command"])[-4:] == ["--", "train.py", "--epochs", "2"]
    assert {"torch", "debugpy>=1.8.1"} <= set(_pip(job["environment"]["conda_file"]))
    ssh = job["services"].pop(SSH_SERVICE)  # --connect auto: the proxy route's way in, with a public key only
    assert job["services"] == {VSCODE_SERVICE: {"type": "vs_code"}}
    assert ssh["type"] == "ssh" and ssh["ssh_public_keys"].startswith("ssh-ed25519 ")
    assert plan["ssh_service"]["ssh_public_keys"] == ssh["ssh_public_keys"] and plan["ssh_service"]["user"] == "azureuser"
    assert "PRIVATE KEY" not in json.dumps(plan)
    job["services"][SSH_SERVICE] = ssh
    assert yaml.safe_load(plan["job_yaml"]) == job
    assert not (project / "sim" / "runs").exists() and not Path(job["component"]["code"]).exists()
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "nothing was submitted" in text and "job (YAML, as azure-ai-ml would submit it):" in text
    assert "  type: command" in text and "This is an experimental class" not in text
    assert "ssh_public_keys: ssh-ed25519 " in text and "PRIVATE KEY" not in text
    assert cli.main([*argv, "--connect", "direct", "--output", "json"]) == 0
    assert SSH_SERVICE not in json.loads(capsys.readouterr().out)["job"]["services"]


def test_connect_option_from_the_cli_the_magic_and_config(shell, project, monkeypatch, capsys):
    use_simulator(monkeypatch, project / "sim")
    assert cli.main(["run", "proj/train.py", *V2, "--compute", "cpu-cluster", "--connect", "nowhere"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--connect" in err and "'nowhere'" in err and len(err.splitlines()) == 1
    assert cli.main(["run", "proj/train.py", *V2, "--compute", "cpu-cluster", "--connect", "proxy", "--insecure"]) == 2
    assert capsys.readouterr().err.strip().endswith("--connect proxy carries the authenticated tunnel; it cannot be "
                                                    "used with --insecure")
    shell.run_line_magic("config", "AmlDebugMagics.connect = 'nowhere'")  # refused in one line, default kept
    assert shell.run_line_magic("config", "AmlDebugMagics.connect") is None
    shell.run_line_magic("config", "AmlDebugMagics.connect = 'direct'")
    try:
        plan = shell.run_line_magic("aml_debug_run", f"{' '.join(V2)} --compute cpu-cluster "
                                    "--dry-run proj/train.py")
    finally:
        shell.run_line_magic("config", "AmlDebugMagics.connect = None")
    assert plan["ssh_service"] is None and SSH_SERVICE not in plan["job"].get("services", {})
    plan = shell.run_line_magic("aml_debug_run", f"{' '.join(V2)} --compute cpu-cluster --nodes 2 "
                                "--connect proxy --dry-run proj/train.py")
    assert plan["job"]["services"][SSH_SERVICE]["nodes"] == "all"  # every node: each rank's node is reached
