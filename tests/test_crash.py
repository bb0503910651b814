"""Crash capsules (issue 25): an uncaught exception nobody debugs leaves a bounded, masked
snapshot of the stack and its locals, opened later as ``run.crash()`` / ``open_crash``.

Real runs (local, Docker, the simulated Azure ML v2 service with the owner killed before the
crash), a real DAP client for the attached case; the capsule read back as JSON and as Crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import wait_for

import aml_magics
from aml_magics import crash as crash_module
from aml_magics.node import capsule
from aml_magics.testing.dap import attach_with_launch_config

ROOT = Path(__file__).resolve().parents[1]

DEEP = textwrap.dedent("""\
    import time
    {numpy}

    class BadRepr:
        def __repr__(self):
            raise ValueError("no repr")

    class SlowRepr:
        def __repr__(self):
            time.sleep(60)
            return "slow"

    def level3(data, table):
        api_token = "tok-0123456789-SECRET"
        bad, slow = BadRepr(), SlowRepr()
        ratio = len(table) - len(table)
        return 1 / ratio

    def level2(data):
        table = {{i: i * 2 for i in range(10**6)}}
        return level3(data, table)

    def level1():
        {data}
        return level2(data)

    level1()
    """)
NUMPY = dict(numpy="import numpy as np", data="data = np.arange(12, dtype=np.float64).reshape(3, 4); data[0, 0] = np.nan")
PLAIN = dict(numpy="", data="data = [1.5, 2.5]")
RAISE_LINE = 17  # return 1 / ratio


def _check_deep(found, script: Path, numpy: bool) -> None:
    assert str(found.exception) == "ZeroDivisionError: division by zero"
    names = [f.name for f in found.frames]
    assert names == ["<module>", "level1", "level2", "level3"]  # innermost last; no frame of ours
    inner = found.frames[-1]
    assert Path(inner.path).name == script.name and inner.line == RAISE_LINE and not inner.library
    assert [f.line for f in found.frames[1:3]] == [25, 21]
    variables = inner.locals
    assert variables["api_token"].text == capsule.render.MASK and "SECRET" not in found.path.read_text()
    assert variables["bad"].text == "<BadRepr: repr raised ValueError: no repr>"
    assert variables["slow"].text.startswith("<SlowRepr: repr took longer than")
    table = variables["table"]
    assert table.type == "dict" and "(1000000 items)" in table.text and len(table.text) < 300
    assert variables["ratio"].text == "0"
    if numpy:
        data = variables["data"]
        assert data.summary == "ndarray (3, 4) float64"
        assert "NaN 1 Inf 0" in data.text and "mean 6" in data.text
        assert str(data).startswith("ndarray (3, 4) float64 · NaN 1 Inf 0; min 1 max 11")
    assert "return 1 / ratio" in found.source(inner)
    assert found.path.stat().st_size < capsule.MAX_BYTES
    assert "ZeroDivisionError" in found.exception.traceback


def test_local_crash_leaves_a_capsule_with_frames_locals_and_masks(workdir):
    script = workdir / "deep.py"
    script.write_text(DEEP.format(**NUMPY))
    run = aml_magics.submit(str(script), port=0, timeout=0)
    assert run.wait(50) == "failed" and run.exit_code == 1  # the 60 s __repr__ held nothing up
    found = run.crash()
    assert found is not None and found.rank == 0
    assert found.path == workdir / ".aml_magics" / "crashes" / run.id / "rank-0.json"
    _check_deep(found, script, numpy=True)
    assert run.logs.rstrip().endswith("ZeroDivisionError: division by zero")  # the traceback stays the last word
    assert [m.type for m in run.crashes] == ["ZeroDivisionError"]  # the authenticated CRASH marker
    again = subprocess.run([sys.executable, "-c", f"import aml_magics; c = aml_magics.open_crash({run.id!r}); "
                            "print(c.frames[-1].name, c.frames[-1].locals['ratio'])"],
                           cwd=workdir, capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert again.stdout.split() == ["level3", "0"], again.stderr  # a fresh process, by run id


def test_no_crash_capsule_and_a_run_that_does_not_crash_leave_nothing(workdir):
    run = aml_magics.submit(code="raise KeyError('k')\n", name="nocap", port=0, timeout=0, no_crash_capsule=True)
    assert run.wait(30) == "failed"
    assert run.crash() is None and not list((workdir / ".aml_magics" / "crashes").rglob("*.json"))
    fine = aml_magics.submit(code="x = 1\n", name="fine", port=0, timeout=0)
    assert fine.wait(30) == "completed" and fine.crash() is None
    with pytest.raises(crash_module.CrashNotFound):
        aml_magics.open_crash(fine)


def test_capsule_after_an_unused_post_mortem_window(workdir):
    run = aml_magics.submit(code="def f(v):\n    return v[3]\nf([1])\n", name="pmcap", port=0, timeout=0,
                            post_mortem=True, post_mortem_timeout=1)
    assert run.wait(30) == "failed"
    found = run.crash()
    assert found is not None and str(found.exception) == "IndexError: list index out of range"
    assert found.frames[-1].name == "f" and found.frames[-1].locals["v"].text == "[1]"


def test_no_capsule_while_a_debugger_is_attached(workdir):
    run = aml_magics.submit(code="x = 5\nprint(x / 0)\n", name="attached", port=0, timeout=30)
    run.wait_for_endpoint(30)
    client = attach_with_launch_config(run.launch_config(), {}, workspace_folder=str(workdir),
                                       exception_filters=("uncaught",))
    try:
        stop = client.wait_stopped(30)
        assert stop.line == 2
        client.continue_(stop.thread_id)
        assert run.wait(30) == "failed"
    finally:
        client.close()
    assert run.crash() is None


def test_chained_causes_and_library_frames_are_kept_and_marked(workdir):
    code = textwrap.dedent("""\
        import json
        def load(text):
            try:
                return json.loads(text)
            except ValueError as exc:
                raise RuntimeError("config unreadable") from exc
        load("{not json")
        """)
    run = aml_magics.submit(code=code, name="chained", port=0, timeout=0)
    assert run.wait(30) == "failed"
    found = run.crash()
    assert str(found.exception) == "RuntimeError: config unreadable"
    assert found.exception.chain[0]["relation"] == "cause"
    assert found.exception.chain[0]["type"] == "JSONDecodeError"
    assert [f.name for f in found.frames] == ["<module>", "load"]  # the raise of the cause is the chain's


def test_a_capsule_is_bounded_deepest_detail_first():
    frames = [{"name": f"f{i}", "path": f"/lib/site-packages/m{i}.py" if i % 2 else f"/app/u{i}.py", "line": i,
               "library": bool(i % 2), "source": {"first": 1, "lines": ["x" * 400] * 11},
               "locals": {f"v{j}": {"type": "str", "text": "y" * 200, "summary": None} for j in range(500)},
               "locals_total": 500} for i in range(100)]
    big = {"format": capsule.FORMAT, "rank": 0, "exception": {"type": "E", "message": "m", "chain": [],
                                                                 "traceback": "t" * 20000},
           "frames": frames, "dropped": []}
    data = capsule.encode_bounded(big, digests=[capsule.digest("tok-very-secret-value")])
    assert len(data) <= capsule.MAX_BYTES
    loaded = json.loads(data)
    assert loaded["dropped"][0].startswith("value texts cut to 60 characters")
    user = [f for f in loaded["frames"] if not f["library"]]
    assert len(user[-1]["locals"]) == 500  # the innermost user frames' locals survive longest
    assert all(not f["locals"] for f in loaded["frames"] if f["library"])
    assert "locals of library frames" in " ".join(loaded["dropped"])
    small = capsule.encode_bounded({"frames": [], "dropped": [], "note": "tok-very-secret-value"},
                                   digests=[capsule.digest("tok-very-secret-value")])
    assert b"tok-very-secret-value" not in small and b"<redacted>" in small


def test_environment_is_never_in_a_capsule(workdir):
    code = "import os\nenv = os.environ\ncopy_of_home = 'h'\nraise SystemError('x')\n"
    run = aml_magics.submit(code=code, name="envcap", port=0, timeout=0, env={"MY_PASSWORD_X": "pw-12345678"})
    assert run.wait(30) == "failed"
    found = run.crash()
    text = found.path.read_text()
    assert found.frames[-1].locals["env"].text == capsule.render.MASK and "pw-12345678" not in text


# -- simulated Azure ML (v2): the owner is gone before the crash -----------------------------------

OWNER = textwrap.dedent("""\
    import sys, time
    import aml_magics
    run = aml_magics.submit("proj/late.py", target="azureml", sdk="v2", compute="cpu-cluster", port=0, timeout=0,
                            args=[sys.argv[1]])
    run.wait_for(lambda: run.state == "running", 60, "running")
    print("JOB", run.handle.run.id, flush=True)
    time.sleep(600)
    """)
LATE = textwrap.dedent("""\
    import os, sys, time
    def train(go, epochs):
        while not os.path.exists(go):
            time.sleep(0.05)
        loss = [0.5, 0.25]
        storage_key = "k-0123456789abcdef"
        return loss[epochs]
    train(sys.argv[1], epochs=7)
    """)


def _open_in_fresh_process(cwd: Path, env: dict, job: str) -> dict:
    code = ("import json, sys, aml_magics; c = aml_magics.open_crash(sys.argv[1]); "
            "print(json.dumps({'exc': str(c.exception), 'frames': [[f.name, f.line, "
            "{k: str(v) for k, v in f.locals.items()}] for f in c.frames]}))")
    out = subprocess.run([sys.executable, "-c", code, job], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_simulated_azureml_job_keeps_its_capsule_after_the_owner_died(tmp_path):
    pytest.importorskip("azure.ai.ml", reason="azure-ai-ml is not installed")
    from azureml_support import use_simulator, write_workspace_config

    write_workspace_config(tmp_path)
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "late.py").write_text(LATE)
    go = tmp_path / "go"
    patch = pytest.MonkeyPatch()
    try:
        use_simulator(patch, tmp_path / "sim")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "AML_MAGICS_CACHE_DIR": str(tmp_path / "cache")}
    finally:
        patch.undo()
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(go)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = owner.stdout.readline()
        assert line.startswith("JOB "), owner.stderr.read() if owner.poll() is not None else line
        job = line.split()[1]
    finally:
        os.killpg(owner.pid, signal.SIGKILL)  # the owner (and its simulated service) gone, at once
        owner.wait()
    go.touch()  # only now does the job crash
    outputs = tmp_path / "sim" / "runs" / job / "outputs" / "aml_magics_crash" / "rank-0.json"
    wait_for(outputs.exists, 60, "the capsule in the job's outputs")
    seen = _open_in_fresh_process(tmp_path, env, job)
    assert seen["exc"] == "IndexError: list index out of range"
    (name, line_no, variables), = [f for f in seen["frames"] if f[0] == "train"]
    assert line_no == 7 and variables["epochs"] == "7" and variables["loss"] == "[0.5, 0.25]"
    assert variables["storage_key"] == capsule.render.MASK
    assert (tmp_path / ".aml_magics" / "crashes" / job / "rank-0.json").is_file()  # kept in the workspace
    assert _open_in_fresh_process(tmp_path, env, job) == seen  # and found there next time
    wait_for(lambda: not _job_processes(job), 30, "the job's process ended (it exits after its capsule)")


def _job_processes(job: str) -> list:
    import psutil

    return [p for p in psutil.process_iter(["cwd"]) if job in (p.info["cwd"] or "")]


# -- no idle bill ----------------------------------------------------------------------------------

IDLE = "total = 0\nfor i in range(3):\n    total += i\nprint('done', total, flush=True)\n"
IDLE_BREAK = 3


def _stopped_and_ignored(workdir: Path, name: str, idle: float = 2, **options):
    script = workdir / ".aml_magics" / "cells" / f"{name}.py"
    run = aml_magics.submit(code=IDLE, name=name, port=0, timeout=30, idle_timeout=idle, **options)
    run.wait_for_endpoint(30)
    client = attach_with_launch_config(run.launch_config(), {str(script): [IDLE_BREAK]},
                                       workspace_folder=str(workdir))
    stop = client.wait_stopped(30)
    assert stop.reason == "breakpoint" and stop.line == IDLE_BREAK
    return run, client  # and nobody sends a request any more


def test_idle_timeout_resumes_a_stopped_ignored_session_and_the_run_completes(workdir):
    run, client = _stopped_and_ignored(workdir, "idle", idle=5)
    try:
        from aml_magics.views import render_text

        wait_for(lambda: "rank 0 stopped: its node held for" in render_text(run), 30, "the held node shown")
        assert run.wait(60) == "completed", run.detail
    finally:
        client.close()
    assert "done 3" in run.logs
    assert "resumed after 5 s idle" in run.logs and "the debugger detached" in run.logs
    assert run.ranks[0].detail == "resumed after 5 s idle"
    assert "node held" not in render_text(run)  # resumed: nothing held any more


def test_idle_action_cancel_ends_the_run(workdir):
    run, client = _stopped_and_ignored(workdir, "idlecancel", idle_action="cancel")
    try:
        assert run.wait(60) in ("canceled", "failed")
    finally:
        client.close()
    assert run.exit_code == 130 and "done" not in run.logs
    assert "the run is canceled (--idle-action cancel)" in run.logs


def test_idle_timeout_defaults(workdir):
    from aml_magics.api import _namespace
    from aml_magics.options import Defaults, build_request

    (workdir / "s.py").write_text("x = 1\n")
    local = build_request(_namespace("s.py", {}), None, Defaults())
    assert local.spec.debug.idle_timeout == 0 and local.spec.debug.crash_capsule
    remote = build_request(_namespace("s.py", {"target": "azureml", "compute": "c"}), None, Defaults())
    assert remote.spec.debug.idle_timeout == 1800 and remote.spec.debug.idle_action == "detach"


# -- opening it: the magic, the text views, the snapshot panel ---------------------------------------

def test_aml_crash_magic_and_the_run_views(shell, workdir):
    from IPython.core.error import UsageError

    from aml_magics.views import render_text
    from aml_magics.views.crash import crash_panel, snapshot_html
    from aml_magics.views.widget import DebugRunPanel

    run = aml_magics.submit(code="def f(items):\n    big = list(range(1000))\n    return items['x']\nf({})\n",
                            name="magiccrash", port=0, timeout=0)
    assert run.wait(30) == "failed"
    assert "crash capsule: open with run.crash()" in render_text(run)
    found = shell.run_line_magic("aml_crash", run.id)
    assert str(found.exception) == "KeyError: 'x'" and found.frames[-1].locals["big"].text.endswith("(1000 items)")
    with pytest.raises(UsageError, match="no-such-run"):
        shell.run_line_magic("aml_crash", "no-such-run")
    with pytest.raises(UsageError, match="usage"):
        shell.run_line_magic("aml_crash", "")
    page = snapshot_html(found)
    assert "KeyError: &#x27;x&#x27;" in page and "aml-dbg-current" in page and "snapshot (read-only)" in page
    panel = crash_panel(found)
    texts = " ".join(getattr(w, "value", "") or "" for w in panel.children if hasattr(w, "value"))
    assert "snapshot (read-only)" in texts and not [w for w in panel.children if type(w).__name__ == "Button"]
    run_panel = DebugRunPanel(run)
    assert run_panel.crash_row.layout.display is None  # "crash capsule: open" on the failed run's panel
    run_panel.crash_button.click()
    assert run_panel.children[-1] is run_panel.crash_panel


@pytest.mark.docker
def test_docker_crash_capsule_arrives_in_the_workspace(engine, workdir, no_container_left):
    from conftest import DOCKER_BASE

    script = workdir / "deep.py"
    script.write_text(DEEP.format(**PLAIN))
    run = aml_magics.submit(str(script), target="docker", base_image=DOCKER_BASE, timeout=0)
    assert run.wait(180) == "failed", run.detail
    found = run.crash()
    assert found is not None
    assert found.path == workdir / ".aml_magics" / "crashes" / run.id / "rank-0.json"  # the mounted folder
    assert found.path.stat().st_uid == os.getuid()  # written as the invoking user
    _check_deep(found, script, numpy=False)
    assert found.frames[-1].path == "/app/deep.py"
    assert found.frames[-1].locals["data"].text == "[1.5, 2.5]"


def test_each_crashed_rank_of_a_distributed_run_leaves_its_own_capsule(workdir):
    code = ("import os\nrank = int(os.environ['RANK'])\n"
            "if rank == 1:\n    shard = [rank] * 3\n    raise RuntimeError(f'rank {rank} lost its data')\nprint('fine', rank)\n")
    run = aml_magics.submit(code=code, name="ranks", procs_per_node=2, port=0, timeout=0)
    assert run.wait(60) == "failed"
    found = run.crash()
    assert found.rank == 1 and str(found.exception) == "RuntimeError: rank 1 lost its data"
    assert found.frames[-1].locals["shard"].text == "[1, 1, 1]"
    assert run.crash(rank=0) is None and run.crash(rank=1).path.name == "rank-1.json"
    assert [m.rank for m in run.crashes] == [1]
