"""Shared fixtures (a testing IPython shell that raises, leak checks, a Docker engine) and
helpers the test modules import (``from conftest import ...``)."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

os.environ.setdefault("AML_MAGICS_VIEW", "text")

# The fast loop (`python -m pytest -m "not slow"`: 8 min 25 s on 2 cores, half the suite) leaves out what takes minutes:
# a Docker engine, a browser, image and virtual-environment builds, real kernels and notebooks,
# the simulated multi-node cluster. Tests that build one say so with @pytest.mark.slow; these are
# marked here by what they use.
SLOW_FIXTURES = {"engine", "kernel", "notebook_env", "repo_copy", "inference_server"}
SLOW_MODULES = {"test_azureml_cluster", "test_notebooks", "test_binder", "test_browser", "test_kernel"}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        module = getattr(item.module, "__name__", "").rpartition(".")[2]
        if (item.get_closest_marker("docker") or item.get_closest_marker("browser") or module in SLOW_MODULES
                or SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))):
            item.add_marker(pytest.mark.slow)


# The base image `.ci/docker-engine.sh` makes (no registry is reachable from CI).
DOCKER_BASE = os.environ.get("AML_MAGICS_TEST_BASE", "aml-magics-test-base:bookworm-py3")

CELL = """\
import sys
total = 0
for i in range(5):
    total += i
marker = f"total={total}"
print(marker, sys.argv[1:])
"""
BREAK_LINE = 5  # marker = ...


@pytest.fixture
def shell():
    """An InteractiveShell with the extension loaded; magics raise instead of printing tracebacks."""
    from IPython.testing.globalipapp import get_ipython

    ip = get_ipython()
    ip.run_line_magic("load_ext", "aml_magics")
    yield ip
    from aml_magics.engine import REGISTRY

    REGISTRY.cancel_all()
    ip.run_line_magic("unload_ext", "aml_magics")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Path:
    """A fresh working directory, as a notebook's folder would be."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AML_MAGICS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Every test must leave no child process behind."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    from aml_magics.engine import REGISTRY

    for run in REGISTRY.active():
        run.cancel()
    left = [p for p in me.children(recursive=True) if p.pid not in before and p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE]
    for p in left:
        p.kill()
    assert not left, f"processes left behind: {[(p.pid, p.cmdline()[:4]) for p in left]}"


def port_is_listening(host: str, port: int) -> bool:
    """Whether something listens, without connecting (a bare connect wedges debugpy)."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            return True
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def busy_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A port this test listens on (so it is taken) for the block's duration."""
    with socket.socket() as holder:
        holder.bind((host, 0))
        holder.listen(1)
        yield holder.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not met in {timeout:g}s")


# -- a Docker engine (tests marked docker) ------------------------------------------------------


def _engine_problem(docker) -> str | None:
    from aml_magics import images

    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as exc:
        return f"no Docker engine reachable ({images.short_reason(exc)}); run: bash .ci/docker-engine.sh"
    try:
        client.images.get(DOCKER_BASE)
    except docker.errors.ImageNotFound:
        return f"test base image {DOCKER_BASE} missing; run: bash .ci/docker-engine.sh"
    finally:
        client.close()
    return None


@pytest.fixture(scope="module")
def engine():
    """A Docker client; skips without an engine (fails instead with AML_MAGICS_REQUIRE_DOCKER=1)."""
    docker = pytest.importorskip("docker", reason="the docker SDK is not installed (pip install 'aml-magics[docker]')")
    problem = _engine_problem(docker)
    if problem:
        if os.environ.get("AML_MAGICS_REQUIRE_DOCKER"):
            pytest.fail(problem)
        pytest.skip(problem)
    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture
def no_container_left(engine):
    """Every test leaves no container of its own behind (others' on the same engine are not ours to touch)."""
    import docker

    mine = {"label": ["aml_magics", f"aml_magics.owner_pid={os.getpid()}"]}
    before = {c.id for c in engine.containers.list(all=True, sparse=True, filters=mine)}
    yield
    deadline = time.monotonic() + 10
    while True:
        left = [c for c in engine.containers.list(all=True, sparse=True, filters=mine) if c.id not in before]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for c in left:
        try:
            c.remove(force=True)
        except docker.errors.NotFound:
            pass
    assert not left, f"containers left behind: {[c.id[:12] for c in left]}"


