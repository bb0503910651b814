"""aml_magics bootstrap: the entry point of every debug run, on every target.

Standalone on purpose: stdlib + debugpy only, copied next to the user's script.

    python aml_magics_bootstrap.py [--port N] [--bind HOST] [--timeout S] [--no-debug]
                                   [--stop-on-entry] -- SCRIPT [ARGS...]

It starts debugpy, prints one machine-readable marker line per event
(``AML_MAGICS_<KIND> {json}``) plus the lines Microsoft's guide prints
(``Timeout for debug connection: N``, ``ip_address: X``), waits for a client for
at most the timeout, switches the debugger off completely when nobody came, and
runs the user's script as ``__main__`` with its own ``sys.argv``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import runpy
import socket
import struct
import sys
import threading
import time
import traceback

BOOTSTRAP_VERSION = "1"
MARKER_PREFIX = "AML_MAGICS_"
LOOPBACK = "127.0.0.1"
ANY_ADDRESS = "0.0.0.0"
_SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address


def emit(kind: str, **data: object) -> None:
    """Print one marker line; parsers look for the prefix anywhere in a log line."""
    print(f"{MARKER_PREFIX}{kind} {json.dumps(data, sort_keys=True)}", flush=True)


def _interface_addresses() -> list[str]:
    addresses = []
    for _, name in socket.if_nameindex():
        if name == "lo":
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                packed = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", name[:15].encode()))
            except OSError:
                continue
        addresses.append(socket.inet_ntoa(packed[20:24]))
    return addresses


def node_address() -> str:
    """This machine's own private address (what a remote client must connect to).

    Read from the interfaces rather than resolving the host name, which on many
    images maps to 127.0.1.1. Sends no traffic anywhere.
    """
    override = os.environ.get("AML_MAGICS_NODE_ADDRESS")
    if override:
        return override
    try:
        candidates = [a for a in _interface_addresses() if not a.startswith("127.")]
    except (OSError, AttributeError):
        candidates = []
    if candidates:
        return candidates[0]
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return LOOPBACK


def resolve_bind(bind: str) -> str:
    """``node`` means this machine's private address; anything else is taken as given."""
    return node_address() if bind == "node" else bind


def report_host(bound_host: str) -> str:
    """The address a client should use for what we bound."""
    explicit = os.environ.get("AML_MAGICS_REPORT_HOST")
    if explicit:
        return explicit
    if bound_host in (ANY_ADDRESS, "", "::"):
        return node_address()
    return bound_host


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="aml_magics_bootstrap", add_help=True)
    parser.add_argument("--port", type=int, default=5678)
    parser.add_argument("--bind", default=LOOPBACK)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--no-debug", action="store_true")
    parser.add_argument("--stop-on-entry", action="store_true")
    parser.add_argument("--separate-adapter", action="store_true",
                        help="use debugpy's adapter process (needed to follow subprocesses)")
    parser.add_argument("--rank", type=int, default=int(os.environ.get("RANK", "0") or 0))
    parser.add_argument("script")
    parser.add_argument("script_args", nargs=argparse.REMAINDER)
    if "--" in argv:
        split = argv.index("--")
        ns = parser.parse_args(argv[:split] + argv[split + 1:split + 2])
        ns.script_args = argv[split + 2:]
        return ns
    return parser.parse_args(argv)


class Debugger:
    """debugpy, listening for at most ``timeout`` seconds, then off if nobody came."""

    def __init__(self, debugpy_module, options: argparse.Namespace) -> None:
        self.debugpy = debugpy_module
        self.options = options

    def listen(self) -> tuple[str, int]:
        bind = resolve_bind(self.options.bind)
        in_process = not self.options.separate_adapter
        if in_process:
            host, port = self.debugpy.listen((bind, self.options.port), in_process_debug_adapter=True)
        else:
            host, port = self.debugpy.listen((bind, self.options.port))
        return host, port

    def wait_for_client(self, timeout: float) -> bool:
        """debugpy.wait_for_client() has no timeout; cancel it from a timer thread."""
        if timeout > 0:
            timer = threading.Timer(timeout, self.debugpy.wait_for_client.cancel)
            timer.daemon = True
            timer.start()
            try:
                self.debugpy.wait_for_client()
            finally:
                timer.cancel()
        return bool(self.debugpy.is_client_connected())

    def switch_off(self) -> None:
        """Stop tracing and close the port: an idle listener slows Python code 2-7x."""
        try:
            import pydevd  # vendored by debugpy, importable once debugpy listened

            self._close_in_process_listener(pydevd.get_global_debugger())
            pydevd.stoptrace()
        except Exception as exc:  # never let cleanup kill the user's run
            print(f"aml_magics: could not switch the debugger off: {exc}", file=sys.stderr, flush=True)

    @staticmethod
    def _close_in_process_listener(py_db: object) -> None:
        """The in-process adapter's listener survives stoptrace(); close it ourselves.

        shutdown() first: a bare close() does not wake the thread blocked in accept(),
        and the port would stay open.
        """
        waiter = getattr(py_db, "_waiting_for_connection_thread", None)
        server = getattr(waiter, "_server_socket", None)
        if waiter is None or server is None:
            return
        try:
            server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        waiter.do_kill_pydev_thread()

    def stop_on_entry(self) -> None:
        """Pause at the user script's first line, not in this file."""
        import pydevd
        from _pydevd_bundle.pydevd_api import PyDevdAPI

        api = PyDevdAPI()
        api.set_dont_trace_start_end_patterns(pydevd.get_global_debugger(), (), (os.path.abspath(__file__),))
        api.stop_on_entry()


def start_debugger(options: argparse.Namespace, script_path: str) -> None:
    import debugpy

    debugger = Debugger(debugpy, options)
    started = time.time()
    bound_host, port = debugger.listen()
    host = report_host(bound_host)
    print(f"Timeout for debug connection: {options.timeout:g}", flush=True)
    print(f"ip_address: {host}", flush=True)
    emit("ENDPOINT", host=host, port=port, bind=bound_host, rank=options.rank, pid=os.getpid(),
         cwd=os.getcwd(), script=script_path, timeout=options.timeout,
         deadline=started + options.timeout if options.timeout > 0 else None,
         version=BOOTSTRAP_VERSION)
    attached = debugger.wait_for_client(options.timeout)
    print(f"Debugger attached = {attached}", flush=True)
    emit("ATTACHED", attached=attached, rank=options.rank, pid=os.getpid())
    if not attached:
        debugger.switch_off()
    elif options.stop_on_entry:
        debugger.stop_on_entry()


def line_buffer_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(line_buffering=True)
            except ValueError:
                pass


def run_user_script(script_path: str, script_args: list[str]) -> int:
    """Run the script as ``python SCRIPT ARGS`` would: its dir first on sys.path."""
    sys.argv = [script_path, *script_args]
    sys.path[0] = os.path.dirname(script_path)
    try:
        runpy.run_path(script_path, run_name="__main__")
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr, flush=True)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    line_buffer_output()
    script_path = os.path.abspath(options.script)
    if not os.path.isfile(script_path):
        print(f"aml_magics: script not found: {script_path}", file=sys.stderr, flush=True)
        return 2
    if not options.no_debug:
        start_debugger(options, script_path)
    code = run_user_script(script_path, options.script_args)
    emit("EXIT", code=code, rank=options.rank, pid=os.getpid())
    return code


if __name__ == "__main__":
    sys.exit(main())
