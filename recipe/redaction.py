"""Secrets never written down: the command line as recorded in run records, with tokens masked."""

from __future__ import annotations


def redact_command(argv: list[str]) -> list[str]:
    """The command line with secrets (--hub_token VALUE) masked: environment.json is pushed with the model."""
    redacted, hide_next = [], False
    for arg in argv:
        if hide_next:
            redacted.append("***")
            hide_next = False
        elif arg == "--hub_token":
            redacted.append(arg)
            hide_next = True
        elif arg.startswith("--hub_token="):
            redacted.append("--hub_token=***")
        else:
            redacted.append(arg)
    return redacted


