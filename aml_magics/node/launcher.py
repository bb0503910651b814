"""A container's several ranks: ``python NODE --launch ENVS_JSON -- CMD...`` starts one process per rank.

``ENVS_JSON`` is a list of each rank's environment (from ``invocation.rank_environment``), ``CMD``
the command every rank runs (the node entry itself). It reads the owner's secrets line from
stdin and gives each rank a pipe of its own with that line (the rank's owner channel); EOF on
stdin (the owner is gone) closes those pipes, which ends every rank. Lines get a ``[rank i] ``
tag; a rank that exits non-zero gets an authenticated EXIT marker (it may have died without
printing its own); the launcher exits with the first failing rank's code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

from .owner import read_first_line
from .wire import MARKER_PREFIX, OWNER_ENV, marker_mac

OWNER_GONE_GRACE = 5.0  # seconds the ranks get to end themselves once their pipes closed


class Launcher:
    def __init__(self, envs: list[dict], cmd: list[str], line: bytes) -> None:
        self.cmd = cmd
        self.line = line
        try:
            self.key = bytes.fromhex(json.loads(line.decode() or "{}").get("marker_key", ""))
        except (ValueError, AttributeError):
            self.key = b""
        self.out = sys.stdout.buffer
        self.lock = threading.Lock()
        self.codes: dict[int, int] = {}
        self.pipes: list[int] = []
        self.procs = [self._start(env) for env in envs]

    def _start(self, env: dict) -> subprocess.Popen:
        child_env = dict(os.environ, **env)
        fds: tuple[int, ...] = ()
        if self.line:
            read_end, write_end = os.pipe()
            os.write(write_end, self.line + b"\n")
            child_env[OWNER_ENV] = f"fd:{read_end}"
            fds = (read_end,)
            self.pipes.append(write_end)
        proc = subprocess.Popen(self.cmd, env=child_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, pass_fds=fds)
        for fd in fds:
            os.close(fd)
        return proc

    def owner_gone(self) -> None:
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        for fd in self.pipes:
            try:
                os.close(fd)
            except OSError:
                pass
        time.sleep(OWNER_GONE_GRACE)
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()

    def forward(self, signum: int, frame: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    def write(self, data: bytes) -> None:
        with self.lock:
            self.out.write(data)
            self.out.flush()

    def marker(self, kind: str, **data: object) -> bytes:
        payload = json.dumps(data, sort_keys=True)
        mac = marker_mac(self.key, kind, payload) if self.key else ""
        return f"{MARKER_PREFIX}{kind} {payload} {mac}".rstrip().encode() + b"\n"

    def pump(self, rank: int, proc: subprocess.Popen) -> None:
        prefix = b"[rank %d] " % rank
        assert proc.stdout is not None
        for line in proc.stdout:
            self.write(prefix + line if line.endswith(b"\n") else prefix + line + b"\n")
        self.codes[rank] = code = proc.wait()
        if code:
            self.write(b"aml_magics: rank %d exited with code %d\n" % (rank, code))
            self.write(self.marker("EXIT", rank=rank, code=code, pid=proc.pid, source="launcher"))

    def run(self) -> int:
        threads = [threading.Thread(target=self.pump, args=(i, p)) for i, p in enumerate(self.procs)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        failed = [self.codes[i] for i in range(len(self.procs)) if self.codes[i]]
        return 0 if not failed else failed[0] if failed[0] > 0 else 128 - failed[0]


def main(argv: list[str]) -> int:
    """``ENVS_JSON -- CMD...`` (the ``--`` optional)."""
    envs, cmd = json.loads(argv[0]), argv[1:]
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    owned = os.environ.pop(OWNER_ENV, "") == "stdin"
    line = read_first_line(0).encode() if owned else b""
    launcher = Launcher(envs, cmd, line)
    if owned:
        threading.Thread(target=launcher.owner_gone, daemon=True).start()
    signal.signal(signal.SIGTERM, launcher.forward)
    signal.signal(signal.SIGINT, launcher.forward)
    return launcher.run()
