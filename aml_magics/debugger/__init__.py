"""The in-notebook debugger: attach to a run from the kernel, no IDE needed.

``run.attach(breakpoints=[...])`` (or ``%aml_attach RUN``) returns a :class:`Debugger`:
breakpoints, stops, stack, locals, evaluate, step, continue, detach — as Python calls, as
``%aml_dbg`` commands, and as an ipywidgets panel (its rich display in Jupyter). It is a
client of :mod:`aml_magics.dap` and of the run's public face only (its attach
configuration, endpoints, ranks, state and change notifications).
"""

from __future__ import annotations

from .core import Debugger, ExceptionInfo, Frame, Process, Stop, attach, current, prepare
from .errors import DebuggerError
from .group import DebuggerGroup

__all__ = ["Debugger", "DebuggerError", "DebuggerGroup", "ExceptionInfo", "Frame", "Process", "Stop", "attach", "current", "prepare"]
