"""No idle bill: a session stopped at a breakpoint that nobody looks at is resumed.

A debug session left stopped holds its node (on Azure ML, a GPU node billed by the hour) until
someone comes back. With ``--idle-timeout SECONDS``, a session whose threads are stopped and
whose client sent no request for that long is resumed and detached (``--idle-action detach``:
the run goes on without the debugger), or the run is ended (``cancel``): a line in the log and
a DETACHED marker say which, and after how long.

"No request": every DAP request the in-process adapter handles stamps the time (pydevd's JSON
command processor, wrapped once); "stopped": a thread of the process is suspended.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

from .wire import service_thread

_last_request = [time.monotonic()]
_wrapped = [False]


def _stamp_requests() -> None:
    """Every DAP request handled stamps ``_last_request`` (pydevd's processor, wrapped once)."""
    if _wrapped[0]:
        return
    from _pydevd_bundle.pydevd_process_net_command_json import PyDevJsonCommandProcessor

    original = PyDevJsonCommandProcessor.process_net_command_json

    def process_net_command_json(self, py_db, json_contents, send_response=True):  # noqa: ANN001, ANN202
        _last_request[0] = time.monotonic()
        return original(self, py_db, json_contents, send_response)

    PyDevJsonCommandProcessor.process_net_command_json = process_net_command_json
    _wrapped[0] = True


def stopped_threads() -> int:
    """How many threads of this process the debugger holds suspended."""
    from _pydevd_bundle.pydevd_constants import STATE_SUSPEND

    count = 0
    for thread in threading.enumerate():
        info = getattr(thread, "additional_info", None)
        if info is not None and getattr(info, "pydev_state", None) == STATE_SUSPEND:
            count += 1
    return count


def resume_all() -> None:
    from _pydevd_bundle.pydevd_api import PyDevdAPI

    PyDevdAPI().request_resume_thread("*")


def describe(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g} s"


class IdleWatch:
    """While ``connected()``, end a stop nobody attends to for ``timeout`` seconds with ``on_idle``;
    ``on_held(since)`` when a stop begins (the wall-clock time) and ends (None): the owner shows
    how long the node has been held."""

    def __init__(self, timeout: float, connected: Callable[[], bool], on_idle: Callable[[float], None],
                 on_held: Callable[[float | None], None] | None = None) -> None:
        self.timeout = timeout
        self.connected = connected
        self.on_idle = on_idle
        self.on_held = on_held or (lambda since: None)
        self.poll = min(1.0, max(0.05, timeout / 20))

    def start(self) -> None:
        _stamp_requests()
        _last_request[0] = time.monotonic()
        service_thread(self._watch, name="aml-magics-idle")

    def _watch(self) -> None:
        stopped_since: float | None = None
        try:
            while self.connected():
                time.sleep(self.poll)
                try:
                    stopped = stopped_threads() > 0
                except Exception:
                    return
                now = time.monotonic()
                if not stopped:
                    if stopped_since is not None:
                        self.on_held(None)
                    stopped_since = None
                    continue
                if stopped_since is None:
                    stopped_since = now
                    self.on_held(time.time())
                idle = now - max(stopped_since, _last_request[0])
                if idle >= self.timeout:
                    try:
                        self.on_idle(now - stopped_since)
                    except Exception as exc:  # the run itself must go on
                        print(f"aml_magics: idle timeout failed: {exc!r}", file=sys.stderr, flush=True)
                    return
        finally:
            if stopped_since is not None:
                self.on_held(None)


def end_process(code: int) -> None:
    """``--idle-action cancel``: the run ends here (the main thread is held by the debugger)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
