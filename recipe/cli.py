"""What the scripts share: user errors printed as one clear message instead of a traceback."""

from __future__ import annotations

import contextlib
import logging
import sys

from .config import ConfigError
from .data import DialogueDataError
from .hub import HubUnavailableError
from .safeguards import RunStopped

USER_ERRORS = (ConfigError, DialogueDataError, HubUnavailableError)


@contextlib.contextmanager
def user_errors():
    """Exit with status 2 and the message alone when the input, not the code, is wrong; a run stopped
    by a signal or a diverged loss exits with its own status and message; Ctrl-C outside training
    exits with 130, without a traceback."""
    try:
        yield
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except RunStopped as stopped:
        if stopped.show:
            print(f"stopped: {stopped}", file=sys.stderr)
        sys.exit(stopped.exit_code)
    except KeyboardInterrupt:
        print("\ninterrupted (Ctrl-C)", file=sys.stderr)
        sys.exit(130)


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=level)
