"""Issue 20's structure, shown from outside: a target plugs in through the registry alone, an
endpoint has one path (a new field survives a tunnelled run), errors have one root and one door.

The test target below is defined here and nowhere else: a variation of the local target whose
debug port counts as leaving the machine (so the authenticated tunnel is on) and which takes an
option of its own, marked for ``%config``. Registering it is the only thing the test does to the
package; a real DAP client then attaches through the tunnel and stops at a breakpoint.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from conftest import BREAK_LINE, CELL
from IPython.core.error import UsageError

import aml_magics
from aml_magics.errors import AmlMagicsError
from aml_magics.lifecycle import RunScope
from aml_magics.protocol import Endpoint, EndpointMarker
from aml_magics.target_base import Capabilities, RunContext, option
from aml_magics.targets import register_target, target_info
from aml_magics.targets.local import LocalTarget
from aml_magics.testing.dap import attach_with_launch_config
from aml_magics.tunnel import LOOPBACK, TunnelCredentials, TunnelledHandle

NAME = "relayed-local"


class RelayedLocal(LocalTarget):
    """The local target, its debug port treated as reached from elsewhere; says hello first."""

    name = NAME
    capabilities: ClassVar[Capabilities] = Capabilities(max_nodes=1, max_processes=2, leaves_machine=True,
                                                        one_machine="one process group")

    def __init__(self, greeting: str | None = None) -> None:
        super().__init__()
        self.greeting = greeting or "hello"

    def submit(self, spec: Any, ctx: RunContext) -> Any:
        ctx.events.line(f"{NAME}: {self.greeting}")
        return super().submit(spec, ctx)


@pytest.fixture(scope="module", autouse=True)
def relayed_target():
    register_target(NAME, RelayedLocal, capabilities=RelayedLocal.capabilities,
                    options=(option("--greeting", default=None, config="greeting",
                                    help=f"{NAME}: the first line the run prints"),))
    yield
    from aml_magics import targets

    targets._REGISTRY.pop(NAME, None)


# -- targets plug in through the registry ---------------------------------------------------------


def test_a_test_target_runs_a_script_end_to_end_through_the_tunnel(shell, workdir):
    """Help, %config trait, capabilities and the tunnel: all from the one register_target line."""
    from aml_magics.options import make_parser

    assert NAME in make_parser("%aml_debug_run").format_help()  # --target's help names it, and --greeting
    assert "--greeting" in make_parser("%aml_debug_run").format_help()
    shell.run_line_magic("config", "AmlDebugMagics.greeting = 'from config'")
    script = workdir / "job.py"
    script.write_text(CELL)
    try:
        run = shell.run_line_magic("aml_debug_run", f"--target {NAME} --port 0 --timeout 60 job.py")
        endpoint = run.wait_for_endpoint(60)
        assert endpoint.tunnelled and endpoint.host == LOOPBACK and endpoint.node_address  # leaves_machine
        config = run.launch_config()
        with attach_with_launch_config(config, {str(script): [BREAK_LINE]}, workspace_folder=str(workdir)) as client:
            stop = client.wait_stopped(30)
            assert stop.line == BREAK_LINE
            client.continue_(stop.thread_id)
            assert run.wait(60) == "completed"
    finally:
        shell.config.AmlDebugMagics.pop("greeting", None)  # the target leaves with this module
    assert f"{NAME}: from config" in run.logs
    assert run.target == NAME


def test_the_registry_says_what_a_target_cannot_do(shell, workdir):
    (workdir / "job.py").write_text("print('x')\n")
    with pytest.raises(UsageError, match=f"target '{NAME}' runs one process group on one machine; use "
                                         "--procs-per-node for several processes, or --target azureml"):
        shell.run_line_magic("aml_debug_run", f"--target {NAME} --nodes 2 job.py")
    with pytest.raises(UsageError, match=f"--dry-run: target '{NAME}' submits nothing ahead .* --target azureml"):
        shell.run_line_magic("aml_debug_run", f"--target {NAME} --dry-run job.py")


def test_config_traits_come_from_the_targets_options(shell):
    magics = shell.magics_manager.registry["AmlDebugMagics"]
    shell.run_line_magic("config", "AmlDebugMagics.compute = 'gpu'")
    try:
        assert magics.compute == "gpu" and magics.defaults().target_options["compute"] == "gpu"
        assert {"compute", "experiment", "workspace_config", "azureml_sdk", "greeting"} <= set(magics.target_traits())
    finally:
        shell.run_line_magic("config", "AmlDebugMagics.compute = None")


def test_built_in_capabilities_decide_the_tunnel():
    assert not target_info("local").capabilities.leaves_machine
    assert target_info("docker").capabilities.leaves_machine and target_info("azureml").capabilities.leaves_machine
    assert target_info("azureml").capabilities.dry_run and not target_info("docker").capabilities.dry_run


# -- one path for an endpoint ---------------------------------------------------------------------


@dataclass(frozen=True)
class GpuEndpoint(Endpoint):
    """An Endpoint with a field added later (what a run may report one day)."""

    gpu: str | None = None


class _Node:
    """The inner handle of a run on a node: the endpoint is seen as the node reported it."""

    def cancel(self) -> None: ...
    def is_done(self) -> bool:
        return False

    def map_endpoint(self, endpoint: Endpoint) -> Endpoint:
        return endpoint


def test_a_new_endpoint_field_survives_the_tunnels_mapping():
    scope = RunScope("mapping")
    try:
        handle = TunnelledHandle(_Node(), TunnelCredentials.new(), scope)
        reported = GpuEndpoint("10.0.0.4", 5679, rank=3, pid=42, cwd="/w", script="a.py", tunnelled=True, gpu="A100")
        seen = handle.map_endpoint(reported)
        assert isinstance(seen, GpuEndpoint) and seen.gpu == "A100"  # dropped before: rebuilt field by field
        assert (seen.host, seen.node_address, seen.tunnelled) == (LOOPBACK, "10.0.0.4:5679", True)
        for item in dataclasses.fields(Endpoint):
            if item.name not in ("host", "port", "node_address"):
                assert getattr(seen, item.name) == getattr(reported, item.name), item.name
    finally:
        scope.close()


def test_the_marker_builds_the_endpoint_by_field_name():
    marker = EndpointMarker(rank=2, pid=7, host="10.0.0.4", port=5679, cwd="/w", script="a.py", tunnel=True)
    endpoint = marker.endpoint()
    assert endpoint == Endpoint("10.0.0.4", 5679, rank=2, pid=7, cwd="/w", script="a.py", tunnelled=True)
    shared = {f.name for f in dataclasses.fields(EndpointMarker)} & {f.name for f in dataclasses.fields(Endpoint)}
    for name in shared:  # every field both have travels (a new one added to both included)
        assert getattr(endpoint, name) == getattr(marker, name), name


# -- errors: one root, one door -------------------------------------------------------------------

# The node side and the deployment server run standalone (stdlib + debugpy): they cannot import
# the package's errors, and what they raise never reaches a user as an aml_magics error.
STANDALONE = ("aml_magics.node", "aml_magics.deploy.server")


def _package_modules() -> list[Any]:
    modules = []
    for info in pkgutil.walk_packages(aml_magics.__path__, "aml_magics."):
        if info.name.startswith(STANDALONE) or info.name.endswith("__main__"):
            continue
        modules.append(importlib.import_module(info.name))
    return modules


def test_every_exception_the_package_defines_derives_from_aml_magics_error():
    defined = [obj for module in _package_modules() for obj in vars(module).values()
               if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__]
    names = {cls.__qualname__ for cls in defined}
    assert {"DebuggerError", "DapError", "ScoringError", "ImageBuildError", "EnvironmentBuildError",
            "JsoncError"} <= names
    outside = [f"{cls.__module__}.{cls.__qualname__}" for cls in defined if not issubclass(cls, AmlMagicsError)]
    assert outside == []


def test_one_door_turns_a_user_error_into_one_line_for_every_magic(shell):
    from aml_magics.magics import AmlDebugMagics

    unwrapped = [name for names in AmlDebugMagics.magics.values() for name, method in names.items()
                 if not hasattr(getattr(AmlDebugMagics, method), "__wrapped__")]
    assert unwrapped == []  # every magic goes through user_errors
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("aml_launch_json", "nope")
    assert str(info.value) == "no run 'nope' in this session (see %aml_runs)"


# -- load cost ------------------------------------------------------------------------------------


def test_load_ext_imports_no_engine_options_targets_or_failure_reporting():
    """``%load_ext aml_magics`` registers the magics only; the machinery loads at first use."""
    import json
    import subprocess
    import sys

    code = ("from IPython.testing.globalipapp import get_ipython; ip = get_ipython(); "
            "ip.run_line_magic('load_ext', 'aml_magics'); import sys, json; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('aml_magics'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "aml_magics.magics" in loaded
    heavy = {"aml_magics.engine", "aml_magics.options", "aml_magics.targets", "aml_magics.failure", "aml_magics.run",
             "aml_magics.views", "aml_magics.follow", "aml_magics.api", "aml_magics.protocol"}
    assert loaded & heavy == set()
    from aml_magics import magics, spec

    assert magics.DEFAULT_PORT_CHOICE == spec.DEFAULT_PORT_CHOICE  # the copy magics keeps to load light
