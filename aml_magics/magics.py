"""The IPython magics: thin. Options → engine → DebugRun; display is the run's own.

Defaults are traitlets on the class (``%config AmlDebugMagics.port = 0``), checked with the
same validators as the flags, so a bad value is one line, not a traceback. A target's options
marked for ``%config`` (``option(..., config=NAME)``) become traits by themselves, added the
first time they are needed (a ``%config`` naming them, the class's help, the first run).

Loading the extension is cheap: the engine, the options, the targets and the views are imported
at first use. Every magic goes through one door for user errors (:func:`user_errors`): an
``AmlMagicsError`` becomes one ``UsageError`` line.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class, no_var_expand
from traitlets import Bool, Float, TraitType, Unicode, Union, validate
from traitlets import Int as IntTrait

from .errors import AmlMagicsError, one_line

if TYPE_CHECKING:
    from .engine import RunRegistry
    from .options import Defaults
    from .run import DebugRun
    from .target_base import Option

_log = logging.getLogger("aml_magics")
DEFAULT_PORT_CHOICE = "auto"  # spec.DEFAULT_PORT_CHOICE (checked by a test), without importing spec at load
F = TypeVar("F", bound=Callable[..., Any])
TRANSCRIPT_LINES = 100_000  # a --wait cell's text form keeps the whole log (within the run's output cap)


def user_errors(method: F) -> F:
    """The one door: a user error (any ``AmlMagicsError``) raised by a magic is one ``UsageError`` line."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except AmlMagicsError as exc:
            raise UsageError(one_line(exc)) from None

    return wrapper  # type: ignore[return-value]


def _checked(proposal: Any, check: Any) -> Any:
    """A ``%config AmlDebugMagics.<trait>`` value checked like its flag: a bad one is refused in
    one line and the default is kept (raising would also break every later ``%load_ext``, which
    reads the stored configuration again)."""
    value = proposal["value"]
    if value is None:
        return value
    try:
        check(value)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        default = proposal["trait"].default_value
        _log.error(f"%config AmlDebugMagics.{proposal['trait'].name}: {exc}; kept {default!r}")
        return default
    return value


def _option_trait(item: Option, target: str) -> TraitType:
    """The ``%config`` trait of a target's option: its default, checked like the flag."""
    flag = item.flags[-1]
    help_text = f"Default {flag} ({target})"
    if item.kwargs.get("action") == "store_true":
        return Bool(None, allow_none=True, help=help_text).tag(config=True)

    class OptionTrait(Unicode):
        def validate(self, obj: Any, value: Any) -> Any:
            value = super().validate(obj, value)
            return _checked({"value": value, "trait": self}, lambda v: item.check(v, self.name))

    return OptionTrait(None, allow_none=True, help=help_text).tag(config=True)


