"""The docker target against a real Docker engine.

The base image is the one `.ci/docker-engine.sh` makes (a debootstrapped Debian with
python3, since no registry is reachable from CI), given through the same --base-image
option a user has. The tests skip with a reason where there is no engine; with
AML_MAGICS_REQUIRE_DOCKER=1 (set by CI) a missing engine is a failure instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import BREAK_LINE, CELL, DOCKER_BASE, build_test_image, busy_port, free_port

docker = pytest.importorskip("docker", reason="the docker SDK is not installed (pip install 'aml-magics[docker]')")

import aml_magics  # noqa: E402
from aml_magics import images  # noqa: E402
from aml_magics.errors import TargetError  # noqa: E402
from aml_magics.options import OptionsError  # noqa: E402
from aml_magics.run import RunFailed  # noqa: E402
from aml_magics.spec import EnvironmentSpec  # noqa: E402
from aml_magics.targets import make_target  # noqa: E402
from aml_magics.targets.docker import gpu_requests  # noqa: E402
from aml_magics.testing.dap import attach_with_launch_config  # noqa: E402


def _states(run) -> list[str]:
    seen: list[str] = []
    run.subscribe(lambda r, what: seen.append(r.state) if what == "state" else None)
    return seen


def _attach_and_finish(run, script: Path, workdir: Path) -> None:
    endpoint = run.wait_for_endpoint(120)
    assert endpoint.host == "127.0.0.1" and endpoint.cwd == "/app"
    container = run._handle.container
    # the container's relay, published on loopback, reached through the owner's TLS forwarder
    assert endpoint.tunnelled and endpoint.node_address == f"127.0.0.1:{container.ports['5678/tcp'][0]['HostPort']}"
    assert container.ports["5678/tcp"][0]["HostIp"] == "127.0.0.1"  # never all interfaces
    assert container.attrs["HostConfig"]["DeviceRequests"] in (None, [])  # no --gpus unless asked
    assert container.labels["aml_magics"] == "1"
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    assert mounts["/app"]["Source"] == str(run.spec.source_dir) and mounts["/app"]["RW"] is True
    config = run.launch_config()
    assert config["connect"] == {"host": "127.0.0.1", "port": endpoint.port}
    mapping = config["pathMappings"][0]
    assert mapping["remoteRoot"] == "/app"
    client = attach_with_launch_config(config, {str(script): [BREAK_LINE]}, workspace_folder=str(workdir))
    try:
        stop = client.wait_stopped(60)
        assert stop.reason == "breakpoint"
        assert Path(stop.path) == script and stop.line == BREAK_LINE  # the LOCAL copy: pathMappings work
        assert client.variables_of(stop.frame_id)["total"] == "10"
        client.continue_(stop.thread_id)
        assert run.wait(60) == "completed", run.detail
    finally:
        client.close()
    assert run.exit_code == 0


@pytest.mark.docker
def test_api_breakpoint_in_local_copy_through_launch_config(engine, workdir, no_container_left):
    src = workdir / "project"
    src.mkdir()
    script = src / "train.py"
    script.write_text(CELL)
    run = aml_magics.submit(str(script), target="docker", base_image=DOCKER_BASE, timeout=60, args=["--lr", "0.1"])
    assert run.target == "docker"
    _attach_and_finish(run, script, workdir)
    assert "total=10 ['--lr', '0.1']" in run.logs
    assert "Debugger attached = True" in run.logs
    assert run.attached is True
    assert not (src / "node").exists() and not (src / "aml_magics_node").exists() and not (src / "__pycache__").exists()


@pytest.mark.docker
def test_magic_cell_runs_in_docker_and_same_env_reuses_the_image(shell, engine, workdir, no_container_left):
    line = f"--target docker --base-image {DOCKER_BASE} --name dcell --timeout 60"
    run = shell.run_cell_magic("aml_debug_run", line, CELL)
    script = workdir / ".aml_magics" / "cells" / "dcell.py"
    assert script.read_text() == CELL
    _attach_and_finish(run, script, workdir)
    config = run.launch_config()
    assert config["pathMappings"][0]["localRoot"] == "${workspaceFolder}/.aml_magics/cells"

    again = shell.run_cell_magic("aml_debug_run", line.replace("60", "0"), "print('second run')\n")
    states = _states(again)
    assert again.wait(60) == "completed", again.detail
    assert "second run" in again.logs
    assert "aml_magics: reusing image aml-magics/env:" in again.logs
    assert "building image" not in again.logs and "Step 1/" not in again.logs
    assert "building" not in states


@pytest.mark.docker
def test_changed_dependency_rebuilds_and_is_installed(engine, workdir, no_container_left):
    env = EnvironmentSpec(pip=("six==1.17.0",), base_image=DOCKER_BASE)
    tag = images.image_tag(env, DOCKER_BASE, engine.images.get(DOCKER_BASE).id)
    _remove_image(engine, tag)  # make sure this run has to build it
    (workdir / "uses_six.py").write_text("import six\nprint('six', six.__version__, six.__file__)\n")

    run = aml_magics.submit("uses_six.py", target="docker", base_image=DOCKER_BASE, pip=["six==1.17.0"], timeout=0)
    states = _states(run)
    assert run.wait(240) == "completed", run.detail + "\n" + run.logs[-3000:]
    assert f"aml_magics: building image {tag}" in run.logs
    assert "Step 1/" in run.logs  # the build log streamed line by line
    assert "six 1.17.0 /aml_magics/venv/" in run.logs
    assert "building" in states or "building" in run.logs
    labels = engine.images.get(tag).labels
    assert labels["aml_magics"] == "1" and labels["aml_magics.deps"] == "six==1.17.0"

    again = aml_magics.submit("uses_six.py", target="docker", base_image=DOCKER_BASE, pip=["six==1.17.0"], timeout=0)
    assert again.wait(60) == "completed", again.detail
    assert f"aml_magics: reusing image {tag}" in again.logs


@pytest.mark.docker
def test_cancel_while_waiting_for_a_debugger_removes_the_container(engine, workdir, no_container_left):
    (workdir / "wait.py").write_text("print('never reached')\n")
    run = aml_magics.submit("wait.py", target="docker", base_image=DOCKER_BASE, timeout=120, name="tocancel")
    run.wait_for_endpoint(120)
    container_id = run._handle.container.id
    assert engine.containers.get(container_id).status == "running"
    run.cancel()
    assert run.state == "canceled"
    assert "never reached" not in run.logs
    with pytest.raises(docker.errors.NotFound):
        engine.containers.get(container_id)
    assert not engine.containers.list(all=True, sparse=True, filters={"label": "aml_magics.run=tocancel"})


@pytest.mark.docker
def test_cancel_during_the_build_leaves_no_container(engine, workdir, no_container_left):
    env = EnvironmentSpec(pip=("idna==3.7",), base_image=DOCKER_BASE)
    _remove_image(engine, images.image_tag(env, DOCKER_BASE, engine.images.get(DOCKER_BASE).id))
    (workdir / "job.py").write_text("print('never reached')\n")
    run = aml_magics.submit("job.py", target="docker", base_image=DOCKER_BASE, pip=["idna==3.7"], timeout=120)
    deadline = time.monotonic() + 120
    while "Step 1/" not in run.logs and not run.done and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.state == "building", run.logs[-2000:]
    run.cancel()
    assert run.state == "canceled"
    assert "never reached" not in run.logs


@pytest.mark.docker
def test_unload_ext_removes_the_container(shell, engine, workdir, no_container_left):
    run = shell.run_cell_magic("aml_debug_run",
                               f"--target docker --base-image {DOCKER_BASE} --name unload --timeout 120",
                               "print('never reached')\n")
    run.wait_for_endpoint(120)
    container_id = run._handle.container.id
    shell.run_line_magic("unload_ext", "aml_magics")
    shell.run_line_magic("load_ext", "aml_magics")  # for the fixture's own unload
    assert run.state == "canceled"
    with pytest.raises(docker.errors.NotFound):
        engine.containers.get(container_id)


@pytest.mark.docker
def test_interpreter_exit_removes_the_container(engine, workdir, no_container_left):
    (workdir / "wait.py").write_text("print('never reached')\n")
    code = (
        "import aml_magics\n"
        f"run = aml_magics.submit('wait.py', target='docker', base_image={DOCKER_BASE!r}, timeout=120, name='atexit')\n"
        "run.wait_for_endpoint(120)\n"
        "print('CID', run._handle.container.id, flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": str(Path(aml_magics.__file__).parent.parent)})
    assert done.returncode == 0, done.stderr[-2000:]
    container_id = done.stdout.split("CID ", 1)[1].split()[0]
    with pytest.raises(docker.errors.NotFound):
        engine.containers.get(container_id)


@pytest.mark.docker
def test_container_dying_before_the_endpoint_fails_with_its_log_tail(engine, workdir, no_container_left):
    # A module that shadows debugpy: the bootstrap dies before it can listen.
    (workdir / "debugpy.py").write_text("raise RuntimeError('boom: a local debugpy.py shadows the real one')\n")
    (workdir / "job.py").write_text("print('not reached')\n")
    run = aml_magics.submit("job.py", target="docker", base_image=DOCKER_BASE, timeout=30, env={"PYTHONPATH": "/app"})
    with pytest.raises(RunFailed, match="before reporting a debug endpoint"):
        run.wait_for_endpoint(120)
    assert run.wait(30) == "failed"
    assert run.exit_code == 1
    assert "boom: a local debugpy.py shadows the real one" in run.detail  # the log tail


@pytest.mark.docker
def test_failed_build_reports_the_build_log_tail(engine, workdir, no_container_left):
    (workdir / "job.py").write_text("print('not reached')\n")
    run = aml_magics.submit("job.py", target="docker", base_image=DOCKER_BASE, timeout=0, wheels="host",
                            pip=["aml-magics-no-such-package-xyz==0.0.1"])
    assert run.wait(180) == "failed"
    assert "pip download on the host failed" in run.detail
    assert "aml-magics-no-such-package-xyz" in run.detail  # pip's own words, from the log tail
    assert run.endpoints == []


@pytest.mark.docker
def test_failing_build_step_reports_the_build_log_tail(engine, workdir, no_container_left):
    # A stripped base image whose Python lacks the venv module: the recipe's venv step fails in the build.
    broken = "aml-magics-test-broken:novenv"
    recipe = f'FROM {DOCKER_BASE}\nLABEL aml_magics=1\nRUN ["rm", "-rf", "/usr/lib/python3.11/venv"]\n'
    build_test_image(engine, recipe, broken)
    try:
        (workdir / "job.py").write_text("print('not reached')\n")
        run = aml_magics.submit("job.py", target="docker", base_image=broken, timeout=0)
        assert run.wait(180) == "failed"
        assert run.detail.startswith("image build failed"), run.detail
        assert "last lines of the build log" in run.detail and "No module named venv" in run.detail
        assert "\x1b[" not in run.logs
    finally:
        _remove_image(engine, broken)


@pytest.mark.docker
def test_conda_needs_a_base_image_with_conda(engine, workdir, no_container_left):
    (workdir / "environment.yml").write_text("name: demo\ndependencies:\n  - python=3.11\n")
    (workdir / "job.py").write_text("print('not reached')\n")
    run = aml_magics.submit("job.py", target="docker", base_image=DOCKER_BASE, timeout=0, conda="environment.yml")
    assert run.wait(120) == "failed"
    assert "--conda needs a base image with conda" in run.detail


@pytest.mark.docker
def test_explicit_host_port_is_used_and_a_busy_one_is_named(engine, workdir, no_container_left):
    (workdir / "job.py").write_text("print('ok')\n")
    with busy_port() as busy:
        run = aml_magics.submit("job.py", target="docker", base_image=DOCKER_BASE, timeout=0, port=busy)
        assert run.wait(120) == "failed"
        assert run.detail.startswith(f"port {busy} on 127.0.0.1 is already in use"), run.detail
    free = free_port()
    run = aml_magics.submit("job.py", target="docker", base_image=DOCKER_BASE, timeout=0, port=free)
    assert run.wait(120) == "completed", run.detail
    assert run.endpoints[0].node_address == f"127.0.0.1:{free}"


@pytest.mark.docker
def test_missing_base_image_that_cannot_be_pulled_fails_clearly(engine, workdir, no_container_left):
    (workdir / "job.py").write_text("print('not reached')\n")
    run = aml_magics.submit("job.py", target="docker", base_image="localhost:1/aml-magics/absent:none", timeout=0)
    assert run.wait(120) == "failed"
    assert "cannot be pulled" in run.detail and "--base-image" in run.detail


@pytest.mark.docker
def test_aml_images_lists_and_removes_only_our_images(shell, engine, workdir, capsys):
    env = EnvironmentSpec(pip=("six==1.17.0",), base_image=DOCKER_BASE)
    tag = images.image_tag(env, DOCKER_BASE, engine.images.get(DOCKER_BASE).id)
    if not _image_exists(engine, tag):
        ensured = images.ensure_image(engine, env, base=DOCKER_BASE, wheels=None, log=lambda _: None)
        assert ensured == tag
    shell.run_line_magic("aml_images", "")
    listing = capsys.readouterr().out
    assert tag in listing and DOCKER_BASE in listing and "six==1.17.0" in listing

    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match="usage: %aml_images"):
        shell.run_line_magic("aml_images", "--bogus")
    shell.run_line_magic("aml_images", f"--remove {tag}")
    assert f"removed {tag}" in capsys.readouterr().out
    assert not _image_exists(engine, tag)

    images.ensure_image(engine, env, base=DOCKER_BASE, wheels=None, log=lambda _: None)
    shell.run_line_magic("aml_images", "--remove-unused")
    out = capsys.readouterr().out
    assert tag in out and not _image_exists(engine, tag)
    assert _image_exists(engine, DOCKER_BASE)  # the base image is not an environment image: kept


RANKED = """\
import os
rank = int(os.environ["RANK"])
value = rank * 10 + 1
env = os.environ
print(f"value={value} world={env['WORLD_SIZE']} local={env['LOCAL_RANK']} node={env['NODE_RANK']} "
      f"master={env['MASTER_ADDR']}:{env['MASTER_PORT']}")
