"""Docker runs and deployments live exactly as long as their owner, against a real engine.

The owner (here an ``aml-debug`` CLI process) is killed with SIGKILL, SIGTERM or SIGHUP while
its container waits for a debugger (or serves); within 5 s its container is gone — removed,
not left ``Exited`` — and its published ports are closed (the issue's goal). What a dead owner
left anyway (labelled with its uid, pid, boot id, pid namespace and start time) is swept by
the next run and by ``%aml_images``; a live owner's, another user's, or an unlabelled
container is left alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import DOCKER_BASE, port_is_listening, wait_for

docker = pytest.importorskip("docker", reason="the docker SDK is not installed (pip install 'aml-magics[docker]')")

import aml_magics  # noqa: E402
from aml_magics.images.owners import owner_labels  # noqa: E402
from aml_magics.owner import Owner, boot_id, pid_namespace, start_time  # noqa: E402

ROOT = str(Path(aml_magics.__file__).resolve().parent.parent)
GONE_WITHIN = 5.0  # seconds: the goal for a dead owner's containers and ports
SCORE = "def init():\n    pass\n\n\ndef run(raw_data):\n    return {'echo': raw_data}\n"


class Cli:
    """``aml-debug ...`` as a child process whose output is read on a thread."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=ROOT)
        self.process = subprocess.Popen([sys.executable, "-m", "aml_magics.cli", *argv], cwd=cwd, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for_line(self, prefix: str, timeout: float = 300) -> str:
        def found() -> bool:
            return any(line.startswith(prefix) for line in self.lines) or self.process.poll() is not None

        wait_for(found, timeout, f"a line starting with {prefix!r}")
        line = next((x for x in self.lines if x.startswith(prefix)), None)
        assert line is not None, "\n".join(self.lines[-40:])
        return line

    def kill(self, sig: int) -> None:
        self.process.send_signal(sig)
        self.process.wait(30)
        self._reader.join(10)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _containers_of(engine, pid: int) -> list:
    return engine.containers.list(all=True, sparse=True, filters={"label": f"aml_magics.owner_pid={pid}"})


def _port_of(line: str) -> int:
    return int(line.rsplit(":", 1)[1].split()[0].split("/")[0])


@pytest.mark.docker
@pytest.mark.parametrize("sig, procs", [(signal.SIGKILL, 1), (signal.SIGTERM, 1), (signal.SIGHUP, 1),
                                        (signal.SIGKILL, 2)],
                         ids=["SIGKILL", "SIGTERM", "SIGHUP", "SIGKILL-2-procs"])
def test_owner_death_removes_the_container_and_closes_its_ports(engine, workdir, no_container_left, sig, procs):
    (workdir / "wait.py").write_text("print('never reached')\n")
    cli = Cli(["run", "wait.py", "--target", "docker", "--base-image", DOCKER_BASE, "--timeout", "300",
               "--procs-per-node", str(procs)], workdir)
    try:
        endpoint_port = _port_of(cli.wait_for_line("aml-debug: debugpy listening at"))
        (container,) = _containers_of(engine, cli.process.pid)
        inspected = engine.api.inspect_container(container.id)
        published = [int(binding[0]["HostPort"]) for binding in inspected["NetworkSettings"]["Ports"].values()]
        assert len(published) == procs  # one debug port per rank
        ports = [*published, endpoint_port]  # and the endpoint (the owner's forwarder, when tunnelled)
        assert inspected["State"]["Status"] == "running"
        assert inspected["HostConfig"]["AutoRemove"] is True
        assert not any(e.startswith("AML_MAGICS_SECRETS=") for e in inspected["Config"]["Env"])  # stdin carries them
        assert all(port_is_listening("127.0.0.1", port) for port in ports)
        cli.kill(sig)
        wait_for(lambda: not _containers_of(engine, cli.process.pid), GONE_WITHIN, "the container removed")
        wait_for(lambda: not any(port_is_listening("127.0.0.1", port) for port in ports), GONE_WITHIN,
                 "the published ports closed")
    finally:
        cli.close()


@pytest.mark.docker
def test_killed_owner_of_a_docker_deployment_stops_serving(engine, workdir, no_container_left):
    (workdir / "score.py").write_text(SCORE)
    cli = Cli(["deploy", "score.py", "--target", "docker", "--base-image", DOCKER_BASE, "--port", "0",
               "--timeout", "0"], workdir)
    try:
        uri = cli.wait_for_line("aml-debug: scoring URI: ", timeout=600).split()[3]
        request = urllib.request.Request(uri, data=b'{"data": [1]}', headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
        (container,) = _containers_of(engine, cli.process.pid)
        cli.kill(signal.SIGKILL)
        wait_for(lambda: not _containers_of(engine, cli.process.pid), GONE_WITHIN, "the container removed")
        http_port = _port_of(uri)
        wait_for(lambda: not port_is_listening("127.0.0.1", http_port), GONE_WITHIN, "the scoring port closed")
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(request, timeout=10)
    finally:
        cli.close()


# -- what a dead owner left anyway: swept -----------------------------------------------------------

def _dead_owner() -> Owner:
    """The labels of an owner that really ran here and is gone now."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        wait_for(lambda: bool(start_time(child.pid)), 10, "the child's start time")
        owner = Owner(os.getuid(), child.pid, boot_id(), pid_namespace(), start_time(child.pid))
    finally:
        child.kill()
        child.wait()
    return owner


def _left_container(engine, labels: dict[str, str], name: str):
    """A container as a dead owner leaves it: created, never started (auto-remove never fires)."""
    return engine.containers.create(DOCKER_BASE, ["true"], labels={"aml_magics": "1", "aml_magics.test": name,
                                                                   **labels})


def _exists(engine, container_id: str) -> bool:
    try:
        engine.containers.get(container_id)
        return True
    except docker.errors.NotFound:
        return False


@pytest.mark.docker
def test_next_run_and_aml_images_sweep_only_containers_whose_owner_is_provably_gone(shell, engine, workdir,
                                                                                    capsys, no_container_left):
    me = Owner.me()
    dead = _dead_owner()
    reused = Owner(me.uid, me.pid, me.boot, me.pidns, str(int(me.start) + 1))  # a live pid, another process
    keep = {
        "live": owner_labels(me),
        "other-user": owner_labels(Owner(me.uid + 1, dead.pid, dead.boot, dead.pidns, dead.start)),
        "other-boot": owner_labels(Owner(me.uid, dead.pid, "another-boot", dead.pidns, dead.start)),
        "no-owner-labels": {"aml_magics.owner_pid": str(dead.pid)},  # made before owner labels
    }
    made = {name: _left_container(engine, labels, name) for name, labels in keep.items()}
    try:
        gone_by_run = _left_container(engine, owner_labels(dead), "dead")
        (workdir / "job.py").write_text("print('ran')\n")
        run = aml_magics.submit("job.py", target="docker", base_image=DOCKER_BASE, timeout=0)
        assert run.wait(120) == "completed", run.detail
        assert not _exists(engine, gone_by_run.id)  # swept at the start of the next docker run

        gone_by_images = _left_container(engine, owner_labels(reused), "reused-pid")
        shell.run_line_magic("aml_images", "")
        assert "container(s) left by runs whose owner is gone" in capsys.readouterr().out
        assert not _exists(engine, gone_by_images.id)
        assert all(_exists(engine, c.id) for c in made.values())  # never provably gone: kept
    finally:
        for container in made.values():
            container.remove(force=True)
