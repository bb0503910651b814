"""The errors of the DAP client, one base class so callers can catch them all.

Kept apart from the layers that raise them (framing, channel, session) so that each
layer, and code above them, can name an error without importing the machinery.
"""

from __future__ import annotations

from ..errors import AmlMagicsError


class DapError(AmlMagicsError, RuntimeError):
    """A DAP request failed, a wait timed out, or the connection is gone.

    ``response`` holds the failed response message when there was one.
    """

    def __init__(self, message: str, response: dict | None = None) -> None:
        super().__init__(message)
        self.response = response


class ProtocolError(DapError):
    """The peer sent bytes that are not a DAP message (bad header, bad JSON, truncated body)."""


class Disconnected(DapError):
    """The connection is closed; ``reason`` says by whom or why."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class RequestFailed(DapError):
    """The adapter answered a request with ``success: false``.

    ``adapter_message`` is the adapter's own text (e.g. debugpy's ``NameError: ...``).
    """

    def __init__(self, command: str, adapter_message: str, response: dict) -> None:
        super().__init__(f"{command} failed: {adapter_message}", response)
        self.command = command
        self.adapter_message = adapter_message


class DapTimeout(DapError):
    """A wait (a response, an event, a connection) did not finish in time."""
