"""The node's marker lines: one authenticated line per event, on the process's original stdout.

``AML_MAGICS_<KIND> {json} <mac>``: the MAC is over kind and payload with the run's key,
which arrives once (:func:`load_secrets`) and leaves the environment before user code runs.
Every payload carries ``src`` (this process, at random) and ``seq`` (counting up): the owner
refuses a line re-printed later (a replay moves no state back).

The key itself is kept nowhere user code can walk to by name: only a keyed HMAC state, inside
a closure, signs. Code in this process can still use that state (it is the same process): the
owner's checks of what a marker may say (:mod:`aml_magics.run`) are what bound that.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
import threading
from collections.abc import Callable

from .wire import MARKER_PREFIX, SECRETS_ENV

_sign: Callable[[str, str], str] | None = None
_out_lock = threading.Lock()
_source = os.urandom(6).hex()  # this process's markers (a fork's child draws its own: see _new_source)
_seq = 0


def _signer(key: bytes) -> Callable[[str, str], str]:
    """``sign(kind, payload)`` = wire.marker_mac(key, kind, payload), keeping only the HMAC state."""
    keyed = hmac.new(key, digestmod=hashlib.sha256)

    def sign(kind: str, payload: str) -> str:
        mac = keyed.copy()
        mac.update(f"{kind} {payload}".encode())
        return mac.hexdigest()[:32]

    return sign


def _new_source() -> None:
    global _source, _seq
    _source, _seq = os.urandom(6).hex(), 0


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_new_source)


def emit(kind: str, **data: object) -> str:
    """Print one marker line, authenticated with the run's key (readers refuse any other).

    Written to the process's original stdout, whatever the user's code did to sys.stdout.
    """
    global _seq
    stream = sys.__stdout__ or sys.stdout
    with _out_lock:
        _seq += 1
        payload = json.dumps({**data, "src": _source, "seq": _seq}, sort_keys=True)
        line = f"{MARKER_PREFIX}{kind} {payload}"
        if _sign is not None:
            line += " " + _sign(kind, payload)
        stream.write(line + "\n")
        stream.flush()
    return line


def load_secrets(first_line: str = "") -> dict:
    """The run's secrets, handed over by the owner out of band; gone from the environment after.

    The user's code (and anything it starts) must never see them: the key makes markers, the
    TLS material opens the tunnel. They come as the owner channel's first line, else from
    ``AML_MAGICS_SECRETS`` (a remote run, where the job's environment is the only channel; the
    entry re-executes without it first, see :mod:`.main`). Returns the rest (the tunnel's part);
    the key stays in the signer only.
    """
    global _sign
    raw = os.environ.pop(SECRETS_ENV, "")
    raw = first_line.strip() or raw
    if not raw:
        return {}
    try:
        secrets = json.loads(raw)
        key = bytes.fromhex(secrets.pop("marker_key"))
    except (ValueError, KeyError, TypeError, AttributeError):
        print("aml_magics: the run's secrets are unreadable; markers are not authenticated", file=sys.stderr,
              flush=True)
        return {}
    _sign = _signer(key)
    return secrets
