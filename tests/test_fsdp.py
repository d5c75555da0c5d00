"""FSDP 2 as users launch it: `accelerate launch --config_file accelerate_configs/fsdp.yaml` (or fsdp_qlora.yaml) on 2
CPU processes over gloo, against one process at the same global batch (2 processes x 1 row, 1 process x 2 rows).

Full fine-tuning and LoRA on GPT-2, Llama and SmolLM2 train the same losses, write sharded checkpoints and one whole
final model that stock transformers / PEFT load and evaluate to the same perplexity, and fit their per-process
memory plan; a run resumes after one process is killed or the launch is stopped; FSDP-QLoRA shards the 4-bit base.
"""

import shlex
import subprocess
import sys

import pytest

from conftest import REPO, SMOLLM2, assert_no_library_warnings, free_port
from scale_out import (
    LORA,
    Runs,
    assert_memory_planned,
    assert_same_final_model,
    assert_trained_alike,
    evaluated_perplexity,
    launch,
    needs_smollm2,
    results,
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return Runs(tmp_path_factory.mktemp("fsdp"))


@pytest.mark.parametrize("family,mode", [("gpt2", "full"), ("gpt2", "lora"), ("llama3", "full"), ("llama3", "lora")])
def test_fsdp_on_two_processes_trains_evaluates_and_saves_as_one_process(runs, family, mode):
    lora = LORA if mode == "lora" else ()
    single = runs.get(None, family, *lora)
    fsdp = runs.get("fsdp", family, *lora)
    stderr = (fsdp / "launch.stderr").read_text()

    assert "FSDP 2 over 2 processes" in stderr and stderr.count("run summary") == 1
    assert "chunked LM loss off" not in stderr  # the LM head stays gathered from forward to backward
    # None of the libraries' warnings: FSDP 2's "returned a view tensor" (GPT-2's last hidden state) was one
    assert_no_library_warnings(stderr, (fsdp / "launch.stdout").read_text())
    assert_trained_alike(fsdp, single)
    checkpoint = fsdp / "checkpoint-7"  # per epoch, one shard per process
    assert (checkpoint / "pytorch_model_fsdp_0" / ".metadata").is_file()
    assert len(list((checkpoint / "pytorch_model_fsdp_0").glob("*.distcp"))) == 2
    # Every process generated the replies during training (the weights are sharded); the main process wrote them
    assert (fsdp / "samples.jsonl").read_text() == (single / "samples.jsonl").read_text()
    assert_memory_planned(fsdp)
    assert_same_final_model(fsdp, single, lora=bool(lora))
    assert evaluated_perplexity(fsdp) == pytest.approx(results(single, "eval_results.json")["eval_perplexity"],
                                                       rel=1e-4)


def test_fsdp_resumes_after_one_process_is_killed(runs, tmp_path):
    """kill -9 of rank 1 in epoch 2: the launcher stops rank 0; the same command resumes from the epoch-1 checkpoint
    (its shards) and ends where an uninterrupted run ends."""
    out = tmp_path / "run"
    killed = launch("fsdp", out, runs.model("gpt2"), fault="kill:10:1")
    assert killed.returncode != 0
    assert not (out / "train_results.json").exists()
    resumed = launch("fsdp", out, runs.model("gpt2"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"(resuming from {out / 'checkpoint-7'})" in resumed.stderr
    assert_trained_alike(out, runs.get("fsdp", "gpt2"))


def test_fsdp_stopped_by_sigterm_saves_sharded_checkpoint_and_printed_command_resumes(runs, tmp_path):
    out = tmp_path / "run"
    stopped = launch("fsdp", out, runs.model("gpt2"), fault="signal:SIGTERM:9")
    assert stopped.returncode != 0
    assert stopped.stderr.count("training stopped by SIGTERM after step 9") == 1, stopped.stderr[-3000:]
    assert (out / "checkpoint-9" / "pytorch_model_fsdp_0" / ".metadata").is_file()
    # The same launcher (its config and process count) on the run's config: sharded checkpoints resume only so
    command = shlex.split(stopped.stderr.split("Resume with: ")[1].splitlines()[0])
    assert command[:4] == ["accelerate", "launch", "--config_file", "accelerate_configs/fsdp.yaml"]
    assert command[-3:] == ["scripts/train.py", "--config", str(out / "run_config.yaml")]
    command[command.index("--main_process_port") + 1] = str(free_port())
    command[:2] = [sys.executable, "-m", "accelerate.commands.launch"]
    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"(resuming from {out / 'checkpoint-9'})" in resumed.stderr
    assert_trained_alike(out, runs.get("fsdp", "gpt2"))


def test_fsdp_qlora_shards_the_4bit_base_and_trains_as_one_process(runs):
    qlora = (*LORA, "--load_in_4bit", "true")
    fsdp = runs.get("fsdp_qlora", "llama3", *qlora)
    assert "Params4bit" not in (fsdp / "launch.stderr").read_text()  # accelerate warns when it leaves them whole
    assert_trained_alike(fsdp, runs.get(None, "llama3", *qlora))
    assert (fsdp / "adapter_model.safetensors").is_file()


def test_an_8bit_base_under_fsdp_is_refused_before_loading(runs, tmp_path):
    out = tmp_path / "run"
    refused = launch("fsdp", out, runs.model("gpt2"), "--use_lora", "true", "--load_in_8bit", "true")
    assert refused.returncode != 0
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: --load_in_8bit does not train under FSDP 2: bitsandbytes' 8-bit weights do not survive "
                      "its wrapping; use --load_in_4bit true (accelerate_configs/fsdp_qlora.yaml shards it), or 8 "
                      "bits under DDP (accelerate_configs/multi_gpu.yaml)"]
    assert not out.exists()


@needs_smollm2
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_fsdp_on_smollm2_trains_as_one_process_and_saves_a_model_stock_loaders_read(tmp_path, mode):
    """The real base: 2 steps of one 128-token row per process, its own recipe (LoRA on every linear layer)."""
    recipe = ("--config", f"recipe/configs/smollm2-{mode}.yaml", "--max_steps", "2", "--max_dialogues", "24",
              "--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "no", "--load_best_model_at_end",
              "false", "--eval_samples", "0")
    single = launch(None, tmp_path / "single", SMOLLM2, *recipe)
    assert single.returncode == 0, single.stderr[-3000:]
    fsdp = launch("fsdp", tmp_path / "fsdp", SMOLLM2, *recipe)
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    assert "FSDP 2 over 2 processes" in fsdp.stderr and "chunked LM loss off" not in fsdp.stderr
    assert_trained_alike(tmp_path / "fsdp", tmp_path / "single", tolerance=1e-4)
    assert_memory_planned(tmp_path / "fsdp")
    assert evaluated_perplexity(tmp_path / "fsdp") == pytest.approx(
        results(tmp_path / "single", "eval_results.json")["eval_perplexity"], rel=1e-4)
