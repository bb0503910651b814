"""The node's marker lines: one authenticated line per event, on the process's original stdout.

``AML_MAGICS_<KIND> {json} <mac>``: the MAC is over kind and payload with the run's key,
which arrives once (:func:`load_secrets`) and leaves the environment before user code runs.
"""

from __future__ import annotations

import json
import os
import sys
import threading

from .wire import MARKER_PREFIX, SECRETS_ENV, marker_mac

_marker_key: bytes | None = None
_out_lock = threading.Lock()


def emit(kind: str, **data: object) -> str:
    """Print one marker line, authenticated with the run's key (readers refuse any other).

    Written to the process's original stdout, whatever the user's code did to sys.stdout.
    """
    payload = json.dumps(data, sort_keys=True)
    line = f"{MARKER_PREFIX}{kind} {payload}"
    if _marker_key is not None:
        line += " " + marker_mac(_marker_key, kind, payload)
    stream = sys.__stdout__ or sys.stdout
    with _out_lock:
        stream.write(line + "\n")
        stream.flush()
    return line


def load_secrets(first_line: str = "") -> dict:
    """The run's secrets, handed over by the owner out of band; gone from the environment after.

    The user's code (and anything it starts) must never see them: the key makes markers, the
    TLS material opens the tunnel. They come as the owner channel's first line, else from
    ``AML_MAGICS_SECRETS`` (a remote run, where the job's environment is the only channel).
    """
    global _marker_key
    raw = os.environ.pop(SECRETS_ENV, "")
    raw = first_line.strip() or raw
    if not raw:
        return {}
    try:
        secrets = json.loads(raw)
        key = bytes.fromhex(secrets["marker_key"])
    except (ValueError, KeyError, TypeError):
        print("aml_magics: the run's secrets are unreadable; markers are not authenticated", file=sys.stderr,
              flush=True)
        return {}
    _marker_key = key
    return secrets
