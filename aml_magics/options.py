"""Options → RunSpec, shared by the magic, the CLI and the Python API.

User mistakes raise OptionsError with one clear line; the magic turns it into a
UsageError, the CLI into exit code 2. Nothing is started or written before the
whole request has been checked.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .spec import (
    DEFAULT_PORT,
    DEFAULT_POST_MORTEM_TIMEOUT,
    DEFAULT_TIMEOUT,
    DebugOptions,
    DistributedSpec,
    EnvironmentSpec,
    RunSpec,
)

DEFAULT_CELL_DIR = ".aml_magics/cells"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


# Options that configure a target rather than the run; each target's factory takes them
# as keyword arguments (a target adds its names here and its flags in add_run_options).
TARGET_OPTIONS: dict[str, tuple[str, ...]] = {"local": ()}
TARGET_OPTIONS["docker"] = ("gpus", "wheels")
TARGET_OPTIONS["azureml"] = ("compute", "experiment", "workspace_config", "environment", "sdk", "subscription",
                            "resource_group", "workspace", "vscode_service", "distribution")


class OptionsError(ValueError):
    """A mistake in what the user asked for (one line, no traceback)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise OptionsError(message)

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        raise OptionsError(message or "invalid options")


def port_number(text: str, flag: str, also: str = "") -> int:
    """``text`` as a TCP port (0-65535); errors name ``flag`` and what else it takes (``also``)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag} must be a number 0-65535{also}, not {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{flag} must be between 0 and 65535, not {port}")
    return port


def port_value(text: str) -> str:
    if text != "auto":
        port_number(text, "--port", also=" or 'auto'")
    return text


def timeout_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--timeout must be a number of seconds, not {text!r}") from None
    if value < 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"--timeout must be 0 or a positive number of seconds, not {text}")
    return value


def count_value(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {value}")
    return value


def ranks_value(text: str) -> tuple[int, ...]:
    """``0,3`` → (0, 3); repeatable (the Python API passes a list as repeated flags)."""
    try:
        ranks = tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--debug-ranks takes ranks like 0,3, not {text!r}") from None
    if not ranks or min(ranks) < 0:
        raise argparse.ArgumentTypeError(f"--debug-ranks takes ranks like 0,3, not {text!r}")
    return ranks


# The most processes one run may start on a single machine (local target).
MAX_LOCAL_PROCESSES = 64
# Targets that place every process on one machine: --nodes above 1 makes no sense there.
SINGLE_NODE_TARGETS = frozenset({"docker"})
# Targets that start one process only (a target that starts --procs-per-node processes
# removes itself from here; docker starts them in one container).
SINGLE_PROCESS_TARGETS: set[str] = set()


def env_var_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
        raise argparse.ArgumentTypeError(f"--env-var takes KEY=VALUE, not {text!r}")
    return key, value


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options every run takes, in the magic and the CLI alike."""
    parser.add_argument("-t", "--target", default=None, help="where to run: local (default), docker, azureml")
    parser.add_argument("--name", default=None, help="run name (also the launch.json configuration name)")
    parser.add_argument("--source-dir", default=None, help="directory the run sees as its working directory")
    parser.add_argument("--script", default=None, help="entry script, relative to --source-dir")
    parser.add_argument("--args", default=None, help='script arguments as one string: --args "--lr 0.1"')
    parser.add_argument("--port", type=port_value, default=None, help="debug port (default 5678; 0 any; auto next free)")
    parser.add_argument("--bind", default=None, help="address debugpy binds (default: loopback locally)")
    parser.add_argument("--timeout", type=timeout_value, default=None, help="seconds to wait for a debugger (0: don't)")
    parser.add_argument("--no-debug", action="store_true", help="run without the debugger")
    parser.add_argument("--stop-on-entry", action="store_true", help="pause at the script's first line once attached")
    parser.add_argument("--nodes", type=count_value, default=None, help="distributed: number of nodes (default 1)")
    parser.add_argument("--procs-per-node", type=count_value, default=None,
                        help="distributed: processes per node, each with RANK/LOCAL_RANK/WORLD_SIZE (default 1)")
    parser.add_argument("--debug-ranks", type=ranks_value, action="append", default=None,
                        help="debug only these ranks (0,3); the others run with no debugger")
    parser.add_argument("--post-mortem", action="store_true",
                        help="an uncaught exception waits for a debugger, which stops where it was raised")
    parser.add_argument("--post-mortem-timeout", type=timeout_value, default=None,
                        help="seconds a crash (or --wait-on-breakpoint) waits for a debugger (default 600)")
    parser.add_argument("--wait-on-breakpoint", action="store_true",
                        help="breakpoint() with no debugger attached waits for one (else it is a no-op)")
    parser.add_argument("--wait", action="store_true", default=None, help="block until the run ends")
    parser.add_argument("--launch-json", default=None, help="merge the attach configuration into this launch.json")
    parser.add_argument("--local-root", default=None, help="local folder mapped to the run's working directory")
    parser.add_argument("--pip", action="append", default=[], help="pip requirement (repeatable)")
    parser.add_argument("--requirements", default=None, help="requirements file for the run's environment")
    parser.add_argument("--env-var", action="append", type=env_var_value, default=[], help="KEY=VALUE (repeatable)")
    parser.add_argument("--base-image", default=None, help="docker: image to build on (default python:<kernel's X.Y>-slim)")
    parser.add_argument("--conda", default=None, help="conda environment file (docker: created in the image)")
    parser.add_argument("--gpus", default=None, help="docker: GPUs for the container (all, N, device=0,1); none unless asked")
    parser.add_argument("--wheels", choices=("host", "index"), default=None,
                        help="docker: resolve wheels on the host (default; build needs no network) or in the build")
    parser.add_argument("--compute", default=None, help="azureml: compute target name (default: %%config, or this compute instance)")
    parser.add_argument("--experiment", default=None, help="azureml: experiment name (default: the notebook's name)")
    parser.add_argument("--workspace-config", default=None,
                        help="azureml: workspace config.json, or a folder to search (default: Workspace.from_config() lookup)")
    parser.add_argument("--environment", default=None, metavar="NAME[:VERSION]",
                        help="azureml: an existing/curated Azure ML environment to use, with debugpy added")
    parser.add_argument("--sdk", choices=("v1", "v2"), default=None,
                        help="azureml: submit with azureml-core (v1) or azure-ai-ml (v2); default: %%config "
                             "AmlDebugMagics.azureml_sdk, else the one installed (v1 when both are)")
    parser.add_argument("--subscription", default=None, help="azureml: subscription id (with --resource-group, --workspace)")
    parser.add_argument("--resource-group", default=None, help="azureml: resource group of the workspace")
    parser.add_argument("--workspace", default=None, help="azureml: workspace name (instead of a config.json)")
    parser.add_argument("--vscode-service", action="store_true", default=None,
                        help="azureml v2: add a VS Code job service (reach the node from outside its network)")
    parser.add_argument("--distribution", choices=("pytorch", "mpi"), default=None,
                        help="azureml v2: launcher of a distributed job (--nodes/--procs-per-node; default pytorch)")
    parser.add_argument("--dry-run", action="store_true",
                        help="build what would be submitted and show it; contact no service, start nothing")
    parser.add_argument("--output", choices=("text", "json"), default=None, help="CLI: --dry-run output format")


