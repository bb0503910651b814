"""Request/response correlation, event dispatch and reverse requests over a :class:`MessageStream`.

The layer debugpy's ``JsonMessageChannel`` is: one reader thread turns incoming messages
into three things —

* a **response** completes the :class:`Request` (a future) waiting for it; when the
  connection goes away every pending request fails with :class:`Disconnected`, so no
  caller waits for an answer that cannot come;
* an **event** goes to the listeners subscribed to it (called on the reader thread, in
  wire order: they must be quick — set state, queue work — never block on a request) and
  into a bounded ring of recent events kept for error messages;
  :meth:`Channel.event_queue` gives a waiter its own bounded queue;
* a **reverse request** (``runInTerminal``, ``startDebugging``, …) is answered by the
  handler registered for its command, else with an error: never left hanging.

Nothing grows without bound: the recent-event ring and every event queue have a
``maxlen`` and count what they dropped.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from .errors import DapError, DapTimeout, Disconnected, ProtocolError, RequestFailed
from .framing import MessageStream

EventListener = Callable[[dict], None]
CloseListener = Callable[[str], None]
ReverseHandler = Callable[[dict], "dict | None"]  # the request message -> the response body

CONNECTION_CLOSED = "the connection was closed by the adapter"  # a session's end without a goodbye

TRACE = bool(os.environ.get("AML_MAGICS_DAP_TRACE"))
RECENT_EVENTS = 256
_SHOWN_EVENTS = 8


class Request:
    """A sent request: its ``seq`` and the future of its response body."""

    def __init__(self, seq: int, command: str) -> None:
        self.seq = seq
        self.command = command
        self.future: Future[dict] = Future()

    def done(self) -> bool:
        return self.future.done()

    def body(self, timeout: float | None = 30.0) -> dict:
        """The response body (``{}`` if none); raises :class:`RequestFailed`, :class:`Disconnected`
        or :class:`DapTimeout`."""
        try:
            return self.future.result(timeout)
        except FutureTimeout:
            raise DapTimeout(f"no response to {self.command} (request {self.seq}) after {timeout:g}s") from None
        except CancelledError:
            raise Disconnected(f"{self.command} (request {self.seq}) was abandoned") from None

    def add_done_callback(self, callback: Callable[[Request], None]) -> None:
        self.future.add_done_callback(lambda _future: callback(self))


class EventQueue:
    """A bounded FIFO of the events one waiter cares about; :meth:`take` blocks for the next match.

    When full, the oldest event is dropped (``dropped`` counts them); a closed channel wakes
    every waiter with :class:`Disconnected`.
    """

    def __init__(self, channel: Channel, events: Iterable[str] | None, maxlen: int) -> None:
        self._channel = channel
        self._names = frozenset(events) if events is not None else None
        self._items: deque[dict] = deque(maxlen=maxlen)
        self._cond = threading.Condition()
        self.dropped = 0
        self._unsubscribe = channel.on_event(self._put)
        self._unsubscribe_close = channel.on_close(lambda _reason: self._wake())

    def _put(self, message: dict) -> None:
        if self._names is not None and message.get("event") not in self._names:
            return
        with self._cond:
            if len(self._items) == self._items.maxlen:
                self.dropped += 1
            self._items.append(message)
            self._cond.notify_all()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def take(self, event: str, timeout: float = 30.0, predicate: Callable[[dict], bool] | None = None,
             abort: Callable[[], None] | None = None) -> dict:
        """Remove and return the oldest queued ``event`` message whose body passes ``predicate``.

        ``abort()`` is called on every wake-up and may raise to end the wait early.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for index, message in enumerate(self._items):
                    if message.get("event") == event and (predicate is None or predicate(message.get("body") or {})):
                        del self._items[index]
                        return message
                if abort is not None:
                    abort()
                if self._channel.closed:
                    raise Disconnected(f"no {event!r} event: {self._channel.close_reason}{self._channel.recent_text()}",
                                       self._channel.close_reason or "")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DapTimeout(f"timed out after {timeout:g}s waiting for a {event!r} event"
                                     f"{self._channel.recent_text()}")
                self._cond.wait(remaining)

    def snapshot(self) -> list[dict]:
        """The queued events, oldest first (a copy; nothing is taken)."""
        with self._cond:
            return list(self._items)

    def close(self) -> None:
        self._unsubscribe()
        self._unsubscribe_close()


