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
