"""Whether this kernel shows widgets: the run panel and the debugger panel there, text elsewhere.

``AML_MAGICS_VIEW=text|widget`` decides; else a Jupyter kernel (ipykernel) with ipywidgets.
Below both the run views and the debugger, which are independent of each other.
"""

from __future__ import annotations

import os
import sys


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
