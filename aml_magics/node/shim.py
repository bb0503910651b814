"""The user's own debugpy calls (scripts written the way Microsoft's guide says) under a run."""

from __future__ import annotations

import sys
import threading

from .address import resolve_bind
from .imports import patch_on_import
from .session import DebugSession
from .wire import LOOPBACK

# -- the user's own debugpy calls (scripts written the way Microsoft's guide says) ------------------
#
# Scripts written after Microsoft's guide call debugpy themselves: ``debugpy.listen(('0.0.0.0', 5678))``
# then ``debugpy.wait_for_client()``. Under the bootstrap the real calls would raise (listen() twice),
# bind all interfaces, or wait forever. So the ``debugpy`` module the user imports gets functions that
# cooperate with this run's debugger: listen() answers with the run's own endpoint (never a second
# listener, never the user's address), wait_for_client() waits only within the run's attach window,
# and everything is a no-op where the run has no debugger. The bootstrap's Debugger keeps debugpy's
# real functions. The module is patched when it is first imported (by anyone), so a run that never
# imports debugpy pays nothing.

GUIDE_REASON = "debugpy.wait_for_client"  # the ENDPOINT/ATTACHED reason of a window the user's calls reopened


def _user_endpoint(address: object) -> tuple[object, int]:
    """``(host, port)`` of what the user passed, checked as debugpy checks it."""
    try:
        host, port = address  # type: ignore[misc]
    except (TypeError, ValueError):
        host, port = LOOPBACK, address
    try:
        port = port.__index__()  # type: ignore[attr-defined]
    except Exception:
        raise ValueError("expected port or (host, port)") from None
    if not 0 <= port < 65536:
        raise ValueError("invalid port number")
    return host, port


