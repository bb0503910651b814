"""What the run panel and the debugger panel share, below both (they are independent of each
other): whether this kernel shows widgets at all, and how a panel redraws.

``AML_MAGICS_VIEW=text|widget`` decides; else a Jupyter kernel (ipykernel) with ipywidgets.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable


def widget_frontend() -> bool:
    choice = os.environ.get("AML_MAGICS_VIEW", "").lower()
    if choice in ("text", "widget"):
        return choice == "widget"
    if "ipykernel" not in sys.modules:
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


class Refresher:
    """A panel's one drawing thread (made first, so changes are noted; started once the panel is
    drawn): a redraw after each change (a burst of changes coalesced into
    one) and once a second (countdowns). Redraws only set widget traits, which ipywidgets syncs
    from any thread. It stops after the redraw that finds ``finished()``, calling ``on_finished``;
    a redraw that raises goes to ``on_error`` (a panel must never die of one)."""

    def __init__(self, refresh: Callable[[], None], finished: Callable[[], bool], on_finished: Callable[[], None],
                 *, on_error: Callable[[Exception], None] | None = None, name: str = "aml-panel") -> None:
        self.refresh = refresh
        self.finished = finished
        self.on_finished = on_finished
        self.on_error = on_error
        self._dirty = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name=name)

    def start(self) -> Refresher:
        self.thread.start()
        return self

    def poke(self) -> None:
        """Something changed: redraw soon."""
        self._dirty.set()

    def _run(self) -> None:
        while True:
            self._dirty.wait(1.0)
            self._dirty.clear()
            try:
                self.refresh()
            except Exception as exc:
                if self.on_error is not None:
                    self.on_error(exc)
            if self.finished():
                self.on_finished()
                return
