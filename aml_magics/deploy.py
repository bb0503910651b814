"""Deployments: a scoring script (``score.py`` with ``init()``/``run()``) served over HTTP by the
Azure ML inference server with debugpy listening, so a real scoring request stops in ``run()``.

    %%aml_debug_deploy [options]            (the cell is score.py)
    %aml_debug_deploy [options] SCORE_PY
    %aml_score RUN '{"data": [1, 2]}'
    aml-debug deploy SCORE_PY [options]

The server process is the usual bootstrap (debugpy, the attach timeout, the markers) running
``deploy_server.py``, which builds the inference server's own WSGI app in that same process and
serves it without forking; see that file for why not ``azmlinfsrv``/gunicorn. ``score.py`` is
loaded from its own path, so breakpoints set on it map 1:1. ``--target docker`` serves it the same
way in a container (deploy_docker.py): the folder at ``/var/azureml-app``, ports on 127.0.0.1.

States: starting (``running`` of a plain run) → waiting_for_debugger → attached (``init()``
runs) → serving; failed (with the server's traceback) / canceled / completed (the server
stopped by itself).
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import engine
from .follow import follow
from .options import (
    Defaults,
    OptionsError,
    _Parser,
    build_request,
    check_script_file,
    check_syntax,
    env_var_value,
    options_argv,
    port_number,
    port_value,
    timeout_value,
)
from .ports import holder, is_free
from .run import FAILED, RUNNING, DebugRun, RunFailed
from .spec import RunSpec

SERVER_SCRIPT = Path(__file__).resolve().parent / "deploy_server.py"
SERVER_PACKAGE = "azureml-inference-server-http"
SERVER_MODULE = "azureml_inference_server_http"
DEPLOY_TARGETS = ("local", "docker")
LOOPBACK = "127.0.0.1"
DEFAULT_NAME = "score"

STARTING = "starting"
SERVING = "serving"

_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z] \[\d+\] ")
_TRACEBACK = "Traceback (most recent call last):"
_CHAINS = ("The above exception was the direct cause of the following exception:",
           "During handling of the above exception, another exception occurred:")


class ScoringError(RuntimeError):
    """A scoring request that did not succeed: an HTTP error status, or no answer at all."""

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


# -- the handle ------------------------------------------------------------------------------------


class DebugDeployment(DebugRun):
    """A DebugRun whose script is a scoring server: plus ``scoring_uri`` and ``score()``."""

    def __init__(self, run_id: str, spec: RunSpec, target: str, *, score_path: Path,
                 model_dir: Path | None = None) -> None:
        super().__init__(run_id, spec, target, description=f"scoring script {score_path}")
        self.score_path = score_path
        self.model_dir = model_dir
        self.scoring_uri: str | None = None
        self.server_pid: int | None = None
        self.traceback: str | None = None  # the server's traceback when it failed to start
        self.wait_requested = False  # --wait: the magic blocks until serving

    # -- states ------------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        # A plain run is "running" once its process is up (or its debugger was switched off);
        # a server is only "starting" until init() has returned. Mapped when read, so the
        # DebugRun machinery (which compares its own states) is left as it is.
        state = self._state
        return STARTING if state == RUNNING else state

    def finished(self, state: str, exit_code: int | None = None, detail: str = "") -> None:
        if state == FAILED:
            found = server_failure(self.log_tail(2000))
            if found is not None:
                self.traceback, detail = found
        super().finished(state, exit_code, detail)

    def _on_marker(self, kind: str, data: dict[str, Any]) -> None:
        if kind != "SERVING":
            super()._on_marker(kind, data)
            return
        uri = data.get("scoring_uri")
        if not isinstance(uri, str) or not uri.startswith("http"):
            return
        mapper = getattr(self._handle, "map_scoring_uri", None)
        self.scoring_uri = mapper(uri) if mapper else uri
        pid = data.get("pid")
        self.server_pid = pid if isinstance(pid, int) else None
        self.set_state(SERVING)

    # -- waiting and scoring -------------------------------------------------------------------------
    @property
    def serving(self) -> bool:
        return self.state == SERVING

    def wait_until_serving(self, timeout: float | None = None) -> str:
        """Block until ``init()`` has returned and the server takes requests; its scoring URI.

        With the debugger enabled that is after a client attached (or the attach timeout).
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._state == SERVING or self.done, timeout):
                raise TimeoutError(f"deployment {self.id}: not serving after {timeout:g}s (state {self._state})")
        if self.scoring_uri is None or self.done:
            raise RunFailed(f"deployment {self.id} ended ({self.state}) before serving{self._why()}")
        return self.scoring_uri

    def score(self, payload: Any, timeout: float | None = None, headers: dict[str, str] | None = None) -> Any:
        """POST ``payload`` to the scoring URI and return the decoded response.

        ``payload``: a dict/list (sent as JSON), a str or bytes (sent as given). It blocks while
        ``run()`` sits at a breakpoint; ``timeout`` (seconds) bounds that. An HTTP error status
        raises ScoringError with the server's message.
        """
        uri = self.scoring_uri
        if uri is None or self.done or self.state != SERVING:
            raise RunFailed(f"deployment {self.id} is not serving (state {self.state}{self._why()}); "
                            "attach a debugger or wait_until_serving() first")
        return post_json(uri, payload, timeout=timeout, headers=headers)

    def __repr__(self) -> str:
        endpoints = ", ".join(e.address for e in self.endpoints) or "-"
        return (f"<DebugDeployment {self.id} {self.name!r} target={self.target} state={self.state} "
                f"scoring_uri={self.scoring_uri or '-'} endpoints={endpoints}>")