def make_parser(prog: str) -> _Parser:
    parser = _Parser(prog=prog, add_help=False, allow_abbrev=False)
    add_run_options(parser)
    parser.add_argument("script_path", nargs="?", default=None)
    return parser


def split_script_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """``[options] SCRIPT -- a b`` → options part and script arguments."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def parse_line(line: str, prog: str = "%aml_debug_run") -> argparse.Namespace:
    try:
        argv = shlex.split(line)
    except ValueError as exc:
        raise OptionsError(f"cannot parse options: {exc}") from None
    opts, script_args = split_script_args(argv)
    ns = make_parser(prog).parse_args(opts)
    ns.script_args = script_args
    return ns


@dataclass
class Defaults:
    """What an option falls back to when not given (traitlets on the magic)."""

    target: str = "local"
    port: int = DEFAULT_PORT
    bind: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    wait: bool = False
    launch_json: str | None = None
    cell_dir: str = DEFAULT_CELL_DIR
    target_options: dict[str, Any] = field(default_factory=dict)  # e.g. compute, sdk (%config)


@dataclass
class RunRequest:
    """A checked request: everything needed to start, nothing started yet."""

    spec: RunSpec
    target: str
    wait: bool
    launch_json: Path | None
    target_options: dict[str, Any] = field(default_factory=dict)
    cell_file: Path | None = None  # the file the cell must be written to, if any
    cell: str | None = None
    cell_dir_is_ours: bool = False  # the default cell dir: rewriting its files is expected
    dry_run: bool = False  # build and show the submission only (aml_magics.dryrun)


def build_request(ns: argparse.Namespace, cell: str | None, defaults: Defaults, cwd: Path | None = None) -> RunRequest:
    cwd = cwd or Path.cwd()
    source_dir, script, cell_file = _locate_script(ns, cell, defaults, cwd)
    args = list(shlex.split(ns.args)) if ns.args else []
    args += getattr(ns, "script_args", [])
    name = ns.name or Path(script).stem
    if not _NAME.match(name):
        raise OptionsError(f"--name {name!r}: use letters, digits, '.', '_' or '-' (max 64)")
    port_text = ns.port if ns.port is not None else str(defaults.port)
    debug = DebugOptions(
        enabled=not ns.no_debug,
        port=DEFAULT_PORT if port_text == "auto" else int(port_text),
        port_auto=port_text == "auto",
        bind=ns.bind if ns.bind is not None else defaults.bind,
        timeout=ns.timeout if ns.timeout is not None else defaults.timeout,
        stop_on_entry=ns.stop_on_entry,
        **_debug_extras(ns),
    )
    target = ns.target or defaults.target
    distributed = _distributed(ns, target, debug)
    spec = RunSpec(
        name=name,
        source_dir=source_dir,
        script=script,
        args=tuple(args),
        environment=_environment(ns, cwd),
        debug=debug,
        distributed=distributed,
        local_root=_resolve(ns.local_root, cwd) if ns.local_root else None,
    )
    launch_json = ns.launch_json if ns.launch_json is not None else defaults.launch_json
    return RunRequest(
        spec=spec,
        target=target,
        target_options=_target_options(ns, target, defaults),
        wait=bool(ns.wait) if ns.wait is not None else defaults.wait,
        launch_json=_resolve(launch_json, cwd) if launch_json else None,
        cell_file=cell_file,
        cell=cell,
        cell_dir_is_ours=cell is not None and not ns.source_dir,
        dry_run=bool(getattr(ns, "dry_run", False)),
    )


def _debug_extras(ns: argparse.Namespace) -> dict[str, Any]:
    """Post-mortem, breakpoint() and rank options (absent from a namespace built elsewhere)."""
    ranks = getattr(ns, "debug_ranks", None)
    timeout = getattr(ns, "post_mortem_timeout", None)
    if getattr(ns, "no_debug", False):
        wanted = [flag for flag, on in (("--post-mortem", getattr(ns, "post_mortem", False)),
                                        ("--wait-on-breakpoint", getattr(ns, "wait_on_breakpoint", False)),
                                        ("--debug-ranks", bool(ranks))) if on]
        if wanted:
            verb = "needs" if len(wanted) == 1 else "need"
            raise OptionsError(f"{' and '.join(wanted)} {verb} the debugger: drop --no-debug")
    return {
        "post_mortem": bool(getattr(ns, "post_mortem", False)),
        "post_mortem_timeout": DEFAULT_POST_MORTEM_TIMEOUT if timeout is None else timeout,
        "wait_on_breakpoint": bool(getattr(ns, "wait_on_breakpoint", False)),
        "debug_ranks": tuple(sorted({r for group in ranks for r in group})) if ranks else None,
    }


def _distributed(ns: argparse.Namespace, target: str, debug: DebugOptions) -> DistributedSpec:
    nodes = getattr(ns, "nodes", None) or 1
    procs = getattr(ns, "procs_per_node", None) or 1
    if nodes > 1 and target in SINGLE_NODE_TARGETS:
        raise OptionsError(f"--nodes {nodes}: target '{target}' runs one container on one machine; "
                           f"use --procs-per-node for several processes, or --target azureml for several nodes")
    if procs > 1 and target in SINGLE_PROCESS_TARGETS:
        raise OptionsError(f"--procs-per-node {procs}: target '{target}' does not start several processes yet; "
                           "use --target local")
    world = nodes * procs
    if target in ("local", "docker") and world > MAX_LOCAL_PROCESSES:
        raise OptionsError(f"--nodes {nodes} --procs-per-node {procs}: {world} processes; "
                           f"the {target} target starts at most {MAX_LOCAL_PROCESSES}")
    if debug.debug_ranks is not None:
        outside = [r for r in debug.debug_ranks if r >= world]
        if outside:
            raise OptionsError(f"--debug-ranks {','.join(map(str, outside))}: the run has {world} rank(s) "
                               f"(0-{world - 1})")
    return DistributedSpec(nodes=nodes, procs_per_node=procs)


def _target_options(ns: argparse.Namespace, target: str, defaults: Defaults) -> dict[str, Any]:
    """The target's own options: given on the line, else configured defaults."""
    options = {}
    for name in TARGET_OPTIONS.get(target, ()):
        value = getattr(ns, name, None)
        if value is None:
            value = defaults.target_options.get(name)
        if value is not None:
            options[name] = value
    return options


