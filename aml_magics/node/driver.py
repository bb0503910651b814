"""The debugpy driver: listen (direct or behind the relay), wait with a real timeout, switch off.

An idle listener slows Python code 2-7x, so a window nobody used ends with tracing off and the
port closed; debugpy's own refusal to listen twice is undone for a later window. A client whose
connection ends without a ``disconnect`` (killed, gone silent) counts as one: every thread
resumes and its breakpoints go, as pydevd does for a disconnect (see :mod:`.liveness`).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from collections.abc import Callable

from .address import bind_listener, resolve_bind
from .liveness import CLOSED, DISCONNECT, Link, WatchedListener
from .paging import honour_paging
from .relay import Relay, SessionListener, relay_context
from .wire import close_socket, service_thread

DETACH_POLL = 0.25  # how often a direct (untunnelled) session is checked for a client that left


def own_files() -> tuple[str, ...]:
    """Every file of this package: frames the user never needs to step through."""
    here = os.path.dirname(os.path.abspath(__file__))
    return tuple(os.path.join(here, name) for name in sorted(os.listdir(here)) if name.endswith(".py"))


def hand_to_pydevd(sock: socket.socket) -> None:
    """Make pydevd's next listener the socket we bound (its own bind runs on a thread and, when
    it fails, debugpy.listen() waits forever for a socket that never comes)."""
    import pydevd

    original = pydevd.create_server_socket

    def create_server_socket(host: str, port: int) -> socket.socket:
        pydevd.create_server_socket = original  # once
        return sock

    pydevd.create_server_socket = create_server_socket


def _cancel_until(done: threading.Event, cancel: Callable[[], None]) -> None:
    """Cancel debugpy's wait_for_client() until it has returned: its cancel reaches only a wait
    already begun (called before, it raises, or cancels the window before's wait)."""
    while not done.is_set():
        try:
            cancel()
        except RuntimeError:
            pass
        done.wait(0.02)


class OneWindowListener:
    """A direct port's listening socket as pydevd accepts on it, one attach per window: once a
    client has been attached, a new connection is let in only while a client still is (another
    client taking the session over); after it left, a new one is closed at once — before the
    node has switched the debugger off. A port probe before the first attach is no attach."""

    def __init__(self, sock: socket.socket, connected: Callable[[], bool]) -> None:
        self._sock = sock
        self._connected = connected
        self.attached_once = False

    def accept(self) -> tuple[socket.socket, object]:
        while True:
            conn, address = self._sock.accept()
            if self.attached_once and not self._connected():
                close_socket(conn)
                continue
            return conn, address

    def __getattr__(self, name: str) -> object:  # listen, getsockname, shutdown, close, fileno...
        return getattr(self._sock, name)


def ignore_exit_code(code: int) -> None:
    """The node's own ``sys.exit(code)`` (a cancel's 130) is no crash of the user's: a client
    whose ``uncaught`` filter would stop at that SystemExit, in our file, is told to let it go."""
    pydevd = sys.modules.get("pydevd")
    py_db = pydevd.get_global_debugger() if pydevd is not None else None
    if py_db is None:
        return
    try:
        explicit = getattr(py_db, "_break_on_system_exit", None)
        if explicit is not None:  # "break on these codes": take ours out of them
            codes, ranges = explicit
            py_db._break_on_system_exit = ({c for c in codes if c != code},
                                           [r for r in ranges if not r[0] <= code <= r[1]])
        else:
            py_db.set_ignore_system_exit_codes(set(py_db._ignore_system_exit_codes) | {code})
    except Exception:  # a debugpy without these: at worst the client stops once more
        pass


class Debugger:
    """debugpy, listening for at most ``timeout`` seconds, then off if nobody came."""

    def __init__(self, debugpy_module, options: argparse.Namespace, tunnel: dict | None = None) -> None:
        self.debugpy = debugpy_module
        self.options = options
        self.switched_off = False
        self.listens = 0  # counts listen(): a connection belongs to the window it was accepted in
        self.port: int | None = None  # the port bound last; a new listen() reuses it
        self.tunnel = tunnel  # the node side of the run's TLS tunnel (secrets), or None: direct
        self.relay: Relay | None = None
        # called (from a thread of ours) when a client left: with the cause, the seconds it stayed
        # and the window (``listens``) it was attached in
        self.on_detached: Callable[[str, float, int], None] | None = None
        self.on_configured: Callable[[], None] | None = None  # a client's configurationDone (reader thread)
        self.link: Link | None = None  # the client connection accepted last (in-process adapter)
        self._attached_at = 0.0
        self._gate: OneWindowListener | None = None  # a direct port's listener, one attach per window
        self.configured = threading.Event()  # a client configured its session in the current window

    @property
    def tunnelled(self) -> bool:
        return self.tunnel is not None

    def listen(self) -> tuple[str, int]:
        self.listens += 1
        self.configured.clear()  # a new window (a client may configure before the wait begins)
        bind = resolve_bind(self.options.bind)
        if not self.switched_off:
            host, port = self._listen(bind, self.options.port)
        else:
            # Listening again after switch_off() (post-mortem, breakpoint()): same port, so a
            # launch.json written for it stays right; any free one if that is gone. Always
            # with the in-process adapter: debugpy cannot start a second adapter process.
            self._allow_listen_again()
            try:
                host, port = self._listen(bind, self.port or self.options.port, in_process=True)
            except Exception:
                self._allow_listen_again()
                host, port = self._listen(bind, 0, in_process=True)
        self.switched_off = False
        self.port = port
        honour_paging()  # pydevd is loaded now: a page of names costs a page, not the whole frame
        return host, port

    def _listen(self, bind: str, port: int, in_process: bool = False) -> tuple[str, int]:
        if self.tunnel is not None:
            return self._listen_tunnelled(bind, port)
        if in_process or not self.options.separate_adapter:
            sock = bind_listener(bind, port, auto=bool(self.options.port_auto) and not self.switched_off)
            import debugpy.server.api  # noqa: F401 - puts pydevd on the path

            self._gate = None if self.options.reattach else OneWindowListener(sock, self._client_stays)
            hand_to_pydevd(WatchedListener(self._gate or sock, self._new_link))  # type: ignore[arg-type]
            return self.debugpy.listen((bind, sock.getsockname()[1]), in_process_debug_adapter=True)
        if port:  # debugpy's adapter process binds it: check first (it cannot be handed a socket)
            bind_listener(bind, port).close()
        return self.debugpy.listen((bind, port))

    def _listen_tunnelled(self, bind: str, port: int) -> tuple[str, int]:
        """The relay on the run's address and port; debugpy with no port, served the relay's sessions."""
        assert self.tunnel is not None
        relay_sock = bind_listener(bind, port, auto=bool(self.options.port_auto) and not self.switched_off)
        address = relay_sock.getsockname()[:2]
        sessions = SessionListener(address)
        try:
            context, peer = relay_context(self.tunnel)
            import debugpy.server.api  # noqa: F401 - puts pydevd on the path

            hand_to_pydevd(sessions)  # type: ignore[arg-type]  # accept() is all pydevd asks of it
            self.debugpy.listen(address, in_process_debug_adapter=True)
        except BaseException:
            sessions.close()
            relay_sock.close()
            raise
        self.relay = Relay(relay_sock, context, peer, sessions, self._new_link).start()
        return bind, self.relay.port

    # -- a client leaving -----------------------------------------------------------------
    def _client_stays(self) -> bool:
        """A client is attached and has not said goodbye: its ``disconnect`` ends the window at once,
        before debugpy itself has forgotten the client."""
        link = self.link
        return bool(self.debugpy.is_client_connected()) and not (link is not None and (link.goodbye or link.ended))

    def _new_link(self) -> Link:
        """A client connection accepted (direct or through the relay): watch for its end."""
        window = self.listens
        link = Link(lambda ended, cause: self._link_ended(ended, cause, window))
        self.link = link
        _GoodbyeListener.install(self)
        return link

    def _link_ended(self, link: Link, cause: str, window: int) -> None:
        """A connection ended (on a thread of ours). Without a ``disconnect`` first, do what one
        does: resume every thread, drop the breakpoints, forget the client (a later one may attach)."""
        if cause == CLOSED or self.switched_off or window != self.listens:
            return  # the node ended it itself: switched off, a newer client, the run's end, a later window
        try:
            if self.on_detached is not None:  # reported (and switched off) first: the run may end once resumed
                self.on_detached(cause, link.seconds, window)
        finally:
            if cause != DISCONNECT and not self.switched_off and window == self.listens:
                self._release_threads()  # switched off: nothing left to do (disposing resumed them)

    @staticmethod
    def _release_threads() -> None:
        """What pydevd does for a client's ``disconnect``, for a client that never sent one."""
        import pydevd
        from _pydevd_bundle.pydevd_api import PyDevdAPI

        py_db = pydevd.get_global_debugger()
        if py_db is None or py_db.pydb_disposed:
            return
        py_db.enable_output_redirection(False, False)
        PyDevdAPI().request_disconnect(py_db, resume_threads=True)

    def watch_detach(self) -> None:
        """After an attach: notice a ``disconnect`` on a connection that stays open, and the client
        leaving debugpy's separate adapter (which resumes the threads itself). A connection's end
        is noticed by its link at once."""
        link, self._attached_at, window = self.link, time.monotonic(), self.listens
        if self._gate is not None:
            self._gate.attached_once = True

        def poll() -> None:
            while not self.switched_off and self.debugpy.is_client_connected() and not (link and link.ended):
                time.sleep(DETACH_POLL)
            if self.switched_off:
                return
            if link is not None:
                link.end(DISCONNECT)  # no-op when the connection's end was noticed first
            elif self.on_detached is not None:
                self.on_detached(DISCONNECT, time.monotonic() - self._attached_at, window)

        service_thread(poll, name="aml-magics-detach")

    @staticmethod
    def _allow_listen_again() -> None:
        """debugpy refuses a second listen(); switch_off() disposed of the first session.

        pydevd's stoptrace() unregisters the disposed debugger, so a new one can start;
        what remains are debugpy's "called" flag and pydevd's remembered host/port.
        """
        import pydevd
        from debugpy.server import api

        api.listen.called = False
        pydevd.SetupHolder.setup = None

    def client_connected(self) -> bool:
        """A client is attached and has not said goodbye (debugpy forgets one a moment after its
        ``disconnect``: a crash in that moment must not stop for a client that is leaving)."""
        return not self.switched_off and self._client_stays()

    def client_left(self) -> tuple[str, float] | None:
        """The window's client is gone (its goodbye said, or its connection ended), whether or not
        its leaving was handled yet: ``(cause, seconds attached)``; None while it stays."""
        if self.switched_off or self._client_stays():
            return None
        link = self.link
        if link is None:
            return DISCONNECT, time.monotonic() - self._attached_at
        return (link.cause or DISCONNECT), link.seconds

    def wait_for_client(self, timeout: float) -> bool:
        """debugpy.wait_for_client() has no timeout; cancel it from a timer thread. A client that
        configured its session ends the wait too, even one already gone again (attach, then detach
        at once: debugpy's own wait would go on for the whole window, and the window would count
        nobody): it was attached, and its leaving is the detach that follows."""
        if timeout <= 0:  # no window: whoever is connected already
            return bool(self.debugpy.is_client_connected()) or self.configured.is_set()
        cancel = self.debugpy.wait_for_client.cancel
        done = threading.Event()
        timer = threading.Timer(timeout, _cancel_until, args=(done, cancel))
        timer.daemon = True
        timer.start()

        def on_configured() -> None:
            while not (done.is_set() or self.configured.wait(0.25)):
                pass
            _cancel_until(done, cancel)

        service_thread(on_configured, name="aml-magics-configured")
        try:
            self.debugpy.wait_for_client()
        finally:
            done.set()
            timer.cancel()
        return bool(self.debugpy.is_client_connected()) or self.configured.is_set()

    def switch_off(self) -> None:
        """Stop tracing and close the port: an idle listener slows Python code 2-7x."""
        if self.relay is not None:
            self.relay.close()
            self.relay = None
        try:
            import pydevd  # vendored by debugpy, importable once debugpy listened

            self._close_in_process_listener(pydevd.get_global_debugger())
            pydevd.stoptrace()
            self.switched_off = True
        except Exception as exc:  # never let cleanup kill the user's run
            print(f"aml_magics: could not switch the debugger off: {exc}", file=sys.stderr, flush=True)

    @staticmethod
    def _close_in_process_listener(py_db: object) -> None:
        """The in-process adapter's listener survives stoptrace(); close it ourselves.

        shutdown() first: a bare close() does not wake the thread blocked in accept(),
        and the port would stay open. The kill flag before that: a thread woken with the
        flag still unset loops back to listen() on the same socket.
        """
        waiter = getattr(py_db, "_waiting_for_connection_thread", None)
        server = getattr(waiter, "_server_socket", None)
        if waiter is None or server is None:
            return
        waiter._kill_received = True
        try:
            server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        waiter.do_kill_pydev_thread()
        if isinstance(waiter, threading.Thread) and waiter is not threading.current_thread():
            waiter.join(2.0)

    def stop_on_entry(self) -> None:
        """Pause at the user script's first line, not in this file."""
        import pydevd
        from _pydevd_bundle.pydevd_api import PyDevdAPI

        api = PyDevdAPI()
        api.set_dont_trace_start_end_patterns(pydevd.get_global_debugger(), (), own_files())
        api.stop_on_entry()

    @staticmethod
    def pause_at(frame: object) -> None:
        """Pause the current thread in ``frame`` (what breakpoint() does with a client attached)."""
        import pydevd

        pydevd.settrace(suspend=True, trace_only_current_thread=True, patch_multiprocessing=False,
                        stop_at_frame=frame, notify_stdin=False)

    @staticmethod
    def stops_when_uncaught(exc_info: tuple) -> bool:
        """Will the client's exception filters stop at ``exc_info`` when it leaves the process
        uncaught (``uncaught``, VS Code's default)? Then no stop of ours is needed."""
        import pydevd

        py_db = pydevd.get_global_debugger()
        filters = getattr(py_db, "break_on_uncaught_exceptions", None)
        if not filters:
            return False
        try:
            return bool(py_db.get_exception_breakpoint(exc_info[0], filters))
        except Exception:
            return False

    @staticmethod
    def stop_at_exception(exc_info: tuple) -> None:
        """Post-mortem: show the attached client the frame that raised, with its locals.

        The traceback is already unwound (as with pdb.post_mortem); the client sees an
        unhandled-exception stop in the innermost frame that is not the debugger's own.
        """
        import pydevd

        py_db = pydevd.get_global_debugger()
        if py_db is None:
            return
        trigger = getattr(py_db, "trigger_exception_handler", None)
        if trigger is not None:  # debugpy >= 1.8.20 does exactly this
            trigger(exc_info, as_uncaught=False)
            return
        frames, user_frame, tb = [], None, exc_info[2]
        while tb is not None:
            frames.append(tb.tb_frame)
            if py_db.get_file_type(tb.tb_frame) != py_db.PYDEV_FILE:
                user_frame = tb.tb_frame
            tb = tb.tb_next
        if user_frame is None:
            return
        thread = threading.current_thread()
        info = py_db.set_additional_thread_info(thread)
        info.is_tracing += 1
        try:
            py_db.do_stop_on_unhandled_exception(thread, user_frame, {id(f): f for f in frames}, exc_info)
        finally:
            info.is_tracing -= 1


class _GoodbyeListener:
    """pydevd's DAP message listener: marks the current link when its client sends ``disconnect``
    (its connection's end is then a goodbye, not a loss); tells of each ``configurationDone``
    (a client attached: with ``--reattach``, the next one after a detach)."""

    def __init__(self, debugger: Debugger) -> None:
        self.debugger = debugger

    @classmethod
    def install(cls, debugger: Debugger) -> None:
        import pydevd

        py_db = pydevd.get_global_debugger()
        if py_db is None or getattr(py_db, "_aml_magics_goodbye", False):
            return
        py_db._aml_magics_goodbye = True
        py_db.add_dap_messages_listener(cls(debugger))

    def before_send(self, message: dict) -> None:
        pass

    def after_receive(self, message: dict) -> None:
        if message.get("type") != "request":
            return
        debugger, command = self.debugger, message.get("command")
        if command == "configurationDone":
            debugger.configured.set()
        if command in ("configurationDone", "disconnect") and debugger._gate is not None:
            debugger._gate.attached_once = True  # at once, not when the main thread gets to it
        link = debugger.link
        if link is not None and command == "disconnect":
            link.goodbye = True
        elif command == "configurationDone" and debugger.on_configured is not None:
            debugger.on_configured()
