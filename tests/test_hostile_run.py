"""A hostile script in the run: what it can reach of the run's secrets, and what its markers can do.

It runs in the bootstrap's own process, so it can call the node's marker function (the same
process signs): the owner must accept only what it expects — never an untunnelled endpoint for
a secure run, only a few endpoints per rank on the rank's own address, only the run's ranks.
The key itself is in no module global or object Python code can walk to, and secrets that came
in the environment (Azure ML) are not in ``/proc/self/environ`` of the user's code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from test_secure_channel import stranger_host  # noqa: F401 - the fixture, used by name

import aml_magics
from aml_magics.invocation import NODE_PATH
from aml_magics.node.wire import RUNTIME_MODULE, SECRETS_ENV
from aml_magics.protocol import ExitMarker, MarkerReader
from aml_magics.run import MAX_ENDPOINTS_PER_RANK
from aml_magics.tunnel import TunnelCredentials

FORGER = textwrap.dedent(f"""
    import sys, time
    markers = sys.modules[{RUNTIME_MODULE!r}]
    for port in range(20000, 20500):
        markers.emit("ENDPOINT", host=HOST, port=port, rank=0, tunnel=TUNNEL, timeout=0)
    markers.emit("ENDPOINT", host="203.0.113.9", port=4444, rank=0, tunnel=TUNNEL, timeout=0)
    markers.emit("ENDPOINT", host=HOST, port=4445, rank=7, tunnel=TUNNEL, timeout=0)
    markers.emit("ENDPOINT", host=HOST, port=4446, rank=0, tunnel=False, timeout=0)
    print("forged", flush=True)
""")


def _forger(host: str, tunnel: bool) -> str:
    return f"HOST = {host!r}\nTUNNEL = {tunnel!r}\n" + FORGER


def test_forged_endpoints_from_inside_a_secure_run_are_bounded(workdir, stranger_host):  # noqa: F811
    """500 forged ENDPOINT lines signed in the run: a few forwarders at most, no untunnelled
    endpoint, no other host, no rank the run does not have; launch.json stays the forwarder's."""
    host = stranger_host.host_address
    launch_json = workdir / "lj.json"
    run = aml_magics.submit(code=_forger(host, True), name="forger", port=0, bind=host, timeout=0,
                            launch_json=str(launch_json), wait=True)
    assert "forged" in run.logs and run.state == "completed"
    forwarders = run.handle._inner._forwarders
    assert 1 <= len(forwarders) <= MAX_ENDPOINTS_PER_RANK
    assert all(e.tunnelled and e.host == "127.0.0.1" and e.rank == 0 for e in run.endpoints)
    assert "refused an endpoint marker" in run.logs
    config = json.loads(launch_json.read_text())["configurations"][0]
    assert config["connect"]["host"] == "127.0.0.1"
    assert config["connect"]["port"] in {f.port for f in forwarders.values()}


def test_forged_endpoints_from_inside_a_local_run_are_bounded(workdir):
    run = aml_magics.submit(code=_forger("127.0.0.1", False), name="forger", port=0, timeout=0, wait=True)
    assert "forged" in run.logs and run.state == "completed"
    (endpoint,) = run.endpoints  # rank 0 only: no rank 7
    assert endpoint.host == "127.0.0.1" and endpoint.port not in range(20000 + MAX_ENDPOINTS_PER_RANK, 20500)
    assert endpoint.port != 4446 and run.reader.rejected >= 500 - MAX_ENDPOINTS_PER_RANK


HUNTER = textwrap.dedent("""
    import gc, json, re, sys
    HEX = re.compile(r"[0-9a-f]{64}")
    PEM = re.compile("-----BEGIN " + "PRIVATE KEY-----\\n[A-Za-z0-9+/]{20}")  # a real key, not this text
    seen = set()
    def look(value, where):
        if isinstance(value, bytes) and len(value) == 32:
            seen.add(value.hex())
        elif isinstance(value, str):
            seen.update(HEX.findall(value))
            if PEM.search(value):
                seen.add("a PEM key in " + where)
    for module in list(sys.modules.values()):
        for name, value in list(vars(module).items()):
            look(value, f"{module.__name__}.{name}")
    gc.unfreeze()  # the node froze its own objects (out of gc.get_objects()): a hunter thaws them first
    for obj in gc.get_objects():
        try:
            for ref in gc.get_referents(obj):
                look(ref, type(obj).__name__)
        except Exception:
            pass
    with open("seen.json", "w") as out:
        json.dump(sorted(seen), out)
    print("hunted", len(seen), flush=True)
""")


def test_the_marker_key_and_tls_key_are_not_reachable_by_walking_objects(workdir, stranger_host):  # noqa: F811
    """Every 32-byte value, 64-hex string and PEM private key user code reaches through modules and
    the garbage collector's objects: none is the run's marker key or its TLS key."""
    (workdir / "hunter.py").write_text(HUNTER)
    run = aml_magics.submit(str(workdir / "hunter.py"), port=0, bind=stranger_host.host_address, timeout=0,
                            wait=True)
    assert "hunted" in run.logs, run.logs
    seen = json.loads((workdir / "seen.json").read_text())
    assert run.reader._key.hex() not in seen
    assert not [item for item in seen if "a PEM key" in item]


ENVIRON = textwrap.dedent("""
    import os, subprocess, sys
    mine = open("/proc/self/environ", "rb").read()
    child = subprocess.run(["cat", "/proc/self/environ"], capture_output=True).stdout
    for where, data in (("self", mine), ("child", child)):
        print(where, b"AML_MAGICS_SECRETS=" in data or b"marker_key" in data, b"PRIVATE KEY" in data, flush=True)
""")


def test_secrets_from_the_environment_are_not_in_proc_environ(tmp_path: Path):
    """Azure ML hands the secrets over in the job's environment: the user's code starts in a process
    whose initial environment never held them, and the markers are still signed."""
    key = os.urandom(32)
    secrets = {"marker_key": key.hex(), "tunnel": TunnelCredentials.new().node_side()}
    (tmp_path / "env.py").write_text(ENVIRON)
    env = {**os.environ, SECRETS_ENV: json.dumps(secrets), "PYTHONPATH": str(Path(aml_magics.__file__).parent.parent)}
    done = subprocess.run([sys.executable, str(NODE_PATH), "--no-debug", "--", "env.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "self False False" in done.stdout and "child False False" in done.stdout, done.stdout
    reader = MarkerReader(key)
    markers = [reader.parse(line) for line in done.stdout.splitlines()]
    assert any(isinstance(m, ExitMarker) and m.code == 0 for m in markers)
