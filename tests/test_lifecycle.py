"""Run lifecycle on the local target: nothing hangs, nothing escapes, nothing is lost.

Real processes, real ports, real signals: every bind failure ends the run at once with one line;
when the owner (a CLI, a kernel) dies — whatever kills it — its runs die with it; cancel ends
descendants that left the process group; hostile output is bounded and never kills the reader.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import alive, free_port, port_is_listening, start_kernel, wait_for

import aml_magics
from aml_magics.errors import OptionsError
from aml_magics.invocation import is_node_command

LONG = "import time\nprint('started', flush=True)\ntime.sleep(60)\n"


def _cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "AML_MAGICS_VIEW"}
    env["PYTHONPATH"] = str(Path(aml_magics.__file__).parent.parent)
    return subprocess.Popen([sys.executable, "-m", "aml_magics.cli", "run", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _bootstraps(owner: int) -> list[psutil.Process]:
    try:
        return [p for p in psutil.Process(owner).children(recursive=True)
                if is_node_command(p.cmdline())]
    except psutil.Error:
        return []


# -- bind failures: one line, at once ----------------------------------------------------------------


def test_two_runs_on_one_fixed_port_the_second_fails_at_once(workdir):
    port = free_port()
    runs = [aml_magics.submit(code=LONG, name=f"same{i}", port=port, timeout=30) for i in range(2)]  # neither bound yet
    wait_for(lambda: all(run.endpoints or run.done for run in runs), 20, "one to listen, one to fail")
    winner, loser = sorted(runs, key=lambda run: run.done)
    assert winner.endpoints[0].port == port and not winner.done
    assert loser.wait(10) == "failed"
    assert f"cannot listen on 127.0.0.1:{port}" in loser.detail and "in use" in loser.detail
    winner.cancel()


def test_two_clis_on_one_fixed_port_the_second_exits_2(workdir):
    (workdir / "long.py").write_text(LONG)
    port = str(free_port())
    clis = [_cli("long.py", "--port", port, "--timeout", "20", cwd=workdir) for _ in range(2)]
    try:
        first_done = None
        deadline = time.monotonic() + 20
        while first_done is None and time.monotonic() < deadline:
            first_done = next((c for c in clis if c.poll() is not None), None)
            time.sleep(0.05)
        assert first_done is not None, "neither CLI ended: the loser must not hang"
        assert first_done.returncode == 2
        err = first_done.stderr.read()
        assert "in use" in err and "Traceback" not in err
    finally:
        for cli in clis:
            if cli.poll() is None:
                os.killpg(cli.pid, signal.SIGTERM)
            cli.wait(10)


def test_port_auto_back_to_back_is_race_free(workdir):
    runs = [aml_magics.submit(code="print('ok')\n", name=f"auto{i}", port="auto", timeout=1) for i in range(3)]
    ports = {run.wait_for_endpoint(30).port for run in runs}
    assert len(ports) == 3
    assert [run.wait(30) for run in runs] == ["completed"] * 3


@pytest.mark.parametrize("bind, message", [("10.99.99.99", "Cannot assign requested address")])
def test_an_address_not_on_this_machine_fails_at_once(workdir, bind, message):
    run = aml_magics.submit(code=LONG, name="nowhere", port=0, bind=bind, timeout=30)
    assert run.wait(10) == "failed"
    assert f"cannot listen on {bind}:0: {message}" in run.detail


def test_ipv6_binds_are_refused_in_one_line(workdir):
    with pytest.raises(OptionsError, match="IPv6 is not supported"):
        aml_magics.submit(code=LONG, name="six", port=0, bind="::1")


def test_the_cli_exits_2_on_a_bind_failure(workdir):
    (workdir / "long.py").write_text(LONG)
    cli = _cli("long.py", "--port", "0", "--bind", "10.99.99.99", "--timeout", "30", cwd=workdir)
    out, err = cli.communicate(timeout=30)
    assert cli.returncode == 2, (out, err)
    assert "cannot listen on 10.99.99.99:0" in err and "Traceback" not in err + out


# -- the owner dies: its runs die with it -------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP])
def test_a_killed_cli_takes_its_run_along(workdir, sig):
    (workdir / "long.py").write_text(LONG)
    cli = _cli("long.py", "--port", "0", "--timeout", "60", cwd=workdir)
    wait_for(lambda: _bootstraps(cli.pid), 20, "the bootstrap to start")
    boot = _bootstraps(cli.pid)[0]
    wait_for(lambda: any(c.status == psutil.CONN_LISTEN for c in boot.net_connections()), 20, "listening")
    port = next(c.laddr.port for c in boot.net_connections() if c.status == psutil.CONN_LISTEN)
    os.kill(cli.pid, sig)
    cli.wait(10)
    wait_for(lambda: not alive(boot.pid), 5, f"the bootstrap to end after {sig.name} of its CLI")
    # Its main thread is a zombie before its last thread has closed the process's files: the port
    # closes a moment later, within the same 5 s the README promises.
    wait_for(lambda: not port_is_listening("127.0.0.1", port), 5, "the run's port to close")


def _run_in_kernel(kc, code: str, timeout: float = 60) -> None:
    msg_id = kc.execute(code)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=1)
        except Exception:
            continue
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status" \
                and msg["content"]["execution_state"] == "idle":
            return
    raise AssertionError("the kernel did not finish the cell")


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "restart"])
def test_a_dead_kernel_takes_its_runs_along(tmp_path, how):
    km, kc = start_kernel(tmp_path)
    try:
        kernel_pid = km.provisioner.pid if km.provisioner else km.kernel.pid
        _run_in_kernel(kc, "%load_ext aml_magics")
        _run_in_kernel(kc, "%%aml_debug_run --name k --port 0 --timeout 60\nimport time\ntime.sleep(60)\n")
        wait_for(lambda: _bootstraps(kernel_pid), 20, "the bootstrap to start")
        boot = _bootstraps(kernel_pid)[0]
        if how == "restart":
            km.restart_kernel(now=True)
        else:
            os.kill(kernel_pid, getattr(signal, how))
        wait_for(lambda: not alive(boot.pid), 5, f"the bootstrap to end after the kernel's {how}")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


# -- cancel reaches what left the group; state follows the process, not its pipe -------------------------

ESCAPER = textwrap.dedent("""
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    print("escaped", child.pid, flush=True)
    time.sleep({sleep})
