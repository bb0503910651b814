"""Options → RunSpec, shared by the magic, the CLI and the Python API.

User mistakes raise OptionsError with one clear line; the magic turns it into a
UsageError, the CLI into exit code 2. Nothing is started or written before the
whole request has been checked.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import os
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import OptionsError, TargetError
from .spec import (
    DEFAULT_PORT,
    DEFAULT_PORT_CHOICE,
    DEFAULT_POST_MORTEM_TIMEOUT,
    DEFAULT_TIMEOUT,
    DebugOptions,
    DistributedSpec,
    EnvironmentSpec,
    RunSpec,
)
from .target_base import Option, option
from .targets import TargetInfo, all_targets, target_info, target_names

DEFAULT_CELL_DIR = ".aml_magics/cells"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_TIMEOUT = 7 * 24 * 3600.0  # a week: beyond that a "timeout" is a typo (and overflows a timer)

__all__ = ["OptionsError", "Defaults", "RunRequest", "build_request", "make_parser", "parse_line", "parse_cli",
           "options_argv", "port_value", "timeout_value", "check_syntax", "check_script_file"]


SCRIPT_ARGS_HINT = "the script's own arguments go after --: {prog} [options] SCRIPT -- {args}"


class _Parser(argparse.ArgumentParser):
    takes_script_args = False  # a parser of runs: unknown arguments are probably the script's

    def error(self, message: str) -> None:  # type: ignore[override]
        raise OptionsError(_one_mention(message, self) if not message.startswith("unrecognized arguments: ")
                           else self._unrecognized(message))

    def _unrecognized(self, message: str) -> str:
        extra = message.removeprefix("unrecognized arguments: ")
        typo = self._close_option(extra.split())
        if typo:
            return typo
        if not self.takes_script_args:
            return message
        if self.prog.startswith("aml_magics."):  # the Python API: keywords, not flags
            return f"{message} (not an option of {self.prog}; the script's own arguments go in args=[...])"
        return f"{message} ({SCRIPT_ARGS_HINT.format(prog=self.prog, args=extra)})"

    def _close_option(self, words: list[str]) -> str:
        """``--timout`` → ``unrecognized option --timout: did you mean --timeout?`` (a near miss of an
        option, not the script's own argument)."""
        known = [flag for flag in self._option_string_actions if flag.startswith("--")]
        for word in words:
            flag = word.split("=", 1)[0]
            if flag.startswith("--"):
                close = difflib.get_close_matches(flag, known, n=1, cutoff=0.8)
                if close:
                    return f"unrecognized option {flag}: did you mean {close[0]}?"
        return ""

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        raise OptionsError(message or "invalid options")


def _one_mention(message: str, parser: argparse.ArgumentParser) -> str:
    """argparse's ``argument --port: --port must be ...`` → ``--port must be ...`` (a value checker's
    message already names its flag)."""
    head, sep, rest = message.partition(": ")
    if sep and head.startswith("argument "):
        flags = head.removeprefix("argument ").split("/")
        if any(flag in rest for flag in flags):
            return rest
    return message


# -- values (the same checks for flags and for %config traits) ------------------------------------


def port_number(text: str, flag: str, also: str = "") -> int:
    """``text`` as a TCP port (0-65535); errors name ``flag`` and what else it takes (``also``)."""
    try:
        port = int(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag} must be a number 0-65535{also}, not {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{flag} must be between 0 and 65535, not {port}")
    return port


def port_value(text: str) -> str:
    if str(text).strip() != "auto":
        port_number(text, "--port", also=" or 'auto'")
    return str(text).strip()


def seconds_value(text: str, flag: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{flag} must be a number of seconds, not {text!r}") from None
    if value < 0 or value != value or value > MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(f"{flag} must be 0 or a positive number of seconds up to {MAX_TIMEOUT:g} "
                                         f"(a week), not {text}")
    return value


def timeout_value(text: str) -> float:
    return seconds_value(text, "--timeout")


def post_mortem_timeout_value(text: str) -> float:
    return seconds_value(text, "--post-mortem-timeout")


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


def env_var_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
        raise argparse.ArgumentTypeError(f"--env-var takes KEY=VALUE, not {text!r}")
    return key, value


def name_value(text: str) -> str:
    if not _NAME.match(text):
        raise argparse.ArgumentTypeError(f"--name {text!r}: use letters, digits, '.', '_' or '-' "
                                         "(start with a letter or digit, max 64)")
    return text


def bind_value(text: str) -> str:
    """An IPv4 address (or ``node``: the node's own); IPv6 is refused in one line (debugpy's
    listener is IPv4-only)."""
    text = str(text).strip()
    if text == "node":
        return text
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--bind {text!r}: expected an IPv4 address (e.g. 127.0.0.1) or 'node'") \
            from None
    if address.version == 6:
        raise argparse.ArgumentTypeError(f"--bind {text}: IPv6 is not supported (debugpy listens on IPv4 only); "
                                         "use 127.0.0.1 or a node's IPv4 address")
    return text


# -- the options every run takes --------------------------------------------------------------------

COMMON_OPTIONS: tuple[Option, ...] = (
    option("-t", "--target", default=None, metavar="TARGET",
           help="where the run executes: {targets} (default: local)"),  # the registry's names
    option("--name", type=name_value, default=None,
           help="run name, also the launch.json configuration name (default: the script's name; a cell: cell)"),
    option("--source-dir", default=None, metavar="DIR",
           help="the run's working directory (default: the script's folder; a cell: .aml_magics/cells)"),
    option("--script", default=None, metavar="FILE",
           help="entry script relative to --source-dir (a cell: the file it is written to, default NAME.py)"),
    option("--args", default=None, metavar='"ARGS"',
           help='the script\'s arguments as one string: --args "--lr 0.1" (or after --)'),
    option("--port", type=port_value, default=None, metavar="PORT",
           help=f"debug port: auto (the default: {DEFAULT_PORT} or the next free one), a number, or 0 (any free one)"),
    option("--bind", type=bind_value, default=None, metavar="ADDRESS",
           help="address debugpy binds (default: 127.0.0.1 locally, the node's own address remotely)"),
    option("--timeout", type=timeout_value, default=None, metavar="SECONDS",
           help=f"seconds to wait for a debugger to attach; 0: don't wait (default: {DEFAULT_TIMEOUT:g})"),
    option("--no-debug", action="store_true", help="run without the debugger"),
    option("--stop-on-entry", action="store_true", help="once attached, pause at the script's first line"),
    option("--insecure", action="store_true", default=None,
           help="a debug port that leaves this machine is reached directly, without the authenticated TLS "
                "tunnel (anyone who reaches it owns the process)"),
    option("--reattach", action="store_true",
           help="keep listening after the debugger detaches (default: one attach per window)"),
    option("--subprocesses", action="store_true",
           help="follow the processes the script starts (subprocess, multiprocessing): each gets a debug "
                "session of its own (local runs on a direct port)"),
    option("--nodes", type=count_value, default=None, metavar="N", help="distributed: number of nodes (default: 1)"),
    option("--procs-per-node", type=count_value, default=None, metavar="M",
           help="distributed: processes per node, each with RANK/LOCAL_RANK/WORLD_SIZE (default: 1)"),
    option("--debug-ranks", type=ranks_value, action="append", default=None, metavar="RANKS",
           help="debug only these ranks, e.g. 0,3; the others run with no debugger (default: all)"),
    option("--post-mortem", action="store_true",
           help="an uncaught exception waits for a debugger, which stops where it was raised"),
    option("--post-mortem-timeout", type=post_mortem_timeout_value, default=None, metavar="SECONDS",
           help=f"seconds a crash (or --wait-on-breakpoint) waits for a debugger "
                f"(default: {DEFAULT_POST_MORTEM_TIMEOUT:g})"),
    option("--wait-on-breakpoint", action="store_true",
           help="breakpoint() with no debugger attached waits for one (else it is a no-op)"),
    option("--wait", action="store_true", default=None, help="block until the run ends (default: return at once)"),
    option("--launch-json", default=None, metavar="PATH",
           help="merge the attach configuration into this launch.json as soon as the endpoint is known "
                "(default: only on request; the panel writes WORKSPACE/.vscode/launch.json)"),
    option("--local-root", default=None, metavar="DIR",
           help="local folder launch.json maps onto the run's working directory (default: --source-dir)"),
    option("--pip", action="append", default=[], metavar="PKG",
           help="a pip requirement for the run's environment (repeatable)"),
    option("--requirements", default=None, metavar="FILE", help="a requirements file for the run's environment"),
    option("--env-var", action="append", type=env_var_value, default=[], metavar="KEY=VALUE",
           help="KEY=VALUE in the run's environment (repeatable)"),
    option("--base-image", default=None, metavar="IMAGE",
           help="docker/azureml: image to build on (default: python:<this Python's X.Y>-slim)"),
    option("--conda", default=None, metavar="FILE", help="conda environment file (docker: created in the image)"),
    option("--dry-run", action="store_true",
           help="build what would be submitted and show it; contact no service, start nothing"),
    option("--output", choices=("text", "json"), default=None, help="--dry-run output format (default: text)"),
)


def add_options(parser: "argparse._ActionsContainer", options: Iterable[Option]) -> None:
    """Add each option once (several targets may declare the same one); ``{targets}`` in a help
    text is the registry's target names."""
    seen = {action.dest for action in parser._actions}
    for item in options:
        if item.dest not in seen:
            kwargs = dict(item.kwargs)
            if "{targets}" in kwargs.get("help", ""):
                kwargs["help"] = kwargs["help"].replace("{targets}", ", ".join(target_names()))
            parser.add_argument(*item.flags, **kwargs)
            seen.add(item.dest)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options every run takes, then every target's own (a help section each), in the magic
    and the CLI alike."""
    add_options(parser.add_argument_group("options"), COMMON_OPTIONS)
    for info in all_targets():
        fresh = [item for item in info.options if item.dest not in {a.dest for a in parser._actions}]
        if fresh:
            add_options(parser.add_argument_group(f"{info.name} target"), fresh)


SCRIPT_HELP = ("the Python script to run, e.g. examples/train.py (the cell form %%%%aml_debug_run takes none); "
               "ARGS after -- are passed to it untouched")


def make_parser(prog: str, usage: str | None = None, epilog: str | None = None) -> _Parser:
    """The options of a run; ``usage`` (``%(prog)s`` for the name) defaults to
    ``PROG [options] [SCRIPT] [-- ARGS ...]`` (a magic's also names its cell form)."""
    if usage is None:
        usage = "%(prog)s [options] [SCRIPT] [-- ARGS ...]"
        if prog.startswith("%"):
            usage += "\n       %%%(prog)s [options]   (the cell is the script)"
    parser = _Parser(prog=prog, add_help=False, allow_abbrev=False, epilog=epilog, usage=usage,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.takes_script_args = True
    parser.add_argument("script_path", nargs="?", default=None, metavar="SCRIPT", help=SCRIPT_HELP)
    add_run_options(parser)
    return parser


# The options of %aml_debug_pipeline besides the run's own ones it shares.
PIPELINE_RUN_OPTIONS = ("port", "bind", "timeout", "stop_on_entry", "launch_json", "dry_run", "wait")
PIPELINE_OPTIONS: tuple[Option, ...] = (
    option("--steps", default=None, help="names of the steps to debug, comma-separated"),
    option("--experiment", default=None, help="experiment name"),
    option("--workspace-config", default=None, help="workspace config.json, or a folder to search"),
    option("--parameter", action="append", default=[], help="pipeline parameter NAME=VALUE (repeatable)"),
    # the guide's own flags
    option("--remote_debug", action="store_true", help="(the guide's flag) debugging on: the default"),
    option("--remote_debug_connection_timeout", type=timeout_value, default=None,
           help="(the guide's flag) the attach timeout"),
    option("--remote_debug_port", type=port_value, default=None, help="(the guide's flag) the debug port"),
    option("--remote_debug_client_ip", default=None,
           help="(the guide's flag) ignored: the node's own address is bound"),
)


def make_pipeline_parser(prog: str) -> _Parser:
    parser = _Parser(prog=prog, add_help=False, allow_abbrev=False,
                     description="Submit an Azure ML pipeline with debugging on for chosen PythonScriptSteps.")
    parser.add_argument("steps_expr", metavar="STEPS", help="the list of pipeline steps (a variable or expression)")
    add_options(parser, [o for o in COMMON_OPTIONS if o.dest in PIPELINE_RUN_OPTIONS])
    add_options(parser, PIPELINE_OPTIONS)
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
    port: int | str = DEFAULT_PORT_CHOICE
    bind: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    wait: bool = False
    launch_json: str | None = None
    cell_dir: str = DEFAULT_CELL_DIR
    secure: bool = True
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


def _info(target: str) -> TargetInfo:
    try:
        return target_info(target)
    except TargetError as exc:
        raise OptionsError(str(exc)) from None


def build_request(ns: argparse.Namespace, cell: str | None, defaults: Defaults, cwd: Path | None = None) -> RunRequest:
    cwd = cwd or Path.cwd()
    target = ns.target or defaults.target
    info = _info(target)
    source_dir, script, cell_file = _locate_script(ns, cell, defaults, cwd)
    try:
        args = list(shlex.split(ns.args)) if ns.args else []
    except ValueError as exc:
        raise OptionsError(f"--args: cannot parse {ns.args!r}: {exc}") from None
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
        secure=not getattr(ns, "insecure", None) and defaults.secure,
        reattach=bool(getattr(ns, "reattach", False)),
        subprocesses=bool(getattr(ns, "subprocesses", False)),
        **_debug_extras(ns),
    )
    if debug.subprocesses and not info.capabilities.subprocesses:
        raise OptionsError(f"--subprocesses: target '{target}' does not follow child processes yet "
                           "(their debug sessions are reached directly: local runs only)")
    distributed = _distributed(ns, info, debug)
    local_root = _local_root(ns, cwd)
    spec = RunSpec(
        name=name,
        source_dir=source_dir,
        script=script,
        args=tuple(args),
        environment=_environment(ns, cwd),
        debug=debug,
        distributed=distributed,
        local_root=local_root,
    )
    launch_json = ns.launch_json if ns.launch_json is not None else defaults.launch_json
    return RunRequest(
        spec=spec,
        target=target,
        target_options=_target_options(ns, info, defaults),
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
                                        ("--debug-ranks", bool(ranks)),
                                        ("--subprocesses", getattr(ns, "subprocesses", False))) if on]
        if wanted:
            verb = "needs" if len(wanted) == 1 else "need"
            raise OptionsError(f"{' and '.join(wanted)} {verb} the debugger: drop --no-debug")
    return {
        "post_mortem": bool(getattr(ns, "post_mortem", False)),
        "post_mortem_timeout": DEFAULT_POST_MORTEM_TIMEOUT if timeout is None else timeout,
        "wait_on_breakpoint": bool(getattr(ns, "wait_on_breakpoint", False)),
        "debug_ranks": tuple(sorted({r for group in ranks for r in group})) if ranks else None,
    }


def _distributed(ns: argparse.Namespace, info: TargetInfo, debug: DebugOptions) -> DistributedSpec:
    nodes = getattr(ns, "nodes", None) or 1
    procs = getattr(ns, "procs_per_node", None) or 1
    caps, target = info.capabilities, info.name
    if caps.max_nodes is not None and nodes > caps.max_nodes:
        raise OptionsError(f"--nodes {nodes}: target '{target}' runs {caps.one_machine or 'its processes'} on "
                           f"{'one machine' if caps.max_nodes == 1 else f'at most {caps.max_nodes} nodes'}; "
                           f"use --procs-per-node for several processes{_targets_for(nodes)}")
    world = nodes * procs
    if caps.max_processes is not None and world > caps.max_processes:
        raise OptionsError(f"--nodes {nodes} --procs-per-node {procs}: {world} processes; "
                           f"the {target} target starts at most {caps.max_processes}")
    if debug.debug_ranks is not None:
        outside = [r for r in debug.debug_ranks if r >= world]
        if outside:
            raise OptionsError(f"--debug-ranks {','.join(map(str, outside))}: the run has {world} rank(s) "
                               f"(0-{world - 1})")
    return DistributedSpec(nodes=nodes, procs_per_node=procs)


def _targets_for(nodes: int) -> str:
    """``, or --target X for several nodes`` from the registry (every target that takes ``nodes``)."""
    able = [info.name for info in all_targets()
            if info.capabilities.max_nodes is None or info.capabilities.max_nodes >= nodes]
    return f", or --target {' or '.join(able)} for several nodes" if able else ""


def _target_options(ns: argparse.Namespace, info: TargetInfo, defaults: Defaults) -> dict[str, Any]:
    """The target's own options: given on the line, else configured defaults."""
    options = {}
    for item in info.options:
        if not item.to_target:
            continue
        value = getattr(ns, item.dest, None)
        if value is None:
            value = defaults.target_options.get(item.dest)
        if value is not None:
            options[item.dest] = value
    return options


def _local_root(ns: argparse.Namespace, cwd: Path) -> Path | None:
    if not getattr(ns, "local_root", None):
        return None
    path = _resolve(ns.local_root, cwd)
    if not path.is_dir():
        raise OptionsError(f"--local-root {path}: no such folder")
    return path


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
    if candidate.is_dir():
        raise OptionsError(_folder_message(given, candidate))
    if not candidate.is_file():
        raise OptionsError(f"script not found: {candidate}")
    try:
        script = str(candidate.resolve().relative_to(source_dir.resolve()))
    except ValueError:
        raise OptionsError(f"script {candidate} is not inside --source-dir {source_dir}") from None
    return source_dir.resolve(), script, None


def _folder_message(given: str, folder: Path) -> str:
    """A folder given where a script belongs: name the scripts in it."""
    scripts = sorted(p.name for p in folder.glob("*.py"))[:6]
    inside = f"e.g. {Path(given) / scripts[0]} (there: {', '.join(scripts)})" if scripts else "it has no .py file"
    return f"{given} is a folder, not a script: give the script to run, {inside}"


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
