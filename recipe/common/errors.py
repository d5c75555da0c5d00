"""The two kinds of error a script reports as one message instead of a traceback (`recipe.common.cli.user_errors`)."""

from __future__ import annotations


class UserError(ValueError):
    """Input that cannot work: an option, a data file, a run directory. The message names it and the fix. Each
    stage raises its own kind (`ConfigError`, `DialogueDataError`, `RunDirError`, ...), all of them this one."""


class RunStopped(Exception):
    """Training stopped before its end; nothing final was written. `exit_code` is what the script exits
    with; the message (shown by the main process only) says why and how to go on."""

    def __init__(self, message: str, exit_code: int, show: bool = True):
        super().__init__(message)
        self.exit_code = exit_code
        self.show = show