@magics_class
class AmlDebugMagics(Magics):
    """Run code with debugpy listening, on a target of your choice. Configure with %config."""

    target = Unicode("local", help="Default --target").tag(config=True)
    port = Union([IntTrait(), Unicode()], default_value=DEFAULT_PORT_CHOICE,
                 help="Default debug port ('auto': 5678 or the next free one; 0: any free port)").tag(config=True)
    bind = Unicode(None, allow_none=True, help="Default address debugpy binds").tag(config=True)
    timeout = Float(300.0, help="Default seconds to wait for a debugger to attach").tag(config=True)
    wait = Bool(False, help="Block until the run ends by default").tag(config=True)
    secure = Bool(True, help="Ports that leave this machine go through the authenticated TLS tunnel "
                             "(False: today's direct, unauthenticated endpoint, with a warning)").tag(config=True)
    launch_json = Unicode(None, allow_none=True, help="Default --launch-json path").tag(config=True)
    cell_dir = Unicode(".aml_magics/cells", help="Where cell scripts are written").tag(config=True)

    @validate("port")
    def _valid_port(self, proposal: Any) -> Any:
        from .options import port_value

        return _checked(proposal, lambda v: port_value(str(v)))

    @validate("timeout")
    def _valid_timeout(self, proposal: Any) -> Any:
        from .options import timeout_value

        return _checked(proposal, lambda v: timeout_value(str(v)))

    @validate("bind")
    def _valid_bind(self, proposal: Any) -> Any:
        from .options import bind_value

        return _checked(proposal, lambda v: bind_value(str(v)))

    def __init__(self, shell: Any = None, registry: RunRegistry | None = None, **kwargs: Any) -> None:
        self._target_traits: dict[str, str] | None = None  # trait name → option dest, once added
        super().__init__(shell=shell, **kwargs)
        self._registry = registry

    @property
    def registry(self) -> RunRegistry:
        if self._registry is None:
            from .engine import REGISTRY

            self._registry = REGISTRY
        return self._registry

    # -- the targets' %config traits --------------------------------------------------------------
    def target_traits(self) -> dict[str, str]:
        """The traits of the targets' options marked for ``%config`` (trait name → option dest),
        added to this instance the first time they are asked for."""
        if self._target_traits is None:
            from .targets import all_targets

            traits: dict[str, TraitType] = {}
            names: dict[str, str] = {}
            for info in all_targets():
                for item in info.options:
                    if item.config and item.config not in names and not self.has_trait(item.config):
                        traits[item.config] = _option_trait(item, info.name)
                        names[item.config] = item.dest
            self._target_traits = names
            self.add_traits(**traits)
            self._load_config(self.config)  # values set before they existed
        return self._target_traits

    def _load_config(self, cfg: Any, section_names: Any = None, traits: Any = None) -> None:
        if self._target_traits is None and any(not self.has_trait(name) for name in self._find_my_config(cfg)):
            self.target_traits()  # a target's trait, configured before it existed
            traits = None if traits is None else self.traits(config=True)
        super()._load_config(cfg, section_names=section_names, traits=traits)

    @classmethod
    def class_get_help(cls, inst: Any = None) -> str:
        if inst is not None and inst._target_traits is None:  # %config AmlDebugMagics lists them too
            inst.target_traits()
            return type(inst).class_get_help(inst)
        return super().class_get_help(inst)

    def __getattr__(self, name: str) -> Any:
        """A target's trait read before it was added (``%config AmlDebugMagics.compute``)."""
        if name.startswith("_") or self.__dict__.get("_target_traits", {}) is not None:
            raise AttributeError(name)
        if name in self.target_traits():
            return getattr(self, name)
        raise AttributeError(name)

    def defaults(self) -> Defaults:
        """The options' fallbacks, from the traits (one source: the traits' own values)."""
        from .options import Defaults

        configured = {dest: getattr(self, trait) for trait, dest in self.target_traits().items()}
        return Defaults(target=self.target, port=self.port, bind=self.bind, timeout=self.timeout,
                        wait=self.wait, launch_json=self.launch_json, cell_dir=self.cell_dir, secure=self.secure,
                        target_options={k: v for k, v in configured.items() if v is not None and v != ""})

    # -- runs ---------------------------------------------------------------------------------
    @line_cell_magic
    @user_errors
    def aml_debug_run(self, line: str, cell: str | None = None) -> DebugRun | None:
        """Run a cell (%%aml_debug_run [options]) or a script (%aml_debug_run [options] SCRIPT [-- args])
        with debugpy listening. Options: see `aml-debug run --help` or the README."""
        from . import engine
        from .options import build_request, make_parser, parse_line

        if line.strip() in ("-h", "--help"):
            print(make_parser("%aml_debug_run").format_help())
            return None
        request = build_request(parse_line(line), cell, self.defaults())
        if request.dry_run:
            from .dryrun import plan

            return plan(request)  # type: ignore[return-value]
        run = engine.start(request, self.registry)
        return self._follow(run, request.wait, cell_form=cell is not None)

    def _follow(self, run: DebugRun, wait: bool, cell_form: bool = False) -> DebugRun | None:
        """Widgets update themselves; in text mode, stream until there is something to attach to.

        ``--wait`` with widgets: the live panel (state, countdown, the log) is shown at once and the
        cell blocks until the run ends; the log is the panel's, not streamed beside it. The cell
        form then returns nothing (the panel is its output); the line form returns the run."""
        from .follow import follow
        from .views import widget_frontend

        shown = wait and widget_frontend()
        try:
            if shown:
                from IPython.display import display

                from .views import mimebundle

                handle = display(run, display_id=True)
                while not run.done:
                    run.wait_for_change(0.5)
                if handle is not None:  # the same panel; its text form now holds the log, once
                    handle.update(mimebundle(run, log_lines=TRANSCRIPT_LINES), raw=True)
            elif wait:
                follow(run, emit=_say)
            elif not widget_frontend():
                follow(run, until_endpoint=True, emit=_say)
        except KeyboardInterrupt:
            run.cancel()
            print(f"aml_magics: run {run.id} canceled (interrupted)")
        return None if shown and cell_form else run

    @line_magic
    @user_errors
    def aml_runs(self, line: str = "") -> None:
        """List this kernel's runs: id, target, state, and each debugger as it is now (listening,
        attached, closed); a distributed run's ranks one line per node. ``%aml_runs RUN --ranks``:
        that run's roster (node, address, rank, debugger state, where, why, for how long)."""
        from .views.text import endpoint_summary, roster_text

        argv = _split(line)
        if argv:
            keys = [a for a in argv if a != "--ranks"]
            if "--ranks" not in argv or len(keys) != 1:
                raise UsageError("usage: %aml_runs [RUN --ranks]")
            print(roster_text(self._find(keys[0])))
            return
        runs = self.registry.all()
        if not runs:
            print("no aml_magics runs in this session")
            return
        rows = [("id", "target", "state", "debugger")]
        for r in runs:
            first, *more = endpoint_summary(r)
            rows.append((r.id, r.target, r.state, first))
            rows += [("", "", "", extra) for extra in more]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())

    @line_magic
    @user_errors
    def aml_logs(self, line: str) -> None:
        """Print a run's output: %aml_logs RUN [--raw] (--raw: with the machine-readable marker lines)"""
        argv = _split(line)
        raw = "--raw" in argv
        keys = [a for a in argv if a != "--raw"]
        if len(keys) != 1:
            raise UsageError("usage: %aml_logs RUN [--raw]")
        run = self._find(keys[0])
        print(run.raw_logs if raw else run.logs)

    @line_magic
    @user_errors
    def aml_cancel(self, line: str) -> None:
        """Cancel a run, or all: %aml_cancel RUN | --all"""
        arg = line.strip()
        if arg == "--all":
            canceled = self.registry.cancel_all()
            print(f"canceled {len(canceled)} run(s)" + (": " + ", ".join(r.id for r in canceled) if canceled else ""))
            return
        run = self._find(arg)
        if run.done:
            print(f"run {run.id} already {run.state}")
            return
        run.cancel()
        print(f"run {run.id}: {run.state}")

    @line_magic
    @user_errors
    def aml_launch_json(self, line: str) -> dict | None:
        """Show a run's launch.json fragment, or merge it: %aml_launch_json RUN [--write [PATH]]
        (PATH: default the run's --launch-json, %config AmlDebugMagics.launch_json, else the workspace
        root's .vscode/launch.json — where the panel's Write button writes)"""
        usage = "usage: %aml_launch_json RUN [--write [PATH]]"
        argv = _split(line)
        if not argv:
            raise UsageError(usage)
        run = self._find(argv[0])
        rest = argv[1:]
        if rest and (rest[0] != "--write" or len(rest) > 2):
            raise UsageError(usage)
        if rest:
            target = Path(rest[1]) if len(rest) == 2 else run.launch_json_path
            if target is None:
                raise UsageError(f"{usage}: run {run.id} has no default launch.json path; give PATH")
            result = run.write_launch_json(target)  # a LaunchJsonError leaves the file untouched
            names = ", ".join(result.added + result.replaced)
            print(f"wrote {names} to {result.path}" + (f" (backup: {result.backup})" if result.backup else ""))
            return None
        return run.launch_json()

    def _find(self, key: str) -> DebugRun:
        key = key.strip()
        if not key:
            raise UsageError("which run? give its id or name (see %aml_runs)")
        return self.registry.find(key)

    @line_magic
    @user_errors
    def aml_crash(self, line: str) -> Any:
        """Open a crash capsule as a read-only snapshot: %aml_crash RUN_OR_JOB [--rank R]
        (a run of this session, a local/docker run id of an earlier one, or an Azure ML job name)"""
        from .api import open_crash
        from .crash import CrashNotFound
        from .errors import OptionsError

        usage = "usage: %aml_crash RUN_OR_JOB [--rank R]"
        argv = _split(line)
        rank = None
        if len(argv) == 3 and argv[1] == "--rank" and argv[2].isdigit():
            rank = int(argv[2])
        elif len(argv) != 1:
            raise UsageError(usage)
        try:
            target: Any = self.registry.find(argv[0])
        except OptionsError:
            target = argv[0]  # not a run of this session: a run id of an earlier one, or a job
        try:
            return open_crash(target, rank=rank)
        except CrashNotFound as exc:
            raise UsageError(str(exc)) from None

    @line_magic
    @user_errors
    def aml_images(self, line: str = "") -> None:
        """This project's Docker images (label aml_magics): %aml_images [--remove-unused | --remove TAG]"""
        from .images.inventory import images_command

        print(images_command(line))

    # -- deployments ----------------------------------------------------------------------------
    @line_cell_magic
    @user_errors
    def aml_debug_deploy(self, line: str, cell: str | None = None) -> Any:
        """Serve a scoring script (init()/run()) with the Azure ML inference server and debugpy listening:
        %%aml_debug_deploy [options] (the cell is score.py), or %aml_debug_deploy [options] SCORE_PY.
        Returns a DebugDeployment (.scoring_uri, .score(payload)). Options: %aml_debug_deploy --help."""
        from .deploy.handle import SERVING
        from .deploy.request import follow_deployment, make_deploy_parser, parse_deploy_args, start_deployment

        if line.strip() in ("-h", "--help"):
            print(make_deploy_parser("%aml_debug_deploy").format_help())
            return None
        from .views import widget_frontend

        deployment = start_deployment(parse_deploy_args(_split(line)), cell, self.defaults(), self.registry)
        try:
            if deployment.wait_requested:
                follow_deployment(deployment, _say, until=lambda d: d.state == SERVING)
            elif not widget_frontend():
                follow_deployment(deployment, _say, until=lambda d: bool(d.endpoints) or not d.spec.debug.enabled)
        except KeyboardInterrupt:
            deployment.cancel()
            print(f"aml_magics: deployment {deployment.id} stopped (interrupted)")
        return deployment

    @line_magic
    @no_var_expand
    @user_errors
    def aml_score(self, line: str) -> Any:
        """Send a scoring request to a deployment, return the decoded response:
        %aml_score RUN '{"data": [[1, 2]]}'   or   %aml_score RUN VARIABLE (a dict/list/str in your namespace)"""
        from .deploy.handle import DebugDeployment

        usage = "usage: %aml_score RUN '{\"data\": ...}'  (or a variable name instead of the JSON)"
        key, _, text = line.strip().partition(" ")
        text = text.strip()
        if not key or not text:
            raise UsageError(usage)
        run = self._find(key)
        if not isinstance(run, DebugDeployment):
            raise UsageError(f"run {run.id} is not a deployment (start one with %aml_debug_deploy)")
        user_ns: dict = self.shell.user_ns if self.shell is not None else {}
        payload = user_ns[text] if text.isidentifier() and text in user_ns else _json_payload(text, usage)
        return run.score(payload)

    # -- the in-notebook debugger (aml_magics.debugger) ----------------------------------------
    @line_magic
    @user_errors
    def aml_attach(self, line: str = "") -> Any:
        """Attach the in-notebook debugger to a run; returns it (its display is the panel):
        %aml_attach RUN [--rank R] [--break FILE:LINE ...] [--timeout S]"""
        from .debugger.magics import attach_magic

        return attach_magic(self, line)

    @line_magic
    @no_var_expand
    @user_errors
    def aml_dbg(self, line: str = "") -> None:
        """Drive the attached debugger: %aml_dbg break FILE:LINE [if COND] | clear | where | up | down |
        locals | p EXPR | next | step | return | continue | pause | detach"""
        from .debugger.magics import dbg_magic

        dbg_magic(line)

    # -- pipelines ------------------------------------------------------------------------------
    @line_magic
    @user_errors
    def aml_debug_pipeline(self, line: str = "") -> Any:
        """Submit an Azure ML pipeline with debugging on for chosen PythonScriptSteps:
        %aml_debug_pipeline STEPS [--steps a,b] [--experiment E] [--timeout S] [--port N] [--dry-run] [--wait]
        (STEPS: the list of steps, as given to Pipeline). Also takes the guide's --remote_debug* flags."""
        from . import api
        from .errors import OptionsError
        from .follow import follow_group
        from .options import make_pipeline_parser
        from .views import widget_frontend

        parser = make_pipeline_parser("%aml_debug_pipeline")
        if line.strip() in ("", "-h", "--help"):
            print(parser.format_help() if line.strip() else parser.format_usage().strip())
            return None
        try:
            ns = parser.parse_args(_split(line))
        except OptionsError as exc:
            raise UsageError(f"{exc}; {parser.format_usage().strip()}") from None
        if self.shell is None:
            raise UsageError("%aml_debug_pipeline needs an IPython shell to evaluate STEPS")
        try:
            steps = self.shell.ev(ns.steps_expr)
        except Exception as exc:
            raise UsageError(f"cannot evaluate {ns.steps_expr!r}: {type(exc).__name__}: {exc}") from None
        port = ns.port if ns.port is not None else ns.remote_debug_port
        timeout = ns.timeout if ns.timeout is not None else ns.remote_debug_connection_timeout
        group = api.debug_pipeline(
            steps, ns.steps, experiment=ns.experiment or self.defaults().target_options.get("experiment"),
            workspace_config=ns.workspace_config or self.defaults().target_options.get("workspace_config"),
            port=None if port in (None, "auto") else int(port), bind=ns.bind, timeout=timeout,
            stop_on_entry=ns.stop_on_entry, pipeline_parameters=_parameters(ns.parameter), dry_run=ns.dry_run,
            launch_json=ns.launch_json or self.launch_json, registry=self.registry,
            default_port=self.port if isinstance(self.port, int) else 5678, default_timeout=self.timeout)
        if ns.dry_run:
            return group
        try:
            if ns.wait or not widget_frontend():
                follow_group(group, until_endpoint=not ns.wait, emit=_say)
        except KeyboardInterrupt:
            group.cancel()
            print(f"aml_magics: pipeline run {group.id} canceled (interrupted)")
        return group


def _parameters(items: list[str]) -> dict[str, str] | None:
    parameters = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--parameter takes NAME=VALUE, not {item!r}")
        parameters[key] = value
    return parameters or None


def _json_payload(text: str, usage: str) -> str:
    candidates = [text] + ([text[1:-1]] if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"" else [])
    for candidate in candidates:
        try:
            json.loads(candidate)
        except ValueError:
            continue
        return candidate
    raise UsageError(f"the payload is not JSON: {text[:80]}; {usage}")


def _split(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"cannot parse options: {exc}") from None


def _say(text: str) -> None:
    print(text, flush=True)
