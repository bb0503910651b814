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
from .idle import IdleWatch, describe, end_process, resume_all
from .liveness import DISCONNECT
from .markers import emit
from .owner import kill_descendants
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
        self._attached_in: int | None = None  # the window (the driver's ``listens``) a client attached in
        self._exiting = False  # the interpreter is exiting: a client leaving now is no news
        self._exit_hooked = False

    # -- listening ---------------------------------------------------------------
    def listen(self, timeout: float, reason: str) -> tuple[str, int]:
        """Start (or restart) listening and report the endpoint; a no-op while listening."""
        with self._lock:
            self._close_used_window()
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
                self._attached_in = self.debugger.listens
                self.debugger.watch_detach()
                self._watch_idle()
            return attached

    def _detached(self, cause: str, seconds: float, window: int) -> None:
        """The client left (said goodbye, or its connection was lost: the threads are already
        resumed). One attach per window — stop listening, tracing off, as after a timeout
        (``--reattach`` keeps the listener open for the next client until the run ends)."""
        if self._exiting or not self._lock.acquire(timeout=5):
            return
        try:
            if (not self.listening or self.debugger is None or self._attached_in != window
                    or window != self.debugger.listens):
                return  # that window was closed already (see _close_used_window); maybe a new one is open
            self._end_window(cause, seconds)
        finally:
            self._lock.release()

    def _close_used_window(self) -> None:
        """A client attached in this window and left, and its leaving is not handled yet: the run
        crashed (or reached breakpoint()) the moment the client's goodbye resumed it. Handle it now,
        so the post-mortem window is a new one, not the used one that lets nobody in; the late
        handler then finds its window gone (``_attached_in``). Caller holds the lock."""
        if (self.options.reattach or not self.listening or self.debugger is None
                or self._attached_in != self.debugger.listens):
            return
        left = self.debugger.client_left()
        if left is not None:
            self._end_window(*left)

    def _end_window(self, cause: str, seconds: float) -> None:
        """Say the client left; without --reattach, switch the debugger off. Caller holds the lock."""
        assert self.debugger is not None
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

    def _reattached(self) -> None:
        """A client configured its session: after a detach with ``--reattach``, say it (the window's
        first client is reported by :meth:`wait`)."""
        if self._gone and self.options.reattach and self.listening and not self._exiting:
            print("Debugger attached = True", flush=True)
            emit("ATTACHED", attached=True, rank=self.options.rank, pid=os.getpid(), reason="reattach")

    def _exit(self) -> None:
        self._exiting = True

    # -- no idle bill (--idle-timeout) -------------------------------------------------
    def _watch_idle(self) -> None:
        timeout = float(getattr(self.options, "idle_timeout", 0) or 0)
        if timeout > 0:
            IdleWatch(timeout, self.client_connected, self._idle, self._held).start()

    def _held(self, since: float | None) -> None:
        """A stop began (``since``, wall clock) or ended (None): the owner shows how long the node is held."""
        emit("HELD", rank=self.options.rank, pid=os.getpid(), since=since)

    def _idle(self, held: float) -> None:
        """Stopped with no request for --idle-timeout: resume and detach, or end the run."""
        timeout = describe(self.options.idle_timeout)
        rank, pid = self.options.rank, os.getpid()
        if getattr(self.options, "idle_action", "detach") == "cancel":
            print(f"aml_magics: stopped with no debugger request for {timeout}: the run is canceled "
                  "(--idle-action cancel)", file=sys.stderr, flush=True)
            emit("DETACHED", rank=rank, pid=pid, reason=f"canceled after {timeout} idle")
            kill_descendants()
            emit("EXIT", code=130, rank=rank, pid=pid)
            end_process(130)
        with self._lock:
            if not self.listening or self.debugger is None:
                return
            resume_all()
            time.sleep(0.1)  # the stopped threads take the resume before tracing goes
            self.debugger.switch_off()
            self.listening = False
        print(f"aml_magics: resumed after {timeout} idle (stopped {held:.0f} s, no debugger request); "
              "the debugger detached, the run goes on (--idle-timeout)", flush=True)
        emit("DETACHED", rank=rank, pid=pid, reason=f"resumed after {timeout} idle")

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
    def post_mortem(self, exc_info: tuple) -> bool:
        """An uncaught exception: report it, wait for a client, stop where it was raised.
        False when nobody came (the window closed unused)."""
        if not self.enabled:
            return False
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
            if not self.debugger.stops_when_uncaught(exc_info):  # else debugpy stops as it leaves
                self.debugger.stop_at_exception(exc_info)
        return attached

    # -- breakpoint() ------------------------------------------------------------
    def on_breakpoint(self, frame, stop_in=None) -> None:
        """``breakpoint()`` in user code: pause, wait for a client, or do nothing.

        ``stop_in``: the frame to stop in when not ``frame`` (torch.distributed.breakpoint()
        stops inside itself, before its barrier; ``frame`` is still where it is reported)."""
        if os.environ.get("PYTHONBREAKPOINT") == "0":
            return
        if self.enabled and self.client_connected():
            Debugger.pause_at(stop_in or frame)
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
            Debugger.pause_at(stop_in or frame)


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
