"""How to install one of the package's extras, said the way this copy was installed.

``pip install 'aml-magics[docker]'`` only works for a package on an index; aml_magics is
installed from a checkout (``pip install '.[notebook]'``, or ``pip install -e`` for contributors),
so every hint names the command that works here: the checkout's path, editable or not, read from
the installation's own record (PEP 610 ``direct_url.json``).
"""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

DISTRIBUTION = "aml-magics"


def install_command(extra: str, dist: Any = None) -> str:
    """``pip install -e '/path/to/checkout[docker]'``, ``pip install '/path[docker]'`` or, for a copy
    from an index, ``pip install 'aml-magics[docker]'``."""
    if dist is None:
        try:
            dist = metadata.distribution(DISTRIBUTION)
        except metadata.PackageNotFoundError:
            dist = None
    if dist is None:  # run from a checkout that was never installed
        checkout = Path(__file__).resolve().parent.parent
        if (checkout / "pyproject.toml").is_file():
            return f"pip install '{_shown(checkout)}[{extra}]'"
        return f"pip install '{DISTRIBUTION}[{extra}]'"
    origin = _origin(dist)
    if origin is None:
        return f"pip install '{DISTRIBUTION}[{extra}]'"
    path, editable = origin
    return f"pip install {'-e ' if editable else ''}'{_shown(path)}[{extra}]'"


def needs(what: str, extra: str) -> str:
    """``{what}: install it with pip install ...`` (what the hints say)."""
    return f"{what}: {install_command(extra)}"


def _origin(dist: Any) -> tuple[Path, bool] | None:
    """The local folder it was installed from and whether editably, or None (an index, a URL)."""
    try:
        text = dist.read_text("direct_url.json")
        record = json.loads(text) if text else None
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or "dir_info" not in record:
        return None
    url = urlparse(str(record.get("url", "")))
    if url.scheme != "file":
        return None
    return Path(unquote(url.path)), bool((record.get("dir_info") or {}).get("editable"))


def _shown(path: Path) -> str:
    """The path as typed from the current folder: ``.`` when it is this folder."""
    try:
        return "." if Path(os.getcwd()).resolve() == path.resolve() else str(path)
    except OSError:
        return str(path)