class UserDebugpy:
    """What the user's ``debugpy.listen/wait_for_client/...`` do inside a run.

    listen() returns the run's endpoint (host and port as reported) and opens nothing. If the
    run's debugger is off then (its attach window closed with nobody attached), the next
    wait_for_client() reopens it once on that endpoint for one more ``--timeout`` window,
    reported like the first, in the calling thread (as breakpoint() and post-mortem do: the
    thread that starts tracing is the one that stops it). wait_for_client() returns at once when
    a client is attached and never waits past the window. ``--timeout 0`` means no waiting at
    all, here too. With no debugger for this process (``--no-debug``, a rank outside
    ``--debug-ranks``) every call returns at once.
    """

    PATCHED = ("listen", "wait_for_client", "is_client_connected", "breakpoint", "configure", "log_to", "connect",
               "debug_this_thread", "trace_this_thread", "trigger_exception_handler")

    def __init__(self, session: DebugSession) -> None:
        self.session = session
        self.originals: dict[str, object] = {}
        self._said: set[str] = set()
        self._reopen_pending = False  # listen() found the debugger off: the next wait_for_client() reopens it
        self._reopened = False  # once per process, as debugpy listens once per process
        self._canceled = threading.Event()

    # -- installing ----------------------------------------------------------------------
    def patch(self, module: object) -> None:
        """Replace the public functions of the imported ``debugpy`` module; keep debugpy's own."""
        if getattr(module, "_aml_magics_cooperating", False):
            return
        for name in self.PATCHED:
            if name not in self.originals:
                self.originals[name] = getattr(module, name, None)
            setattr(module, name, self._public(name))
        module._aml_magics_cooperating = True  # type: ignore[attr-defined]

    def _public(self, name: str):
        method = getattr(self, name)

        def function(*args: object, **kwargs: object) -> object:
            return method(*args, **kwargs)

        function.__name__ = name
        function.__qualname__ = name
        function.__module__ = "debugpy"
        function.__doc__ = f"debugpy.{name}, cooperating with the aml_magics run's debugger. " + (method.__doc__ or "")
        if name == "wait_for_client":
            function.cancel = self.cancel_wait  # type: ignore[attr-defined]
        return function

    def original(self, name: str) -> object:
        """debugpy's own function ``name`` (for the bootstrap's Debugger), importing debugpy if needed."""
        if name not in self.originals:
            import debugpy  # noqa: F401 - the import hook patches it and keeps the originals

            if name not in self.originals:  # debugpy was already imported unpatched
                self.patch(debugpy)
        found = self.originals.get(name)
        if found is None:
            raise AttributeError(f"debugpy has no {name}")
        return found

    # -- telling the user, once per call kind ----------------------------------------------
    def say(self, key: str, text: str) -> None:
        if key not in self._said:
            self._said.add(key)
            print(f"aml_magics: {text}", file=sys.stderr, flush=True)

    def _off_reason(self) -> str:
        options = self.session.options
        if options.no_debug:
            return "this run has no debugger (--no-debug)"
        return f"rank {options.rank} has no debugger (not in --debug-ranks)"

    # -- the public functions ------------------------------------------------------------
    def listen(self, address: object = None, *, in_process_debug_adapter: bool = False, **_: object) -> tuple:
        """Returns the run's endpoint; opens no listener of its own, whatever the address."""
        asked = _user_endpoint(address)
        call = f"debugpy.listen({address!r})"
        session = self.session
        if not session.enabled:
            self.say("listen", f"{call} ignored: {self._off_reason()}; nothing listens")
            return asked
        if session.host is None or session.port is None:  # lazy (--timeout 0 with --post-mortem/...)
            self.say("listen", f"{call} ignored: this run's debugger starts only for a crash or a breakpoint() "
                               "(--timeout 0); nothing listens")
            return asked
        where = f"this run's debugger at {session.host}:{session.port} (bound to {resolve_bind(session.options.bind)} " \
                "by the run's options)"
        if session.listening or session.client_connected():
            self.say("listen", f"{call} uses {where}; no second listener")
        elif session.options.timeout > 0 and not self._reopened:
            self._reopen_pending = True
            self.say("listen", f"{call} uses {where}, off now (its attach window closed with nobody attached): "
                               f"debugpy.wait_for_client() reopens it for up to {session.options.timeout:g}s")
        else:
            why = "--timeout 0" if session.options.timeout <= 0 else "its attach window closed with nobody attached"
            self.say("listen", f"{call} ignored: {where} is off ({why}); nothing listens")
        return session.host, session.port

    def wait_for_client(self) -> None:
        """Returns when a client is attached, or when the run's attach window ends (never unbounded)."""
        session = self.session
        if not session.enabled or session.client_connected():
            return
        self._canceled.clear()
        if not self._within_another_window():
            return
        with session._lock:  # as breakpoint() and post-mortem: one window at a time
            if session.client_connected():
                return
            if self._reopen_pending:
                self._reopen_pending, self._reopened = False, True
                timeout = session.options.timeout
                try:
                    session.listen(timeout, GUIDE_REASON)
                    session.wait(timeout, GUIDE_REASON)
                except Exception as exc:  # never let the debugger kill the user's run
                    print(f"aml_magics: could not reopen this run's debugger: {exc}", file=sys.stderr, flush=True)
                return
        self.say("wait_for_client", "debugpy.wait_for_client() returns at once: no client is attached and this "
                                    "run's attach window is closed")

    def _within_another_window(self) -> bool:
        """While another thread waits for a client (breakpoint(), post-mortem: it holds the session's
        lock), wait within that window. False when this wait is over (attached, or canceled)."""
        lock = self.session._lock
        while not lock.acquire(timeout=0.1):
            if self._canceled.is_set() or self.session.client_connected():
                return False
        lock.release()
        return not self.session.client_connected()

    def cancel_wait(self) -> None:
        """``debugpy.wait_for_client.cancel()``: end a wait in progress (from another thread)."""
        self._canceled.set()
        cancel = getattr(self.originals.get("wait_for_client"), "cancel", None)
        if cancel is not None and self.session.listening:
            cancel()

    def is_client_connected(self) -> bool:
        return bool(self.session.enabled and self.session.client_connected())

    def breakpoint(self) -> None:
        """Like ``breakpoint()`` under the bootstrap: pause when attached, ``--wait-on-breakpoint`` rules."""
        self.session.on_breakpoint(sys._getframe(2))  # the user's frame (under the public function)

    def configure(self, properties: object = None, **kwargs: object) -> None:
        self.say("configure", f"debugpy.configure({properties or kwargs!r}) ignored: this run's debugger is "
                              "set up by aml_magics")

    def log_to(self, path: object) -> None:
        self.say("log_to", f"debugpy.log_to({path!r}) ignored: this run's debugger is set up by aml_magics")

    def connect(self, address: object = None, **_: object) -> None:
        self.say("connect", f"debugpy.connect({address!r}) ignored: aml_magics does not connect out; attach "
                            "with the run's launch.json configuration to its endpoint instead")

    def _live(self, name: str, *args: object, **kwargs: object) -> None:
        """Pass to debugpy only while this run's debugger is live (otherwise there is nothing to tell)."""
        if self.session.enabled and self.session.listening:
            real = self.originals.get(name)
            if callable(real):
                real(*args, **kwargs)

    def debug_this_thread(self) -> None:
        self._live("debug_this_thread")

    def trace_this_thread(self, should_trace: bool) -> None:
        self._live("trace_this_thread", should_trace)

    def trigger_exception_handler(self, excinfo: object = None, as_uncaught: bool = True) -> None:
        if self.is_client_connected():
            self._live("trigger_exception_handler", excinfo, as_uncaught=as_uncaught)


class _OriginalDebugpy:
    """debugpy's own functions, for the bootstrap's Debugger (the module itself cooperates now)."""

    def __init__(self, user: UserDebugpy) -> None:
        self._user = user

    def __getattr__(self, name: str) -> object:
        return self._user.original(name)


def cooperate_with_user_debugpy(session: DebugSession) -> UserDebugpy:
    """Before the user's code runs: its ``import debugpy`` gets functions that cooperate with ``session``."""
    user = UserDebugpy(session)
    if session.enabled and session.debugger is None:
        session.use_debugpy(_OriginalDebugpy(user))
    patch_on_import("debugpy", user.patch)
    return user
