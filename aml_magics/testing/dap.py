"""Wait-style DAP helpers for tests, on top of the product client in :mod:`aml_magics.dap`.

:class:`DapClient` plays the part VS Code plays with a ``launch.json`` attach
configuration — connect to a debugpy port, run the attach handshake, wait for ``stopped``
events, read stack frames and variables, evaluate, continue — with blocking calls that
each take a timeout, which is what a test wants. The protocol work (framing, request
correlation, the handshake, ``debugpyAttach`` children) is :mod:`aml_magics.dap`'s;
this module adds an event queue per client (bounded: the oldest events are dropped past
:data:`EVENT_QUEUE` and counted) so that an event that arrived before a wait is still found.

Gotchas with debugpy (1.8), handled below in :mod:`aml_magics.dap.session`: ``attach``
is answered only after ``configurationDone``; never connect-and-close to a debugpy port
(use :meth:`DapClient.connect`, which keeps the first socket); a child process arrives as
a ``debugpyAttach`` event to be attached over a new connection (:meth:`DapClient.attach_child`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..dap import Channel, DapError, Request, Session
from ..dap.errors import DapTimeout, Disconnected
from ..dap.session import Breakpoints

__all__ = ["DapClient", "DapError", "StopInfo", "attach_with_launch_config"]

EVENT_QUEUE = 10_000


@dataclass
class StopInfo:
    """Where a ``stopped`` event left a thread."""

    thread_id: int
    reason: str
    frames: list[dict] = field(default_factory=list)
    event: dict = field(default_factory=dict)

    @property
    def top(self) -> dict:
        """The innermost frame (``{'id', 'name', 'line', 'source': {'path'}}``)."""
        if not self.frames:
            raise DapError(f"thread {self.thread_id} stopped ({self.reason}) with no stack frames")
        return self.frames[0]

    @property
    def frame_id(self) -> int:
        return int(self.top["id"])

    @property
    def path(self) -> str | None:
        return (self.top.get("source") or {}).get("path")

    @property
    def line(self) -> int:
        return int(self.top.get("line", 0))


class DapClient:
    """One DAP session over one connection, with blocking waits. Use :meth:`connect` to make one."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.channel: Channel = session.channel
        self.last_stop: StopInfo | None = None
        self.children: list[DapClient] = []
        self._requests: dict[int, Request] = {}
        self._reverse_requests: list[dict] = []
        self._history = self.channel.event_queue(maxlen=EVENT_QUEUE)  # every event, for events()/output()
        self._queue = self.channel.event_queue(maxlen=EVENT_QUEUE)  # what wait_event() takes from
        self.channel.handle_others(self._refuse_reverse_request)
        session.start()

    # ------------------------------------------------------------------ connection
    @classmethod
    def connect(cls, host: str, port: int, timeout: float = 30.0) -> DapClient:
        """Connect to ``host:port``, retrying refused connections until ``timeout`` (never a probe)."""
        return cls(Session.connect(host, port, timeout))

    @property
    def name(self) -> str:
        return self.session.name

    @name.setter
    def name(self, value: str) -> None:
        self.session.name = value

    @property
    def capabilities(self) -> dict:
        return self.session.capabilities

    @property
    def breakpoints(self) -> dict[str, list[dict]]:
        return self.session.breakpoints

    def close(self) -> None:
        """Close the connection (without a ``disconnect`` request)."""
        self.session.close()

    @property
    def closed(self) -> bool:
        return self.session.closed

    def __enter__(self) -> DapClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for child in self.children:
            child.close()
        self.close()

    # ------------------------------------------------------------------ requests
    def send_request(self, command: str, arguments: dict | None = None) -> int:
        """Send a request without waiting; return its ``seq`` for :meth:`wait_response`."""
        request = self.channel.send_request(command, arguments)
        self._requests[request.seq] = request
        return request.seq

    def wait_response(self, seq: int, timeout: float = 30.0) -> dict:
        """The body of request ``seq``'s response; :class:`DapError` with the adapter's message on failure."""
        request = self._requests.get(seq)
        if request is None:
            raise DapError(f"no request {seq} was sent by this client")
        try:
            body = request.body(timeout)
        except Disconnected as exc:
            raise Disconnected(f"no response to request {seq}: {exc.reason}{self.channel.recent_text()}",
                               exc.reason) from None
        except DapTimeout:
            raise DapTimeout(f"timed out after {timeout:g}s waiting for the response to request {seq}"
                             f"{self.channel.recent_text()}") from None
        self._requests.pop(seq, None)
        return body

    def request(self, command: str, arguments: dict | None = None, timeout: float = 30.0) -> dict:
        """Send a request and wait for its response body."""
        return self.wait_response(self.send_request(command, arguments), timeout)

    def _refuse_reverse_request(self, message: dict) -> dict:
        self._reverse_requests.append(message)
        raise DapError("reverse requests are not supported by the aml-magics test helpers")

    # ------------------------------------------------------------------ events
    def events(self) -> list[dict]:
        """Every event message received so far (the last :data:`EVENT_QUEUE`), in order."""
        return self._history.snapshot()

    @property
    def reverse_requests(self) -> list[dict]:
        """Reverse requests the adapter sent (each was answered with an error)."""
        return list(self._reverse_requests)

    def output(self, category: str | None = None) -> str:
        """Text of every ``output`` event so far (optionally one category: stdout, stderr, console)."""
        return "".join(
            (e.get("body") or {}).get("output", "")
            for e in self.events()
            if e.get("event") == "output" and (category is None or (e.get("body") or {}).get("category") == category)
        )

    def wait_event(self, event: str, timeout: float = 30.0, predicate: Callable[[dict], bool] | None = None) -> dict:
        """Take the oldest not-yet-taken ``event`` (whose body passes ``predicate``); return its body.

        Events are queued from the start, so one that came before this call is still found.
        """
        return self._queue.take(event, timeout, predicate).get("body") or {}

    # ------------------------------------------------------------------ handshake
    def attach(self, config: dict, breakpoints: Breakpoints | None = None, timeout: float = 30.0,
               exception_filters: tuple[str, ...] = ()) -> None:
        """The VS Code handshake for a debugpy attach configuration (see :meth:`Session.attach`);
        ``exception_filters`` as VS Code's breakpoints pane sends them (its default: ``uncaught``)."""
        self.session.attach(config, breakpoints, timeout=timeout, exception_filters=exception_filters)

    def attach_child(self, event_body: dict, breakpoints: Breakpoints | None = None,
                     timeout: float = 30.0) -> DapClient:
        """Attach a new client to a child process announced by a ``debugpyAttach`` event."""
        config = dict(event_body)
        child = _open_client(config, breakpoints, timeout, "debugpyAttach body",
                             name=f"dap-child-{config.get('subProcessId', '?')}")
        self.children.append(child)
        return child

    # ------------------------------------------------------------------ inspection
    def wait_stopped(self, timeout: float = 60.0, reason: str | None = None) -> StopInfo:
        """Wait for a ``stopped`` event (of ``reason``, if given) and fetch its thread's stack."""
        body = self.wait_event(
            "stopped", timeout=timeout, predicate=None if reason is None else (lambda b: b.get("reason") == reason)
        )
        thread_id = body.get("threadId")
        if thread_id is None:
            threads = self.request("threads", timeout=timeout).get("threads") or []
            if not threads:
                raise DapError(f"stopped event without threadId and no threads: {body}")
            thread_id = threads[0]["id"]
        frames = self.request("stackTrace", {"threadId": thread_id, "startFrame": 0, "levels": 100}, timeout=timeout)
        info = StopInfo(thread_id=int(thread_id), reason=str(body.get("reason", "")),
                        frames=list(frames.get("stackFrames") or []), event=body)
        self.last_stop = info
        return info

    def variables_of(self, frame_id: int, scope: str = "Locals") -> dict[str, str]:
        """``name -> value`` (as displayed) of one scope (``Locals``, ``Globals``) of a frame."""
        scopes = self.request("scopes", {"frameId": frame_id}).get("scopes") or []
        for entry in scopes:
            if str(entry.get("name", "")).lower() == scope.lower():
                reference = entry["variablesReference"]
                break
        else:
            names = [s.get("name") for s in scopes]
            raise DapError(f"frame {frame_id} has no scope {scope!r} (has {names})")
        variables = self.request("variables", {"variablesReference": reference}).get("variables") or []
        return {v["name"]: v.get("value", "") for v in variables}

    def evaluate(self, expression: str, frame_id: int, context: str = "watch") -> str:
        """Evaluate ``expression`` in a frame; return the result as displayed."""
        body = self.request("evaluate", {"expression": expression, "frameId": frame_id, "context": context})
        return str(body.get("result", ""))

    def continue_(self, thread_id: int | None = None) -> None:
        """Resume (all threads, as debugpy does); default thread: the last one that stopped."""
        if thread_id is None:
            if self.last_stop is not None:
                thread_id = self.last_stop.thread_id
            else:
                threads = self.request("threads").get("threads") or []
                if not threads:
                    raise DapError("continue: no threads")
                thread_id = threads[0]["id"]
        self.request("continue", {"threadId": thread_id})

    def disconnect(self, terminate: bool = False, timeout: float = 10.0) -> None:
        """Send ``disconnect`` (``terminateDebuggee`` = ``terminate``), then close the connection."""
        self.session.disconnect(terminate=terminate, timeout=timeout)


