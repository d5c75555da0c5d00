"""The error every option check raises, and the helper that reports all problems at once."""

from __future__ import annotations

from ..common.errors import UserError


class ConfigError(UserError):
    """A recipe or command line that cannot run; the message names the option and the fix."""


def raise_all(errors: list[str]) -> None:
    if errors:
        raise ConfigError("invalid recipe options:\n  - " + "\n  - ".join(errors))
