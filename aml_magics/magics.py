"""The IPython magics: thin. Options → engine → DebugRun; display is the run's own.

Defaults are traitlets on the class (``%config AmlDebugMagics.port = 0``), checked with the
same validators as the flags, so a bad value is one line, not a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class, no_var_expand
from traitlets import Bool, Float, Unicode, Union, validate
from traitlets import Int as IntTrait

from . import api, engine
from .errors import OptionsError, RunFailed, TargetError
from .follow import follow, follow_group
from .options import (
    Defaults,
    bind_value,
    build_request,
    make_parser,
    make_pipeline_parser,
    parse_line,
    port_value,
    timeout_value,
)
from .run import DebugRun
from .spec import DEFAULT_PORT_CHOICE
from .views import widget_frontend

_log = logging.getLogger("aml_magics")


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


def _sdk_value(value: Any) -> None:
    if value not in ("v1", "v2"):
        raise ValueError(f"azureml_sdk must be 'v1' or 'v2', not {value!r}")


def _connect_value(value: Any) -> None:
    if value not in ("auto", "direct", "proxy"):
        raise ValueError(f"connect must be 'auto', 'direct' or 'proxy', not {value!r}")


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
    compute = Unicode(None, allow_none=True, help="Default --compute (azureml)").tag(config=True)
    experiment = Unicode(None, allow_none=True, help="Default --experiment (azureml)").tag(config=True)
    workspace_config = Unicode(None, allow_none=True, help="Default --workspace-config (azureml)").tag(config=True)
    azureml_sdk = Unicode(None, allow_none=True, help="Default --sdk (azureml): v1 or v2").tag(config=True)
    connect = Unicode(None, allow_none=True, help="Default --connect (azureml): auto, direct or proxy").tag(config=True)

    # Traits that are a target's option defaults (trait name → option name).
    TARGET_TRAITS = {"compute": "compute", "experiment": "experiment", "workspace_config": "workspace_config",
                     "azureml_sdk": "sdk", "connect": "connect"}

    @validate("port")
    def _valid_port(self, proposal: Any) -> Any:
        return _checked(proposal, lambda v: port_value(str(v)))

    @validate("timeout")
    def _valid_timeout(self, proposal: Any) -> Any:
        return _checked(proposal, lambda v: timeout_value(str(v)))

    @validate("bind")
    def _valid_bind(self, proposal: Any) -> Any:
        return _checked(proposal, lambda v: bind_value(str(v)))

    @validate("azureml_sdk")
    def _valid_sdk(self, proposal: Any) -> Any:
        return _checked(proposal, _sdk_value)

    @validate("connect")
    def _valid_connect(self, proposal: Any) -> Any:
        return _checked(proposal, _connect_value)

    def __init__(self, shell: Any = None, registry: engine.RunRegistry | None = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self.registry = registry or engine.REGISTRY

    def defaults(self) -> Defaults:
        """The options' fallbacks, from the traits (one source: the traits' own values)."""
        configured = {option: getattr(self, trait) for trait, option in self.TARGET_TRAITS.items()}
        return Defaults(target=self.target, port=self.port, bind=self.bind, timeout=self.timeout,
                        wait=self.wait, launch_json=self.launch_json, cell_dir=self.cell_dir, secure=self.secure,
                        target_options={k: v for k, v in configured.items() if v})

    # -- runs ---------------------------------------------------------------------------------
    @line_cell_magic
    def aml_debug_run(self, line: str, cell: str | None = None) -> DebugRun | None:
        """Run a cell (%%aml_debug_run [options]) or a script (%aml_debug_run [options] SCRIPT [-- args])
        with debugpy listening. Options: see `aml-debug run --help` or the README."""
        if line.strip() in ("-h", "--help"):
            print(make_parser("%aml_debug_run").format_help())
            return None
        try:
            request = build_request(parse_line(line), cell, self.defaults())
            if request.dry_run:
                from .dryrun import plan

                return plan(request)  # type: ignore[return-value]
            run = engine.start(request, self.registry)
        except OptionsError as exc:
            raise UsageError(str(exc)) from None
        return self._follow(run, request.wait)

    def _follow(self, run: DebugRun, wait: bool) -> DebugRun:
        """Widgets update themselves; in text mode, stream until there is something to attach to."""
        try:
            if wait:
                follow(run, emit=_say)
            elif not widget_frontend():
                follow(run, until_endpoint=True, emit=_say)
        except KeyboardInterrupt:
            run.cancel()
            print(f"aml_magics: run {run.id} canceled (interrupted)")
        return run

    @line_magic
    def aml_runs(self, line: str = "") -> None:
        """List this kernel's runs: id, target, state, and each debugger as it is now (listening,
        attached, closed); a distributed run's ranks one line per node."""
        from .views.text import endpoint_summary

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
        try:
            if rest:
                target = Path(rest[1]) if len(rest) == 2 else run.launch_json_path
                if target is None:
                    raise UsageError(f"{usage}: run {run.id} has no default launch.json path; give PATH")
                result = run.write_launch_json(target)
                names = ", ".join(result.added + result.replaced)
                print(f"wrote {names} to {result.path}" + (f" (backup: {result.backup})" if result.backup else ""))
                return None
            return run.launch_json()
        except (RunFailed, ValueError, OSError) as exc:  # LaunchJsonError: the file is left untouched
            raise UsageError(str(exc)) from None

    def _find(self, key: str) -> DebugRun:
        key = key.strip()
        if not key:
            raise UsageError("which run? give its id or name (see %aml_runs)")
        try:
            return self.registry.find(key)
        except OptionsError as exc:
            raise UsageError(str(exc)) from None

    @line_magic
    def aml_images(self, line: str = "") -> None:
        """This project's Docker images (label aml_magics): %aml_images [--remove-unused | --remove TAG]"""
        from .images.inventory import images_command

        try:
            print(images_command(line))
        except TargetError as exc:
            raise UsageError(str(exc)) from None

    # -- deployments ----------------------------------------------------------------------------
    @line_cell_magic
    def aml_debug_deploy(self, line: str, cell: str | None = None) -> Any:
        """Serve a scoring script (init()/run()) with the Azure ML inference server and debugpy listening:
        %%aml_debug_deploy [options] (the cell is score.py), or %aml_debug_deploy [options] SCORE_PY.
        Returns a DebugDeployment (.scoring_uri, .score(payload)). Options: %aml_debug_deploy --help."""
        from .deploy.handle import SERVING
        from .deploy.request import follow_deployment, make_deploy_parser, parse_deploy_args, start_deployment

        if line.strip() in ("-h", "--help"):
            print(make_deploy_parser("%aml_debug_deploy").format_help())
            return None
        try:
            deployment = start_deployment(parse_deploy_args(_split(line)), cell, self.defaults(), self.registry)
        except OptionsError as exc:
            raise UsageError(str(exc)) from None
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
    def aml_score(self, line: str) -> Any:
        """Send a scoring request to a deployment, return the decoded response:
        %aml_score RUN '{"data": [[1, 2]]}'   or   %aml_score RUN VARIABLE (a dict/list/str in your namespace)"""
        from .deploy.handle import DebugDeployment, ScoringError

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
        try:
            return run.score(payload)
        except (ScoringError, RunFailed) as exc:
            raise UsageError(str(exc)) from None

    # -- the in-notebook debugger (aml_magics.debugger) ----------------------------------------
    @line_magic
    def aml_attach(self, line: str = "") -> Any:
        """Attach the in-notebook debugger to a run; returns it (its display is the panel):
        %aml_attach RUN [--rank R] [--break FILE:LINE ...] [--timeout S]"""
        from .debugger.magics import attach_magic

        return attach_magic(self, line)

    @line_magic
    @no_var_expand
    def aml_dbg(self, line: str = "") -> None:
        """Drive the attached debugger: %aml_dbg break FILE:LINE [if COND] | clear | where | up | down |
        locals | p EXPR | next | step | return | continue | pause | detach"""
        from .debugger.magics import dbg_magic

        dbg_magic(line)

    # -- pipelines ------------------------------------------------------------------------------
    @line_magic
    def aml_debug_pipeline(self, line: str = "") -> Any:
        """Submit an Azure ML pipeline with debugging on for chosen PythonScriptSteps:
        %aml_debug_pipeline STEPS [--steps a,b] [--experiment E] [--timeout S] [--port N] [--dry-run] [--wait]
        (STEPS: the list of steps, as given to Pipeline). Also takes the guide's --remote_debug* flags."""
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
        try:
            group = api.debug_pipeline(
                steps, ns.steps, experiment=ns.experiment or self.experiment,
                workspace_config=ns.workspace_config or self.workspace_config,
                port=None if port in (None, "auto") else int(port), bind=ns.bind, timeout=timeout,
                stop_on_entry=ns.stop_on_entry, pipeline_parameters=_parameters(ns.parameter), dry_run=ns.dry_run,
                launch_json=ns.launch_json or self.launch_json, registry=self.registry,
                default_port=self.port if isinstance(self.port, int) else 5678, default_timeout=self.timeout)
        except (TargetError, OptionsError) as exc:
            raise UsageError(str(exc)) from None
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
