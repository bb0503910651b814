"""Following a submitted Azure ML run: status, log lines, endpoint tags, cancel.

Polls about every 2 s (the SDK's own streaming backs off to 60 s, too slow for a
debugger's attach window). Reads both log layouts, ``azureml-logs/70_driver_log*.txt``
(older runtime) and ``user_logs/std_log*.txt`` (newer), incrementally, and the endpoint
tag the bootstrap sets when azureml-core is importable in the run.

A distributed run has one log per process of the whole job, whichever node it ran on,
numbered by global rank (``std_log_process_3.txt``, or zero-padded ``std_log_process_03.txt``;
``70_driver_log_3.txt``); each appears when its node starts, and every one is followed from
then on, its lines prefixed ``[rank N] ``. Each rank's endpoint comes from its own log (the
marker names the rank and the address of the node it listens on).
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

from ..lifecycle import RunScope
from ..output import fresh_lines
from ..protocol import MARKER_PREFIX, Endpoint, EndpointMarker, ExitMarker, MarkerReader, RunState
from ..target_base import RunEvents
from .backend import first_line

ENDPOINT_TAG = "aml_magics.endpoint"  # + ".<rank>"; the value is the ENDPOINT marker's JSON
CANCEL_WAIT = 10.0

# Azure ML run statuses → DebugRun states (None: no change worth showing).
STATUS_STATES: dict[str, str | None] = {
    "NotStarted": "preparing",
    "Starting": "queued",
    "Provisioning": "queued",
    "Queued": "queued",
    "Preparing": "building",
    "Running": "running",
    "Finalizing": None,
    "CancelRequested": None,
}
TERMINAL = {"Completed": "completed", "Failed": "failed", "Canceled": "canceled", "NotResponding": "failed",
            "Paused": "canceled"}  # azure-ai-ml counts Paused (v2 jobs) as terminal: nothing runs any more

_USER_LOG = re.compile(r"^user_logs/std_log(?:_process_(\d+))?\.txt$")
_DRIVER_LOG = re.compile(r"^azureml-logs/70_driver_log(?:_(\d+))?\.txt$")
_BUILD_LOG = re.compile(r"^azureml-logs/20_image_build_log.*\.txt$")


def followed_logs(names: list[str]) -> list[tuple[str, str]]:
    """(log name, line prefix) to follow: the newer layout if present, else the older one.

    A per-process log's prefix comes from its own name, so it is the same from the first
    poll on, even while the other nodes' logs have not appeared yet."""
    user = [(n, _USER_LOG.match(n)) for n in names]
    driver = [(n, _DRIVER_LOG.match(n)) for n in names]
    chosen = [(n, m) for n, m in user if m] or [(n, m) for n, m in driver if m]
    result = [(n, "[image build] ") for n in sorted(names) if _BUILD_LOG.match(n)]
    for name, match in sorted(chosen, key=lambda item: (int(item[1].group(1) or 0), item[0])):
        rank = match.group(1)
        result.append((name, f"[rank {int(rank)}] " if rank is not None else ""))
    return result


