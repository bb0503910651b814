"""The package's exceptions, in one place below everything that raises them.

Each is a user-facing problem with a one-line message: the magics turn them into a
``UsageError``, the CLI into exit code 2, and nobody sees a traceback.
"""

from __future__ import annotations


class AmlMagicsError(Exception):
    """Base of every error aml_magics raises on purpose."""


class OptionsError(AmlMagicsError, ValueError):
    """A mistake in what the user asked for (one line, no traceback)."""


class TargetError(AmlMagicsError):
    """A user-facing problem a target found before or while submitting (one clear line)."""


class RunFailed(AmlMagicsError, RuntimeError):
    """The run ended without what was waited for."""


class Canceled(AmlMagicsError):
    """The run was canceled while something was being prepared for it (a build, a venv)."""


def one_line(exc: BaseException) -> str:
    """What a user sees of an error: its message on one line (the type's name if it has none)."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text or type(exc).__name__
