"""The data package's error: input that cannot be used, named with its file, entry and fix."""

from __future__ import annotations

from ..common.errors import UserError

SHOWN_PROBLEMS = 5


class DialogueDataError(UserError):
    """Input data that cannot be used; the message names the file, the entry and the fix."""
