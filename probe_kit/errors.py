"""The error type for what a user can get wrong (the CLI's error boundary prints it as one line), and ``short``, how
an error shows the value it refuses."""

from __future__ import annotations

import reprlib
from typing import Any

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 4, 10_000, 10_000  # strings stay whole; nesting is cut
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 20


def short(value: Any, limit: int = 60) -> str:
    """``repr`` of ``value`` on one line, cut to ``limit`` characters; nested containers are cut while the text is
    made (``reprlib``), so a YAML alias bomb of a billion leaves is described at once."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class UserError(ValueError):
    """Bad input, option, file or path, caused by the user: the message names the culprit in one line.

    A ``ValueError`` so callers that already catch ``ValueError`` keep working; library code may
    equally raise a plain ``ValueError`` or ``FileNotFoundError`` (see ``probe_kit.cli.main``).
    """
