"""Containers hold only what they need (issue 13 §4), against a real engine.

A run's container runs as the invoking user's uid:gid, so what it writes in the mounted folder
is the user's; another uid (``--container-user``) works as well, debugger included (its HOME is
a writable /tmp). A source dir that is the home folder, holds it, or is ``/`` is refused in one
line naming ``--mount-any-dir``. (A deployment mounting score.py alone, read-only: test_deploy.py.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import DOCKER_BASE

docker = pytest.importorskip("docker", reason="the docker SDK is not installed (pip install 'aml-magics[docker]')")

import aml_magics  # noqa: E402
from aml_magics.options import OptionsError  # noqa: E402
from aml_magics.testing.dap import attach_with_launch_config  # noqa: E402

WRITER = """\
import os
uid = os.getuid()
with open("written.txt", "w") as handle:
    handle.write(str(uid))
print("uid", uid, "gid", os.getgid(), "home", os.environ["HOME"], "writable", os.access(os.environ["HOME"], os.W_OK))
"""
WRITER_BREAK = 5  # print(...)
OTHER_UID = 4321


@pytest.mark.docker
def test_container_runs_as_the_invoking_user(engine, workdir, no_container_left):
    src = workdir / "project"
    src.mkdir()
    (src / "job.py").write_text(WRITER)
    run = aml_magics.submit(str(src / "job.py"), target="docker", base_image=DOCKER_BASE, timeout=0)
    assert run.wait(120) == "completed", run.detail
    assert run._handle.container.attrs["Config"]["User"] == f"{os.getuid()}:{os.getgid()}"
    assert f"uid {os.getuid()} gid {os.getgid()}" in run.logs
    written = (src / "written.txt").stat()
    assert (written.st_uid, written.st_gid) == (os.getuid(), os.getgid())


@pytest.mark.docker
@pytest.mark.skipif(os.getuid() != 0, reason="giving the test folder to another uid needs root")
def test_another_uid_debugs_and_writes_its_own_files(engine, workdir, no_container_left):
    src = workdir / "project"
    src.mkdir()
    script = src / "job.py"
    script.write_text(WRITER)
    os.chown(src, OTHER_UID, OTHER_UID)  # the folder that uid may write in
    run = aml_magics.submit(str(script), target="docker", base_image=DOCKER_BASE, timeout=120,
                            container_user=f"{OTHER_UID}:{OTHER_UID}")
    endpoint = run.wait_for_endpoint(120)
    assert endpoint.host == "127.0.0.1"
    client = attach_with_launch_config(run.launch_config(), {str(script): [WRITER_BREAK]},
                                       workspace_folder=str(workdir))
    try:
        stop = client.wait_stopped(60)
        assert (Path(stop.path), stop.line) == (script, WRITER_BREAK)
        assert client.variables_of(stop.frame_id)["uid"] == str(OTHER_UID)
        client.continue_(stop.thread_id)
        assert run.wait(60) == "completed", run.detail
    finally:
        client.close()
    assert f"uid {OTHER_UID} gid {OTHER_UID} home /tmp writable True" in run.logs
    assert (src / "written.txt").stat().st_uid == OTHER_UID


def test_home_folder_or_root_as_source_dir_is_refused_in_one_line(workdir, monkeypatch):
    pytest.importorskip("docker")
    home = workdir / "home" / "me"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    (home / "job.py").write_text("print(1)\n")
    (home.parent / "job.py").write_text("print(1)\n")
    cases = [((str(home / "job.py"),), {}, "your home folder"),
             ((str(home.parent / "job.py"),), {}, f"a folder that holds your home folder ({home})"),
             (("etc/hostname",), {"source_dir": "/"}, "the root folder /")]
    for args, options, what in cases:
        with pytest.raises(OptionsError) as info:
            aml_magics.submit(*args, target="docker", timeout=0, **options)
        message = str(info.value)
        assert "\n" not in message and f" is {what}: " in message and "--mount-any-dir" in message, message


@pytest.mark.docker
def test_mount_any_dir_lets_the_home_folder_through(engine, workdir, monkeypatch, no_container_left):
    home = workdir / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (home / "job.py").write_text("print('ran from home')\n")
    run = aml_magics.submit(str(home / "job.py"), target="docker", base_image=DOCKER_BASE, timeout=0,
                            mount_any_dir=True)
    assert run.wait(120) == "completed", run.detail
    assert "ran from home" in run.logs