def _substitute(value: Any, workspace_folder: str) -> Any:
    if isinstance(value, str):
        return value.replace("${workspaceFolder}", workspace_folder)
    if isinstance(value, dict):
        return {k: _substitute(v, workspace_folder) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, workspace_folder) for v in value]
    return value


def attach_with_launch_config(
    config: dict,
    breakpoints: Breakpoints | None = None,
    workspace_folder: str | None = None,
    timeout: float = 30.0,
    exception_filters: tuple[str, ...] = (),
) -> DapClient:
    """Attach as VS Code would with a ``launch.json`` attach configuration; return the client.

    ``${workspaceFolder}`` in string values becomes ``workspace_folder`` (default: the cwd).
    The caller owns the returned client (use it as a context manager, or ``disconnect()``).
    """
    resolved = _substitute(dict(config), workspace_folder or os.getcwd())
    if resolved.get("request", "attach") != "attach":
        raise DapError(f"not an attach configuration: request={resolved.get('request')!r}")
    return _open_client(resolved, breakpoints, timeout, "attach configuration", exception_filters=exception_filters)


def _open_client(config: dict, breakpoints: Breakpoints | None, timeout: float, what: str,
                 name: str | None = None, exception_filters: tuple[str, ...] = ()) -> DapClient:
    """Connect to the config's ``connect`` host/port and run the attach handshake with it."""
    from ..dap.session import address_of

    host, port = address_of(config, what)
    client = DapClient.connect(host, port, timeout=timeout)
    if name is not None:
        client.name = name
    try:
        client.attach(config, breakpoints, timeout=timeout, exception_filters=exception_filters)
    except BaseException:
        client.close()
        raise
    return client
