"""What the scale-out tests share: launching scripts/train.py as users do (alone, or under `accelerate launch` with a
shipped config on 2 CPU processes), and the checks that a sharded run trained, saved and planned as one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SMOLLM2, free_port

INJECT = REPO / "tests" / "faults" / "inject.py"
# Losses and weights of 2 processes against 1: the same sums in another order (float32 rounding), through AdamW.
LOSS_TOLERANCE = 1e-5
# Absolute, on weights of ~0.01-1: attention's key bias gets only rounding noise as its gradient (softmax ignores
# it), which AdamW scales to steps of its own; measured up to 1.0e-5 after 14 steps at lr 5e-3.
WEIGHT_TOLERANCE = 1e-4


def deepspeed_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("deepspeed") is not None


needs_deepspeed = pytest.mark.skipif(not deepspeed_installed(), reason="DeepSpeed is not installed: pip install -e "
                                     "'.[deepspeed]' (the dev extra includes it)")


def train_args(output_dir: Path, model: Path, *extra: str) -> list[str]:
    """The smoke recipe (or the --config in `extra`) on 80 dialogues of a saved model: 7 steps per epoch at 2 rows
    per step, 2 epochs."""
    recipe = [] if "--config" in extra else ["--config", "recipe/configs/smoke.yaml"]
    return [
        *recipe, "--model_name_or_path", str(model), "--random_init", "false",
        "--output_dir", str(output_dir), "--max_dialogues", "80", "--num_train_epochs", "2", "--bf16", "false",
        "--logging_steps", "1", "--save_total_limit", "5", "--dataset_cache_dir", str(output_dir.parent / "cache"),
        "--disable_tqdm", "true", "--report_to", "none", *extra,
    ]


def launch(config: str | None, output_dir: Path, model: Path, *extra: str, fault: str | None = None,
           launcher: list[str] = (), timeout: int = 600) -> subprocess.CompletedProcess:
    """scripts/train.py (or inject.py with FAULT) alone with 2 rows per step, or under `accelerate launch
    --config_file accelerate_configs/CONFIG.yaml` on 2 processes of 1 row each."""
    script = str(INJECT) if fault else "scripts/train.py"
    env = {key: value for key, value in os.environ.items() if key != "FAULT"}
    if fault:
        env["FAULT"] = fault
    if config is None:
        command = [sys.executable, script, *train_args(output_dir, model, "--per_device_train_batch_size", "2", *extra)]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   f"accelerate_configs/{config}.yaml", "--num_processes", "2", "--main_process_port",
                   str(free_port()), *launcher, script,
                   *train_args(output_dir, model, "--per_device_train_batch_size", "1", *extra)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def step_losses(run_dir: Path) -> list[float]:
    state = json.loads((run_dir / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def results(run_dir: Path, name: str = "train_results.json") -> dict:
    return json.loads((run_dir / name).read_text())


def assert_trained_alike(sharded: Path, single: Path, tolerance: float = LOSS_TOLERANCE) -> None:
    assert step_losses(sharded) == pytest.approx(step_losses(single), rel=tolerance)
    assert results(sharded, "eval_results.json")["eval_token_loss"] == pytest.approx(
        results(single, "eval_results.json")["eval_token_loss"], rel=tolerance)


def assert_memory_planned(run_dir: Path) -> None:
    """Each process's tensor peak within 25% of the per-process plan."""
    record = results(run_dir)
    peaks = record["peak_tensor_memory_mb_per_process"]
    assert len(peaks) == 2
    for peak in peaks:
        assert abs(record["memory_plan_mb"] / peak - 1) <= 0.25, record


def stock_weights(folder: Path, lora: bool) -> dict:
    """The final model as stock transformers / PEFT load it."""
    if lora:
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(folder).merge_and_unload()
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder)
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def assert_same_final_model(sharded: Path, single: Path, lora: bool) -> None:
    import torch

    expected = stock_weights(single, lora)
    loaded = stock_weights(sharded, lora)
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.allclose(loaded[name], tensor, atol=WEIGHT_TOLERANCE), name


def evaluated_perplexity(model_path: Path) -> float:
    """scripts/evaluate.py's perplexity of a run's final model (stock from_pretrained loading underneath)."""
    from recipe.config import EvaluationArguments, GenerationArguments
    from recipe.evaluation.run import evaluate_model

    return evaluate_model(EvaluationArguments(model_path=str(model_path), num_samples=0, wandb="off"),
                          GenerationArguments())["perplexity"]["perplexity"]


def saved_model(family: str, root: Path) -> Path:
    """A folder with the family's tiny config, tokenizer and random weights, saved: a pretrained model to load (ZeRO-3
    builds a random_init model partitioned, which draws other numbers)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from families import FAMILY_BY_NAME, build_family_dir

    folder = build_family_dir(FAMILY_BY_NAME[family], root)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder)).save_pretrained(folder)
    return folder


class Runs:
    """Runs made once per test module and shared by its tests: `runs.get(config, family, *extra)`."""

    def __init__(self, root: Path):
        self.root = root
        self.models: dict[str, Path] = {}
        self.done: dict[tuple, Path] = {}

    def model(self, family: str) -> Path:
        if family not in self.models:
            self.models[family] = saved_model(family, self.root / "models")
        return self.models[family]

    def get(self, config: str | None, family: str, *extra: str) -> Path:
        key = (config, family, *extra)
        if key not in self.done:
            out = self.root / f"run{len(self.done)}-{config or 'single'}-{family}"
            result = launch(config, out, self.model(family), *extra)
            assert result.returncode == 0, result.stderr[-3000:]
            (out / "launch.stderr").write_text(result.stderr)
            (out / "launch.stdout").write_text(result.stdout)  # DeepSpeed logs here
            self.done[key] = out
        return self.done[key]


LORA = ("--use_lora", "true", "--lora_r", "8", "--lora_dropout", "0")
needs_smollm2 = pytest.mark.skipif(not (SMOLLM2 / "config.json").is_file(),
                                   reason=f"SmolLM2-135M-Instruct is not at {SMOLLM2} (set DIALOGUE_FINETUNE_SMOLLM2, "
                                          "or run python scripts/get_base_model.py)")