"""
RANKED_BREAK = 4  # env = ...: value is set there


@pytest.mark.docker
def test_two_processes_in_one_container_each_rank_debugged(engine, workdir, no_container_left):
    run = aml_magics.submit(code=RANKED, name="dddp", target="docker", base_image=DOCKER_BASE, procs_per_node=2,
                            timeout=60)
    deadline = time.monotonic() + 120
    while len(run.endpoints) < 2 and not run.done and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(run.endpoints) == 2, run.logs[-2000:]
    container = run._handle.container
    assert len(engine.containers.list(sparse=True, filters={"label": "aml_magics.run=dddp"})) == 1
    for rank in (0, 1):
        (binding,) = container.ports[f"{5678 + rank}/tcp"]
        assert binding["HostIp"] == "127.0.0.1"  # each rank's port on loopback only
        endpoint = next(e for e in run.endpoints if e.rank == rank)
        assert endpoint.node_address == f"127.0.0.1:{binding['HostPort']}"  # through its own forwarder
        assert run.launch_config(rank=rank)["connect"] == {"host": "127.0.0.1", "port": endpoint.port}
    fragment = run.launch_json()
    configs = {c["name"]: c for c in fragment["configurations"]}
    (compound,) = fragment["compounds"]
    assert compound["configurations"] == ["dddp rank 0", "dddp rank 1"]
    script = workdir / ".aml_magics" / "cells" / "dddp.py"
    clients = [attach_with_launch_config(configs[name], {str(script): [RANKED_BREAK]}, workspace_folder=str(workdir))
               for name in compound["configurations"]]
    try:
        seen = {}
        for rank, client in enumerate(clients):
            stop = client.wait_stopped(60)
            assert stop.reason == "breakpoint"
            assert Path(stop.path) == script and stop.line == RANKED_BREAK
            seen[rank] = (client.variables_of(stop.frame_id)["value"], client.evaluate("os.environ['RANK']",
                                                                                       stop.frame_id))
        assert seen == {0: ("1", "'0'"), 1: ("11", "'1'")}
        for client in clients:
            client.continue_()
        assert run.wait(60) == "completed", run.detail
    finally:
        for client in clients:
            client.close()
    assert [s.state for s in run.ranks] == ["completed"] * 2
    for rank in (0, 1):
        line = next(x for x in run.logs.splitlines() if x.startswith(f"[rank {rank}] value="))
        assert f"value={rank * 10 + 1} world=2 local={rank} node=0 master=127.0.0.1:" in line


@pytest.mark.docker
def test_procs_in_one_container_debug_ranks_and_a_failing_rank(engine, workdir, no_container_left):
    code = RANKED + "if rank == 1:\n    raise SystemExit(3)\n"
    run = aml_magics.submit(code=code, name="dfail", target="docker", base_image=DOCKER_BASE, procs_per_node=2,
                            debug_ranks=[0], timeout=0)
    assert run.wait(120) == "failed"
    assert run.detail.startswith("rank 1 failed (exit code 3)"), run.detail
    assert [e.rank for e in run.endpoints] == [0]
    assert list(run._handle.host_ports) == [5678]  # rank 1 has no debugger: nothing published for it
    assert "[rank 1] aml_magics: rank 1 runs without a debugger" in run.logs
    assert "[rank 0] value=1 world=2" in run.logs


@pytest.mark.docker
def test_cancel_of_several_processes_removes_the_one_container(engine, workdir, no_container_left):
    run = aml_magics.submit(code="print('never reached')\n", name="dcancel", target="docker", base_image=DOCKER_BASE,
                            procs_per_node=2, timeout=120)
    deadline = time.monotonic() + 120
    while len(run.endpoints) < 2 and not run.done and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(e.rank for e in run.endpoints) == [0, 1]
    container_id = run._handle.container.id
    run.cancel()
    assert run.state == "canceled"
    assert "never reached" not in run.logs
    with pytest.raises(docker.errors.NotFound):
        engine.containers.get(container_id)


# -- no engine needed --------------------------------------------------------------------
def test_unreachable_daemon_is_one_clear_line(workdir, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")
    (workdir / "job.py").write_text("print(1)\n")
    with pytest.raises(OptionsError) as info:
        aml_magics.submit("job.py", target="docker", timeout=0)
    message = str(info.value)
    assert "\n" not in message
    assert "DOCKER_HOST" in message and "tcp://127.0.0.1:1" in message and "Connection refused" in message


def test_nodes_above_one_on_docker_is_one_line(workdir):
    (workdir / "job.py").write_text("print(1)\n")
    with pytest.raises(OptionsError) as info:
        aml_magics.submit("job.py", target="docker", nodes=2, procs_per_node=2, timeout=0)
    assert "\n" not in str(info.value) and "--nodes 2: target 'docker' runs one container" in str(info.value)


def test_missing_docker_sdk_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "docker", None)  # as if not installed
    from aml_magics.install import install_command

    with pytest.raises(TargetError) as info:
        make_target("docker")
    assert str(info.value) == f"target 'docker' needs the docker SDK: {install_command('docker')}"


def test_gpus_only_when_asked():
    assert gpu_requests(None) == [] and gpu_requests("") == []
    (request,) = gpu_requests("all")
    assert request["Count"] == -1 and request["Capabilities"] == [["gpu"]]
    assert gpu_requests("2")[0]["Count"] == 2
    assert gpu_requests("device=0,1")[0]["DeviceIDs"] == ["0", "1"]
    with pytest.raises(TargetError, match="--gpus"):
        make_target("docker", gpus="lots")


def test_host_wheels_recipe_needs_no_network_nor_pip_in_the_image():
    env = EnvironmentSpec(pip=("six",), requirements="idna\n")
    recipe = images.dockerfile("sha256:abc", env, "/usr/bin/python3", images.WHEELS_HOST, "pip-24.0-py3-none-any.whl",
                               {"aml_magics.base": "x"})
    assert recipe.startswith("FROM sha256:abc\nLABEL aml_magics=\"1\" aml_magics.base=\"x\"\n")
    assert "--without-pip" in recipe and '"--no-index"' in recipe
    assert '"/aml_magics/wheels/pip-24.0-py3-none-any.whl/pip"' in recipe
    assert '"-r", "/aml_magics/requirements.txt"' in recipe and '"six"' in recipe
    index = images.dockerfile("b", env, "python3", images.WHEELS_INDEX, None)
    assert "--no-index" not in index and '"-m", "pip", "install"' in index
    assert "USER" not in index
    as_user = images.dockerfile("b", env, "python3", images.WHEELS_INDEX, None, user="azureuser")
    assert as_user.splitlines()[2] == "USER root" and as_user.splitlines()[-1] == "USER azureuser"


def test_image_tag_covers_everything_that_goes_in():
    env = EnvironmentSpec(pip=("six",))
    tag = images.image_tag(env, "base:1", "sha256:1")
    assert tag.startswith("aml-magics/env:")
    assert tag == images.image_tag(EnvironmentSpec(pip=("six",)), "base:1", "sha256:1")
    assert tag != images.image_tag(EnvironmentSpec(pip=("idna",)), "base:1", "sha256:1")
    assert tag != images.image_tag(env, "base:1", "sha256:2")  # base re-imported / re-pulled
    assert tag != images.image_tag(env, "base:2", "sha256:1")


def test_platform_tags_for_manylinux_and_musl():
    glibc = images.ImagePython("/usr/bin/python3", (3, 11), "cpython", "x86_64", "glibc", "2.36")
    tags = glibc.platforms()
    assert tags[0] == "manylinux_2_36_x86_64" and "manylinux2014_x86_64" in tags and tags[-1] == "linux_x86_64"
    assert glibc.abis() == ["cp311", "abi3", "none"]
    musl = images.ImagePython("/usr/bin/python3", (3, 12), "cpython", "aarch64", "musl", "")
    assert musl.platforms()[0] == "musllinux_1_2_aarch64"


def _image_exists(client, ref: str) -> bool:
    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def _remove_image(client, ref: str) -> None:
    if _image_exists(client, ref):
        client.images.remove(ref, force=True)


def test_docker_engine_script_is_valid_bash():
    script = Path(__file__).resolve().parent.parent / ".ci" / "docker-engine.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
