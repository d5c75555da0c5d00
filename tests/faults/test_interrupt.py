"""SIGTERM (a cluster preempting the job) and Ctrl-C: the current step finishes, a complete checkpoint is
saved, the command that resumes is printed, the exit status is 128 + the signal; the printed command
resumes to the same losses as an uninterrupted run: Ctrl-C and SIGTERM to one process, SIGTERM under
torchrun with 2 CPU processes. A second Ctrl-C exits at once. A streamed run killed with SIGKILL resumes at its
checkpoint's place in the stream."""

import shlex
import subprocess
import sys

import pytest

from conftest import REPO, free_port
from fault_runs import eval_loss, step_losses, train
from recipe.common.run_dir import checkpoint_is_complete


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """2 epochs of 7 steps, 2 rows per step, never stopped."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = train(out, "--per_device_train_batch_size", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def run_printed_command(stderr: str) -> subprocess.CompletedProcess:
    """Run the resume command the stopped run printed, as a user would copy it."""
    command = shlex.split(stderr.split("Resume with: ")[1].splitlines()[0])
    if command[0] == "python":
        command[0] = sys.executable
    else:  # torchrun or accelerate launch: the same launcher, on a free port
        port = command.index("--master_port" if command[0] == "torchrun" else "--main_process_port")
        command[port + 1] = str(free_port())
        command[:1] = [sys.executable, "-m", "torch.distributed.run"] if command[0] == "torchrun" else \
            [sys.executable, "-m", "accelerate.commands.launch"]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ctrl_c_saves_a_checkpoint_and_the_printed_command_resumes_to_the_same_loss(tmp_path, uninterrupted):
    out = tmp_path / "run"
    stopped = train(out, "--per_device_train_batch_size", "2", fault="signal:SIGINT:5")
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "SIGINT received: finishing this step, then saving a checkpoint" in stopped.stderr
    assert f"training stopped by SIGINT after step 5; checkpoint saved: {out / 'checkpoint-5'}" in stopped.stderr
    assert f"Resume with: python scripts/train.py --config {out / 'run_config.yaml'}" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert checkpoint_is_complete(out / "checkpoint-5")  # mid-epoch: per-epoch saves would have lost 5 steps
    assert not (out / "train_results.json").exists() and not (out / "model.safetensors").exists()

    resumed = run_printed_command(stopped.stderr)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"(resuming from {out / 'checkpoint-5'})" in resumed.stderr
    assert step_losses(out) == pytest.approx(step_losses(uninterrupted), rel=1e-5)
    assert eval_loss(out) == pytest.approx(eval_loss(uninterrupted), rel=1e-5)


def test_sigterm_to_a_single_process_saves_a_checkpoint_and_resumes_to_the_same_loss(tmp_path, uninterrupted):
    """A cluster preempting `python scripts/train.py` (no launcher) sends SIGTERM to the process itself."""
    out = tmp_path / "run"
    stopped = train(out, "--per_device_train_batch_size", "2", fault="signal:SIGTERM:4")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "SIGTERM received: finishing this step, then saving a checkpoint" in stopped.stderr
    assert f"training stopped by SIGTERM after step 4; checkpoint saved: {out / 'checkpoint-4'}" in stopped.stderr
    assert f"Resume with: python scripts/train.py --config {out / 'run_config.yaml'}" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert checkpoint_is_complete(out / "checkpoint-4") and not (out / "train_results.json").exists()

    resumed = run_printed_command(stopped.stderr)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"(resuming from {out / 'checkpoint-4'})" in resumed.stderr
    assert step_losses(out) == pytest.approx(step_losses(uninterrupted), rel=1e-5)
    assert eval_loss(out) == pytest.approx(eval_loss(uninterrupted), rel=1e-5)


def test_sigterm_under_torchrun_stops_every_process_and_resumes_to_the_same_loss(tmp_path, uninterrupted):
    out = tmp_path / "run"
    # 2 processes x 1 row = the uninterrupted run's 2 rows per step; torchrun passes SIGTERM to both workers.
    stopped = train(out, "--per_device_train_batch_size", "1", fault="signal:SIGTERM:9", processes=2)
    assert stopped.returncode != 0
    assert stopped.stderr.count("training stopped by SIGTERM after step 9") == 1, stopped.stderr[-3000:]
    # The launcher as it was typed (fault_runs passes a port), then the train script on the run's config
    assert "Resume with: torchrun --nproc_per_node 2 --master_port " in stopped.stderr
    assert f" scripts/train.py --config {out / 'run_config.yaml'}" in stopped.stderr
    assert "SIGKILL" not in stopped.stderr  # both workers stopped by themselves, within torchrun's grace period
    checkpoint = out / "checkpoint-9"
    assert checkpoint_is_complete(checkpoint)
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    assert not (out / "train_results.json").exists()

    resumed = run_printed_command(stopped.stderr)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"(resuming from {checkpoint})" in resumed.stderr
    assert step_losses(out) == pytest.approx(step_losses(uninterrupted), rel=1e-4)
    assert eval_loss(out) == pytest.approx(eval_loss(uninterrupted), rel=1e-4)


def test_a_second_ctrl_c_exits_at_once_without_saving(tmp_path):
    out = tmp_path / "run"
    stopped = train(out, "--per_device_train_batch_size", "2", fault="signal:SIGINT:3:2")
    assert stopped.returncode == 130
    assert "second Ctrl-C: exiting now, without saving" in stopped.stderr
    assert "training stopped by" not in stopped.stderr and not list(out.glob("checkpoint-*"))


def streaming_train(out, *extra, fault=None):
    return train(out, "--per_device_train_batch_size", "2", "--streaming", "true", "--max_steps", "12",
                  "--save_strategy", "steps", "--save_steps", "4", "--eval_strategy", "steps", "--eval_steps", "4",
                  *extra, fault=fault)


def test_killed_and_resumed_streaming_trains_the_same_steps_as_an_uninterrupted_run(tmp_path):
    """kill -9 as step 11 begins (the last checkpoint at step 8, after the stream's first pass of about 7 steps): the
    resumed run regenerates the stream, skips the rows the checkpoint had trained, and every step has the
    uninterrupted run's loss: no row trained twice or skipped."""
    from test_data_streaming import streaming_split_files

    train_file, validation = streaming_split_files(tmp_path)
    data = ("--data_path", train_file, "--validation_path", validation)
    whole = streaming_train(tmp_path / "whole", *data)
    assert whole.returncode == 0, whole.stderr[-3000:]
    out = tmp_path / "stopped"
    killed = streaming_train(out, *data, fault="kill:11:0")
    assert killed.returncode != 0 and (out / "checkpoint-8").is_dir() and not (out / "checkpoint-12").exists()
    resumed = subprocess.run([sys.executable, "scripts/train.py", "--config", str(out / "run_config.yaml")],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(resuming from" in resumed.stderr
    assert step_losses(out) == pytest.approx(step_losses(tmp_path / "whole"), rel=1e-5)
