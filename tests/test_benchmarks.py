"""benchmarks/throughput.py in its smoke mode: it runs, and writes a complete record (no timing is checked)."""

import json
import subprocess
import sys

from conftest import REPO


def test_throughput_smoke_mode_writes_the_record_and_table(tmp_path):
    result = subprocess.run(
        [sys.executable, "benchmarks/throughput.py", "--steps", "3", "--model_config", "tiny", "--quick",
         "--generation_prompts", "4", "--output_dir", str(tmp_path), "--scratch_dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (record_path,) = tmp_path.glob("*-cpu.json")
    record = json.loads(record_path.read_text())
    assert record["vocab_size"] == 50257 and record["device"]["name"]
    assert record["matmul_peak_gflops"]["fp32"] > 0
    names = [row["name"] for row in record["rows"]]
    assert names[:2] == ["reference", "default"]
    assert [row["name"] for row in record["rows"] if row.get("default")] == ["default"]
    for row in record["rows"]:
        assert row["real_tokens_per_s"] > 0 and row["precision"] in ("fp32", "bf16") and len(row["losses"]) == 3
        assert row["real_tokens_per_s"] <= row["processed_tokens_per_s"]
    reference, default = record["rows"][0], record["rows"][1]
    assert reference["padding_share"] > 0.5 > default["padding_share"]  # pad-to-128 against packing
    assert default["chunked_lm_loss"] and not record["rows"][2]["chunked_lm_loss"]
    # the chunked loss and the model's own give the same figures
    assert record["loss_curve"]["max_relative_difference"] < 1e-3
    evaluation = record["evaluation"]
    assert abs(evaluation["chunked"]["eval_token_loss"] - evaluation["model's own loss"]["eval_token_loss"]) < 1e-4
    assert record["generation"]["replies"] == 4
    assert record["lora_vs_full"]["lora_peak_memory_mb"] > 0
    # live tensor bytes, counted per storage: LoRA holds no gradients or AdamW states for the frozen weights
    assert all(row["tensor_peak_mb"] > 0 for row in record["rows"][1:])
    assert record["lora_vs_full"]["lora_tensor_peak_mb"] < record["lora_vs_full"]["full_tensor_peak_mb"]
    table = record_path.with_suffix(".md").read_text()
    assert "| reference | fp32 | model |" in table and "× reference" in table and "tensor peak (MB)" in table


def test_memory_benchmark_on_the_tiny_model_writes_the_record_and_table(tmp_path):
    """benchmarks/memory.py's rows on the smoke model: the plan beside the peak measured in tensors, and the
    effect of gradient checkpointing (no timing is checked)."""
    result = subprocess.run(
        [sys.executable, "benchmarks/memory.py", "--model", "tiny", "--rows", "lora", "lora, checkpointing",
         "--steps", "2", "--bf16", "false", "--output_dir", str(tmp_path), "--scratch_dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (record_path,) = tmp_path.glob("*-cpu.json")
    record = json.loads(record_path.read_text())
    assert list(record["rows"]) == ["lora", "lora, checkpointing"]
    for row in record["rows"].values():
        assert row["plan_mb"] > 0 and row["measured_mb"] > 0 and row["precision"] == "fp32"
    assert record["checkpointing"]["lora"]["memory_saved_mb"] > 0  # checkpointing keeps less
    assert "| lora, checkpointing | fp32 |" in record_path.with_suffix(".md").read_text()
