"""A Debug Adapter Protocol client for debugpy, standard library only, in layers.

* :mod:`.framing` — ``Content-Length`` framing over any byte stream (socket or files);
* :mod:`.channel` — requests as futures, events to listeners, reverse requests answered;
* :mod:`.session` — connect, the attach handshake, breakpoints, ``debugpyAttach`` children;
* :mod:`.models` and :mod:`.service` — call stack, variables and breakpoints models kept
  up to date from events, for views (the in-notebook debugger) and wait-style callers
  (the test helpers build on it too).

Nothing here imports the rest of aml_magics: the run-facing debugger builds on top.
"""

from __future__ import annotations

from .channel import Channel, EventQueue, Request
from .errors import DapError, DapTimeout, Disconnected, ProtocolError, RequestFailed
from .framing import MessageStream
from .models import (
    BreakpointsModel,
    BreakpointState,
    CallStackModel,
    Page,
    Scope,
    StackFrame,
    StopState,
    Thread,
    Variable,
    VariablesModel,
)
from .service import DebugService
from .session import CLIENT_ID, CLIENT_NAME, Session, address_of, connect

__all__ = [
    "CLIENT_ID", "CLIENT_NAME", "BreakpointState", "BreakpointsModel", "CallStackModel", "Channel", "DapError",
    "DapTimeout", "DebugService", "Disconnected", "EventQueue", "MessageStream", "Page", "ProtocolError", "Request",
    "RequestFailed", "Scope", "Session", "StackFrame", "StopState", "Thread", "Variable", "VariablesModel",
    "address_of", "connect",
]
