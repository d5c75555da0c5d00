"""What the scripts share: user errors printed as one clear message instead of a traceback."""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from .errors import RunStopped, UserError
from .hub import HubUnavailableError
from .library_messages import quiet_libraries

USER_ERRORS = (UserError, HubUnavailableError)  # HubUnavailableError is an OSError, as huggingface_hub's own are


@contextlib.contextmanager
def user_errors():
    """Exit with status 2 and the message alone when the input, not the code, is wrong; a run stopped
    by a signal or a diverged loss exits with its own status and message; Ctrl-C outside training
    exits with 130, without a traceback."""
    try:
        yield
    except USER_ERRORS as error:
        if is_first_process():  # every process of a launch refuses the same options: one message, not one each
            say(f"error: {error}")
        sys.exit(2)
    except RunStopped as stopped:
        if stopped.show:
            say(f"stopped: {stopped}")
        sys.exit(stopped.exit_code)
    except KeyboardInterrupt:
        say("\ninterrupted (Ctrl-C)")
        sys.exit(130)


def is_first_process() -> bool:
    """Rank 0 of a torchrun / accelerate launch, or a process started alone."""
    return os.environ.get("RANK", "0") == "0"


def say(message: str) -> None:
    """One line on stderr in one write. print() writes the text and its newline apart, and a piped stderr
    passes each write on at once: under torchrun another process's log line landed between them, inside
    the resume command a user copies."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def setup_logging(level: int = logging.INFO) -> None:
    """The scripts' log format; and what the libraries say that no user can act on, dropped before they are imported
    (recipe/common/library_messages.py)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=level)
    quiet_libraries()
