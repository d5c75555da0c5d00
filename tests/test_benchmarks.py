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
    # the peak is sampled before the rows and after each one, and no row's MFU exceeds the ceiling
    samples = record["matmul_peak"]["samples_gflops"]["fp32"]
    assert len(samples) == len(record["rows"]) + 1 and record["matmul_peak_gflops"]["fp32"] == max(samples)
    assert all(row["mfu"] is None or 0 < row["mfu"] <= 1 for row in record["rows"])
    assert record["mfu_ceiling"]["fp32"]["gflops"] >= record["matmul_peak_gflops"]["fp32"]
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
    assert "MFU against fp32" in table.splitlines()[0]


def throughput_module():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import throughput

    return throughput


def test_no_row_mfu_exceeds_100_percent_by_construction(tmp_path):
    """A row that outran the matmul peak measured in its run (a slow spell of a shared machine while the peak was
    taken) sets its precision's ceiling itself: its MFU is 100%, the others' are against its rate, and the record
    says which ceiling each precision got."""
    add_ratios = throughput_module().add_ratios

    def row(name, precision, tokens_per_s):
        return {"name": name, "precision": precision, "real_tokens_per_s": tokens_per_s, "parameters": 10**8,
                "trainable_parameters": 10**8}

    rows = [row("reference", "fp32", 20.0), row("fast", "fp32", 200.0), row("slow", "fp32", 100.0),
            row("bf16", "bf16", 200.0), row("half", "fp16", 50.0)]
    ceilings = add_ratios(rows, {"fp32": 100.0, "bf16": 500.0})  # 200 tokens/s x 6e8 FLOP = 120 GFLOP/s
    mfu = {r["name"]: r["mfu"] for r in rows}
    assert mfu == {"reference": 0.1, "fast": 1.0, "slow": 0.5, "bf16": 0.24, "half": None}  # no fp16 peak: n/a
    assert ceilings == {"fp32": {"gflops": 120.0, "from": "row", "row": "fast"},
                        "bf16": {"gflops": 500.0, "from": "matmul peak"}}
    assert rows[1]["gflops"] == 120.0 and rows[2]["ratio_to_reference"] == 5.0


def test_the_recorded_smollm2_mfu_is_the_recomputed_one_and_no_record_exceeds_100_percent(tmp_path):
    """The SmolLM2 record's MFU column came out of --recompute_mfu on its own figures, and every throughput record
    kept under benchmarks/results stays at or below 100%."""
    throughput = throughput_module()
    recorded = REPO / "benchmarks" / "results" / "2026-12-02-cpu-SmolLM2-135M-Instruct.json"
    copy = tmp_path / recorded.name
    copy.write_text(recorded.read_text())
    again = throughput.recompute_mfu(copy)
    kept = json.loads(recorded.read_text())
    assert [r["mfu"] for r in again["rows"]] == [r["mfu"] for r in kept["rows"]]
    assert kept["mfu_ceiling"]["fp32"]["row"] == "packing, fp32" and "MFU recomputed" in recorded.with_suffix(
        ".md").read_text()
    records = [json.loads(path.read_text()) for path in (REPO / "benchmarks" / "results").rglob("*.json")]
    throughputs = [r for r in records if isinstance(r, dict) and r.get("benchmark") == "throughput"]
    assert len(throughputs) >= 6
    over = [(r["date"], row["name"], row["mfu"]) for r in throughputs for row in r["rows"] if (row.get("mfu") or 0) > 1]
    assert not over


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


def test_recipe_grid_trains_each_cell_reads_a_finished_run_and_ranks_them(tmp_path):
    work = tmp_path / "work"
    grid = tmp_path / "tiny.yaml"
    grid.write_text(
        "recipes: {full: recipe/configs/smoke.yaml, lora: recipe/configs/smoke-lora.yaml}\n"
        "cells:\n"
        "  - {name: full-lr1e-3, mode: full, flags: [--learning_rate, 1.0e-3, --num_train_epochs, 1]}\n"
        "  - {name: full-lr6e-3, mode: full, flags: [--num_train_epochs, 2]}\n"
        f"  - {{name: again, mode: full, run: {work / 'full-lr6e-3'}}}\n"
    )
    command = [sys.executable, "benchmarks/recipe_grid.py", str(grid), "--work_dir", str(work),
               "--output_dir", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    (record_path,) = tmp_path.glob("grid-tiny-*.json")
    rows = {row["name"]: row for row in json.loads(record_path.read_text())["rows"]}
    assert [len(rows[name]["epochs"]) for name in ("full-lr1e-3", "full-lr6e-3", "again")] == [1, 2, 2]
    assert rows["again"]["epochs"] == rows["full-lr6e-3"]["epochs"]  # read from that run, not trained again
    assert rows["full-lr6e-3"]["best_perplexity"] < rows["full-lr1e-3"]["best_perplexity"]  # more steps, larger step
    table = record_path.with_suffix(".md").read_text().splitlines()
    ranked = [line.split(" | ")[0].strip("| ") for line in table if line.startswith(("| full", "| again"))]
    assert ranked[-1] == "full-lr1e-3"
    # a rerun trains nothing: every cell is read back (the logs are not rewritten)
    log = work / "full-lr1e-3.log"
    before = log.stat().st_mtime_ns
    assert subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600).returncode == 0
    assert log.stat().st_mtime_ns == before
    # a cell that reads a run that does not exist says which and what to do
    grid.write_text(grid.read_text() + f"  - {{name: missing, mode: full, run: {tmp_path / 'nowhere'}}}\n")
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "missing" in result.stderr and "train_results.json" in result.stderr


