"""Deployments: a scoring script served by the Azure ML inference server with debugpy listening.

- :mod:`.request`: options → a run request whose script is the server (the magic, CLI and API);
- :mod:`.handle`: :class:`DebugDeployment`, a run with ``scoring_uri`` and ``score()``;
- :mod:`.target`: the docker target's deployment variant (score.py mounted, ports published);
- :mod:`.server`: the standalone server script the bootstrap runs.

Import from the submodules; this package only names them (a deployment is loaded when used).
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "DebugDeployment": "handle", "ScoringError": "handle", "ServingMarker": "handle", "post_json": "handle",
    "server_failure": "handle", "SERVING": "handle", "STARTING": "handle",
    "deploy": "request", "start_deployment": "request", "server_requirement": "request", "cli_main": "request",
    "make_deploy_parser": "request", "parse_deploy_args": "request", "follow_deployment": "request",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
