"""User mistakes: errors the person running a job can fix without reading a traceback.

Raise a :class:`UserError` (or a subclass) for anything caused by input the user controls: a
config key or value, a path, a table's schema or version, the environment (Delta jars, a GPU).
The message names the thing and the fix in one line. ``mtf`` prints it as
``mtf <command>: error: <message>`` and exits 2; the traceback is logged only at
``--log-level debug``. Everything else is a bug and keeps its traceback.
"""
from __future__ import annotations

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake the user can fix; the message says what and how (one line)."""


class MissingInputError(UserError, FileNotFoundError):
    """A table, file or directory that the config or the command line names does not exist."""


class TableVersionError(UserError, ValueError):
    """A pinned Delta table version that the table does not have; ``latest`` is its newest."""

    def __init__(self, message: str, latest: int | None = None) -> None:
        super().__init__(message)
        self.latest = latest


class TableVersionGoneError(TableVersionError):
    """A pinned version the table once had whose log entries or data files were removed (Delta
    log retention, VACUUM): only newer versions can be read."""


class NoGpuError(UserError, ValueError):
    """The config asks for a CUDA device but torch sees none."""


class InputDataError(UserError, ValueError):
    """The input exists but cannot serve the request: no rows for the configured days or split,
    or a table built with another layout than the config describes."""
