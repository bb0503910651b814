"""Deployments: a scoring script (``score.py`` with ``init()``/``run()``) served over HTTP by the
Azure ML inference server with debugpy listening, so a real scoring request stops in ``run()``.

    %%aml_debug_deploy [options]            (the cell is score.py)
    %aml_debug_deploy [options] SCORE_PY
    %aml_score RUN '{"data": [1, 2]}'
    aml-debug deploy SCORE_PY [options]

The server process is the usual bootstrap (debugpy, the attach timeout, the markers) running
:mod:`.server`, which builds the inference server's own WSGI app in that same process and serves
it without forking; see that file for why not ``azmlinfsrv``/gunicorn. ``score.py`` is loaded
from its own path, so breakpoints set on it map 1:1. ``--target docker`` serves it the same way
in a container (:mod:`.target`).

The options are the run's own (the same declarations the magic uses), a subset of them, plus
the server's; the request is a run request whose script is the server.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .. import engine
from ..follow import AttachWait, follow
from ..install import install_command
from ..options import (
    COMMON_OPTIONS,
    Defaults,
    OptionsError,
    RunRequest,
    _Parser,
    add_options,
    build_request,
    check_script_file,
    check_syntax,
    options_argv,
    port_number,
)
from ..ports import holder, is_free
from ..protocol import MarkerReader
from ..run import FAILED
from ..spec import EnvironmentSpec
from ..target_base import option
from ..targets import target_info
from .handle import SERVING, DebugDeployment
from .target import TARGET_KEY, container_args, model_dir_in_container

SERVER_SCRIPT = Path(__file__).resolve().parent / "server.py"
SERVER_PACKAGE = "azureml-inference-server-http"
SERVER_MODULE = "azureml_inference_server_http"
DEPLOY_TARGETS = ("local", "docker")
LOOPBACK = "127.0.0.1"
DEFAULT_NAME = "score"
# The docker target's own options a deployment in docker takes.
DOCKER_OPTIONS = ("container_user", "mount_any_dir")
# The run options a deployment takes (the rest make no sense for a server).
RUN_OPTIONS = ("target", "name", "port", "bind", "timeout", "no_debug", "wait", "launch_json", "source_dir", "script",
               "pip", "requirements", "env_var", "base_image", "insecure", "reattach")


def http_port_value(text: str) -> int:
    return port_number(text, "--http-port")


DEPLOY_OPTIONS = (
    option("--model-dir", default=None, help="model directory, made available as AZUREML_MODEL_DIR"),
    option("--http-port", type=http_port_value, default=None, help="scoring port (default: a free port)"),
    option("--http-bind", default=None, help="address the scoring server binds (default 127.0.0.1)"),
    option("--image", default=None,
           help="docker: an existing Azure ML inference image (e.g. from Model.package) to serve in, with debugpy added"),
)


def make_deploy_parser(prog: str) -> _Parser:
    parser = _Parser(prog=prog, add_help=False, allow_abbrev=False,
                     description="Serve a scoring script (init()/run()) with the Azure ML inference server "
                                 "and debugpy listening.")
    add_options(parser, [o for o in COMMON_OPTIONS if o.dest in RUN_OPTIONS])
    add_options(parser, DEPLOY_OPTIONS)
    add_options(parser, [o for o in target_info("docker").options if o.dest in DOCKER_OPTIONS])
    parser.add_argument("script_path", nargs="?", default=None, metavar="SCORE_PY")
    # The run options a server does not take, at their "not given" values.
    parser.set_defaults(args=None, script_args=[], stop_on_entry=False, local_root=None, conda=None)
    return parser


def parse_deploy_args(argv: Sequence[str], prog: str = "%aml_debug_deploy") -> argparse.Namespace:
    return make_deploy_parser(prog).parse_args(list(argv))


def build_deploy_request(ns: argparse.Namespace, cell: str | None, defaults: Defaults,
                         cwd: Path | None = None) -> tuple[RunRequest, Callable[..., DebugDeployment]]:
    """Everything checked (script syntax included), nothing started; → (RunRequest, make_run)."""
    cwd = cwd or Path.cwd()
    ns.target = ns.target or "local"
    if ns.target not in DEPLOY_TARGETS:
        raise OptionsError(f"deployments run on: {', '.join(DEPLOY_TARGETS)} (not {ns.target!r})")
    in_docker = ns.target == "docker"
    defaults = _cell_defaults(ns, cell, defaults)
    request = build_request(ns, cell, defaults, cwd)
    score_path = request.spec.script_path
    if cell is not None:
        check_syntax(cell, str(score_path))
    else:
        check_script_file(score_path, "scoring script")
    _check_docker_only(ns, in_docker)
    model_dir = _model_dir(ns, cwd)
    environment = _server_environment(request.spec.environment, ns, in_docker, model_dir)
    http_bind, http_port = _http(ns, in_docker)
    if in_docker:
        args = container_args(request.spec.script)
        request.target = TARGET_KEY
        request.target_options = {"model_dir": str(model_dir) if model_dir else None, "http_port": http_port or None,
                                  "image": ns.image or None,
                                  **{k: getattr(ns, k) for k in DOCKER_OPTIONS if getattr(ns, k, None)}}
    else:
        args = ("--entry-script", str(score_path), "--host", http_bind, "--http-port", str(http_port))
    request.spec = replace(request.spec, script=str(SERVER_SCRIPT), args=args, environment=environment)

    def make_run(run_id: str, run_spec: Any, target_name: str, reader: MarkerReader | None = None) -> DebugDeployment:
        return DebugDeployment(run_id, run_spec, target_name, score_path=score_path, model_dir=model_dir,
                               reader=reader)

    return request, make_run


def _cell_defaults(ns: argparse.Namespace, cell: str | None, defaults: Defaults) -> Defaults:
    """The cell form: score.py in a folder of its own (the server's app root, on sys.path)."""
    if cell is None:
        if not ns.script_path:
            raise OptionsError("no scoring script: give SCORE_PY, or use %%aml_debug_deploy with score.py in the cell")
        return defaults
    if ns.script_path:
        raise OptionsError(f"the cell is the scoring script; drop {ns.script_path!r} "
                           "or use the line form %aml_debug_deploy SCORE_PY")
    ns.name = ns.name or DEFAULT_NAME
    ns.script = ns.script or "score.py"
    return replace(defaults, cell_dir=str(Path(defaults.cell_dir) / f"deploy-{ns.name}"))


def _check_docker_only(ns: argparse.Namespace, in_docker: bool) -> None:
    if ns.image:
        if not in_docker:
            raise OptionsError("--image is for --target docker")
        given = [flag for flag, value in (("--base-image", ns.base_image), ("--pip", ns.pip),
                                          ("--requirements", ns.requirements)) if value]
        if given:
            raise OptionsError(f"--image is served as it is (plus debugpy); drop {' and '.join(given)}")
    if in_docker and ns.http_bind:
        raise OptionsError("--http-bind is for --target local; in docker the scoring port is published "
                           "on 127.0.0.1 only")
    if not in_docker:
        given = [flag for flag, value in (("--base-image", ns.base_image), ("--container-user", ns.container_user),
                                          ("--mount-any-dir", ns.mount_any_dir)) if value]
        if given:
            raise OptionsError(f"{' and '.join(given)}: for --target docker")


def _model_dir(ns: argparse.Namespace, cwd: Path) -> Path | None:
    if not ns.model_dir:
        return None
    model_dir = Path(ns.model_dir).expanduser()
    model_dir = (model_dir if model_dir.is_absolute() else cwd / model_dir).resolve()
    if not model_dir.is_dir():
        raise OptionsError(f"--model-dir {model_dir} is not a directory")
    return model_dir


def _server_environment(env: EnvironmentSpec, ns: argparse.Namespace, in_docker: bool,
                        model_dir: Path | None) -> EnvironmentSpec:
    """The run's environment plus the inference server (unless it is there already) and the model."""
    if model_dir is not None:
        where = model_dir_in_container(model_dir) if in_docker else str(model_dir)
        env = replace(env, env_vars=(*env.env_vars, ("AZUREML_MODEL_DIR", where)))
    if in_docker:
        needs_server = not ns.image  # our image never has the server unless we put it there
    else:
        needs_server = env.has_dependencies
        if not needs_server:
            _check_server_installed()
    return replace(env, pip=(*env.pip, server_requirement())) if needs_server else env


def _http(ns: argparse.Namespace, in_docker: bool) -> tuple[str, int]:
    http_bind = LOOPBACK if in_docker else (ns.http_bind or LOOPBACK)
    http_port = ns.http_port or 0
    if http_port and not _port_free(http_bind, http_port):
        who = holder(http_port)
        raise OptionsError(f"--http-port {http_port} on {http_bind} is already in use"
                           + (f" (held by {who})" if who else "") + "; pick another, or leave it out for a free one")
    return http_bind, http_port


def _port_free(host: str, port: int) -> bool:
    try:
        return is_free(host, port)
    except OSError as exc:
        raise OptionsError(f"--http-bind {host}: {exc.strerror or exc}") from None


def server_requirement() -> str:
    """The inference server for a run's own environment: the kernel's version when it has one."""
    try:
        from importlib.metadata import version

        return f"{SERVER_PACKAGE}=={version(SERVER_PACKAGE)}"
    except Exception:
        return SERVER_PACKAGE


def _check_server_installed() -> None:
    import importlib.util

    if importlib.util.find_spec(SERVER_MODULE) is None:
        raise OptionsError(f"local deployments need the Azure ML inference server: {install_command('deploy')} "
                           f"(or pip install {SERVER_PACKAGE}), or give --pip/--requirements to build an "
                           "environment that gets it")


def start_deployment(ns: argparse.Namespace, cell: str | None, defaults: Defaults,
                     registry: engine.RunRegistry = engine.REGISTRY) -> DebugDeployment:
    """Check everything, then start the server; returns at once with a live DebugDeployment."""
    request, make_run = build_deploy_request(ns, cell, defaults)
    deployment = engine.start(request, registry, make_run=make_run)
    assert isinstance(deployment, DebugDeployment)
    deployment.wait_requested = bool(request.wait)
    return deployment


def deploy(score_path: str | None = None, *, code: str | None = None, **options: Any) -> DebugDeployment:
    """Python API: ``deploy("score.py", port=0, timeout=60, model_dir="model")`` (the magic's options)."""
    argv = options_argv(options)
    if score_path is not None:
        argv.append(str(score_path))
    return start_deployment(parse_deploy_args(argv, "aml_magics.deploy"), code, Defaults())


# -- following (magic in a terminal, CLI) ---------------------------------------------------------


def follow_deployment(deployment: DebugDeployment, emit: Callable[[str], None], *,
                      until: Callable[[DebugDeployment], bool] | None = None,
                      on_endpoint: Callable[[DebugDeployment], None] | None = None,
                      on_serving: Callable[[DebugDeployment], None] | None = None,
                      on_update: Callable[[DebugDeployment], None] | None = None, poll: float = 0.2) -> None:
    """Stream the server's output until ``until(deployment)`` or the end. KeyboardInterrupt propagates.
    ``on_update(deployment)`` after each batch of lines (at least every ``poll`` seconds)."""
    serving_told = False

    def updated(dep: DebugDeployment) -> None:
        nonlocal serving_told
        if on_update is not None:
            on_update(dep)
        if dep.scoring_uri and dep.state == SERVING and not serving_told:
            serving_told = True
            if on_serving is not None:
                on_serving(dep)

    follow(deployment, emit=emit, until=until, on_endpoint=on_endpoint, on_update=updated, poll=poll)


CLI_PROG = "aml-debug deploy"


def cli_main(argv: Sequence[str]) -> int:
    """``aml-debug deploy SCORE_PY [options]``: serve until Ctrl-C (which stops the server)."""
    argv = list(argv)
    if "-h" in argv or "--help" in argv:
        print(make_deploy_parser(CLI_PROG).format_help())
        return 0
    try:
        deployment = start_deployment(parse_deploy_args(argv, CLI_PROG), None, Defaults())
    except OptionsError as exc:
        print(f"aml-debug: {exc}", file=sys.stderr)
        return 2

    wait = AttachWait(sys.stderr)  # the attach countdown: a live line on a terminal, one line in a log
    say = wait.emit(lambda text: print(text, flush=True))

    def on_endpoint(dep: DebugDeployment) -> None:
        for endpoint in dep.endpoints:
            say(f"aml-debug: debugpy listening at {endpoint.address} (attach before init() runs)")
        say("aml-debug: launch.json attach configuration:")
        say(json.dumps(dep.launch_json(), indent=4))

    def on_serving(dep: DebugDeployment) -> None:
        say(f"aml-debug: scoring URI: {dep.scoring_uri}  (POST JSON; Ctrl-C stops the server)")

    try:
        follow_deployment(deployment, say, on_endpoint=on_endpoint, on_serving=on_serving, on_update=wait.update)
    except KeyboardInterrupt:
        wait.clear()
        deployment.cancel()
        print(f"aml-debug: deployment {deployment.id} stopped", file=sys.stderr)
        return 130
    wait.clear()
    print(f"aml-debug: deployment {deployment.id} {deployment.state}"
          + (f" ({deployment.detail})" if deployment.detail else ""), file=sys.stderr)
    if deployment.traceback:
        print(deployment.traceback, file=sys.stderr)
    if deployment.state == FAILED:
        return deployment.exit_code or 1
    return 0
