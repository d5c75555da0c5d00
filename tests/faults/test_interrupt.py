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


@pytest.fixture(scope="module")
def streamed_uninterrupted(tmp_path_factory):
    """12 steps of a stream of 60 dialogues (about 7 steps a pass), never stopped; its data files."""
    from test_data_streaming import streaming_split_files

    root = tmp_path_factory.mktemp("streamed")
    train_file, validation = streaming_split_files(root)
    data = ("--data_path", train_file, "--validation_path", validation)
    result = streaming_train(root / "whole", *data)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "whole", data


@pytest.mark.parametrize("fault, checkpoint", [("kill:11:0", 8), ("signal:SIGTERM:9", 9)])
def test_a_stopped_streaming_run_resumes_to_the_uninterrupted_runs_steps(tmp_path, streamed_uninterrupted, fault,
                                                                         checkpoint):
    """kill -9 as step 11 begins (the last checkpoint at step 8), or SIGTERM at step 9 (a checkpoint there), both
    after the stream's first pass of about 7 steps: the resumed run regenerates the stream, skips the rows the
    checkpoint had trained, and every step has the uninterrupted run's loss: no row trained twice or skipped."""
    whole, data = streamed_uninterrupted
    out = tmp_path / "stopped"
    stopped = streaming_train(out, *data, fault=fault)
    assert stopped.returncode != 0 and (out / f"checkpoint-{checkpoint}").is_dir()
    assert not (out / "checkpoint-12").exists()
    resumed = subprocess.run([sys.executable, "scripts/train.py", "--config", str(out / "run_config.yaml")],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"(resuming from {out / f'checkpoint-{checkpoint}'})" in resumed.stderr
    assert step_losses(out) == pytest.approx(step_losses(whole), rel=1e-5)
