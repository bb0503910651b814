"""The IPython magics: thin. Options → engine → DebugRun; display is the run's own."""

from __future__ import annotations

import shlex
from pathlib import Path

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class, no_var_expand
from traitlets import Bool, Float, Int, Unicode

from . import engine
from .follow import follow
from .options import Defaults, OptionsError, build_request, make_parser, parse_line
from .run import DebugRun, RunFailed
from .views import widget_frontend


@magics_class
class AmlDebugMagics(Magics):
    """Run code with debugpy listening, on a target of your choice. Configure with %config."""

    target = Unicode("local", help="Default --target").tag(config=True)
    port = Int(5678, help="Default debug port (0: any free port)").tag(config=True)
    bind = Unicode(None, allow_none=True, help="Default address debugpy binds").tag(config=True)
    timeout = Float(300.0, help="Default seconds to wait for a debugger to attach").tag(config=True)
    wait = Bool(False, help="Block until the run ends by default").tag(config=True)
    launch_json = Unicode(None, allow_none=True, help="Default --launch-json path").tag(config=True)
    cell_dir = Unicode(".aml_magics/cells", help="Where cell scripts are written").tag(config=True)
    compute = Unicode(None, allow_none=True, help="Default --compute (azureml)").tag(config=True)
    experiment = Unicode(None, allow_none=True, help="Default --experiment (azureml)").tag(config=True)
    workspace_config = Unicode(None, allow_none=True, help="Default --workspace-config (azureml)").tag(config=True)
    azureml_sdk = Unicode(None, allow_none=True, help="Default --sdk (azureml): v1 or v2").tag(config=True)

    def __init__(self, shell=None, registry: engine.RunRegistry | None = None, **kwargs) -> None:
        super().__init__(shell=shell, **kwargs)
        self.registry = registry or engine.REGISTRY

    def defaults(self) -> Defaults:
        configured = {"compute": self.compute, "experiment": self.experiment,
                      "workspace_config": self.workspace_config, "sdk": self.azureml_sdk}
        return Defaults(target=self.target, port=self.port, bind=self.bind, timeout=self.timeout,
                        wait=self.wait, launch_json=self.launch_json, cell_dir=self.cell_dir,
                        target_options={k: v for k, v in configured.items() if v})

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
                follow(run, emit=lambda text: print(text, flush=True))
            elif not widget_frontend():
                follow(run, until_endpoint=True, emit=lambda text: print(text, flush=True))
        except KeyboardInterrupt:
            run.cancel()
            print(f"aml_magics: run {run.id} canceled (interrupted)")
        return run

    @line_magic
    def aml_runs(self, line: str = "") -> None:
        """List this kernel's runs: id, target, state, endpoints."""
        runs = self.registry.all()
        if not runs:
            print("no aml_magics runs in this session")
            return
        rows = [("id", "target", "state", "endpoints")]
        rows += [(r.id, r.target, r.state, ", ".join(e.address for e in r.endpoints) or "-") for r in runs]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())

    @line_magic
    def aml_logs(self, line: str) -> None:
        """Print a run's log: %aml_logs RUN"""
        print(self._find(line).logs)

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
        """Show a run's launch.json fragment, or merge it: %aml_launch_json RUN [--write PATH]"""
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if not argv:
            raise UsageError("usage: %aml_launch_json RUN [--write PATH]")
        run = self._find(argv[0])
        rest = argv[1:]
        if rest and (rest[0] != "--write" or len(rest) != 2):
            raise UsageError("usage: %aml_launch_json RUN [--write PATH]")
        try:
            if rest:
                result = run.write_launch_json(Path(rest[1]))
                names = ", ".join(result.added + result.replaced)
                print(f"wrote {names} to {result.path}" + (f" (backup: {result.backup})" if result.backup else ""))
                return None
            return run.launch_json()
        except RunFailed as exc:
            raise UsageError(str(exc)) from None
        except ValueError as exc:  # LaunchJsonError: the file is left untouched
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
        from .targets import TargetError
        from .targets.docker_images import images_command

        try:
            print(images_command(line))
        except TargetError as exc:
            raise UsageError(str(exc)) from None

    @line_cell_magic
    def aml_debug_deploy(self, line: str, cell: str | None = None):
        """Serve a scoring script (init()/run()) with the Azure ML inference server and debugpy listening:
        %%aml_debug_deploy [options] (the cell is score.py), or %aml_debug_deploy [options] SCORE_PY.
        Returns a DebugDeployment (.scoring_uri, .score(payload)). Options: %aml_debug_deploy --help."""
        from .deploy import SERVING, follow_deployment, make_deploy_parser, parse_deploy_args, start_deployment

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
    def aml_score(self, line: str):
        """Send a scoring request to a deployment, return the decoded response:
        %aml_score RUN '{"data": [[1, 2]]}'   or   %aml_score RUN VARIABLE (a dict/list/str in your namespace)"""
        import json

        from .deploy import DebugDeployment, ScoringError

        usage = "usage: %aml_score RUN '{\"data\": ...}'  (or a variable name instead of the JSON)"
        key, _, text = line.strip().partition(" ")
        text = text.strip()
        if not key or not text:
            raise UsageError(usage)
        run = self._find(key)
        if not isinstance(run, DebugDeployment):
            raise UsageError(f"run {run.id} is not a deployment (start one with %aml_debug_deploy)")
        payload: object = text
        user_ns: dict = self.shell.user_ns if self.shell is not None else {}
        if text.isidentifier() and text in user_ns:
            payload = user_ns[text]
        else:
            candidates = [text] + ([text[1:-1]] if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"" else [])
            for candidate in candidates:
                try:
                    json.loads(candidate)
                except ValueError:
                    continue
                payload = candidate
                break
            else:
                raise UsageError(f"the payload is not JSON: {text[:80]}; {usage}")
        try:
            return run.score(payload)
        except (ScoringError, RunFailed) as exc:
            raise UsageError(str(exc)) from None

    @line_magic
    def aml_attach(self, line: str = ""):
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

    @line_magic
    def aml_debug_pipeline(self, line: str = ""):
        """Submit an Azure ML pipeline with debugging on for chosen PythonScriptSteps:
        %aml_debug_pipeline STEPS [--steps a,b] [--experiment E] [--timeout S] [--port N] [--dry-run] [--wait]
        (STEPS: the list of steps, as given to Pipeline). Also takes the guide's --remote_debug* flags."""
        from .azureml.pipeline import pipeline_magic

        return pipeline_magic(self, line)


def _split(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"cannot parse options: {exc}") from None


def _say(text: str) -> None:
    print(text, flush=True)
