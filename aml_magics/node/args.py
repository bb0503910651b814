"""The node's command line and the rank of this process (flags or the launcher's environment)."""

from __future__ import annotations

import argparse
import os

from .wire import LOOPBACK

DEFAULT_POST_MORTEM_TIMEOUT = 600.0
# Where launchers put a process's rank / local rank (torchrun, Open MPI, Intel MPI / MPICH).
RANK_VARIABLES = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
LOCAL_RANK_VARIABLES = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")


def env_int(names: tuple[str, ...], default: int = 0) -> int:
    """The first of ``names`` set to an integer in the environment."""
    for name in names:
        try:
            return int(os.environ[name])
        except (KeyError, ValueError):
            continue
    return default


def rank_list(text: str) -> frozenset[int]:
    try:
        ranks = frozenset(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--debug-ranks takes ranks like 0,3, not {text!r}") from None
    if not ranks or min(ranks) < 0:
        raise argparse.ArgumentTypeError(f"--debug-ranks takes ranks like 0,3, not {text!r}")
    return ranks


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="aml_magics_bootstrap", add_help=True)
    parser.add_argument("--port", type=int, default=5678)
    parser.add_argument("--port-auto", action="store_true",
                        help="take the first free port from --port upward (bound here: race-free)")
    parser.add_argument("--bind", default=LOOPBACK)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--no-debug", action="store_true")
    parser.add_argument("--stop-on-entry", action="store_true")
    parser.add_argument("--separate-adapter", action="store_true",
                        help="use debugpy's adapter process (needed to follow subprocesses)")
    parser.add_argument("--rank", type=int, default=None, help="this process's rank (default: from the launcher's env)")
    parser.add_argument("--local-rank", type=int, default=None, help="rank on this node (default: from the env)")
    parser.add_argument("--port-per-local-rank", action="store_true",
                        help="listen on --port + local rank (one command line for every process of a node)")
    parser.add_argument("--debug-ranks", type=rank_list, default=None,
                        help="comma-separated ranks to debug; the others run with no debugger at all")
    parser.add_argument("--post-mortem", action="store_true",
                        help="on an uncaught exception, wait for a debugger and stop where it was raised")
    parser.add_argument("--post-mortem-timeout", type=float, default=DEFAULT_POST_MORTEM_TIMEOUT,
                        help="seconds to wait for a debugger after a crash or at breakpoint() (default 600)")
    parser.add_argument("--wait-on-breakpoint", action="store_true",
                        help="breakpoint() with no debugger attached reports itself and waits for one")
    parser.add_argument("--reattach", action="store_true",
                        help="keep listening after a client detaches (default: one attach per window)")
    parser.add_argument("script")
    parser.add_argument("script_args", nargs=argparse.REMAINDER)
    if "--" in argv:
        split = argv.index("--")
        ns = parser.parse_args(argv[:split] + argv[split + 1:split + 2])
        ns.script_args = argv[split + 2:]
    else:
        ns = parser.parse_args(argv)
    return _resolve_ranks(ns)


def _resolve_ranks(ns: argparse.Namespace) -> argparse.Namespace:
    """Rank and local rank from the flags or the launcher's env; the port of this process."""
    if ns.rank is None:
        ns.rank = env_int(RANK_VARIABLES)
    if ns.local_rank is None:
        ns.local_rank = env_int(LOCAL_RANK_VARIABLES)
    if ns.port_per_local_rank and ns.port:
        ns.port += ns.local_rank
    ns.debug_this_rank = not ns.no_debug and (ns.debug_ranks is None or ns.rank in ns.debug_ranks)
    return ns