# -- the simulated Azure ML node, and a real Jupyter kernel ---------------------------------------


@pytest.fixture(scope="module")
def node_namespace():
    """A network-namespace node with its own address for the simulated Azure ML (None: loopback)."""
    pytest.importorskip("azureml.core", reason="azureml-core is not installed (pip install 'aml-magics[azureml]')")
    from azureml_support import namespace_or_loopback

    yield from namespace_or_loopback()


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder with a workspace config, the simulator on."""
    from azureml_support import setup_project

    return setup_project(tmp_path, monkeypatch)


def start_kernel(cwd: Path):
    """A real ipykernel (the widget front end, not conftest's text view): (manager, client)."""
    jupyter_client = pytest.importorskip("jupyter_client", reason="jupyter_client comes with ipykernel ([test] extra)")
    env = {k: v for k, v in os.environ.items() if k != "AML_MAGICS_VIEW"}
    km = jupyter_client.KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(cwd), env=env)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return km, kc


def in_terminal(argv: list[str], cwd: Path) -> tuple[int, int]:
    """Start ``argv`` in ``cwd`` under a real pseudo-terminal (its controlling TTY): (pid, the
    terminal's fd). Ctrl-C is ``os.write(fd, b"\\x03")``; the caller waits for the pid."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: becomes the program in the terminal
        try:
            os.chdir(cwd)
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    return pid, fd


def end_terminal(pid: int, fd: int, timeout: float = 30) -> int:
    """The program's exit code once it ended; one that did not end by itself gets Ctrl-C, then
    SIGKILL (a failed assertion must not leave it serving, or hang the test in waitpid)."""
    deadline = time.monotonic() + timeout
    try:
        for sig in (None, signal.SIGINT, signal.SIGKILL):
            if sig is not None:
                os.kill(pid, sig)
                deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    return os.waitstatus_to_exitcode(status)
                time.sleep(0.05)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)
    finally:
        os.close(fd)


def read_pty(fd: int, until, timeout: float = 60) -> str:
    """Read the terminal's output until ``until(text)``."""
    text = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the other side closed
                break
            if not chunk:
                break
            text += chunk.decode("utf-8", "replace")
            if until(text):
                return text
    raise AssertionError(f"not seen in the terminal; got: {text!r}")


COUNTDOWN = re.compile(r"\r\x1b\[Kwaiting for a debugger at 127\.0\.0\.1:(\d+) — (\d+) s left — Ctrl-C cancels")


def read_countdown(fd: int, timeout_option: float) -> tuple[str, int]:
    """Read a terminal until its attach countdown line was redrawn with the seconds going down
    (one endpoint, at most ``timeout_option`` s); (what the terminal showed, the port)."""
    text = read_pty(fd, lambda t: len({m.group(2) for m in COUNTDOWN.finditer(t)}) >= 2)
    shown = list(COUNTDOWN.finditer(text))
    assert len({m.group(1) for m in shown}) == 1  # the same endpoint, the seconds going down
    assert int(shown[-1].group(2)) < int(shown[0].group(2)) <= timeout_option
    return text, int(shown[0].group(1))


def count_down_then_ctrl_c(argv: list[str], cwd: Path, ended: str, timeout_option: float) -> tuple[str, int, int]:
    """Run ``argv`` in a real terminal until its attach countdown was redrawn (seconds going down),
    then press Ctrl-C (the TTY sends SIGINT, as a user's keypress does) and read until a line
    with ``ended``; (what the terminal showed, the countdown's port, the exit code)."""
    pid, fd = in_terminal(argv, cwd)
    try:
        text, port = read_countdown(fd, timeout_option)
        os.write(fd, b"\x03")
        text += read_pty(fd, lambda t: ended in t and t.endswith("\n"))
    finally:
        code = end_terminal(pid, fd)
    return text, port, code


def build_test_image(engine, recipe: str, tag: str) -> None:
    """A small image for a test, built offline from a Dockerfile text (FROM the local base image)."""
    engine.images.build(fileobj=io.BytesIO(recipe.encode()), tag=tag, rm=True, forcerm=True, network_mode="none")

