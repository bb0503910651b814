"""Shared fixtures: a testing IPython shell that raises, and leak checks."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import psutil
import pytest

os.environ.setdefault("AML_MAGICS_VIEW", "text")


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