def _resolve(path: str | os.PathLike, cwd: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (cwd / p)


def _locate_script(ns: argparse.Namespace, cell: str | None, defaults: Defaults, cwd: Path) -> tuple[Path, str, Path | None]:
    if cell is not None:
        if ns.script_path:
            raise OptionsError(f"the cell is the script; drop {ns.script_path!r} or use the line form %aml_debug_run SCRIPT")
        source_dir = _resolve(ns.source_dir or defaults.cell_dir, cwd)
        script = ns.script or f"{ns.name or 'cell'}.py"
        _check_relative(script)
        return source_dir, script, source_dir / script
    given = ns.script_path or ns.script
    if not given:
        raise OptionsError("no script: give a SCRIPT path, or use %%aml_debug_run with the code in the cell")
    if ns.source_dir:
        source_dir = _resolve(ns.source_dir, cwd)
        candidate = _resolve(given, source_dir) if not Path(given).is_absolute() else Path(given)
    else:
        candidate = _resolve(given, cwd)
        source_dir = candidate.parent
    if not candidate.is_file():
        raise OptionsError(f"script not found: {candidate}")
    try:
        script = str(candidate.resolve().relative_to(source_dir.resolve()))
    except ValueError:
        raise OptionsError(f"script {candidate} is not inside --source-dir {source_dir}") from None
    return source_dir.resolve(), script, None


def _check_relative(script: str) -> None:
    path = Path(script)
    if path.is_absolute() or ".." in path.parts:
        raise OptionsError(f"--script {script!r} must be a relative path inside the source dir")
    if path.suffix != ".py":
        raise OptionsError(f"--script {script!r} must end in .py")


def _environment(ns: argparse.Namespace, cwd: Path) -> EnvironmentSpec:
    requirements, req_path = "", None
    if ns.requirements:
        path = _resolve(ns.requirements, cwd)
        try:
            requirements = path.read_text()
        except OSError as exc:
            raise OptionsError(f"cannot read --requirements {path}: {exc.strerror or exc}") from None
        req_path = str(path)
    conda_text = ""
    conda = getattr(ns, "conda", None)
    if conda:
        path = _resolve(conda, cwd)
        try:
            conda_text = path.read_text()
        except OSError as exc:
            raise OptionsError(f"cannot read --conda {path}: {exc.strerror or exc}") from None
    return EnvironmentSpec(
        pip=tuple(ns.pip or ()),
        requirements=requirements,
        requirements_path=req_path,
        conda=conda_text,
        base_image=getattr(ns, "base_image", None),
        env_vars=tuple(ns.env_var or ()),
    )


def check_syntax(source: str, filename: str) -> None:
    """Compile before anything runs, so a typo costs nothing."""
    try:
        compile(source, filename, "exec", dont_inherit=True)
    except SyntaxError as exc:
        where = f"line {exc.lineno}" if exc.lineno else "unknown line"
        raise OptionsError(f"{Path(filename).name}: syntax error at {where}: {exc.msg}") from None
    except ValueError as exc:  # e.g. null bytes
        raise OptionsError(f"{Path(filename).name}: cannot compile: {exc}") from None


def check_script_file(path: Path, what: str = "script") -> None:
    """Check a script file's syntax (it must be readable); one written in a declared encoding
    other than UTF-8 is left for Python to judge when it runs."""
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise OptionsError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        text = source.decode("utf-8-sig")
    except UnicodeDecodeError:
        return
    check_syntax(text, str(path))


def options_argv(options: dict[str, Any]) -> list[str]:
    """Python API keywords as the magic's flags: ``model_dir="m"`` → ``--model-dir m``; True →
    the bare flag; None or False → nothing; a list or tuple → the flag once per item."""
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv


def parse_cli(argv: Sequence[str], prog: str) -> argparse.Namespace:
    opts, script_args = split_script_args(list(argv))
    ns = make_parser(prog).parse_args(opts)
    ns.script_args = script_args
    return ns