class _Tail:
    """Incremental reader of one log file: whole lines only, in order."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.offset = 0
        self.partial = b""

    def feed(self, data: bytes) -> list[str]:
        self.offset += len(data)
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        return [self.prefix + line.decode("utf-8", "replace").rstrip("\r") for line in lines]

    def flush(self) -> list[str]:
        rest, self.partial = self.partial, b""
        return [self.prefix + rest.decode("utf-8", "replace")] if rest.strip() else []


class RunMonitor:
    """A RunHandle for one Azure ML run (a ScriptRun or a pipeline's step run)."""

    def __init__(self, backend: Any, run: Any, events: RunEvents, *, reader: MarkerReader,
                 scope: RunScope | None = None, poll: float | None = None, on_cancel: Any = None) -> None:
        self.backend = backend
        self.run = run
        self.events = events
        self.reader = reader
        self.scope = scope  # the run's: its cancel requests the remote cancel; closed when the run ends
        self.poll = poll if poll is not None else backend.poll_seconds
        self.on_cancel = on_cancel  # what cancel() cancels (a pipeline run for a step), default the run
        self.status: str | None = None
        self.exit_code: int | None = None
        self.endpoint_ranks: set[int] = set()
        self.cancel_requested = False
        self._tails: dict[str, _Tail] = {}
        self._wake = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._errors: set[str] = set()

    # -- RunHandle -------------------------------------------------------------------
    def cancel(self) -> None:
        if self._done.is_set():
            return
        if self.scope is not None:
            self.scope.cancel()  # its callback: _request_cancel
        else:
            self._request_cancel()
        self._done.wait(CANCEL_WAIT)

    def _request_cancel(self) -> None:
        if self._done.is_set() or self.cancel_requested:
            return
        self.cancel_requested = True
        target = self.on_cancel or self.run
        try:
            target.cancel()
            self.events.line(f"aml_magics: cancel requested for Azure ML run {target.id}")
        except Exception as exc:
            self.events.line(f"aml_magics: could not cancel Azure ML run {getattr(target, 'id', '?')}: "
                             f"{first_line(exc)}")
        self._wake.set()

    def is_done(self) -> bool:
        return self._done.is_set()

    def map_endpoint(self, endpoint: Endpoint) -> Endpoint:
        return endpoint

    # -- the loop --------------------------------------------------------------------
    def start(self) -> RunMonitor:
        if self.scope is not None:
            self.scope.token.on_cancel(self._request_cancel)
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"aml-azureml-{self.run.id}")
        self._thread.start()
        return self

    def _loop(self) -> None:
        failures = 0
        try:
            while True:
                try:
                    details = self.run.get_details()
                    failures = 0
                except Exception as exc:
                    failures += 1
                    self._report(f"aml_magics: polling Azure ML run {self.run.id} failed (retrying): {first_line(exc)}")
                    self._sleep(min(self.poll * (1 + failures), 30.0))
                    continue
                status = details.get("status") or "NotStarted"
                if status != self.status and status not in TERMINAL:
                    self._on_status(status)
                self._read_logs(details)
                if not self.endpoint_ranks and status not in TERMINAL:
                    self._read_tags()
                if status in TERMINAL:
                    self._finish(status, self._read_final(details))
                    return
                self._sleep(self.poll)
        except Exception as exc:  # never a thread traceback: the run shows the failure
            self.events.line(f"aml_magics: following Azure ML run {self.run.id} failed: {first_line(exc)}")
            self._close()
            self.events.finished(RunState.FAILED, None, f"monitor error: {first_line(exc)}")
        finally:
            self._close()
            self._done.set()

    def _close(self) -> None:
        if self.scope is not None:
            self.scope.close()

    def _sleep(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def _report(self, text: str) -> None:
        if text not in self._errors:
            self._errors.add(text)
            self.events.line(text)

    def _on_status(self, status: str) -> None:
        self.status = status
        self.events.line(f"aml_magics: Azure ML run {self.run.id}: {status}")
        state = STATUS_STATES.get(status)
        if state is not None:
            self.events.state(state)

    def _read_logs(self, details: dict) -> None:
        logs = details.get("logFiles") or {}
        for name, prefix in followed_logs(list(logs)):
            tail = self._tails.setdefault(name, _Tail(prefix))
            try:
                data = self.backend.read(logs[name], tail.offset)
            except Exception as exc:
                self._report(f"aml_magics: reading {name} failed (retrying): {first_line(exc)}")
                continue
            for line in tail.feed(data):
                self._line(line)

    def _line(self, text: str) -> None:
        for piece in fresh_lines(text.rstrip("\r\n"), MARKER_PREFIX):
            self._one_line(piece)

    def _one_line(self, text: str) -> None:
        marker = self.reader.parse(text)
        if isinstance(marker, EndpointMarker):
            self.endpoint_ranks.add(marker.rank)
        elif isinstance(marker, ExitMarker) and marker.rank == 0:
            self.exit_code = marker.code
        self.events.line(text)

    def _read_tags(self) -> None:
        """The endpoint as a run tag: cheaper than logs, set by the bootstrap when it can. The tag's
        value is the bootstrap's own authenticated marker line, read like any other."""
        try:
            tags = self.run.get_tags() or {}
        except Exception:
            return
        for key, value in sorted(tags.items()):
            if not (key == ENDPOINT_TAG or key.startswith(ENDPOINT_TAG + ".")) or not isinstance(value, str):
                continue
            marker = self.reader.parse(value)
            if not isinstance(marker, EndpointMarker) or marker.rank in self.endpoint_ranks:
                continue
            self.endpoint_ranks.add(marker.rank)
            self.events.line(f"aml_magics: endpoint from run tag {key}")
            self.events.line(value)

    def _read_final(self, details: dict) -> dict:
        """The last lines (the service may list logs only once the run ended)."""
        try:
            details = self.run.get_details() or details
        except Exception:
            pass
        self._read_logs(details)
        for tail in self._tails.values():
            for line in tail.flush():
                self._line(line)
        return details

    def _finish(self, status: str, details: dict) -> None:
        state = TERMINAL[status]
        detail = ""
        if state == "failed":
            detail = _error_message(details) or f"Azure ML run {status}"
        elif status == "Paused":
            detail = "paused in Azure ML"
        elif state == "canceled":
            detail = "canceled by user" if self.cancel_requested else "canceled in Azure ML"
        self.events.line(f"aml_magics: Azure ML run {self.run.id} {status}")
        code = self.exit_code if self.exit_code is not None else (0 if state == "completed" else None)
        self._close()
        self.events.finished(state, code, detail)


def _error_message(details: dict) -> str:
    error = details.get("error") or {}
    if isinstance(error, dict):
        inner = error.get("error") if isinstance(error.get("error"), dict) else error
        message = inner.get("message") if isinstance(inner, dict) else None
        if message:
            return first_line(Exception(message))
    return ""


def wait_until(predicate, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
