"""The error type for what a user can get wrong; the CLI's error boundary prints it as one line."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input, option, file or path, caused by the user: the message names the culprit in one line.

    A ``ValueError`` so callers that already catch ``ValueError`` keep working; library code may
    equally raise a plain ``ValueError`` or ``FileNotFoundError`` (see ``probe_kit.cli.main``).
    """
