"""A deployment's handle: a DebugRun whose script is a scoring server, plus ``scoring_uri`` and
``score()``.

It extends the run through the run's public extension points only: a handler for the server's
authenticated SERVING marker, a display facet (the scoring URL, the server's traceback when it
failed to start) that every view shows, and a finish hook that finds that traceback. States:
starting (``running`` of a plain run) → waiting_for_debugger → attached (``init()`` runs) →
serving; failed (with the server's traceback) / canceled / completed (the server stopped by
itself).
"""

from __future__ import annotations

import html
import http.client
import json
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..errors import AmlMagicsError, RunFailed
from ..protocol import Marker, MarkerReader, register_marker
from ..run import FAILED, RUNNING, DebugRun
from ..spec import RunSpec

STARTING = "starting"
SERVING = "serving"

_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z] \[\d+\] ")
_TRACEBACK = "Traceback (most recent call last):"
_CHAINS = ("The above exception was the direct cause of the following exception:",
           "During handling of the above exception, another exception occurred:")


@register_marker
@dataclass(frozen=True)
class ServingMarker(Marker):
    """``init()`` has returned and the server's port takes requests."""

    kind: ClassVar[str] = "SERVING"
    host: str = ""
    port: int = 0
    bind: str | None = None
    entry_script: str | None = None
    scoring_uri: str = ""


class ScoringError(AmlMagicsError, RuntimeError):
    """A scoring request that did not succeed: an HTTP error status, or no answer at all."""

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class DeploymentFacet:
    """What the views show of a deployment besides a run's state and endpoints."""

    def __init__(self, deployment: DebugDeployment) -> None:
        self.deployment = deployment

    def text_lines(self) -> list[str]:
        lines = []
        if self.deployment.scoring_uri:
            lines.append(f"scoring URI: POST {self.deployment.scoring_uri}")
        if self.deployment.traceback and self.deployment.state == FAILED:
            lines.append(self.deployment.traceback)
        return lines

    def html(self) -> str:
        parts = []
        if self.deployment.scoring_uri:
            parts.append(f"<br>scoring URL: POST <code class='aml-scoring-uri'>"
                         f"{html.escape(self.deployment.scoring_uri)}</code>")
        if self.deployment.traceback and self.deployment.state == FAILED:
            parts.append(f"<pre class='aml-traceback' style='margin:0'>{html.escape(self.deployment.traceback)}</pre>")
        return "".join(parts)


class DebugDeployment(DebugRun):
    """A DebugRun whose script is a scoring server: plus ``scoring_uri`` and ``score()``."""

    def __init__(self, run_id: str, spec: RunSpec, target: str, *, score_path: Path,
                 model_dir: Path | None = None, reader: MarkerReader | None = None) -> None:
        super().__init__(run_id, spec, target, description=f"scoring script {score_path}", reader=reader)
        self.score_path = score_path
        self.model_dir = model_dir
        self.scoring_uri: str | None = None
        self.server_pid: int | None = None
        self.traceback: str | None = None  # the server's traceback when it failed to start
        self.wait_requested = False  # --wait: the magic blocks until serving
        self.on_marker(ServingMarker, self._on_serving)
        self.on_finish(self._explain_failure)
        self.add_facet(DeploymentFacet(self))

    # -- states ------------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        # A plain run is "running" once its process is up (or its debugger was switched off);
        # a server is only "starting" until init() has returned.
        state = super().state
        return STARTING if state == RUNNING else state

    def _explain_failure(self, run: DebugRun, state: str, detail: str) -> str:
        if state == FAILED:
            found = server_failure(self.log_tail(2000))
            if found is not None:
                self.traceback, detail = found
        return detail

    def _on_serving(self, marker: ServingMarker) -> None:
        uri = marker.scoring_uri
        if not uri.startswith("http"):
            return
        mapper = getattr(self.handle, "map_scoring_uri", None)
        self.scoring_uri = mapper(uri) if mapper else uri
        self.server_pid = marker.pid
        self.set_state(SERVING)

    # -- waiting and scoring -------------------------------------------------------------------------
    @property
    def serving(self) -> bool:
        return self.state == SERVING

    def wait_until_serving(self, timeout: float | None = None) -> str:
        """Block until ``init()`` has returned and the server takes requests; its scoring URI.

        With the debugger enabled that is after a client attached (or the attach timeout).
        """
        self.wait_for(lambda: super(DebugDeployment, self).state == SERVING or self.done, timeout,
                      f"deployment {self.id}: not serving after {{timeout:g}}s")
        if self.scoring_uri is None or self.done:
            raise RunFailed(f"deployment {self.id} ended ({self.state}) before serving{self.why()}")
        return self.scoring_uri

    def score(self, payload: Any, timeout: float | None = None, headers: dict[str, str] | None = None) -> Any:
        """POST ``payload`` to the scoring URI and return the decoded response.

        ``payload``: a dict/list (sent as JSON), a str or bytes (sent as given). It blocks while
        ``run()`` sits at a breakpoint; ``timeout`` (seconds) bounds that. An HTTP error status
        raises ScoringError with the server's message.
        """
        uri = self.scoring_uri
        if uri is None or self.done or self.state != SERVING:
            raise RunFailed(f"deployment {self.id} is not serving (state {self.state}{self.why()}); "
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


