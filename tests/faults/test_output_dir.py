"""The output directory: decided once for every process (no race with overwrite_output_dir), one run at a
time (a lock that a dead run does not leave stuck), writable, and with room for what the run writes."""

import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch.multiprocessing

import recipe.training.output_dir
from conftest import REPO, free_port
from fault_runs import smoke_args, train
from recipe.common.run_dir import RunDir
from recipe.config import DataArguments, DialogueTrainingArguments, LoraArguments, ModelArguments, RecipeParser
from recipe.training.output_dir import OutputDirError, RunLock, estimated_bytes, prepare_output_dir


class OneProcess:
    is_main_process, num_processes = True, 1


def finished_run(path: Path) -> Path:
    """A directory as a finished run of this recipe leaves it (what prepare_output_dir looks at)."""
    (path / "checkpoint-7").mkdir(parents=True)
    for name in ("run_config.yaml", "train_results.json", "model.safetensors", "checkpoint-7/trainer_state.json"):
        (path / name).write_text("{}")
    return path


# --- overwrite_output_dir under several processes ------------------------------------------------


def decide_as_rank(rank: int, port: int, output_dir: str, results) -> None:
    """One of two gloo processes deciding about a finished run with overwrite_output_dir. The fault: the
    main process deletes slowly, run_config.yaml first, while the other process looks at the directory."""
    import time

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    from accelerate import PartialState

    state = PartialState(cpu=True)
    real_rmtree = shutil.rmtree

    def slow_rmtree(path, *args, **kwargs):
        (Path(output_dir) / "run_config.yaml").unlink(missing_ok=True)
        time.sleep(1.5)
        real_rmtree(path, *args, **kwargs)

    recipe.training.output_dir.shutil.rmtree = slow_rmtree
    if rank == 1:
        time.sleep(0.5)  # looks while the main process is deleting
    args = DialogueTrainingArguments(output_dir=output_dir, overwrite_output_dir=True, bf16=False)
    try:
        results[rank] = ("resume", prepare_output_dir(RunDir(output_dir), args, state))
    except OutputDirError as error:
        results[rank] = ("error", str(error))


def test_overwrite_is_decided_by_the_main_process_and_shared(tmp_path):
    run = finished_run(tmp_path / "run")
    results = torch.multiprocessing.Manager().dict()
    torch.multiprocessing.spawn(decide_as_rank, args=(free_port(), str(run), results), nprocs=2)
    assert dict(results) == {0: ("resume", None), 1: ("resume", None)}  # both start fresh; none refused
    assert sorted(p.name for p in run.iterdir()) == [".run.holder", ".run.lock"]


# --- one run at a time -------------------------------------------------------------------------------

HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from recipe.training.output_dir import RunLock
    from recipe.common.run_dir import RunDir
    RunLock.acquire(RunDir(sys.argv[1]))
    print("locked", flush=True)
    time.sleep(120)
""")


def test_a_second_run_on_the_same_output_dir_refuses_and_a_dead_run_leaves_no_lock(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    # The first run: anything holding the lock the way a run does (a training run, stopped in its middle).
    first = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert first.stdout.readline().strip() == "locked"
        second = train(out)
        assert second.returncode == 2, second.stderr[-3000:]
        assert (f"error: output_dir {out} is in use by another training run (pid {first.pid} on "
                f"{socket.gethostname()}, since ") in second.stderr
        assert not (out / "run_config.yaml").exists()  # it wrote nothing
    finally:
        first.kill()  # SIGKILL: the first run dies without cleaning up
        first.wait()
    args = DialogueTrainingArguments(output_dir=str(out), bf16=False)
    assert prepare_output_dir(RunDir(out), args, OneProcess()) is None  # the kernel dropped the dead run's lock
    RunLock.release(RunDir(out))


NO_FCNTL = textwrap.dedent("""
    import sys
    sys.modules["fcntl"] = None  # as on Windows: `import fcntl` fails
    import recipe.training  # every script imports it
    from recipe.training.output_dir import OutputDirError, RunLock
    from recipe.common.run_dir import RunDir
    try:
        RunLock.acquire(RunDir(sys.argv[1]))
    except OutputDirError as error:
        print(error)
""")


def test_without_fcntl_the_recipe_imports_and_a_lockless_filesystem_is_refused(tmp_path):
    """Windows has no fcntl: importing the recipe must not need it. Here flock is then missing too, so the
    lock cannot be an OS lock: the run is refused instead of getting a lock that a killed run would leave."""
    result = subprocess.run([sys.executable, "-c", NO_FCNTL, str(tmp_path / "run")], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"output_dir {tmp_path / 'run'}: its filesystem does not support file locks" in result.stdout
    assert "choose an --output_dir on a local disk" in result.stdout
    assert not (tmp_path / "run" / ".run.holder").exists()


# --- writable, with room -------------------------------------------------------------------------


def test_an_unwritable_output_dir_is_reported_before_anything_runs(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    args = DialogueTrainingArguments(output_dir=str(blocker / "run"), bf16=False)
    with pytest.raises(OutputDirError, match=rf"output_dir {blocker / 'run'} cannot be written \(Not a directory"):
        prepare_output_dir(RunDir(blocker / "run"), args, OneProcess())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_dir_is_reported(tmp_path):
    out = tmp_path / "run"
    out.mkdir(mode=0o555)
    with pytest.raises(OutputDirError, match=r"cannot be written \(Permission denied"):
        prepare_output_dir(RunDir(out), DialogueTrainingArguments(output_dir=str(out), bf16=False), OneProcess())


def parse(tmp_path, *extra):
    parser = RecipeParser((ModelArguments, DataArguments, LoraArguments, DialogueTrainingArguments))
    *configs, _ = parser.parse_args_and_config(smoke_args(tmp_path / "run", *extra))
    return configs


def test_too_little_free_space_is_reported_before_the_first_step(tmp_path, monkeypatch):
    from recipe.training.run import run_training

    monkeypatch.chdir(REPO)
    free = shutil.disk_usage(tmp_path)._replace(free=3 * 2**20)  # 3 MB: the disk is nearly full
    monkeypatch.setattr(recipe.training.output_dir.shutil, "disk_usage", lambda path: free)
    with pytest.raises(OutputDirError, match=r"not enough disk space for output_dir .*: 3\.0 MB free, the run needs "
                                             r"about .* MB \(2 checkpoints of .* lower --save_total_limit"):
        run_training(*parse(tmp_path))
    assert not list((tmp_path / "run").glob("checkpoint-*"))


def test_the_space_estimate_covers_what_a_run_writes(tmp_path, monkeypatch):
    from recipe.training.run import run_training

    monkeypatch.chdir(REPO)
    configs = parse(tmp_path, "--num_train_epochs", "1")
    result = run_training(*configs)

    def size(path: Path) -> int:
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

    checkpoint = size(result.output_dir / "checkpoint-7")
    final = size(result.output_dir) - checkpoint
    from recipe.models.loading import get_model, get_tokenizer

    model = get_model(configs[0], get_tokenizer(configs[0]))
    need = estimated_bytes(RunDir(result.output_dir), model, configs[3], configs[2], total_steps=7, resume=None)
    assert need["checkpoints"] == 1
    assert checkpoint <= need["checkpoint"] <= checkpoint + 2 * recipe.training.output_dir.CHECKPOINT_OVERHEAD
    assert final <= need["final"]
