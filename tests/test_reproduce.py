"""A run carries its install as a lock, and scripts/reproduce.py re-checks it: the same run reproduces to the last
digit; a changed data file, option or package version is named."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SAMPLE_DATA
from recipe.common.packages import installed_packages, read_pins
from recipe.training.summary import final_train_loss


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A smoke run of 4 steps (fewer than logging_steps) on its own copy of the data."""
    root = tmp_path_factory.mktemp("reproduce")
    data = root / "dialogues.json"
    shutil.copy(SAMPLE_DATA, data)
    done = subprocess.run(
        [sys.executable, "scripts/train.py", "--config", "recipe/configs/smoke.yaml", "--output_dir", str(root / "run"),
         "--data_path", str(data), "--max_dialogues", "80", "--num_train_epochs", "2", "--dataset_cache_dir",
         str(root / "cache"), "--disable_tqdm", "true"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "run", data, done.stderr


def reproduce(run_dir, *args):
    return subprocess.run([sys.executable, "scripts/reproduce.py", str(run_dir), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def copy_of(run_dir, tmp_path):
    return shutil.copytree(run_dir, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoint-*", "*.safetensors"))


def test_a_run_reproduces_to_the_last_digit(run):
    run_dir, _, _ = run
    done = reproduce(run_dir)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "losses: 2 logged in steps 1-4 (at 1, 4): all identical to the last digit" in done.stdout
    assert "options: the replay used the run's" in done.stdout
    assert "package " not in done.stdout and done.stdout.rstrip().endswith("reproduced")
    replay_dir = next(line.split("--output_dir ")[1].split()[0] for line in done.stdout.splitlines()
                      if line.startswith("replaying"))
    assert not Path(replay_dir).parent.exists()  # removed once reproduced


def test_a_changed_data_file_is_named(run):
    run_dir, data, _ = run
    original = data.read_bytes()
    try:
        data.write_bytes(original.replace(b"Alex", b"Alexa"))
        done = reproduce(run_dir)
    finally:
        data.write_bytes(original)
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    assert f"data_path {data}: SHA-256 " in done.stdout
    reason = done.stderr.strip().splitlines()[-1]
    assert reason.startswith("not reproduced: the loss at step ") and re.search(r"what differs: (\S+, )*data_path\b",
                                                                                  reason)


def test_a_changed_option_is_named(run, tmp_path):
    run_dir = copy_of(run[0], tmp_path)
    config = yaml.safe_load((run_dir / "run_config.yaml").read_text())
    config["learning_rate"] *= 2
    (run_dir / "run_config.yaml").write_text(yaml.safe_dump(config))
    done = reproduce(run_dir)
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    assert "option learning_rate: " in done.stdout
    assert re.search(r"what differs: (\S+, )*learning_rate\b", done.stderr.strip().splitlines()[-1])


def test_a_changed_package_version_is_named(run, tmp_path):
    run_dir = copy_of(run[0], tmp_path)
    lock = run_dir / "requirements.lock.txt"
    installed = installed_packages()["transformers"]
    lock.write_text(lock.read_text().replace(f"transformers=={installed}", "transformers==5.0.0"))
    done = reproduce(run_dir, "--steps", "0")
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    assert f"package transformers: 5.0.0 recorded (requirements.lock.txt), {installed} installed" in done.stdout
    reason = done.stderr.strip().splitlines()[-1]
    assert re.search(r"^not reproduced: \d+ differences from the records: (\S+, )*transformers\b", reason)


def test_the_run_lock_pins_every_installed_package_and_pip_installs_it_back(run):
    run_dir, _, _ = run
    lock = run_dir / "requirements.lock.txt"
    assert read_pins(lock) == installed_packages()
    assert "pip install -r requirements.lock.txt && pip install --no-deps -e ." in lock.read_text()
    # pip reads it as it is and finds every pin already installed: nothing to fetch (offline, --no-index)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "-r", str(lock)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Would install" not in done.stdout
    card = (run_dir / "README.md").read_text()
    assert f"`pip install -r {run_dir}/requirements.lock.txt && pip install --no-deps -e .`" in card
    assert f"`python scripts/reproduce.py {run_dir}`" in card


def test_the_final_train_loss_covers_the_steps_after_the_last_logging_window(run):
    """4 steps, logging every 10: step 1 is logged (logging_first_step) and the last step too; the final loss is the
    mean over all 4 steps, not step 1's."""
    run_dir, _, stderr = run
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    logged = [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]
    assert [step for step, _ in logged] == [1, 4]
    results = json.loads((run_dir / "train_results.json").read_text())
    assert results["final_train_loss"] == pytest.approx((logged[0][1] + 3 * logged[1][1]) / 4)
    assert results["final_train_loss_steps"] == [1, 4]
    assert f"final train loss: {results['final_train_loss']:.4f} (mean over steps 1-4)" in stderr


@pytest.mark.parametrize(("logged", "window", "expected"), [
    ([(1, 4.0), (10, 3.0), (20, 2.0)], 10, (2.0, 11, 20)),  # the last window alone covers logging_steps
    ([(1, 4.0), (10, 3.0), (20, 2.0), (27, 1.0)], 10, ((2.0 * 10 + 1.0 * 7) / 17, 11, 27)),  # a short last window
    ([(1, 4.0), (3, 2.0)], 10, ((4.0 + 2.0 * 2) / 3, 1, 3)),  # fewer steps than a window: all of them
])
def test_final_train_loss_weights_the_windows_by_their_steps(logged, window, expected):
    history = [{"step": step, "loss": loss} for step, loss in logged] + [{"step": logged[-1][0], "eval_loss": 9.0}]
    loss, first, last = final_train_loss(history, window)
    assert (loss, first, last) == (pytest.approx(expected[0]), expected[1], expected[2])