class Channel:
    """One DAP connection: send requests, get their responses as futures, hear events.

    Register listeners and handlers, then :meth:`start` the reader thread (nothing is
    read before, so no early event is missed).
    """

    def __init__(self, stream: MessageStream, name: str | None = None, recent_events: int = RECENT_EVENTS) -> None:
        self.stream = stream
        self.name = name or stream.name
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._pending: dict[int, Request] = {}
        self._event_listeners: list[tuple[str | None, EventListener]] = []
        self._close_listeners: list[CloseListener] = []
        self._handlers: dict[str, ReverseHandler] = {}
        self._default_handler: ReverseHandler | None = None
        self._recent: deque[dict] = deque(maxlen=recent_events)
        self.events_received = 0
        self._close_reason: str | None = None
        self._closing = False
        self._reader: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> Channel:
        if self._reader is None:
            self._reader = threading.Thread(target=self._read_loop, name=f"{self.name}-reader", daemon=True)
            self._reader.start()
        return self

    @property
    def closed(self) -> bool:
        return self._close_reason is not None

    @property
    def close_reason(self) -> str | None:
        return self._close_reason

    def close(self, reason: str = "closed by the client") -> None:
        """Close the stream, fail every pending request, stop the reader thread."""
        with self._lock:
            self._closing = True
        self.stream.close()
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=5.0)
        self._closed(reason)

    def _closed(self, reason: str) -> None:
        with self._lock:
            if self._close_reason is not None:
                return
            self._close_reason = reason
            pending, self._pending = list(self._pending.values()), {}
            listeners = list(self._close_listeners)
        for request in pending:
            if not request.future.done():
                request.future.set_exception(
                    Disconnected(f"no response to {request.command} (request {request.seq}): {reason}", reason))
        for listener in listeners:
            _call(listener, reason)

    # -- subscriptions ---------------------------------------------------------------
    def on_event(self, listener: EventListener, event: str | None = None) -> Callable[[], None]:
        """Call ``listener(message)`` for every event (or only ``event``); returns the unsubscriber."""
        entry = (event, listener)
        with self._lock:
            self._event_listeners.append(entry)

        def unsubscribe() -> None:
            with self._lock:
                if entry in self._event_listeners:
                    self._event_listeners.remove(entry)

        return unsubscribe

    def on_close(self, listener: CloseListener) -> Callable[[], None]:
        """Call ``listener(reason)`` once when the connection is gone (at once if it already is)."""
        with self._lock:
            reason = self._close_reason
            if reason is None:
                self._close_listeners.append(listener)
        if reason is not None:
            _call(listener, reason)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._close_listeners:
                    self._close_listeners.remove(listener)

        return unsubscribe

    def event_queue(self, events: Iterable[str] | None = None, maxlen: int = 4096) -> EventQueue:
        return EventQueue(self, events, maxlen)

    def handle(self, command: str, handler: ReverseHandler) -> None:
        """Answer reverse request ``command`` with ``handler(request_message)`` (its return is the
        response body; an exception becomes an error response with the exception's text)."""
        self._handlers[command] = handler

    def handle_others(self, handler: ReverseHandler | None) -> None:
        """The handler of reverse requests without their own (default: an error response)."""
        self._default_handler = handler

    def recent_events(self) -> list[dict]:
        with self._lock:
            return list(self._recent)

    def recent_text(self) -> str:
        """The last few events, for error messages."""
        recent = self.recent_events()[-_SHOWN_EVENTS:]
        if not recent:
            return " (no events received)"
        parts = []
        for message in recent:
            text = json.dumps(message.get("body") or {}, sort_keys=True)
            parts.append(f"  {message.get('event')}: {text[:200] + '…' if len(text) > 200 else text}")
        return "; last events:\n" + "\n".join(parts)

    # -- sending ---------------------------------------------------------------------
    def send_request(self, command: str, arguments: dict | None = None) -> Request:
        """Send a request without waiting; its response arrives on the returned :class:`Request`."""
        with self._lock:
            seq = next(self._seq)
            request = Request(seq, command)
            if self._close_reason is not None:
                request.future.set_exception(Disconnected(f"cannot send {command}: {self._close_reason}",
                                                          self._close_reason))
                return request
            self._pending[seq] = request
        message: dict[str, Any] = {"seq": seq, "type": "request", "command": command}
        if arguments is not None:
            message["arguments"] = arguments
        try:
            self._write(message)
        except DapError as exc:
            with self._lock:
                self._pending.pop(seq, None)
            if not request.future.done():
                request.future.set_exception(exc)
        return request

    def request(self, command: str, arguments: dict | None = None, timeout: float = 30.0) -> dict:
        """Send a request and wait for its response body."""
        return self.send_request(command, arguments).body(timeout)

    def _write(self, message: dict) -> None:
        if TRACE:
            print(f"[{self.name}] --> {message}", file=sys.stderr, flush=True)
        self.stream.write_message(message)

    # -- receiving -------------------------------------------------------------------
    def _read_loop(self) -> None:
        reason = CONNECTION_CLOSED
        try:
            while True:
                message = self.stream.read_message()
                if message is None:
                    break
                if TRACE:
                    print(f"[{self.name}] <-- {message}", file=sys.stderr, flush=True)
                self._dispatch(message)
        except ProtocolError as exc:
            reason = f"protocol error: {exc}"
        except (OSError, ValueError) as exc:
            reason = f"connection lost: {exc!r}"
        finally:
            with self._lock:
                closing = self._closing
            if not closing and self._close_reason is None:
                self.stream.close()  # a broken stream cannot be resynchronised
            self._closed("closed by the client" if closing else reason)

    def _dispatch(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "response":
            self._on_response(message)
        elif kind == "event":
            self._on_event(message)
        elif kind == "request":
            self._on_reverse_request(message)
        else:
            raise ProtocolError(f"message of unknown type {kind!r}: {json.dumps(message)[:120]}")

    def _on_response(self, message: dict) -> None:
        try:
            seq = int(message.get("request_seq", -1))
        except (TypeError, ValueError):
            raise ProtocolError(f"response without a valid request_seq: {json.dumps(message)[:120]}") from None
        with self._lock:
            request = self._pending.pop(seq, None)
        if request is None or request.future.done():
            return  # an answer nobody waits for (e.g. after a local timeout)
        if message.get("success", False):
            request.future.set_result(message.get("body") or {})
        else:
            request.future.set_exception(RequestFailed(str(message.get("command") or request.command),
                                                       _failure_text(message), message))

    def _on_event(self, message: dict) -> None:
        name = message.get("event")
        with self._lock:
            self._recent.append(message)
            self.events_received += 1
            listeners = [listener for event, listener in self._event_listeners if event is None or event == name]
        for listener in listeners:
            _call(listener, message)

    def _on_reverse_request(self, message: dict) -> None:
        command = str(message.get("command", ""))
        handler = self._handlers.get(command) or self._default_handler
        response: dict[str, Any] = {"type": "response", "request_seq": message.get("seq"), "command": command}
        if handler is None:
            response.update(success=False, message=f"reverse request {command!r} is not supported by aml-magics")
        else:
            try:
                body = handler(message)
            except Exception as exc:
                response.update(success=False, message=str(exc) or type(exc).__name__)
            else:
                response.update(success=True, body=body or {})
        with self._lock:
            response["seq"] = next(self._seq)
        try:
            self._write(response)
        except DapError:
            pass  # the connection is going away; the read loop notices


def _failure_text(response: dict) -> str:
    """debugpy's message, with the detail of ``body.error.format`` when it adds something."""
    message = str(response.get("message") or "request failed")
    error = (response.get("body") or {}).get("error") or {}
    detail = error.get("format") if isinstance(error, dict) else None
    if detail and detail != message:
        message = f"{message}: {detail}"
    return message


def _call(listener: Callable[..., Any], *args: Any) -> None:
    """Listeners are the caller's code: one that raises must not stop the reader thread."""
    try:
        listener(*args)
    except Exception as exc:
        print(f"aml_magics.dap: a listener raised {exc!r}", file=sys.stderr, flush=True)
