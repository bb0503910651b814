"""What the authenticated tunnel costs, as ratios against ``--insecure`` in the same run.

    python benchmarks/bench_tunnel.py [--repeat N]

A local run bound to a second host's link (a network namespace joined by a veth pair: the
port leaves loopback, so the tunnel is on by default) is measured against the same run with
``--insecure`` (debugpy reached directly):

- a DAP request round trip (``threads``, then ``stackTrace`` + ``scopes`` + ``variables`` at a
  stop), median over many requests: tunnel vs direct (goal: ≤ 1.3x);
- submit → stopped at a breakpoint through the emitted launch.json (goal: within +150 ms).

Needs root and iproute2 (for the namespace); prints markdown rows: figure | ours | baseline | ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import dap_round_trips, paired, print_rows

import aml_magics
from aml_magics.azureml.simulator import NodeNamespace
from aml_magics.testing.dap import attach_with_launch_config

SCRIPT = "import time\nx = 41\ny = x + 1\ntime.sleep(0.2)\nprint(y)\n"
BREAK = 3


def _stopped(folder: Path, bind: str, insecure: bool):
    """(seconds from submit to the stop, the attached client, the run)."""
    script = folder / "t.py"
    started = time.perf_counter()
    run = aml_magics.submit(str(script), port=0, bind=bind, timeout=60, insecure=insecure)
    run.wait_for_endpoint(30)
    client = attach_with_launch_config(run.launch_config(), {str(script): [BREAK]}, workspace_folder=str(folder))
    stop = client.wait_stopped(30)
    return time.perf_counter() - started, client, run, stop


def _finish(client, run, stop) -> None:
    client.continue_(stop.thread_id)
    client.disconnect()
    run.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    repeat = parser.parse_args().repeat
    with tempfile.TemporaryDirectory() as tmp, NodeNamespace() as link:
        folder = Path(tmp)
        (folder / "t.py").write_text(SCRIPT)
        bind = link.host_address
        trips: dict[bool, list[float]] = {True: [], False: []}

        def measure(insecure: bool) -> float:
            seconds, client, run, stop = _stopped(folder, bind, insecure)
            try:
                trips[insecure].append(dap_round_trips(client, stop))
            finally:
                _finish(client, run, stop)
            return seconds

        tunnel_stop, direct_stop = paired(repeat, lambda: measure(False), lambda: measure(True))
        rows = [
            ("DAP request round trip: through the TLS tunnel vs `--insecure` direct (ms)",
             1000 * statistics.median(trips[False]), 1000 * statistics.median(trips[True])),
            ("submit → stopped at a breakpoint: tunnel vs `--insecure` (s)", tunnel_stop, direct_stop),
        ]
        print_rows(rows)


if __name__ == "__main__":
    main()
