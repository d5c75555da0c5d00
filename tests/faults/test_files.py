"""Records are never half-written, and writing them never touches the process umask (Hub push and W&B
threads create files at the same time)."""

import os
import resource
import signal

import pytest

from recipe.common.files import atomic_write_text
from recipe.config import DataArguments, save_resolved_config


@pytest.fixture
def disk_full_after(monkeypatch):
    """Writes past `limit` bytes of a file fail with EFBIG, as on a full disk or an exhausted quota."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error, not a killed process

    def limit(size: int) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))

    yield limit
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, previous)


def test_run_config_is_never_half_written(tmp_path, disk_full_after):
    path = tmp_path / "run_config.yaml"
    path.write_text("learning_rate: 0.001\n")  # the previous, complete run_config
    disk_full_after(200)
    with pytest.raises(OSError):
        save_resolved_config(path, DataArguments(), header="# " + "x" * 300 + "\n")
    disk_full_after(resource.RLIM_INFINITY)
    assert path.read_text() == "learning_rate: 0.001\n"  # intact: the new one was never renamed over it
    assert [p.name for p in tmp_path.iterdir()] == ["run_config.yaml"]  # and no temporary file is left


def test_atomic_writes_leave_the_umask_alone(tmp_path, monkeypatch):
    umask = os.umask(0o022)
    os.umask(umask)

    def forbidden(mask):
        raise AssertionError("the umask was changed while other threads may be creating files")

    monkeypatch.setattr(os, "umask", forbidden)
    path = atomic_write_text(tmp_path / "record.json", "{}\n")
    assert path.read_text() == "{}\n"
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # the mode any new file gets
