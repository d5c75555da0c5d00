"""DeepSpeed ZeRO-2 / ZeRO-3 as users launch it (`accelerate launch --config_file
accelerate_configs/deepspeed_zero{2,3}.yaml`, 2 CPU processes: DeepSpeed's CPU backend over gloo), and two "machines"
on localhost: the same losses as one process at the same global batch, DeepSpeed's sharded checkpoints, and a
ZeRO-3 final model saved whole."""

import subprocess
import sys
import threading

import pytest

from conftest import REPO, free_port
from scale_out import (
    LORA,
    Runs,
    assert_memory_planned,
    assert_same_final_model,
    assert_trained_alike,
    needs_deepspeed,
    train_args,
)


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
