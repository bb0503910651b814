"""What a run owns, and how it ends: one exit stack and one cancel token per run.

Every resource a run makes — its process groups (the user's code, a pip build, a
simulated node), a container, a temporary folder, a relay listener, a debugger session —
is registered on the run's :class:`RunScope` as it is made. Cancel works the same on every
target: the token is set, each registered cancel callback runs at once (stop a process
group, remove a container, cancel a remote job), and whatever blocks on the token
(a build waiting on pip) returns. When the run ends, its scope closes: everything still
registered is released, newest first. One ``atexit`` hook closes every scope still open.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any, TypeVar

from .errors import Canceled

_log = logging.getLogger("aml_magics")

T = TypeVar("T")
Callback = Callable[[], object]


class CancelToken:
    """Set once; callbacks registered before or after run exactly once, each on its own."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callback] = []
        self.reason = ""

    @property
    def canceled(self) -> bool:
        return self._event.is_set()

    def cancel(self, reason: str = "canceled by user") -> bool:
        """Set the token and run the callbacks; False when it was set already."""
        with self._lock:
            if self._event.is_set():
                return False
            self.reason = reason
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in reversed(callbacks):
            _quietly(callback)
        return True

    def on_cancel(self, callback: Callback) -> Callback:
        """Run ``callback`` when canceled (at once if already); returns it, for :meth:`forget`."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return callback
        _quietly(callback)
        return callback

    def forget(self, callback: Callback) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._callbacks.remove(callback)

    def raise_if_canceled(self) -> None:
        if self._event.is_set():
            raise Canceled(self.reason or "canceled")

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)


class RunScope:
    """One run's resources (an exit stack) and its cancel token."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.token = CancelToken()
        self._stack = ExitStack()
        self._lock = threading.Lock()
        self._closed = False
        with _live_lock:
            _live.add(self)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def canceled(self) -> bool:
        return self.token.canceled

    def cancel(self, reason: str = "canceled by user") -> bool:
        return self.token.cancel(reason)

    def callback(self, release: Callable[..., Any], *args: Any) -> None:
        """Release something when the run's scope closes (released at once if it is closed)."""
        with self._lock:
            if not self._closed:
                self._stack.callback(release, *args)
                return
        _quietly(lambda: release(*args))

    def enter(self, manager: contextlib.AbstractContextManager[T]) -> T:
        """Enter a context manager that exits when the scope closes."""
        with self._lock:
            if self._closed:
                raise Canceled(f"run {self.name} has ended")
            return self._stack.enter_context(manager)

    def owned(self, resource: T, release: Callable[[T], Any], *, on_cancel: bool = True) -> T:
        """Register ``resource``: released on close, and (``on_cancel``) at once on cancel."""
        self.callback(release, resource)
        if on_cancel:
            self.token.on_cancel(lambda: release(resource))
        return resource

    def close(self) -> None:
        """Release everything the run still holds, newest first; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            stack = self._stack.pop_all()
        try:
            stack.close()
        except Exception as exc:  # each release is best effort; a failing one must not keep the others
            _log.warning("aml_magics: releasing what run %s held failed: %s: %s", self.name, type(exc).__name__, exc)
        with _live_lock:
            _live.discard(self)

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """A block that must not start once canceled (raises Canceled)."""
        self.token.raise_if_canceled()
        yield
        self.token.raise_if_canceled()


def _quietly(callback: Callback) -> None:
    try:
        callback()
    except Exception as exc:
        _log.warning("aml_magics: a release failed: %s: %s", type(exc).__name__, exc)


_live: set[RunScope] = set()
_live_lock = threading.Lock()


def live_scopes() -> list[RunScope]:
    with _live_lock:
        return list(_live)


@atexit.register
def close_all() -> None:
    """At interpreter exit (the one hook): cancel and close every run scope still open, then
    stop any process group nobody owned."""
    for scope in live_scopes():
        scope.cancel("the owner exited")
        scope.close()
    from .processes import stop_all

    stop_all()
