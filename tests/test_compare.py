"""scripts/compare.py and scripts/run_comparison.sh: full and LoRA runs side by side, from their files alone."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO
from recipe.comparison import ComparisonError, compare_runs, read_run
from test_training import train

SMOKE_LORA = REPO / "recipe" / "configs" / "smoke-lora.yaml"


def read_json(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished full run and its LoRA twin (2 epochs, 80 dialogues, a loss logged every step)."""
    tmp_path = tmp_path_factory.mktemp("compare")
    full = train(tmp_path, "--logging_steps", "1", output="smoke-full")
    lora = train(tmp_path, "--config", str(SMOKE_LORA), "--logging_steps", "1", output="smoke-lora")
    return full.output_dir, lora.output_dir


def copy_run(run_dir, target):
    return shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns("checkpoint-*"))


def row(report, name):
    (line,) = [line for line in report.splitlines() if line.startswith(f"| {name} |")]
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def test_report_puts_full_and_lora_side_by_side(runs, tmp_path):
    full = copy_run(runs[0], tmp_path / "smoke-full")
    lora = runs[1]
    evaluation = {"perplexity": {"perplexity": 99.0, "token_loss": 4.6},
                  "quality": {"distinct_1": 0.25, "distinct_2": 0.7125, "repeat_share": 0.1, "clean_end_share": 1.0}}
    (full / "evaluation.json").write_text(json.dumps(evaluation))

    report_path, plot_path = compare_runs([full, lora], tmp_path / "out" / "report.md")
    report = report_path.read_text()
    assert plot_path == tmp_path / "out" / "report.png" and "![Train and eval loss per epoch](report.png)" in report
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot_path.stat().st_size > 10_000

    assert report.splitlines()[2] == "| | smoke-full | smoke-lora |"
    assert row(report, "mode") == ["full", "LoRA"]
    results = [read_json(d / "train_results.json") for d in (full, lora)]
    evals = [read_json(d / "eval_results.json") for d in (full, lora)]
    assert row(report, "trainable parameters") == [
        f"{r['trainable_parameters']:,} ({r['trainable_parameters'] / r['total_parameters']:.2%})" for r in results]
    assert row(report, "trainable parameters")[0].endswith("(100.00%)")
    assert row(report, "wall time (s)") == [f"{r['train_runtime']:.1f}" for r in results]
    assert row(report, "tokens/s (real tokens)") == [f"{r['train_real_tokens_per_second']:,.0f}" for r in results]
    assert row(report, "peak RSS (MB)") == [f"{r['peak_memory_mb']:,.0f}" for r in results]
    assert row(report, "peak memory in tensors (MB)") == [f"{r['peak_tensor_memory_mb']:,.0f}" for r in results]
    assert row(report, "memory plan (MB)") == [f"{r['memory_plan_mb']:,.0f}" for r in results]
    assert row(report, "final train loss") == [f"{r['final_train_loss']:.4f}" for r in results]
    assert row(report, "eval loss (nats/token, exact)") == [f"{e['eval_token_loss']:.4f}" for e in evals]
    assert row(report, "perplexity") == [f"{e['eval_perplexity']:.2f}" for e in evals]
    assert row(report, "distinct-1") == ["0.250", "n/a"] and row(report, "distinct-2") == ["0.713", "n/a"]
    assert row(report, "clean ends") == ["100.0%", "n/a"]
    assert f"`python scripts/evaluate.py --model_path {lora}`" in report
    assert f"--model_path {full}`" not in report  # only the run without evaluation.json is named


def test_curves_are_the_logged_losses_per_epoch(runs):
    run = read_run(runs[0])
    history = read_json(runs[0] / "trainer_state.json")["log_history"]
    assert run.train_curve == [(e["epoch"], e["loss"]) for e in history if "loss" in e]
    assert len(run.train_curve) == 14
    evals = [(e["epoch"], e["eval_token_loss"]) for e in history if "eval_token_loss" in e]
    assert len(evals) == 3  # epochs 1 and 2, then the final evaluation of the best checkpoint
    assert run.eval_curve == evals[:2]  # the final one repeats epoch 2 and is not drawn twice


def test_missing_and_unfinished_runs_are_named(runs, tmp_path):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "run_config.yaml").write_text("use_lora: false\n")
    with pytest.raises(ComparisonError) as error:
        compare_runs([runs[0], unfinished, tmp_path / "nowhere"], tmp_path / "report.md")
    message = str(error.value)
    assert f"{unfinished} holds no finished run (no train_results.json): finish it (python scripts/train.py " \
           f"--config {unfinished / 'run_config.yaml'} resumes it) or leave it out" in message
    assert f"run directory {tmp_path / 'nowhere'} does not exist" in message
    assert not (tmp_path / "report.md").exists()

    cli = subprocess.run([sys.executable, "scripts/compare.py", str(runs[0]), str(unfinished), "--output",
                          str(tmp_path / "r.md")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and "error: cannot compare:" in cli.stderr and str(unfinished) in cli.stderr
    assert "Traceback" not in cli.stderr


def test_run_comparison_trains_both_reruns_over_finished_runs_and_compares(runs, tmp_path):
    outputs = tmp_path / "outputs"
    for run_dir in runs:  # finished runs already there: the script must replace them, not stop
        copy_run(run_dir, outputs / run_dir.name)
    # EVALUATE=0: scripts/evaluate.py has its own tests; here the comparison shows n/a for diversity.
    env = {**os.environ, "OUTPUTS_DIR": str(outputs), "PYTHON": sys.executable, "EVALUATE": "0"}
    result = subprocess.run(
        ["bash", "scripts/run_comparison.sh", "smoke", "--max_dialogues", "40", "--num_train_epochs", "1",
         "--bf16", "false", "--dataset_cache_dir", str(tmp_path / "cache"), "--disable_tqdm", "true"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    for mode in ("full", "lora"):
        assert read_json(outputs / f"smoke-{mode}" / "train_results.json")["epoch"] == 1.0  # retrained
    report = (outputs / "comparison-smoke.md").read_text()
    assert (outputs / "comparison-smoke.png").is_file()
    assert row(report, "mode") == ["full", "LoRA"]
    assert row(report, "distinct-1") == ["n/a", "n/a"] and "skipping evaluation" in result.stdout


def test_run_comparison_rejects_an_unknown_recipe():
    result = subprocess.run(["bash", "scripts/run_comparison.sh", "gpt5"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "unknown comparison 'gpt5'; use smoke, smollm2 or distilgpt2" in result.stderr


def test_a_qlora_run_is_named_qlora_beside_full_and_lora(runs, tmp_path):
    import yaml

    qlora = copy_run(runs[1], tmp_path / "smoke-qlora")
    config = yaml.safe_load((qlora / "run_config.yaml").read_text())
    (qlora / "run_config.yaml").write_text(yaml.safe_dump({**config, "load_in_4bit": True}))
    report = compare_runs([runs[0], runs[1], qlora], tmp_path / "report.md")[0].read_text()
    assert row(report, "mode") == ["full", "LoRA", "QLoRA"]
