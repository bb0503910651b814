"""What to run, in what environment, with which debugger options.

Plain data built by the magic, the Python API and the CLI alike. Nothing in here is
specific to one target: targets read what they understand and reject what they can't do.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_PORT = 5678  # the first port tried
# What --port means when not given, everywhere (CLI, magics, %config, Python API): 5678, or the
# next free one, so a busy 5678 on a shared machine is no error.
DEFAULT_PORT_CHOICE = "auto"
DEFAULT_TIMEOUT = 300.0
DEFAULT_POST_MORTEM_TIMEOUT = 600.0


@dataclass(frozen=True)
class DebugOptions:
    enabled: bool = True
    port: int = DEFAULT_PORT  # 0: any free port
    port_auto: bool = False  # take the next free port at or above `port`
    bind: str | None = None  # None: the target's safe default (loopback locally)
    timeout: float = DEFAULT_TIMEOUT  # seconds to wait for a client; 0: don't wait
    stop_on_entry: bool = False
    post_mortem: bool = False  # an uncaught exception waits for a client at the frame that raised
    post_mortem_timeout: float = DEFAULT_POST_MORTEM_TIMEOUT  # that wait, and --wait-on-breakpoint's
    wait_on_breakpoint: bool = False  # breakpoint() with no client attached waits for one
    debug_ranks: tuple[int, ...] | None = None  # None: every rank; else only these get a debugger
    secure: bool = True  # a port that leaves the machine goes through the authenticated TLS tunnel
    reattach: bool = False  # keep listening after a client detaches (default: one attach per window)
    subprocesses: bool = False  # follow the script's child processes (debugpy's separate adapter)
    crash_capsule: bool = True  # an uncaught exception nobody debugs leaves a crash capsule
    idle_timeout: float = 0.0  # a stopped session with no request for this long is resumed (0: never)
    idle_action: str = "detach"  # or "cancel": what that idle timeout does
    # torch.distributed process groups wait at least this long (seconds); "keep": the script's own;
    # None: the node's default (--timeout plus --post-mortem-timeout, at least 2 h)
    collective_timeout: float | str | None = None

    @property
    def listens_at_start(self) -> bool:
        """False when the debugger only starts on a crash or a breakpoint() (zero overhead)."""
        return self.enabled and not (self.timeout == 0 and (self.post_mortem or self.wait_on_breakpoint))

    def debugs_rank(self, rank: int) -> bool:
        return self.enabled and (self.debug_ranks is None or rank in self.debug_ranks)


@dataclass(frozen=True)
class DistributedSpec:
    """How many processes, as a distributed launcher (torchrun, mpirun) would start them."""

    nodes: int = 1
    procs_per_node: int = 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    def placement(self, rank: int) -> tuple[int, int]:
        """(node rank, local rank) of a global rank."""
        return divmod(rank, self.procs_per_node)


@dataclass(frozen=True)
class EnvironmentSpec:
    pip: tuple[str, ...] = ()
    requirements: str = ""  # the text of a requirements file (hashable, shippable)
    requirements_path: str | None = None  # where that text came from, for messages
    conda: str = ""  # the text of a conda environment file
    base_image: str | None = None
    env_vars: tuple[tuple[str, str], ...] = ()

    @property
    def has_dependencies(self) -> bool:
        return bool(self.pip or self.requirements.strip() or self.conda.strip())

    def fingerprint(self, *extra: str) -> str:
        """A short stable hash of everything that goes into an environment."""
        payload = json.dumps([self.pip, self.requirements, self.conda, self.base_image, extra])
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunSpec:
    name: str
    source_dir: Path  # local directory the run sees as its working directory
    script: str  # path of the entry script, relative to source_dir
    args: tuple[str, ...] = ()
    environment: EnvironmentSpec = field(default_factory=EnvironmentSpec)
    debug: DebugOptions = field(default_factory=DebugOptions)
    distributed: DistributedSpec = field(default_factory=DistributedSpec)
    local_root: Path | None = None  # what launch.json maps to the run's cwd (default: source_dir)

    @property
    def script_path(self) -> Path:
        return self.source_dir / self.script

    @property
    def mapped_local_root(self) -> Path:
        return self.local_root or self.source_dir

    def to_dict(self) -> dict:
        data = asdict(self)
        data["source_dir"] = str(self.source_dir)
        data["local_root"] = str(self.local_root) if self.local_root else None
        return data
