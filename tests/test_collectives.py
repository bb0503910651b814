"""torch.distributed under the node (node/collectives.py), with real torch in one process (gloo, world 1).

Every process group the script makes — init_process_group, new_group, new_subgroups, a
DeviceMesh's — waits at least --collective-timeout (read back from torch's own backend
options), each raise said in one line; NCCL's documented heartbeat follows; keep and
--no-debug leave the script's values. The multi-rank behaviour (a rank stopped past the
script's timeout) is tests/test_distributed_debug.py on the simulated cluster.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from aml_magics.node.collectives import NCCL_SETTINGS, collective_timeout, raise_nccl_settings

pytestmark = pytest.mark.slow

PROBE = """\
import datetime, os, json
import torch, torch.distributed as dist
os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1")
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=5))
def seconds(group=None):
    group = group or dist.distributed_c10d._get_default_group()
    return group._get_backend(torch.device("cpu")).options._timeout.total_seconds()
out = {"init": seconds(), "new_group": seconds(dist.new_group([0], timeout=datetime.timedelta(seconds=3)))}
out["new_subgroups"] = seconds(dist.new_subgroups(1)[0])
from torch.distributed.device_mesh import init_device_mesh
out["mesh"] = seconds(init_device_mesh("cpu", (1, 1), mesh_dim_names=("dp", "tp")).get_group("tp"))
out["nccl"] = os.environ.get("TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC")
print("PROBE", json.dumps(out), flush=True)
dist.destroy_process_group()
"""


def _torch_python() -> str:
    python = os.environ.get("AML_MAGICS_TORCH_PYTHON")
    if python:
        return python
    if subprocess.run([sys.executable, "-c", "import torch"], capture_output=True).returncode == 0:
        return sys.executable
    if os.environ.get("CI"):
        pytest.fail("torch is not installed: .ci/run sets AML_MAGICS_TORCH_PYTHON (bash .ci/torch.sh)")
    pytest.skip("torch is not installed here: `bash .ci/torch.sh` makes an interpreter with it")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _probe(tmp_path: Path, *node_options: str) -> tuple[dict, str]:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root, "MASTER_PORT": str(_free_port())}
    env.pop("TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC", None)
    done = subprocess.run([_torch_python(), "-X", "frozen_modules=off", os.path.join(root, "aml_magics", "node"),
                           "--port", "0", "--timeout", "0", *node_options, "--", str(script)],
                          capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("PROBE "))
    return json.loads(line.split(" ", 1)[1]), done.stderr


def test_every_process_group_waits_at_least_the_collective_timeout(tmp_path):
    seen, err = _probe(tmp_path)
    assert seen == {"init": 7200.0, "new_group": 7200.0, "new_subgroups": 7200.0, "mesh": 7200.0, "nccl": "7200"}
    raised = [line for line in err.splitlines() if "raised to" in line]
    assert raised[0] == ("aml_magics: torch.distributed.init_process_group: timeout=0:00:05 raised to 2:00:00 "
                         "(--collective-timeout 7200): a rank paused in the debugger must not time out the others")
    assert any(line.startswith("aml_magics: torch.distributed.new_group: timeout=0:00:03 raised to 2:00:00")
               for line in raised)
    assert len(raised) == len(set(raised))  # one line per raise, never repeated


def test_an_explicit_collective_timeout_and_keep(tmp_path):
    seen, err = _probe(tmp_path, "--collective-timeout", "900")
    assert (seen["init"], seen["new_group"], seen["nccl"]) == (900.0, 900.0, "900")
    assert "timeout=0:00:05 raised to 0:15:00 (--collective-timeout 900)" in err
    seen, err = _probe(tmp_path, "--collective-timeout", "keep")
    assert (seen["init"], seen["new_group"], seen["nccl"]) == (5.0, 3.0, None)
    assert "raised to" not in err


def test_an_undebugged_run_is_untouched(tmp_path):
    seen, err = _probe(tmp_path, "--no-debug")
    assert (seen["init"], seen["new_group"], seen["nccl"]) == (5.0, 3.0, None)
    assert "raised to" not in err


def test_the_default_floor_and_the_documented_nccl_settings():
    from argparse import Namespace

    options = Namespace(timeout=300.0, post_mortem_timeout=600.0, collective_timeout=None)
    assert collective_timeout(options) == 7200.0  # at least two hours
    options.timeout = 9000.0
    assert collective_timeout(options) == 9600.0  # the debug window plus the post-mortem wait
    options.collective_timeout = "keep"
    assert collective_timeout(options) is None
    env: dict[str, str] = {"TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC": "9999"}
    assert raise_nccl_settings(7200, (2, 13), env) == [] and env["TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC"] == "9999"
    env = {}
    assert raise_nccl_settings(7200, (2, 3), env) == [] and env == {}  # not documented before 2.4: left alone
    assert raise_nccl_settings(7200, (2, 13), env) == list(NCCL_SETTINGS) and env == {
        "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC": "7200"}