""")


def test_cancel_ends_a_descendant_that_left_the_group(workdir):
    run = aml_magics.submit(code=ESCAPER.format(sleep=300), name="escaper", no_debug=True)
    wait_for(lambda: "escaped" in run.logs, 20, "the escaper's child")
    pid = int(re.search(r"escaped (\d+)", run.logs).group(1))
    assert os.getpgid(pid) != os.getpgid(run.handle.group.pid)  # it did leave the group
    run.cancel()
    assert run.state == "canceled"
    wait_for(lambda: not alive(pid), 5, "the escaped child to end")


def test_the_run_ends_with_its_script_even_if_a_child_holds_stdout(workdir):
    run = aml_magics.submit(code=ESCAPER.format(sleep=0), name="leaver", no_debug=True)
    assert run.wait(15) == "completed"  # the orphan holds the pipe; the run follows the process
    pid = int(re.search(r"escaped (\d+)", run.logs).group(1))
    wait_for(lambda: not alive(pid), 5, "the script's leftover to end with the run")
    assert "ended 1 process(es) the script left running" in run.logs


# -- hostile output ------------------------------------------------------------------------------------


def test_a_malformed_marker_is_output_and_the_reader_lives(workdir):
    code = ("print('AML_MAGICS_ENDPOINT {\"host\":\"h\",\"port\":1,\"rank\":\"x\"}')\n"
            "import time\nfor i in range(3):\n    print('after', i, flush=True)\n")
    run = aml_magics.submit(code=code, name="malformed", no_debug=True, wait=True)
    assert run.state == "completed" and run.endpoints == []
    assert "after 2" in run.logs and 'AML_MAGICS_ENDPOINT {"host":"h"' in run.logs  # shown as output
    assert run.reader.rejected == 1


def test_huge_lines_are_cut_and_memory_stays_bounded(workdir):
    code = "import sys\nfor i in range(10):\n    sys.stdout.write('x' * 20_000_000 + '\\n')\nprint('done')\n"
    me = psutil.Process()
    before = me.memory_info().rss
    run = aml_magics.submit(code=code, name="huge", no_debug=True, wait=True)
    growth = me.memory_info().rss - before
    assert run.state == "completed"
    lines = run.logs.splitlines()
    assert lines[-1] == "done" and len(lines) == 11
    assert all(line.endswith("bytes cut]") and len(line) < 20_000 for line in lines[:10])
    assert growth < 64 * 1024 * 1024, f"kernel memory grew {growth / 2**20:.0f} MiB"


# -- many at once ------------------------------------------------------------------------------------------


def test_twenty_concurrent_runs_with_port_auto(workdir):
    runs: list = []
    lock = threading.Lock()

    def start(i: int) -> None:
        run = aml_magics.submit(code=f"print('run {i}')\n", name=f"many{i}", port="auto", timeout=1)
        with lock:
            runs.append(run)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    endpoints = [run.wait_for_endpoint(60) for run in runs]
    assert len({e.port for e in endpoints}) == 20
    assert [run.wait(120) for run in runs] == ["completed"] * 20


# -- a build whose owner dies ---------------------------------------------------------------------------

OWNER = textwrap.dedent("""
    import sys, time
    import aml_magics
    run = aml_magics.submit(code="print('never')\\n", name="orphanbuild", pip=[sys.argv[1]], port=0, timeout=0)
    time.sleep(600)
""")


@pytest.mark.slow  # a virtual-environment build
def test_a_build_ends_when_its_owner_is_killed(workdir):
    """pip cannot watch an owner pipe: it runs under a parent-death guard that ends its whole group
    (pip and the build backend it started) when the owner is gone."""
    from test_structure import BACKEND, PYPROJECT

    package = workdir / "slowpkg"
    package.mkdir()
    (package / "slow_backend.py").write_text(BACKEND)
    (package / "pyproject.toml").write_text(PYPROJECT)
    env = {**os.environ, "PYTHONPATH": str(Path(aml_magics.__file__).parent.parent)}
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(package)], cwd=workdir, env=env,
                             start_new_session=True)
    try:
        wait_for(lambda: (package / "started").exists(), 120, "the build backend to start")
        build = [p for p in psutil.Process(owner.pid).children(recursive=True)]
        assert build, "pip and its backend run below the owner"
    finally:
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
    wait_for(lambda: not any(alive(p.pid) for p in build), 5, "the build's processes to end with their owner")