def post_json(uri: str, payload: Any, timeout: float | None = None, headers: dict[str, str] | None = None) -> Any:
    if isinstance(payload, bytes):
        data = payload
    elif isinstance(payload, str):
        data = payload.encode("utf-8")
    else:
        data = json.dumps(payload).encode("utf-8")
    request = urllib.request.Request(uri, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    # Never through a proxy from the environment: the server is on this machine.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return _decode(response.read(), response.headers.get_content_type())
    except urllib.error.HTTPError as exc:
        body = _decode(exc.read(), exc.headers.get_content_type() if exc.headers else "")
        message = body.get("message") if isinstance(body, dict) else body
        raise ScoringError(f"HTTP {exc.code} from {uri}: {message}", exc.code, body) from None
    except urllib.error.URLError as exc:
        raise ScoringError(f"no answer from {uri}: {exc.reason}") from None
    except TimeoutError:
        raise ScoringError(f"no answer from {uri} within {timeout:g}s") from None
    except (http.client.HTTPException, OSError) as exc:  # e.g. the server stopped mid-request
        raise ScoringError(f"no answer from {uri}: {exc!r}") from None


def _decode(body: bytes, content_type: str) -> Any:
    text = body.decode("utf-8", errors="replace")
    if content_type == "application/json" or text[:1] in ("{", "["):
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def server_failure(lines: Sequence[str]) -> tuple[str, str] | None:
    """The traceback the inference server logged when it could not start, and a one-line summary.

    The server logs ``User's init function failed`` then ``Encountered Exception Traceback ...``
    (one multi-line log record: the user's exception chained to the server's), or the traceback
    of a score.py that failed to import; a crash outside the server is printed bare.
    """
    headers = [i for i, line in enumerate(lines) if line.endswith(_TRACEBACK)]
    if not headers:
        return None
    start = headers[-1]
    # A chained exception's tracebacks belong to one record: go back to its first header.
    while not _record_start(lines[start]):
        earlier = [h for h in headers if h < start]
        if not earlier or any(_record_start(line) for line in lines[earlier[-1] + 1:start]):
            break
        start = earlier[-1]
    block = [_TRACEBACK]
    for line in lines[start + 1:]:
        if _record_start(line):
            break
        block.append(line)
    while block and not block[-1].strip():
        block.pop()
    # The user's own exception comes first in a chain: the last line before the first "cause".
    first_chain = next((i for i, line in enumerate(block) if line in _CHAINS), len(block))
    summary = next((line for line in reversed(block[:first_chain]) if line.strip()), block[-1])
    if any("User's init function failed" in line for line in lines):
        phase = "init()"
    elif any("Failed to import user script" in line or "UserScriptError" in line for line in lines):
        phase = "loading the scoring script"
    else:
        phase = "the server"
    return "\n".join(block), f"{phase} failed: {summary.strip()}"


def _record_start(line: str) -> bool:
    return bool(_LOG_LINE.match(line)) or line.startswith("AML_MAGICS_")


# -- options → request -----------------------------------------------------------------------------


def http_port_value(text: str) -> int:
    return port_number(text, "--http-port")


def make_deploy_parser(prog: str) -> _Parser:
    parser = _Parser(prog=prog, add_help=False, allow_abbrev=False,
                     description="Serve a scoring script (init()/run()) with the Azure ML inference server "
                                 "and debugpy listening.")
    parser.add_argument("-t", "--target", default=None, help="where to serve: local (default) or docker")
    parser.add_argument("--name", default=None, help="deployment name (also the launch.json configuration name)")
    parser.add_argument("--model-dir", default=None, help="model directory, made available as AZUREML_MODEL_DIR")
    parser.add_argument("--http-port", type=http_port_value, default=None, help="scoring port (default: a free port)")
    parser.add_argument("--http-bind", default=None, help="address the scoring server binds (default 127.0.0.1)")
    parser.add_argument("--port", type=port_value, default=None, help="debug port (default 5678; 0 any; auto next free)")
    parser.add_argument("--bind", default=None, help="address debugpy binds (default: loopback)")
    parser.add_argument("--timeout", type=timeout_value, default=None,
                        help="seconds to wait for a debugger before init() runs (0: don't)")
    parser.add_argument("--no-debug", action="store_true", help="serve without the debugger")
    parser.add_argument("--wait", action="store_true", default=None, help="block until the server is serving")
    parser.add_argument("--launch-json", default=None, help="merge the attach configuration into this launch.json")
    parser.add_argument("--source-dir", default=None, help="cell form: the directory score.py is written to")
    parser.add_argument("--script", default=None, help="cell form: the file name of the scoring script (score.py)")
    parser.add_argument("--pip", action="append", default=[], help="pip requirement of the server's environment")
    parser.add_argument("--requirements", default=None, help="requirements file for the server's environment")
    parser.add_argument("--env-var", action="append", type=env_var_value, default=[], help="KEY=VALUE (repeatable)")
    parser.add_argument("--base-image", default=None,
                        help="docker: image to build the server's environment on (default python:<kernel's X.Y>-slim)")
    parser.add_argument("--image", default=None,
                        help="docker: an existing Azure ML inference image (e.g. from Model.package) to serve in, "
                             "with debugpy added")
    parser.add_argument("score_path", nargs="?", default=None, metavar="SCORE_PY")
    return parser


def parse_deploy_args(argv: Sequence[str], prog: str = "%aml_debug_deploy") -> argparse.Namespace:
    return make_deploy_parser(prog).parse_args(list(argv))


def build_deploy_request(ns: argparse.Namespace, cell: str | None, defaults: Defaults,
                         cwd: Path | None = None):
    """Everything checked (script syntax included), nothing started; → (RunRequest, make_run)."""
    cwd = cwd or Path.cwd()
    target = ns.target or "local"
    if target not in DEPLOY_TARGETS:
        raise OptionsError(f"deployments run on: {', '.join(DEPLOY_TARGETS)} (not {target!r})")
    name = ns.name or (DEFAULT_NAME if cell is not None else None)
    run_ns = argparse.Namespace(
        target=target, name=name, source_dir=ns.source_dir, script=ns.script, args=None, script_args=[],
        script_path=ns.score_path, port=ns.port, bind=ns.bind, timeout=ns.timeout, no_debug=ns.no_debug,
        stop_on_entry=False, wait=ns.wait, launch_json=ns.launch_json, local_root=None, pip=ns.pip,
        requirements=ns.requirements, env_var=ns.env_var, conda=None, base_image=ns.base_image,
    )
    if cell is not None:
        if ns.score_path:
            raise OptionsError(f"the cell is the scoring script; drop {ns.score_path!r} "
                               "or use the line form %aml_debug_deploy SCORE_PY")
        run_ns.script = ns.script or "score.py"
        # Each cell deployment gets a folder of its own: the server's app root (on sys.path).
        defaults = replace(defaults, cell_dir=str(Path(defaults.cell_dir) / f"deploy-{name}"))
    elif not ns.score_path:
        raise OptionsError("no scoring script: give SCORE_PY, or use %%aml_debug_deploy with score.py in the cell")
    request = build_request(run_ns, cell, defaults, cwd)
    spec = request.spec
    score_path = spec.script_path
    if cell is not None:
        check_syntax(cell, str(score_path))
    else:
        check_script_file(score_path, "scoring script")

    env = spec.environment
    in_docker = target == "docker"
    if ns.image:
        if not in_docker:
            raise OptionsError("--image is for --target docker")
        given = [flag for flag, value in (("--base-image", ns.base_image), ("--pip", ns.pip),
                                          ("--requirements", ns.requirements)) if value]
        if given:
            raise OptionsError(f"--image is served as it is (plus debugpy); drop {' and '.join(given)}")
    model_dir = None
    if ns.model_dir:
        model_dir = Path(ns.model_dir).expanduser()
        model_dir = (model_dir if model_dir.is_absolute() else cwd / model_dir).resolve()
        if not model_dir.is_dir():
            raise OptionsError(f"--model-dir {model_dir} is not a directory")
    if in_docker:
        from . import deploy_docker

        if ns.http_bind:
            raise OptionsError("--http-bind is for --target local; in docker the scoring port is published "
                               "on 127.0.0.1 only")
        if not ns.image:  # our image never has the server unless we put it there
            env = replace(env, pip=(*env.pip, server_requirement()))
        if model_dir is not None:
            env = replace(env, env_vars=(*env.env_vars,
                                         ("AZUREML_MODEL_DIR", deploy_docker.model_dir_in_container(model_dir))))
    else:
        if ns.base_image:
            raise OptionsError("--base-image is for --target docker")
        if model_dir is not None:
            env = replace(env, env_vars=(*env.env_vars, ("AZUREML_MODEL_DIR", str(model_dir))))
        if env.has_dependencies:
            env = replace(env, pip=(*env.pip, server_requirement()))
        else:
            _check_server_installed()

    http_bind = LOOPBACK if in_docker else (ns.http_bind or LOOPBACK)
    http_port = ns.http_port or 0
    if http_port and not _port_free(http_bind, http_port):
        who = holder(http_port)
        raise OptionsError(f"--http-port {http_port} on {http_bind} is already in use"
                           + (f" (held by {who})" if who else "") + "; pick another, or leave it out for a free one")
    if in_docker:
        args = deploy_docker.container_args(spec.script)
        request.target = deploy_docker.TARGET_KEY
        request.target_options = {"model_dir": str(model_dir) if model_dir else None, "http_port": http_port or None,
                                  "image": ns.image or None}
    else:
        args = ("--entry-script", str(score_path), "--host", http_bind, "--http-port", str(http_port))
    request.spec = replace(spec, script=str(SERVER_SCRIPT), args=args, environment=env)

    def make_run(run_id: str, run_spec: RunSpec, target_name: str) -> DebugDeployment:
        return DebugDeployment(run_id, run_spec, target_name, score_path=score_path, model_dir=model_dir)

    return request, make_run


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
        raise OptionsError(f"local deployments need the Azure ML inference server: pip install 'aml-magics[deploy]' "
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
                      on_serving: Callable[[DebugDeployment], None] | None = None, poll: float = 0.2) -> None:
    """Stream the server's output until ``until(deployment)`` or the end. KeyboardInterrupt propagates."""
    serving_told = False

    def on_update(dep: DebugDeployment) -> None:
        nonlocal serving_told
        if dep.scoring_uri and dep.state == SERVING and not serving_told:
            serving_told = True
            if on_serving is not None:
                on_serving(dep)

    follow(deployment, emit=emit, until=until, on_endpoint=on_endpoint, on_update=on_update, poll=poll)


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

    def say(text: str) -> None:
        print(text, flush=True)

    def on_endpoint(dep: DebugDeployment) -> None:
        for endpoint in dep.endpoints:
            say(f"aml-debug: debugpy listening at {endpoint.address} (attach before init() runs)")
        say("aml-debug: launch.json attach configuration:")
        say(json.dumps(dep.launch_json(), indent=4))

    def on_serving(dep: DebugDeployment) -> None:
        say(f"aml-debug: scoring URI: {dep.scoring_uri}  (POST JSON; Ctrl-C stops the server)")

    try:
        follow_deployment(deployment, say, on_endpoint=on_endpoint, on_serving=on_serving)
    except KeyboardInterrupt:
        deployment.cancel()
        print(f"aml-debug: deployment {deployment.id} stopped", file=sys.stderr)
        return 130
    print(f"aml-debug: deployment {deployment.id} {deployment.state}"
          + (f" ({deployment.detail})" if deployment.detail else ""), file=sys.stderr)
    if deployment.traceback:
        print(deployment.traceback, file=sys.stderr)
    if deployment.state == FAILED:
        return deployment.exit_code or 1
    return 0
