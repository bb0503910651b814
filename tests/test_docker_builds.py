"""Image builds leave nothing behind, and cleaning up touches only what is ours (a real engine).

A failed, canceled or killed build removes its intermediate images (untagged, labelled with
the build's id and its owner) and its temp folder — a SIGKILL-ed owner's leftovers are swept
by the next build. Canceling a run stops its ``pip download``. ``%aml_images --remove-unused``
removes only this user's images, never one a run is about to start a container from. The
image cache key does not depend on how ``--pip`` was spelled.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import DOCKER_BASE, build_test_image, wait_for

docker = pytest.importorskip("docker", reason="the docker SDK is not installed (pip install 'aml-magics[docker]')")

import aml_magics  # noqa: E402
from aml_magics import images  # noqa: E402
from aml_magics.images.owners import build_folder_prefix, sweep_build_folders  # noqa: E402
from aml_magics.spec import EnvironmentSpec  # noqa: E402

ROOT = str(Path(aml_magics.__file__).resolve().parent.parent)


def _dangling(engine, pid: int) -> list[dict]:
    """Intermediate images (untagged, no children) of builds owned by ``pid``."""
    return engine.api.images(filters={"dangling": True, "label": f"aml_magics.owner_pid={pid}"})


def _build_folders(pid: int) -> list[Path]:
    return sorted(Path(tempfile.gettempdir()).glob(f"aml-magics-build-{pid}-*"))


def _remove_image(engine, ref: str) -> None:
    try:
        engine.images.remove(ref, force=True)
    except docker.errors.ImageNotFound:
        pass


def _fresh_env(engine, *pip: str) -> str:
    """The tag of an environment made sure not to exist, so a run has to build it."""
    env = EnvironmentSpec(pip=pip, base_image=DOCKER_BASE)
    tag = images.image_tag(env, DOCKER_BASE, engine.images.get(DOCKER_BASE).id)
    _remove_image(engine, tag)
    return tag


@pytest.mark.docker
def test_failed_build_removes_its_intermediate_images_and_temp_folder(engine, workdir, no_container_left):
    # A base whose Python lacks venv: the recipe's steps before the venv step succeed (and are
    # committed as images), then the build fails.
    broken = "aml-magics-test-broken:novenv-builds"
    recipe = f'FROM {DOCKER_BASE}\nRUN ["rm", "-rf", "/usr/lib/python3.11/venv"]\n'
    build_test_image(engine, recipe, broken)
    try:
        (workdir / "job.py").write_text("print('not reached')\n")
        before = {i["Id"] for i in _dangling(engine, os.getpid())}
        run = aml_magics.submit("job.py", target="docker", base_image=broken, timeout=0, pip=["six==1.17.0"])
        assert run.wait(300) == "failed", run.detail
        assert "No module named venv" in run.detail
        assert "Step 3/" in run.logs  # steps were committed before the failure
        assert {i["Id"] for i in _dangling(engine, os.getpid())} == before
        assert _build_folders(os.getpid()) == []
    finally:
        _remove_image(engine, broken)


@pytest.mark.docker
def test_canceled_build_removes_its_intermediate_images_and_temp_folder(engine, workdir, no_container_left):
    _fresh_env(engine, "idna==3.7")
    (workdir / "job.py").write_text("print('never reached')\n")
    before = {i["Id"] for i in _dangling(engine, os.getpid())}
    run = aml_magics.submit("job.py", target="docker", base_image=DOCKER_BASE, pip=["idna==3.7"], timeout=0)
    wait_for(lambda: "Step 4/" in run.logs or run.done, 300, "the build's fourth step")
    assert run.state == "building", run.logs[-2000:]
    run.cancel()
    assert run.state == "canceled"
    assert {i["Id"] for i in _dangling(engine, os.getpid())} == before
    assert _build_folders(os.getpid()) == []


@pytest.mark.docker
def test_killed_build_is_swept_by_the_next_build(engine, workdir, no_container_left):
    tag = _fresh_env(engine, "six==1.16.0")
    (workdir / "job.py").write_text("print('never reached')\n")
    cli = subprocess.Popen([sys.executable, "-m", "aml_magics.cli", "run", "job.py", "--target", "docker",
                            "--base-image", DOCKER_BASE, "--pip", "six==1.16.0", "--timeout", "0"],
                           cwd=workdir, env=dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=ROOT),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(cli.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(x.startswith("Step 4/") for x in lines) or cli.poll() is not None, 300,
                 "the killed build's fourth step")
        assert cli.poll() is None, "".join(lines[-40:])
        cli.kill()
        cli.wait()
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    reader.join(10)
    left = _build_folders(cli.pid)
    assert left, "a SIGKILL-ed build leaves its temp folder (wheels) for the next build to sweep"
    # The daemon ends the build when its client goes; what it committed stays until swept.
    wait_for(lambda: not engine.api.containers(all=True, filters={"label": f"aml_magics.owner_pid={cli.pid}"}), 30,
             "the killed build's step container gone")
    assert _dangling(engine, cli.pid), "the killed build's committed steps are left for the next build to sweep"

    run = aml_magics.submit("job.py", target="docker", base_image=DOCKER_BASE, pip=["six==1.16.0"], timeout=0)
    assert run.wait(300) == "completed", run.detail
    assert f"building image {tag}" in run.logs
    assert _dangling(engine, cli.pid) == []
    assert not any(path.exists() for path in left)


def test_build_folder_sweep_keeps_a_live_owners_folder(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = tmp_path / (build_folder_prefix() + "live")
    mine.mkdir()
    other = tmp_path / f"aml-magics-build-{dead.pid}-12345-{build_folder_prefix().split('-')[5]}-dead"
    (other / "wheels").mkdir(parents=True)
    unrelated = tmp_path / "aml-magics-build-notours"
    unrelated.mkdir()
    assert sweep_build_folders(str(tmp_path)) == [str(other)]
    assert mine.is_dir() and unrelated.is_dir() and not other.exists()


@pytest.mark.docker
def test_cancel_stops_pip_download(engine, workdir, no_container_left):
    # An index that accepts the connection and never answers: pip download waits on it.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        wheel = f"hang @ http://127.0.0.1:{port}/hang-1.0-py3-none-any.whl"
        (workdir / "job.py").write_text("print('never reached')\n")
        run = aml_magics.submit("job.py", target="docker", base_image=DOCKER_BASE, pip=[wheel], timeout=0)

        def pip_download() -> dict[psutil.Process, list[str]]:
            # pip itself, and the parent-death guard in front of it (whose argv carries pip's)
            found = {}
            for p in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    argv = p.cmdline()
                    if "download" in argv and f"127.0.0.1:{port}" in " ".join(argv):
                        found[p] = argv
            return found

        def pip_itself() -> list[psutil.Process]:
            return [p for p, argv in pip_download().items() if argv[1:3] == ["-m", "pip"]]

        wait_for(lambda: bool(pip_itself()) or run.done, 120, "pip download running")
        assert len(pip_itself()) == 1, run.detail
        started = pip_download()
        wait_for(lambda: len(_build_folders(os.getpid())) == 1, 30, "the build's temp folder")
        run.cancel()
        assert run.state == "canceled"
        assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in started), started
        assert _build_folders(os.getpid()) == []


def _tiny_image(engine, tag: str, labels: dict[str, str]) -> None:
    recipe = f"FROM {DOCKER_BASE}\nLABEL " + " ".join(f'{k}="{v}"' for k, v in labels.items()) + "\n"
    build_test_image(engine, recipe, tag)


def _image_exists(engine, ref: str) -> bool:
    try:
        engine.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


@pytest.mark.docker
def test_remove_unused_touches_only_this_users_images_and_none_about_to_start(engine, workdir, no_container_left):
    suffix = f"{os.getpid()}{int(time.time() * 1000) % 100000}"
    mine, locked, others = (f"{images.IMAGE_REPO}:test-{what}-{suffix}" for what in ("mine", "locked", "others"))
    _tiny_image(engine, mine, {"aml_magics": "1", "aml_magics.owner_uid": str(os.getuid())})
    _tiny_image(engine, locked, {"aml_magics": "1", "aml_magics.owner_uid": str(os.getuid()), "x": "locked"})
    _tiny_image(engine, others, {"aml_magics": "1", "aml_magics.owner_uid": str(os.getuid() + 1)})
    uses = images.ImageUses()
    try:
        uses.take(locked)  # as a run does from before it looks the image up until its container exists
        removed, kept = images.remove_unused(engine)
        assert mine in removed and not _image_exists(engine, mine)
        assert f"{locked} (a run is starting a container from it)" in kept and _image_exists(engine, locked)
        assert others not in removed and _image_exists(engine, others)  # another user's: not looked at
        with pytest.raises(aml_magics.errors.TargetError, match=r"built by another user"):
            images.remove_image(others, engine)
        uses.release()
        removed, _ = images.remove_unused(engine)
        assert locked in removed and not _image_exists(engine, locked)
    finally:
        uses.release()
        for tag in (mine, locked, others):
            _remove_image(engine, tag)


def test_image_tag_ignores_order_and_whitespace_of_pip_values():
    tag = images.image_tag(EnvironmentSpec(pip=("A", "B")), "base:1", "sha256:1")
    assert images.image_tag(EnvironmentSpec(pip=("B", "A")), "base:1", "sha256:1") == tag
    assert images.image_tag(EnvironmentSpec(pip=(" A", "B ", "A")), "base:1", "sha256:1") == tag
    assert images.image_tag(EnvironmentSpec(pip=("A", "C")), "base:1", "sha256:1") != tag


@pytest.mark.docker
def test_image_removed_between_lookup_and_container_is_made_again(engine, workdir, monkeypatch, no_container_left):
    # Someone our lock does not reach (another user's --remove-unused) removes the image right after
    # this run looked it up: the container cannot be created from it; the run makes it again, once.
    from aml_magics.targets.docker import DockerTarget

    looked_up: list[str] = []
    original = DockerTarget.prepare_image

    def prepare_then_lose_it(self, run, spec):
        tag, python = original(self, run, spec)
        if not looked_up:
            _remove_image(engine, tag)
        looked_up.append(tag)
        return tag, python

    monkeypatch.setattr(DockerTarget, "prepare_image", prepare_then_lose_it)
    (workdir / "job.py").write_text("print('ran anyway')\n")
    run = aml_magics.submit("job.py", target="docker", base_image=DOCKER_BASE, timeout=0)
    assert run.wait(300) == "completed", run.detail
    assert len(looked_up) == 2 and looked_up[0] == looked_up[1]
    assert f"aml_magics: image {looked_up[0]} was removed meanwhile; making it again" in run.logs
    assert "ran anyway" in run.logs and _image_exists(engine, looked_up[0])