def test_finetune_gain_on_the_smoke_pair_writes_per_epoch_rows_runs_and_samples(tmp_path):
    result = subprocess.run(
        [sys.executable, "benchmarks/finetune_gain.py", "--pair", "smoke", "--num_samples", "2",
         "--work_dir", str(tmp_path / "work"), "--output_dir", str(tmp_path), "--", "--num_train_epochs", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    (record_path,) = tmp_path.glob("finetune_gain-smoke-*.json")
    record = json.loads(record_path.read_text())
    assert [(r["model"], r["epoch"]) for r in record["rows"]] == [("full", 1), ("full", 2), ("lora", 1), ("lora", 2)]
    for r in record["rows"]:
        assert r["perplexity"] > 1 and set(r["per_speaker"]) == {"Alex", "Bob"} and r["distinct_2"] is not None
    assert record["rows"][1]["perplexity"] < record["rows"][0]["perplexity"]  # the second epoch learned more
    assert record["runs"]["lora"]["trainable_parameters"] < record["runs"]["full"]["trainable_parameters"]
    assert len(record["samples"]["full"]) == len(record["samples"]["lora"]) == 2
    assert record["samples"]["full"][0]["prompt"] == record["samples"]["lora"][0]["prompt"]
    assert "| full | 2 |" in record_path.with_suffix(".md").read_text()


def test_real_base_rows_measure_the_dropout_the_lora_recipe_does_not_have(tmp_path):
    """With --base, the last LoRA row differs from the recipe in dropout alone, whichever way the recipe went."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from throughput import dropout_contrast

    without, with_default, explicit = tmp_path / "a.yaml", tmp_path / "b.yaml", tmp_path / "c.yaml"
    without.write_text("use_lora: true\nlora_dropout: 0\n")
    with_default.write_text("use_lora: true\n")  # LoraArguments' default dropout, 0.05
    explicit.write_text("use_lora: true\nlora_dropout: 0.1\n")
    assert dropout_contrast(without) == "LoRA, dropout 0.05"
    assert dropout_contrast(with_default) == dropout_contrast(explicit) == "LoRA, no dropout"
    assert dropout_contrast(REPO / "recipe" / "configs" / "smollm2-lora.yaml") == "LoRA, dropout 0.05"


def test_every_memory_benchmark_row_parses_on_the_smollm2_qlora_recipe(tmp_path):
    """The full-fine-tuning rows drop the recipe's LoRA options, which training refuses without use_lora."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import memory

    for name, flags in memory.ROWS.items():
        model_args, _, lora_args, training_args = memory.row_options(
            memory.RECIPES["smollm2"], flags, tmp_path / "scratch", 1,
            ["--model_name_or_path", str(REPO / "recipe" / "assets" / "tiny-gpt2")])
        assert lora_args.use_lora == (not name.startswith("full")), name
        assert model_args.load_in_4bit == name.startswith("qlora"), name
        assert training_args.gradient_checkpointing == name.endswith("checkpointing"), name
        if lora_args.use_lora:
            assert lora_args.lora_dropout == 0  # the recipe's, kept for the LoRA rows


def test_scaling_quick_mode_records_each_mode_against_one_process(tmp_path):
    """benchmarks/scaling.py --quick: one process, DDP and FSDP on the tiny random GPT-2, 2 CPU processes each;
    every mode trains the one process's losses, and the record has each process's peak and the plan (no timing is
    checked)."""
    command = [sys.executable, "benchmarks/scaling.py", "--quick", "--recipes", "full", "--output_dir", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (record_path,) = tmp_path.glob("scaling-tiny-gpt2-*.json")
    record = json.loads(record_path.read_text())
    rows = {row["mode"]: row for row in record["rows"]}
    assert list(rows) == ["single", "ddp", "fsdp"] and record["max_steps"] == 2
    assert "git_commit" in record["environment"] and record["environment"]["packages"]["torch"]
    assert [rows[mode]["processes"] for mode in rows] == [1, 2, 2]
    assert [rows[mode]["sharding"] for mode in rows] == ["single", "ddp", "fsdp"]
    for mode in ("ddp", "fsdp"):
        row = rows[mode]
        assert len(row["losses"]) == 2 and row["losses_equal_single"], row["loss_max_relative_difference"]
        assert len(row["tensor_peak_mb_per_process"]) == 2 and len(row["plan_error_per_process"]) == 2
        assert row["per_device_train_batch_size"] * 2 == rows["single"]["per_device_train_batch_size"]
        assert row["tokens_per_s"] > 0 and row["relative_to_single"] > 0
    assert "| DDP | full | 2 x 4 |" in record_path.with_suffix(".md").read_text()
    # a second record of the day gets its own name: the first is never overwritten
    sys.path.insert(0, str(REPO / "benchmarks"))
    from scaling import record_stem

    again = record_stem(tmp_path, record["base"], record["date"][:10])
    assert again.name == record_path.stem + "-2" and not again.with_suffix(".json").exists()
