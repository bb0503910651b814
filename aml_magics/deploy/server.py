"""aml_magics deployment server: the Azure ML inference server's app, served in this process.

Standalone on purpose (stdlib + ``azureml-inference-server-http``): the bootstrap runs it as
the user script, so debugpy is already listening (and, if asked, attached) when ``init()``
runs, and every request is handled in this same process.

    python node [debug options] -- deploy_server.py --entry-script score.py
                        [--host H] [--http-port N]

Why not ``azmlinfsrv``: on Linux it runs gunicorn, whose worker is a forked child. Debugging
that needs debugpy's separate adapter plus a second (``debugpyAttach``) session per worker, and
gunicorn's arbiter kills a worker that sits at a breakpoint longer than ``WORKER_TIMEOUT``
(300 s by default) and forks a fresh one; it also binds 0.0.0.0 unconditionally. Here the same
WSGI app (``azureml_inference_server_http.server.entry:app``) is configured by the server's own
start-up code (``amlserver.merge_configuration`` & co.) and served without forking by
werkzeug's threaded server (the server's Windows mode does the same with waitress): one
process, one debug session, breakpoints in ``init()`` and ``run()``, no worker timeout. The
server's SIGALRM scoring timeout applies only on the main thread, so a request paused in the
debugger is not cut off either.

It prints ``AML_MAGICS_SERVING {json}`` once ``init()`` has returned and the port accepts
requests. When ``init()`` raises, the server logs the traceback and exits with code 3.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

SERVING_MARKER = "AML_MAGICS_SERVING"
BOOTSTRAP_RUNTIME = "_aml_magics_bootstrap"  # node.wire.RUNTIME_MODULE: the node's markers (this file is standalone)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="aml_magics_deploy_server")
    parser.add_argument("--entry-script", required=True, help="the scoring script (init() and run())")
    parser.add_argument("--host", default="127.0.0.1", help="address the scoring server binds")
    parser.add_argument("--http-port", type=int, default=0, help="scoring port (0: any free port)")
    parser.add_argument("--report-host", default=None, help="host to put in the reported scoring URI")
    return parser.parse_args(argv)


def _own_dir_off_sys_path(app_root: str) -> None:
    """Run as a script, this file's directory (the aml_magics package) heads sys.path, where
    its modules (run, options, spec, ...) would shadow the user's; the app root goes there."""
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        sys.path[0] = app_root
    elif app_root not in sys.path:
        sys.path.insert(0, app_root)


def _configure(entry_script: str, port: int) -> None:
    """What ``azmlinfsrv`` does before it hands over to gunicorn, with the server's own code."""
    from azureml_inference_server_http import amlserver
    from azureml_inference_server_http.constants import PACKAGE_ROOT
    from azureml_inference_server_http.log_config import load_logging_config

    load_logging_config(PACKAGE_ROOT)
    args = argparse.Namespace(
        entry_script=entry_script, model_dir=None, appinsights_instrumentation_key=None, port=port,
        health_port=None, worker_count=None, access_control_allow_origins=None, config_file=None, rest=False,
    )
    amlserver.merge_configuration(args)
    amlserver.validate_environment_variables()
    amlserver.set_path_variable()
    amlserver.print_server_info()
    amlserver.print_server_settings()
    amlserver.print_routes()


def _emit(**data: object) -> None:
    """The SERVING marker, authenticated by the bootstrap that runs this server (it holds the run's
    key); written to the stream directly: the server replaces builtins.print with a logger."""
    bootstrap = sys.modules.get(BOOTSTRAP_RUNTIME)
    if bootstrap is not None:
        bootstrap.emit("SERVING", **data)
        return
    sys.stdout.write(f"{SERVING_MARKER} {json.dumps(data, sort_keys=True)}\n")
    sys.stdout.flush()


class _NotReady:
    """The WSGI app until init() has returned (the port is bound first, to learn its number)."""

    def __call__(self, environ, start_response):
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
        return [b"init() has not finished yet"]


def main(argv: list[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    entry_script = os.path.realpath(options.entry_script)
    app_root = os.path.dirname(entry_script)
    _own_dir_off_sys_path(app_root)
    os.environ.setdefault("AML_APP_ROOT", app_root)

    from werkzeug.serving import make_server

    # threaded: one daemon thread per request (a request paused in the debugger blocks no other).
    server = make_server(options.host, options.http_port, _NotReady(), threaded=True)
    port = server.server_address[1]
    try:
        _configure(entry_script, port)
        # Importing the entry module builds the app: loads score.py and calls its init().
        from azureml_inference_server_http.server.entry import app

        server.app = app
        host = options.report_host or ("127.0.0.1" if options.host in ("0.0.0.0", "", "::") else options.host)
        _emit(host=host, port=port, bind=options.host, pid=os.getpid(), entry_script=entry_script,
              scoring_uri=f"http://{host}:{port}/score")
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
