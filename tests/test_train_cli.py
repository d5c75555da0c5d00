"""scripts/train.py as users launch it: python, torchrun with 2 CPU processes, offline failures."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import REPO, assert_no_library_warnings, free_port


def run(args, env=None, timeout=600):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env)


def smoke(output_dir, *extra):
    return [
        "scripts/train.py", "--config", "recipe/configs/smoke.yaml", "--output_dir", str(output_dir),
        "--max_dialogues", "80", "--num_train_epochs", "2", "--bf16", "false", "--logging_steps", "1",
        "--dataset_cache_dir", str(output_dir.parent / "cache"), "--disable_tqdm", "true", *extra,
    ]


def step_losses(run_dir):
    state = json.loads((run_dir / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def test_smoke_run_and_its_run_config_reproduce_each_other(tmp_path):
    first = run([sys.executable, *smoke(tmp_path / "first")])
    assert first.returncode == 0, first.stderr[-3000:]
    assert "run summary" in first.stderr and "parameters: 263,936 total" in first.stderr
    # No library warning a user cannot act on (the best checkpoint's tied LM head reloads without "missing keys"):
    # only the recipe's own WARNING lines may speak of one (docs/reliability.md#warnings).
    assert_no_library_warnings(first.stderr, first.stdout)
    assert "eval: loss" in first.stderr and f"model: {tmp_path / 'first'}" in first.stderr
    again = run([sys.executable, "scripts/train.py", "--config", str(tmp_path / "first" / "run_config.yaml"),
                 "--output_dir", str(tmp_path / "again")])
    assert again.returncode == 0, again.stderr[-3000:]
    assert step_losses(tmp_path / "again") == step_losses(tmp_path / "first")


def test_two_cpu_processes_match_one_process_at_the_same_global_batch(tmp_path):
    single = run([sys.executable, *smoke(tmp_path / "single", "--per_device_train_batch_size", "2")])
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         *smoke(tmp_path / "ddp", "--per_device_train_batch_size", "1",
                "--dataset_cache_dir", str(tmp_path / "ddp-cache"),
                "--log_level", "info", "--log_level_replica", "info")],
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    # The data is prepared once, by the main process (one tokenization progress bar); the other loads what it wrote.
    assert len(re.findall(r"Tokenizing train dialogues:\s+0%", ddp.stderr)) == 1, ddp.stderr[-3000:]
    assert ddp.stderr.count("data preparation loaded from the cache") == 1, ddp.stderr[-3000:]
    assert "x 2 processes = 2 rows per step" in ddp.stderr
    assert ddp.stderr.count("run summary") == 1  # summaries and files come from the main process only
    assert sorted(p.name for p in (tmp_path / "ddp").glob("checkpoint-*")) == ["checkpoint-14", "checkpoint-7"]
    assert step_losses(tmp_path / "ddp") == pytest.approx(step_losses(tmp_path / "single"), rel=1e-4)
    ddp_eval = json.loads((tmp_path / "ddp" / "eval_results.json").read_text())
    single_eval = json.loads((tmp_path / "single" / "eval_results.json").read_text())
    assert ddp_eval["eval_num_tokens"] == single_eval["eval_num_tokens"]  # no sample counted twice
    assert ddp_eval["eval_token_loss"] == pytest.approx(single_eval["eval_token_loss"], rel=1e-4)
    # Replayed with its own launcher (torchrun, 2 processes), its first steps give the same losses to the last digit
    replay = run([sys.executable, "scripts/reproduce.py", str(tmp_path / "ddp"), "--steps", "2"])
    assert replay.returncode == 0, replay.stdout + replay.stderr[-3000:]
    assert "torch.distributed.run --nproc_per_node 2" in replay.stdout
    assert "losses: 2 logged in steps 1-2 (at 1, 2): all identical to the last digit" in replay.stdout


def test_default_recipe_fails_fast_offline_and_names_the_offline_recipe(tmp_path):
    start = time.monotonic()
    result = run([sys.executable, "scripts/train.py", "--output_dir", str(tmp_path / "o")],
                 env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"})
    elapsed = time.monotonic() - start
    assert result.returncode == 2
    assert elapsed < 30
    assert "cannot download the model 'distilgpt2'" in result.stderr  # its source is settled first, once
    assert "http://127.0.0.1:9 is not reachable" in result.stderr
    assert "recipe/configs/smoke.yaml" in result.stderr and "hf download distilgpt2" in result.stderr
    assert "python scripts/get_base_model.py" in result.stderr  # a real model without the Hub
    assert "Traceback" not in result.stderr


def test_help_lists_options_from_every_dataclass():
    result = run([sys.executable, "scripts/train.py", "--help"])
    assert result.returncode == 0
    for option in ("--model_name_or_path", "--train_on_speakers", "--use_lora", "--learning_rate", "--config",
                   "--overwrite_output_dir", "--early_stopping_patience"):
        assert option in result.stdout
