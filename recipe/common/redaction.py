"""Secrets never written down: not in run records, pickles, W&B metadata or logs.

A Hub token reaches a run by flag (`--hub_token`) or environment (`HF_TOKEN`), a W&B key by
environment (`WANDB_API_KEY`). The environment is never recorded. The flag is the risk: it lives in
`sys.argv` (which W&B stores as the run's command line) and in the training arguments (which the
Trainer pickles into `training_args.bin` in the output directory and in every checkpoint, files that
Hub pushes upload). `redact_argv` masks the first; `SecretsStayInMemory` keeps the second out of
every pickle, while the object in memory still hands the token to the Hub client.
"""

from __future__ import annotations

import copy
import sys

SECRET_ARGUMENTS = ("hub_token",)
MASK = "***"


def redact_command(argv: list[str]) -> list[str]:
    """The command line with secrets (--hub_token VALUE) masked: environment.json is pushed with the model."""
    redacted, hide_next = [], False
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if hide_next:
            redacted.append(MASK)
            hide_next = False
        elif flag.startswith("--") and flag[2:].replace("-", "_") in SECRET_ARGUMENTS:  # --hub_token, --hub-token
            if "=" in arg:
                redacted.append(f"{flag}={MASK}")
            else:
                redacted.append(arg)
                hide_next = True
        else:
            redacted.append(arg)
    return redacted


def redact_argv() -> None:
    """Mask secrets in this process's `sys.argv`, once the options are parsed: W&B records `sys.argv` as
    the run's command line (in its metadata, online and in the offline run file)."""
    sys.argv[:] = redact_command(sys.argv)


class SecretsStayInMemory:
    """Mixin for `TrainingArguments`: a pickled copy (the Trainer's `torch.save(args)` into
    `training_args.bin`) holds None for the secret fields. Copies made in memory keep them, and
    `to_dict`, `repr` and the W&B config already mask them (transformers writes `<HUB_TOKEN>`)."""

    def __getstate__(self):
        state = dict(self.__dict__)
        for name in SECRET_ARGUMENTS:
            if name in state:
                state[name] = None
        return state

    def __copy__(self):
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __deepcopy__(self, memo):
        new = object.__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new
