"""The one error the in-notebook debugger raises, for every failure a user can act on.

Its text is one line meant to be shown as is (``UsageError`` in IPython): the adapter's
own message for a failed evaluate, who holds the debugger for a refused attach.
"""

from __future__ import annotations

from ..errors import AmlMagicsError


class DebuggerError(AmlMagicsError, RuntimeError):
    """Attaching, a request or a wait of the in-notebook debugger failed; the text says why."""
