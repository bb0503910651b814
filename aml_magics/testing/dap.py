"""A small but real Debug Adapter Protocol (DAP) client, standard library only.

It plays the part VS Code plays when it uses a ``launch.json`` attach configuration:
connect to a debugpy adapter port, run the ``initialize`` / ``attach`` /
``setBreakpoints`` / ``configurationDone`` handshake, then wait for ``stopped`` events,
read stack frames and variables, evaluate expressions and continue. The project's
end-to-end tests use it to prove an emitted configuration really works.

Wire format: ``Content-Length: N\\r\\n\\r\\n`` followed by N bytes of UTF-8 JSON. A reader
thread files responses by ``request_seq`` and queues events (nothing is lost between
waits); reverse requests from the adapter (``runInTerminal``, ``startDebugging``, …)
are answered with an error, never left hanging. Every wait has a timeout and raises
:class:`DapError` naming the last events seen; a closed socket wakes every waiter.

Gotchas with debugpy (1.8):

* debugpy answers ``attach`` only after ``configurationDone``; hence
  :meth:`DapClient.send_request` / :meth:`DapClient.wait_response`.
* never connect-and-close to a debugpy port to "check readiness": a bare connection
  wedges the adapter and the real client hangs afterwards. :meth:`DapClient.connect`
  retries refused connections and keeps the first socket that connects.
* with ``subProcess`` (on by default) a child process is announced by a
  ``debugpyAttach`` event; the client must open a *new* connection to the same adapter
  port and ``attach`` with that event's body (see :meth:`DapClient.attach_child`).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DapClient", "DapError", "StopInfo", "attach_with_launch_config"]

_TRACE = bool(os.environ.get("AML_MAGICS_DAP_TRACE"))
_RECENT_EVENTS = 8


class DapError(RuntimeError):
    """A DAP request failed, a wait timed out, or the connection is gone.

    ``response`` holds the failed response message when there was one.
    """

    def __init__(self, message: str, response: dict | None = None) -> None:
        super().__init__(message)
        self.response = response


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
    """One DAP session over one TCP connection. Use :meth:`connect` to make one."""

    def __init__(self, sock: socket.socket, name: str = "") -> None:
        self.name = name or "dap"
        self._sock = sock
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._seq = 0
        self._responses: dict[int, dict] = {}
        self._pending_events: list[dict] = []
        self._all_events: list[dict] = []
        self._reverse_requests: list[dict] = []
        self._closed: str | None = None  # reason, once the connection is gone
        self._closing = False
        self.capabilities: dict = {}
        self.breakpoints: dict[str, list[dict]] = {}
        self.last_stop: StopInfo | None = None
        self.children: list[DapClient] = []
        self._reader = threading.Thread(target=self._read_loop, name=f"{self.name}-reader", daemon=True)
        self._reader.start()

    # ------------------------------------------------------------------ connection
    @classmethod
    def connect(cls, host: str, port: int, timeout: float = 30.0) -> DapClient:
        """Connect to ``host:port``, retrying refused connections until ``timeout``.

        The first socket that connects is kept and used: it is never closed to "probe".
        """
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DapError(f"could not connect to {host}:{port} within {timeout:g}s: {last_error}")
            try:
                sock = socket.create_connection((host, int(port)), timeout=min(remaining, 5.0))
            except OSError as exc:  # refused, unreachable, timed out
                last_error = exc
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
                continue
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return cls(sock, name=f"dap-{host}:{port}")

    def close(self) -> None:
        """Close the socket (without a ``disconnect`` request) and stop the reader."""
        with self._cond:
            self._closing = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self._sock.close()
        except OSError:
            pass
        if self._reader is not threading.current_thread():
            self._reader.join(timeout=5.0)
        with self._cond:
            if self._closed is None:
                self._closed = "closed by client"
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed is not None

    def __enter__(self) -> DapClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for child in self.children:
            child.close()
        self.close()

    # ------------------------------------------------------------------ wire
    def _send(self, message: dict) -> None:
        data = json.dumps(message).encode("utf-8")
        header = f"Content-Length: {len(data)}\r\n\r\n".encode("ascii")
        if _TRACE:
            print(f"[{self.name}] --> {message}", file=sys.stderr, flush=True)
        with self._send_lock:
            if self.closed:
                raise DapError(f"cannot send {message.get('command') or message.get('type')}: connection closed")
            try:
                self._sock.sendall(header + data)
            except OSError as exc:
                raise DapError(f"cannot send {message.get('command')}: {exc}") from exc

    def _next_seq(self) -> int:
        with self._cond:
            self._seq += 1
            return self._seq

    def _read_loop(self) -> None:
        reason = "connection closed by the adapter"
        try:
            stream = self._sock.makefile("rb")
            while True:
                length = None
                while True:
                    line = stream.readline()
                    if not line:
                        return
                    line = line.strip()
                    if not line:
                        if length is None:
                            continue  # stray blank line
                        break
                    key, _, value = line.decode("ascii", "replace").partition(":")
                    if key.strip().lower() == "content-length":
                        length = int(value.strip())
                body = stream.read(length)
                if len(body) < length:
                    return
                message = json.loads(body.decode("utf-8"))
                if _TRACE:
                    print(f"[{self.name}] <-- {message}", file=sys.stderr, flush=True)
                self._dispatch(message)
        except (OSError, ValueError) as exc:
            reason = f"connection lost: {exc!r}"
        finally:
            with self._cond:
                if self._closed is None:
                    self._closed = "closed by client" if self._closing else reason
                self._cond.notify_all()

    def _dispatch(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "response":
            with self._cond:
                self._responses[int(message.get("request_seq", -1))] = message
                self._cond.notify_all()
        elif kind == "event":
            with self._cond:
                self._all_events.append(message)
                self._pending_events.append(message)
                self._cond.notify_all()
        elif kind == "request":
            # A reverse request (runInTerminal, startDebugging, ...): answer, never ignore.
            with self._cond:
                self._reverse_requests.append(message)
            command = message.get("command", "")
            try:
                self._send(
                    {
                        "seq": self._next_seq(),
                        "type": "response",
                        "request_seq": message.get("seq"),
                        "command": command,
                        "success": False,
                        "message": f"reverse request {command!r} is not supported by the aml-magics test client",
                    }
                )
            except DapError:
                pass

    # ------------------------------------------------------------------ requests
    def send_request(self, command: str, arguments: dict | None = None) -> int:
        """Send a request without waiting; return its ``seq`` for :meth:`wait_response`."""
        seq = self._next_seq()
        message: dict[str, Any] = {"seq": seq, "type": "request", "command": command}
        if arguments is not None:
            message["arguments"] = arguments
        self._send(message)
        return seq

    def wait_response(self, seq: int, timeout: float = 30.0) -> dict:
        """Wait for the response to request ``seq``; return its body (``{}`` if none).

        Raises :class:`DapError` with the adapter's message when ``success`` is false.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while seq not in self._responses:
                if self._closed is not None:
                    raise DapError(f"no response to request {seq}: {self._closed}{self._recent()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DapError(
                        f"timed out after {timeout:g}s waiting for the response to request {seq}{self._recent()}"
                    )
                self._cond.wait(remaining)
            response = self._responses.pop(seq)
        if not response.get("success", False):
            message = response.get("message") or "request failed"
            error = (response.get("body") or {}).get("error") or {}
            detail = error.get("format")
            if detail and detail != message:
                message = f"{message}: {detail}"
            raise DapError(f"{response.get('command')} failed: {message}", response)
        return response.get("body") or {}

    def request(self, command: str, arguments: dict | None = None, timeout: float = 30.0) -> dict:
        """Send a request and wait for its response body."""
        return self.wait_response(self.send_request(command, arguments), timeout)

    # ------------------------------------------------------------------ events
    def events(self) -> list[dict]:
        """Every event message received so far, in order (a copy)."""
        with self._cond:
            return list(self._all_events)

    @property
    def reverse_requests(self) -> list[dict]:
        with self._cond:
            return list(self._reverse_requests)

    def output(self, category: str | None = None) -> str:
        """Text of every ``output`` event so far (optionally one category: stdout, stderr, console)."""
        return "".join(
            (e.get("body") or {}).get("output", "")
            for e in self.events()
            if e.get("event") == "output" and (category is None or (e.get("body") or {}).get("category") == category)
        )

    def wait_event(
        self,
        event: str,
        timeout: float = 30.0,
        predicate: Callable[[dict], bool] | None = None,
        _abort: Callable[[], None] | None = None,
    ) -> dict:
        """Take the oldest not-yet-taken ``event`` (whose body passes ``predicate``); return its body.

        Events arrive on a queue, so one that came before this call is still found.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for index, message in enumerate(self._pending_events):
                    body = message.get("body") or {}
                    if message.get("event") == event and (predicate is None or predicate(body)):
                        del self._pending_events[index]
                        return body
                if _abort is not None:
                    _abort()
                if self._closed is not None:
                    raise DapError(f"no {event!r} event: {self._closed}{self._recent()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DapError(f"timed out after {timeout:g}s waiting for a {event!r} event{self._recent()}")
                self._cond.wait(remaining)

    def _recent(self) -> str:
        """The last few events, for error messages (call with the condition held)."""
        if not self._all_events:
            return " (no events received)"
        parts = []
        for message in self._all_events[-_RECENT_EVENTS:]:
            text = json.dumps(message.get("body") or {}, sort_keys=True)
            if len(text) > 200:
                text = text[:200] + "…"
            parts.append(f"  {message.get('event')}: {text}")
        return "; last events:\n" + "\n".join(parts)

    # ------------------------------------------------------------------ handshake
    def attach(self, config: dict, breakpoints: dict[str, list[int]] | None = None, timeout: float = 30.0) -> None:
        """The VS Code handshake for a debugpy attach configuration.

        initialize → attach (sent, not awaited) → ``initialized`` event → setBreakpoints per
        file (client-side paths) → setExceptionBreakpoints → configurationDone → attach response.
        """
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        self.capabilities = self.request(
            "initialize",
            {
                "clientID": "aml-magics-test",
                "clientName": "aml-magics test client",
                "adapterID": "debugpy",
                "pathFormat": "path",
                "linesStartAt1": True,
                "columnsStartAt1": True,
                "supportsVariableType": True,
                "supportsVariablePaging": False,
                "supportsRunInTerminalRequest": False,
                "locale": "en-us",
            },
            timeout=left(),
        )
        attach_seq = self.send_request("attach", dict(config))

        def attach_failed() -> None:  # called with the condition held
            response = self._responses.get(attach_seq)
            if response is not None and not response.get("success", False):
                raise DapError(f"attach failed: {response.get('message')}", response)

        self.wait_event("initialized", timeout=left(), _abort=attach_failed)
        for path, lines in (breakpoints or {}).items():
            body = self.request(
                "setBreakpoints",
                {
                    "source": {"path": path, "name": os.path.basename(path)},
                    "breakpoints": [{"line": int(line)} for line in lines],
                    "lines": [int(line) for line in lines],
                    "sourceModified": False,
                },
                timeout=left(),
            )
            self.breakpoints[path] = body.get("breakpoints", [])
        self.request("setExceptionBreakpoints", {"filters": []}, timeout=left())
        self.request("configurationDone", timeout=left())
        self.wait_response(attach_seq, timeout=left())

    def attach_child(
        self, event_body: dict, breakpoints: dict[str, list[int]] | None = None, timeout: float = 30.0
    ) -> DapClient:
        """Attach a new session to a child process announced by a ``debugpyAttach`` event.

        Opens a new connection to the body's ``connect`` host/port (the same adapter) and
        runs the handshake with the body (``subProcessId`` and all) as attach arguments.
        """
        config = dict(event_body)
        child = _open_session(config, breakpoints, timeout, "debugpyAttach body",
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
        info = StopInfo(
            thread_id=int(thread_id),
            reason=str(body.get("reason", "")),
            frames=list(frames.get("stackFrames") or []),
            event=body,
        )
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
        """Send ``disconnect`` (``terminateDebuggee`` = ``terminate``), then close the socket."""
        try:
            if not self.closed:
                self.request("disconnect", {"terminateDebuggee": bool(terminate), "restart": False}, timeout=timeout)
        except DapError:
            pass  # the adapter may drop the connection before answering
        finally:
            self.close()


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
    breakpoints: dict[str, list[int]] | None = None,
    workspace_folder: str | None = None,
    timeout: float = 30.0,
) -> DapClient:
    """Attach as VS Code would with a ``launch.json`` attach configuration; return the client.

    ``${workspaceFolder}`` in string values becomes ``workspace_folder`` (default: the cwd).
    The caller owns the returned client (use it as a context manager, or ``disconnect()``).
    """
    resolved = _substitute(dict(config), workspace_folder or os.getcwd())
    if resolved.get("request", "attach") != "attach":
        raise DapError(f"not an attach configuration: request={resolved.get('request')!r}")
    return _open_session(resolved, breakpoints, timeout, "attach configuration")


def _open_session(config: dict, breakpoints: dict[str, list[int]] | None, timeout: float, what: str,
                  name: str | None = None) -> DapClient:
    """Connect to the config's ``connect`` host/port and run the attach handshake with it."""
    connect = config.get("connect") or {}
    host = connect.get("host") or config.get("host") or "127.0.0.1"
    port = connect.get("port") or config.get("port")
    if not port:
        raise DapError(f"{what} names no port: {config}")
    client = DapClient.connect(host, int(port), timeout=timeout)
    if name is not None:
        client.name = name
    try:
        client.attach(config, breakpoints, timeout=timeout)
    except BaseException:
        client.close()
        raise
    return client
