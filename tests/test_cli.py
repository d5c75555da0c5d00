"""recipe/common/cli.py: what a script prints when it stops."""

import io
import sys

import pytest

from recipe.common.cli import user_errors
from recipe.common.errors import RunStopped
from recipe.config import ConfigError


class Writes(io.StringIO):
    """A stderr that keeps each write apart, as a pipe does with write-through."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def write(self, text):
        self.calls.append(text)
        return super().write(text)


@pytest.mark.parametrize(("error", "code", "line"), [
    (RunStopped("training stopped by SIGTERM after step 9. Resume with: torchrun x.py", 143), 143,
     "stopped: training stopped by SIGTERM after step 9. Resume with: torchrun x.py\n"),
    (ConfigError("lora_r is 0; use a positive rank"), 2, "error: lora_r is 0; use a positive rank\n"),
])
def test_the_message_and_its_newline_go_out_in_one_write(monkeypatch, error, code, line):
    """Another process writing to the same stderr (torchrun's workers) can never land inside the line."""
    stderr = Writes()
    monkeypatch.setattr(sys, "stderr", stderr)
    with pytest.raises(SystemExit) as exited, user_errors():
        raise error
    assert exited.value.code == code
    assert stderr.calls == [line]


def test_a_worker_that_is_not_the_main_process_prints_nothing(monkeypatch):
    stderr = Writes()
    monkeypatch.setattr(sys, "stderr", stderr)
    with pytest.raises(SystemExit), user_errors():
        raise RunStopped("stopped", 143, show=False)
    assert stderr.calls == []
