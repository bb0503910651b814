"""The debug session of this process: the attach windows (start, post-mortem, breakpoint()).

One window at a time (a lock), each reported by an ENDPOINT marker and closed by ATTACHED;
a client leaving — with a ``disconnect`` or by vanishing — ends the window (one attach per
window) unless ``--reattach``, reported by a DETACHED marker with its cause.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import threading
import time

from .address import report_host
from .driver import Debugger
from .liveness import DISCONNECT
from .markers import emit
from .wire import BOOTSTRAP_VERSION, service_thread


def tag_azureml_run(endpoint: dict, line: str) -> None:
    """On Azure ML, also put the endpoint in a run tag (cheaper to read than logs).

    Optional and never fatal: only inside a submitted run whose image has azureml-core,
    in a background thread (importing azureml takes seconds); elsewhere it does nothing.
    """
    if not (os.environ.get("AZUREML_RUN_ID") and os.environ.get("AZUREML_SERVICE_ENDPOINT")):
        return

    def tag() -> None:
        try:
            from azureml.core import Run

            run = Run.get_context(allow_offline=False)
            run.tag(f"aml_magics.endpoint.{endpoint.get('rank', 0)}", line)  # the authenticated marker line
        except Exception:
            pass  # azureml-core absent or no run context: the log line is enough

    service_thread(tag, name="aml-magics-run-tag")


class DebugSession:
    """The debugger of this process: started when needed, listening only while waited for.

    At start it listens for ``--timeout`` seconds (unless that is 0 and only a crash or a
    breakpoint() should start it: then nothing runs until that moment). A post-mortem
    or a breakpoint() with ``--wait-on-breakpoint`` listens again, reports the endpoint
    and waits at most ``--post-mortem-timeout`` seconds; nobody came means off again.
    """

    def __init__(self, options: argparse.Namespace, script_path: str, tunnel: dict | None = None) -> None:
        self.options = options
        self.script_path = script_path
        self.tunnel = tunnel  # the node side of the run's TLS tunnel: the port is the relay's
        self.enabled = bool(getattr(options, "debug_this_rank", not options.no_debug))
        self.debugger: Debugger | None = None
        self.listening = False
        self.host: str | None = None
        self.port: int | None = None
        self._lock = threading.RLock()
        self._ignored: set[tuple[str, int]] = set()
        self._gone = False  # a client left this process's debugger (--reattach: the next one is reported)
        self._exiting = False  # the interpreter is exiting: a client leaving now is no news
        self._exit_hooked = False

    # -- listening ---------------------------------------------------------------
    def listen(self, timeout: float, reason: str) -> tuple[str, int]:
        """Start (or restart) listening and report the endpoint; a no-op while listening."""
        with self._lock:
            if self.listening and self.host is not None and self.port is not None:
                return self.host, self.port
            if self.debugger is None:
                import debugpy

                self.use_debugpy(debugpy)
            assert self.debugger is not None
            started = time.time()
            bound_host, port = self.debugger.listen()
            self.listening = True
            if not self._exit_hooked:  # after pydevd's own atexit hook (LIFO: ours runs first)
                self._exit_hooked = True
                atexit.register(self._exit)
            install_breakpointhook(self)  # importing pydevd installed its own hook
            host = report_host(bound_host)
            self.host, self.port = host, port
            print(f"Timeout for debug connection: {timeout:g}", flush=True)
            print(f"ip_address: {host}", flush=True)
            endpoint = dict(host=host, port=port, bind=bound_host, rank=self.options.rank, pid=os.getpid(),
                            cwd=os.getcwd(), script=self.script_path, timeout=timeout,
                            deadline=started + timeout if timeout > 0 else None, reason=reason,
                            version=BOOTSTRAP_VERSION, tunnel=self.debugger.tunnelled)
            tag_azureml_run(endpoint, emit("ENDPOINT", **endpoint))
            return host, port

    def use_debugpy(self, debugpy_module: object) -> None:
        """The debugger of this run, driving ``debugpy_module`` (debugpy itself, or its real
        functions kept aside when the user's own ``import debugpy`` is patched)."""
        self.debugger = Debugger(debugpy_module, self.options, self.tunnel)
        self.debugger.on_detached = self._detached
        self.debugger.on_configured = self._reattached

    def wait(self, timeout: float, reason: str) -> bool:
        """Wait at most ``timeout`` for a client; switch the debugger off if none came."""
        with self._lock:
            assert self.debugger is not None
            attached = self.debugger.wait_for_client(timeout)
            print(f"Debugger attached = {attached}", flush=True)
            emit("ATTACHED", attached=attached, rank=self.options.rank, pid=os.getpid(), reason=reason)
            if not attached:
                self.debugger.switch_off()
                self.listening = False
            else:
                self.debugger.watch_detach()
            return attached

    def _detached(self, cause: str, seconds: float) -> None:
        """The client left (said goodbye, or its connection was lost: the threads are already
        resumed). One attach per window — stop listening, tracing off, as after a timeout
        (``--reattach`` keeps the listener open for the next client until the run ends)."""
        if self._exiting or not self._lock.acquire(timeout=5):
            return
        try:
            if not self.listening or self.debugger is None:
                return
            self._gone = True
            text = detached_text(cause, seconds)
            then = "listening for the next client (--reattach)" if self.options.reattach else \
                "the run goes on without it (--reattach keeps it listening)"
            # Said first: the threads resume as the debugger goes off, and the run may end at once.
            print(f"aml_magics: {text}; {then}", file=sys.stderr, flush=True)
            emit("DETACHED", rank=self.options.rank, pid=os.getpid(), reason=text, cause=cause,
                 seconds=round(seconds, 1), listening=bool(self.options.reattach))
            if not self.options.reattach:
                self.debugger.switch_off()
                self.listening = False
        finally:
            self._lock.release()

    def _reattached(self) -> None:
        """A client configured its session: after a detach with ``--reattach``, say it (the window's
        first client is reported by :meth:`wait`)."""
        if self._gone and self.options.reattach and self.listening and not self._exiting:
            print("Debugger attached = True", flush=True)
            emit("ATTACHED", attached=True, rank=self.options.rank, pid=os.getpid(), reason="reattach")

    def _exit(self) -> None:
        self._exiting = True

    def client_connected(self) -> bool:
        return self.listening and self.debugger is not None and self.debugger.client_connected()

    @property
    def lazy(self) -> bool:
        """``--timeout 0`` with a crash or breakpoint() to wait for: start nothing up front."""
        options = self.options
        return options.timeout <= 0 and (options.post_mortem or options.wait_on_breakpoint)

    def start(self) -> None:
        if not self.enabled or self.lazy:
            return
        self.listen(self.options.timeout, "start")
        if self.wait(self.options.timeout, "start") and self.options.stop_on_entry:
            assert self.debugger is not None
            self.debugger.stop_on_entry()

    # -- post-mortem -------------------------------------------------------------
    def post_mortem(self, exc_info: tuple) -> None:
        """An uncaught exception: report it, wait for a client, stop where it was raised."""
        if not self.enabled:
            return
        exc_type, exc, tb = exc_info
        frame_file, frame_line = _innermost(tb)
        timeout = self.options.post_mortem_timeout
        details = dict(type=getattr(exc_type, "__qualname__", str(exc_type)),
                       module=getattr(exc_type, "__module__", ""), message=_short(exc),
                       file=frame_file, line=frame_line, rank=self.options.rank, pid=os.getpid())
        with self._lock:
            if self.client_connected():
                emit("POST_MORTEM", host=self.host, port=self.port, attached=True, timeout=0, deadline=None,
                     **details)
                attached = True
            else:
                started = time.time()
                host, port = self.listen(timeout, "post_mortem")
                emit("POST_MORTEM", host=host, port=port, attached=False, timeout=timeout,
                     deadline=started + timeout if timeout > 0 else None, **details)
                print(f"aml_magics: rank {self.options.rank} crashed ({details['type']}: {details['message']}); "
                      f"post-mortem: waiting up to {timeout:g}s for a debugger at {host}:{port}", flush=True)
                attached = self.wait(timeout, "post_mortem")
        if attached:
            assert self.debugger is not None
            self.debugger.stop_at_exception(exc_info)

    # -- breakpoint() ------------------------------------------------------------
    def on_breakpoint(self, frame) -> None:
        """``breakpoint()`` in user code: pause, wait for a client, or do nothing."""
        if os.environ.get("PYTHONBREAKPOINT") == "0":
            return
        if self.enabled and self.client_connected():
            Debugger.pause_at(frame)
            return
        where = (frame.f_code.co_filename, frame.f_lineno)
        if not (self.enabled and self.options.wait_on_breakpoint):
            if where not in self._ignored:
                self._ignored.add(where)
                why = "--wait-on-breakpoint to wait for one" if self.enabled else "the debugger is off for this rank"
                print(f"aml_magics: breakpoint() at {where[0]}:{where[1]} ignored: no debugger attached ({why})",
                      file=sys.stderr, flush=True)
            return
        timeout = self.options.post_mortem_timeout
        with self._lock:
            if self.client_connected():  # another thread's breakpoint() got one meanwhile
                attached = True
            else:
                started = time.time()
                host, port = self.listen(timeout, "breakpoint")
                emit("BREAKPOINT", host=host, port=port, file=where[0], line=where[1], function=frame.f_code.co_name,
                     rank=self.options.rank, pid=os.getpid(), timeout=timeout,
                     deadline=started + timeout if timeout > 0 else None)
                print(f"aml_magics: breakpoint() at {where[0]}:{where[1]}: waiting up to {timeout:g}s "
                      f"for a debugger at {host}:{port}", flush=True)
                attached = self.wait(timeout, "breakpoint")
        if attached:
            Debugger.pause_at(frame)


def detached_text(cause: str, seconds: float) -> str:
    """``debugger gone (connection lost) after 12 s``, ``debugger detached after 3 s``."""
    after = f"after {seconds:.0f} s"
    return f"debugger detached {after}" if cause == DISCONNECT else f"debugger gone ({cause}) {after}"


def install_breakpointhook(session: DebugSession) -> None:
    """Make breakpoint() ours: debugpy's hook would pause only with a client attached, and
    Python's default (pdb) would read a stdin nobody types into."""

    def aml_magics_breakpointhook(*args: object, **kwargs: object) -> None:
        session.on_breakpoint(sys._getframe(1))

    sys.breakpointhook = aml_magics_breakpointhook


def _innermost(tb) -> tuple[str | None, int | None]:
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    if last is None:
        return None, None
    return last.tb_frame.f_code.co_filename, last.tb_lineno


def _short(exc: object, limit: int = 500) -> str:
    try:
        text = str(exc)
    except Exception:
        text = "<unprintable>"
    return text if len(text) <= limit else text[:limit] + "…"
