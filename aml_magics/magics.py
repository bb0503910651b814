"""The IPython magics: thin. Options → engine → DebugRun; display is the run's own."""

from __future__ import annotations

import shlex
from pathlib import Path

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
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

    def __init__(self, shell=None, registry: engine.RunRegistry | None = None, **kwargs) -> None:
        super().__init__(shell=shell, **kwargs)
        self.registry = registry or engine.REGISTRY

    def defaults(self) -> Defaults:
        return Defaults(target=self.target, port=self.port, bind=self.bind, timeout=self.timeout,
                        wait=self.wait, launch_json=self.launch_json, cell_dir=self.cell_dir)

    @line_cell_magic
    def aml_debug_run(self, line: str, cell: str | None = None) -> DebugRun | None:
        """Run a cell (%%aml_debug_run [options]) or a script (%aml_debug_run [options] SCRIPT [-- args])
        with debugpy listening. Options: see `aml-debug run --help` or the README."""
        if line.strip() in ("-h", "--help"):
            print(make_parser("%aml_debug_run").format_help())
            return None
        try:
            request = build_request(parse_line(line), cell, self.defaults())
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
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())

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
