"""DAP framing: ``Content-Length: N\\r\\n\\r\\n`` + N bytes of UTF-8 JSON, over any byte stream.

Like debugpy's ``JsonIOStream``: one object reads whole messages from a binary reader and
writes them to a binary writer, whether those are a socket (the usual attach) or a pair
of file objects (pipes, in-memory buffers in tests). Reading and writing are independent
(one reader thread, any number of writers behind a lock).

Malformed input is a :class:`ProtocolError` with a readable reason, raised as soon as
the bytes prove it (a header line without a colon, no ``Content-Length``, a body that is
not JSON): the reader never waits for bytes a broken peer will not send. End of stream
between messages is a clean end (``None``); inside a message it is an error.
"""

from __future__ import annotations

import io
import json
import socket
import threading
from typing import Any, BinaryIO, Protocol

from .errors import Disconnected, ProtocolError

MAX_HEADER_LINE = 4096
MAX_MESSAGE_SIZE = 256 * 1024 * 1024  # debugpy sends big variables/evaluate bodies; never unbounded


class _Writer(Protocol):
    def write(self, data: bytes) -> object: ...

    def flush(self) -> object: ...

    def close(self) -> object: ...


class _SocketReader(io.RawIOBase):
    """``recv_into`` that asks for quick ACKs after every read.

    debugpy writes a message's header and body with separate sends on a socket without
    ``TCP_NODELAY``: Nagle holds the body until our ACK of the header, which Linux delays
    by 40 ms — every request would take 44 ms. ``TCP_QUICKACK`` (re-armed after each read,
    as the kernel drops it) acknowledges at once.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self._quickack = getattr(socket, "TCP_QUICKACK", None)
        self._ack()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self._sock.recv_into(buffer)
        self._ack()
        return count

    def _ack(self) -> None:
        if self._quickack is not None:
            try:
                self._sock.setsockopt(socket.IPPROTO_TCP, self._quickack, 1)
            except OSError:
                self._quickack = None


class _SocketWriter:
    """``sendall`` behind the file-like ``write`` the stream uses."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def write(self, data: bytes) -> int:
        self._sock.sendall(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def encode(message: dict) -> bytes:
    """One framed message."""
    body = json.dumps(message, separators=(",", ":")).encode("utf-8")
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


class MessageStream:
    """Whole DAP messages over a binary reader and writer (or a socket: :meth:`from_socket`)."""

    def __init__(self, reader: BinaryIO, writer: _Writer, name: str = "dap",
                 sock: socket.socket | None = None) -> None:
        self.name = name
        self._reader = reader
        self._writer = writer
        self._sock = sock
        self._write_lock = threading.Lock()
        self._reading = False
        self._closed = False

    @classmethod
    def from_socket(cls, sock: socket.socket, name: str = "dap") -> MessageStream:
        sock.settimeout(None)
        reader = io.BufferedReader(_SocketReader(sock), buffer_size=65536)
        return cls(reader, _SocketWriter(sock), name=name, sock=sock)

    @property
    def socket(self) -> socket.socket | None:
        """The socket underneath, when there is one."""
        return self._sock

    # -- reading ---------------------------------------------------------------------
    def read_message(self) -> dict | None:
        """The next message; ``None`` when the stream ended cleanly between messages."""
        self._reading = True
        try:
            length = self._read_header()
            if length is None:
                return None
            return _decode(self._read_exact(length))
        finally:
            self._reading = False

    def _read_header(self) -> int | None:
        length: int | None = None
        seen = False
        while True:
            line = self._reader.readline(MAX_HEADER_LINE + 1)
            if not line:
                if seen:
                    raise ProtocolError("the stream ended inside a message header")
                return None
            if not line.endswith(b"\n"):
                if len(line) > MAX_HEADER_LINE:
                    raise ProtocolError(f"header line longer than {MAX_HEADER_LINE} bytes: {line[:60]!r}…")
                raise ProtocolError(f"the stream ended inside a header line: {line[:60]!r}")
            text = line.rstrip(b"\r\n")
            if not text:
                if not seen:
                    continue  # blank lines between messages are harmless
                break
            seen = True
            key, colon, value = text.partition(b":")
            if not colon:
                raise ProtocolError(f"malformed header line {text[:80]!r} (expected 'Name: value')")
            if key.strip().lower() == b"content-length":
                length = _content_length(value)
        if length is None:
            raise ProtocolError("message header without Content-Length")
        return length

    def _read_exact(self, length: int) -> bytes:
        chunks: list[bytes] = []
        got = 0
        while got < length:
            chunk = self._reader.read(length - got)
            if not chunk:
                raise ProtocolError(f"the stream ended after {got} of {length} body bytes")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    # -- writing ---------------------------------------------------------------------
    def write_message(self, message: dict) -> None:
        data = encode(message)
        with self._write_lock:
            if self._closed:
                raise Disconnected(f"{self.name}: cannot send {_what(message)}: the stream is closed")
            try:
                self._writer.write(data)
                self._writer.flush()
            except (OSError, ValueError) as exc:  # ValueError: write to a closed file
                raise Disconnected(f"{self.name}: cannot send {_what(message)}: {exc}") from exc

    # -- closing ---------------------------------------------------------------------
    def close(self) -> None:
        """Close both directions; a reader blocked on a socket wakes with end of stream.

        A file reader is closed only when no read is in progress (closing a buffered
        reader another thread reads from would block until that read returns).
        """
        with self._write_lock:
            self._closed = True
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                self._sock.close()
            except OSError:
                pass
        for closer in (self._writer.close, None if self._reading else self._reader.close):
            if closer is None:
                continue
            try:
                closer()
            except (OSError, ValueError):
                pass


def _content_length(value: bytes) -> int:
    try:
        length = int(value.strip())
    except ValueError:
        raise ProtocolError(f"Content-Length is not a number: {value.strip()[:40]!r}") from None
    if length < 0 or length > MAX_MESSAGE_SIZE:
        raise ProtocolError(f"Content-Length {length} out of range (0..{MAX_MESSAGE_SIZE})")
    return length


def _decode(body: bytes) -> dict:
    try:
        message = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"message body is not UTF-8: {exc}") from None
    except ValueError as exc:
        raise ProtocolError(f"message body is not JSON: {exc}: {body[:80]!r}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"message body is not a JSON object: {body[:80]!r}")
    return message


def _what(message: dict) -> str:
    return str(message.get("command") or message.get("event") or message.get("type") or "a message")
