"""The error every option check raises, and the helper that reports all problems at once."""

from __future__ import annotations

from ..common.errors import UserError


class ConfigError(UserError):
    """A recipe or command line that cannot run; the message names the option and the fix."""


def raise_all(errors: list[str]) -> None:
    """One problem in one line; several listed at once, one a line (fixing them one run at a time wastes runs)."""
    if len(errors) == 1:
        raise ConfigError(errors[0])
    if errors:
        raise ConfigError(f"{len(errors)} problems with the options:\n  - " + "\n  - ".join(errors))
