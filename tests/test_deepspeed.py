"""DeepSpeed ZeRO-2 / ZeRO-3 as users launch it (`accelerate launch --config_file
accelerate_configs/deepspeed_zero{2,3}.yaml`, 2 CPU processes: DeepSpeed's CPU backend over gloo), and two "machines"
on localhost: the same losses as one process at the same global batch, DeepSpeed's sharded checkpoints, and a
ZeRO-3 final model saved whole; embeddings larger than the tokenizer kept as they are under ZeRO-3."""

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import REPO, assert_no_library_warnings, free_port
from scale_out import (
    LORA,
    Runs,
    assert_memory_planned,
    assert_same_final_model,
    assert_trained_alike,
    needs_deepspeed,
    train_args,
)

# 24 dialogues pack into 5 rows: 2 steps of 2 rows, seconds (a third step, of 1 row, would not split over 2 processes
# as over one); what is tested is how the model loads.
SHORT = ("--max_dialogues", "24", "--max_steps", "2")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return Runs(tmp_path_factory.mktemp("deepspeed"))


@needs_deepspeed
@pytest.mark.parametrize("stage,family,mode", [("zero2", "gpt2", "full"), ("zero3", "gpt2", "full"),
                                               ("zero3", "llama3", "lora")])
def test_deepspeed_on_two_processes_trains_as_one_process(runs, stage, family, mode):
    lora = LORA if mode == "lora" else ()
    single = runs.get(None, family, *lora)
    sharded = runs.get(f"deepspeed_{stage}", family, *lora)
    stderr = (sharded / "launch.stderr").read_text()

    label = {"zero2": "DeepSpeed ZeRO-2", "zero3": "DeepSpeed ZeRO-3"}[stage]
    assert f"{label} over 2 processes" in stderr
    if stage == "zero3":  # one line says why, and what it costs
        assert "chunked LM loss off under DeepSpeed ZeRO-3" in stderr and "by the memory plan)" in stderr
    # None of the libraries' warnings (under ZeRO-3, transformers' "loss_type=None" and each process's DeepSpeed
    # "Setting accelerator to CPU" were two). `accelerate launch` itself imports DeepSpeed before any code of the
    # recipe runs, and on a machine without a GPU that says so once (docs/reliability.md#warnings).
    stdout = (sharded / "launch.stdout").read_text()
    launcher = next((line for line in stdout.splitlines() if "Setting accelerator to CPU" in line), "")
    assert_no_library_warnings(stderr, stdout.replace(launcher, "", 1))
    assert_trained_alike(sharded, single)
    assert (sharded / "checkpoint-7" / "latest").is_file()  # DeepSpeed's shards, one per process
    assert (sharded / "samples.jsonl").read_text() == (single / "samples.jsonl").read_text()
    assert_memory_planned(sharded)
    # ZeRO-3's weights exist whole in no process: the final model is gathered and saved whole
    assert_same_final_model(sharded, single, lora=bool(lora))


def test_two_machines_on_localhost_train_as_one_process(runs, tmp_path):
    """`--num_machines 2 --machine_rank 0/1`, one process each, rank 0's address as the rendezvous."""
    model = runs.model("gpt2")
    port = str(free_port())
    out = tmp_path / "two-machines"
    outputs = {}

    def machine(rank: int) -> None:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   "accelerate_configs/multi_gpu.yaml", "--num_machines", "2", "--machine_rank", str(rank),
                   "--num_processes", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", port,
                   "scripts/train.py", *train_args(out, model, "--per_device_train_batch_size", "1")]
        outputs[rank] = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)

    machines = [threading.Thread(target=machine, args=(rank,)) for rank in (0, 1)]
    for thread in machines:
        thread.start()
    for thread in machines:
        thread.join()
    for rank in (0, 1):
        assert outputs[rank].returncode == 0, outputs[rank].stderr[-3000:]
    assert "x 2 processes = 2 rows per step (DDP over 2 processes)" in outputs[0].stderr
    assert "run summary" not in outputs[1].stderr  # written once, by the first machine's process
    assert_trained_alike(out, runs.get(None, "gpt2"))


def gpt2_with_vocabulary(root: Path, extra_rows: int) -> Path:
    """The tiny gpt2 with `extra_rows` more embedding rows than its tokenizer has tokens (fewer when negative), random
    weights saved. More is common: vocabularies padded to a multiple of 64 for faster matmuls."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from families import FAMILY_BY_NAME, build_family_dir

    folder = build_family_dir(FAMILY_BY_NAME["gpt2"], root)
    config = AutoConfig.from_pretrained(folder)
    config.vocab_size += extra_rows
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


@needs_deepspeed
def test_zero3_keeps_a_vocabulary_larger_than_the_tokenizer(runs):
    """ZeRO-3 loads each weight partitioned (an empty tensor on each process): the embedding's rows are read whole, so
    embeddings that cover the tokenizer are not resized (to the tokenizer's size, which would drop rows)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    runs.models["gpt2-wide-vocabulary"] = gpt2_with_vocabulary(runs.root / "models" / "wide", extra_rows=64)
    vocabulary = AutoConfig.from_pretrained(runs.models["gpt2-wide-vocabulary"]).vocab_size
    single = runs.get(None, "gpt2-wide-vocabulary", *SHORT)
    sharded = runs.get("deepspeed_zero3", "gpt2-wide-vocabulary", *SHORT)
    stderr = (sharded / "launch.stderr").read_text()
    assert "DeepSpeed ZeRO-3 over 2 processes" in stderr
    assert "resizing" not in stderr and "resizing" not in (single / "launch.stderr").read_text()
    assert_trained_alike(sharded, single)
    for run in (single, sharded):
        assert AutoModelForCausalLM.from_pretrained(run).get_input_embeddings().weight.shape[0] == vocabulary


def test_a_vocabulary_smaller_than_the_tokenizer_is_resized_on_one_process(tmp_path, caplog):
    """The other side of the same check: embeddings short of the tokenizer grow to it, keeping the rows they had."""
    import torch
    from transformers import AutoModelForCausalLM

    from recipe.config import ModelArguments
    from recipe.models.loading import get_model, get_tokenizer

    folder = gpt2_with_vocabulary(tmp_path, extra_rows=-16)
    before = AutoModelForCausalLM.from_pretrained(folder).get_input_embeddings().weight.detach().clone()
    model_args = ModelArguments(model_name_or_path=str(folder), random_init=False)
    tokenizer = get_tokenizer(model_args)
    with caplog.at_level("WARNING", logger="recipe.models.loading"):
        model = get_model(model_args, tokenizer)
    assert f"tokenizer has {len(tokenizer)} tokens, model {len(tokenizer) - 16} embeddings: resizing" in caplog.text
    embeddings = model.get_input_embeddings().weight
    assert embeddings.shape[0] == model.get_output_embeddings().weight.shape[0] == len(tokenizer)
    assert torch.equal(embeddings[:len(before)], before)
    with torch.no_grad():  # the last token has a row now
        assert model(torch.tensor([[len(tokenizer) - 1]])).logits.shape[-1] == len(tokenizer)
