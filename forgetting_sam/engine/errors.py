"""The engine's user-input error: raised where input from a user (a config key or value, a
model option, a path, a run directory) is checked, so that faces such as the CLI can print it
as one line and let every other exception keep its traceback."""

from __future__ import annotations

__all__ = ["OutputWriteError", "RunNotFoundError", "UserInputError"]


class UserInputError(Exception):
    """Input the user can fix; the message names the input and says how to fix it.

    A mixin base: the concrete errors also derive from the builtin a caller would expect
    (``ConfigError`` is a ``ValueError``, ``DatasetNotFoundError`` a ``FileNotFoundError``).
    """


class OutputWriteError(UserInputError, OSError):
    """A run file could not be written (read-only folder, full disk); the previous checkpoint
    is left as it was."""


class RunNotFoundError(UserInputError, FileNotFoundError):
    """No run directory, or no checkpoint in it, where the user pointed."""
