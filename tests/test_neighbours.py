"""A hostile neighbour on the owner's machine: another local user, and processes that connect to
the owner's forwarder without speaking (the owner's loopback port is open to every local user).

The neighbour is a real second user (``useradd``, created once per session: CI runs as root)
running a small DAP client as itself (``runuser``), as the probes did. The owner's forwarder
serves only its own uid, a silent connection never holds the run's one attach, and the
forwarder works whatever the owner's file numbers (above 1024: select() would refuse them).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import textwrap
import time

import pytest
from conftest import BREAK_LINE, CELL
from test_secure_channel import _debug_through, stranger_host  # noqa: F401 - the fixture, used by name

import aml_magics

NEIGHBOUR = "amlneighbour"
MINI_DAP = textwrap.dedent("""
    import json, socket, sys
    body = json.dumps({"seq": 1, "type": "request", "command": "initialize",
                       "arguments": {"adapterID": "x"}}).encode()
    answer = b""
    try:
        sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
        sock.sendall(b"Content-Length: %d\\r\\n\\r\\n" % len(body) + body)
        sock.settimeout(10)
        while b"initialize" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    except OSError:
        pass
    import os
    print(json.dumps({"uid": os.getuid(), "answer": answer.decode(errors="replace")}))
""")


@pytest.fixture(scope="session")
def neighbour() -> str:
    """Another local user (created when absent); its python3 (one it can read: not the owner's)."""
    if os.getuid() != 0:
        pytest.skip("creating a second local user needs root (CI runs as root)")
    if subprocess.run(["id", "-u", NEIGHBOUR], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", NEIGHBOUR], check=True,
                       capture_output=True)
    python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    assert python, "no python3 another user can run"
    return python


def _as_neighbour(python: str, port: int) -> dict:
    seen = subprocess.run(["runuser", "-u", NEIGHBOUR, "--", python, "-I", "-c", MINI_DAP, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60, cwd="/")
    return json.loads(seen.stdout)


def _tunnelled_run(workdir, stranger):
    script = workdir / "job.py"
    script.write_text(CELL)
    run = aml_magics.submit(str(script), port=0, bind=stranger.host_address, timeout=60)
    endpoint = run.wait_for_endpoint(30)
    assert endpoint.tunnelled and endpoint.host == "127.0.0.1"
    return run, script, endpoint


def test_another_local_user_cannot_attach_through_the_forwarder(workdir, stranger_host, neighbour):  # noqa: F811
    run, script, endpoint = _tunnelled_run(workdir, stranger_host)
    seen = _as_neighbour(neighbour, endpoint.port)
    assert seen["uid"] != os.getuid() and seen["answer"] == ""  # closed: not one byte of DAP back
    assert any("only this run's owner may attach" in line for line in run.logs.splitlines())
    _debug_through(run, script, BREAK_LINE, "total", "10", workdir)  # the one attach is still the owner's


def test_a_silent_connection_does_not_hold_the_attach(workdir, stranger_host):  # noqa: F811
    run, script, endpoint = _tunnelled_run(workdir, stranger_host)
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10), \
            socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as barely:
        barely.sendall(b"Cont")  # the start of a header, then nothing: no DAP message either
        time.sleep(1.0)  # long enough for a forwarder that opens the node's session at once to have done it
        _debug_through(run, script, BREAK_LINE, "total", "10", workdir)


def test_the_forwarder_works_above_1024_file_descriptors(workdir, stranger_host):  # noqa: F811
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the file limit ({hard}) leaves no room above 1024")
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # a kernel's data loaders, sockets...
    try:
        with socket.socket() as probe:
            assert probe.fileno() > 1024  # what the forwarder's sockets get now
        run, script, _ = _tunnelled_run(workdir, stranger_host)
        _debug_through(run, script, BREAK_LINE, "total", "10", workdir)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
