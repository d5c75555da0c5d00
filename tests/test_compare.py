"""scripts/compare.py and scripts/run_comparison.sh: full and LoRA runs side by side, and N runs ranked with their
Pareto fronts, from their files alone."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO
from recipe.common.run_dir import RunDir
from recipe.comparison.report import compare_runs
from recipe.comparison.runs import ComparisonError, read_run
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

    report_path, plot_path, _ = compare_runs([full, lora], tmp_path / "out" / "report.md")
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
    assert row(report, "tokens/s (real tokens, in the steps)") == [f"{r['train_real_tokens_per_second']:,.0f}"
                                                                  for r in results]
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
    run = read_run(RunDir(runs[0]))
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


def make_run(source, target, perplexity, runtime, trainable):
    """A copy of a finished run with the figures the ranking reads set to known values."""
    run_dir = copy_run(source, target)
    for name, updates in (("eval_results.json", {"eval_perplexity": perplexity}),
                          ("train_results.json", {"train_runtime": runtime, "train_steps_runtime": runtime,
                                                   "trainable_parameters": trainable})):
        (run_dir / name).write_text(json.dumps({**read_json(run_dir / name), **updates}))
    return run_dir


def test_n_runs_are_ranked_by_perplexity_with_their_pareto_fronts(runs, tmp_path):
    from recipe.comparison.ranking import COSTS, pareto_front

    full, lora = runs
    made = [make_run(full, tmp_path / "a-full", 100.0, 10.0, 1000),
            make_run(lora, tmp_path / "b-lora", 120.0, 5.0, 100),
            make_run(lora, tmp_path / "c-lora", 130.0, 8.0, 50),
            make_run(full, tmp_path / "d-full", 110.0, 20.0, 2000),
            make_run(lora, tmp_path / "e-lora", 150.0, 5.0, 100)]
    (made[1] / "evaluation.json").write_text(json.dumps({
        "perplexity": {"per_speaker": {"Alex": {"perplexity": 111.0}, "Bob": {"perplexity": 125.5}}},
        "quality": {"clean_end_share": 0.75, "distinct_2": 0.5}}))
    summaries = [read_run(RunDir(d)) for d in made]
    assert [r.label for r in pareto_front(summaries, COSTS["time"][1])] == ["b-lora", "a-full"]
    assert [r.label for r in pareto_front(summaries, COSTS["parameters"][1])] == ["c-lora", "b-lora", "a-full"]
    # the LoRA copies hold the LoRA run's tensor peak, the full copies the full run's (higher)
    assert [r.label for r in pareto_front(summaries, COSTS["memory"][1])] == ["b-lora", "a-full"]

    report_path, _, pareto_path = compare_runs(made, tmp_path / "sweep" / "report.md", title="# Sweep s: 5 runs")
    report = report_path.read_text()
    assert report.startswith("# Sweep s: 5 runs\n\n## Ranked by eval perplexity")  # no side-by-side for 5 runs
    assert pareto_path.name == "report-pareto.png" and pareto_path.read_bytes()[:4] == b"\x89PNG"
    ranked = [line for line in report.splitlines() if line[:4] in {"| 1 ", "| 2 ", "| 3 ", "| 4 ", "| 5 "}]
    assert [line.split(" | ")[1] for line in ranked] == ["a-full", "d-full", "b-lora", "c-lora", "e-lora"]
    assert ranked[2].split(" | ")[2:] == [
        "LoRA", "8", "0.005", "100", "120.00", "111.00", "125.50", "75%", "0.500", "5.0",
        f"{read_json(made[1] / 'train_results.json')['peak_tensor_memory_mb']:,.0f}", "time, parameters, memory |"]
    assert ranked[0].endswith("| time, parameters, memory |") and ranked[1].endswith("|  |")
    assert ranked[3].endswith("| parameters |")
    assert "- Perplexity against training time (s): b-lora (120.00 at 5.0) -> a-full (100.00 at 10.0)." in report
    assert ("- Perplexity against trainable parameters: c-lora (130.00 at 50) -> b-lora (120.00 at 100) -> "
            "a-full (100.00 at 1,000).") in report
    assert "- Best full: a-full, perplexity 100.00, 1,000 trainable parameters, 10.0 s of training" in report
    assert ("- Full fine-tuning wins: the best LoRA's perplexity is 20.0% higher; it trains 10.00% as many parameters "
            "as full fine-tuning, in 0.50x its training time.") in report

    close = make_run(lora, tmp_path / "f-lora", 101.0, 4.0, 10)
    report = compare_runs([made[0], close], tmp_path / "close.md")[0].read_text()
    assert "- LoRA matches full fine-tuning: its best perplexity is +1.0% from full's (within 2%)" in report


def test_the_base_before_training_is_a_row_and_a_line_and_other_data_is_flagged(runs, tmp_path):
    full, lora = runs
    environment = read_json(full / "environment.json")
    data = {"source": "validation split of the run's file", "data_path": environment["data"]["data_path"],
            "split": "validation", "data_sha256": environment["data"]["data_sha256"]}
    base = {"model": {"path": "models/base", "dtype": "float32"}, "data": data,
            "perplexity": {"perplexity": 2000.0, "token_loss": 7.6, "per_speaker": {"Alex": {"perplexity": 1900.0}}},
            "quality": {"clean_end_share": 0.5, "distinct_2": 0.9}}
    (tmp_path / "base.json").write_text(json.dumps(base))
    report_path, plot, _ = compare_runs([full, lora], tmp_path / "c.md", baseline=tmp_path / "base.json")
    report = report_path.read_text()
    assert row(report, "mode") == ["base", "full", "LoRA"]  # the row every run started from, first
    assert row(report, "trainable parameters")[0] == "0 (not trained)" and row(report, "perplexity")[0] == "2000.00"
    (last,) = [line for line in report.splitlines() if line.startswith("| - | base (before training) |")]
    assert "| 2000.00 | 1900.00 |" in last
    assert "base: `models/base` before training, evaluated by scripts/evaluate.py" in report
    assert "other data" not in report and plot.read_bytes()[:4] == b"\x89PNG"

    (tmp_path / "other.json").write_text(json.dumps({**base, "data": {**data, "data_sha256": "0" * 64}}))
    report = compare_runs([full], tmp_path / "d.md", baseline=tmp_path / "other.json")[0].read_text()
    assert "the base was evaluated on other data than smoke-full's validation split" in report
    (tmp_path / "not.json").write_text("{}")
    with pytest.raises(ComparisonError, match="not an evaluation.json of scripts/evaluate.py"):
        compare_runs([full], tmp_path / "e.md", baseline=tmp_path / "not.json")


def test_run_comparison_on_a_pretrained_base_evaluates_it_first_as_the_base_row(tmp_path, tokenizer):
    import torch

    from conftest import OFFLINE_MODEL
    from recipe.config import ModelArguments
    from recipe.models.loading import get_model

    torch.manual_seed(0)
    base = tmp_path / "base"
    get_model(ModelArguments(model_name_or_path=str(OFFLINE_MODEL), random_init=True), tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    outputs = tmp_path / "outputs"
    env = {**os.environ, "OUTPUTS_DIR": str(outputs), "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", "scripts/run_comparison.sh", "smoke", "--model_name_or_path", str(base), "--random_init", "false",
         "--max_dialogues", "30", "--num_train_epochs", "1", "--bf16", "false", "--dataset_cache_dir",
         str(tmp_path / "cache"), "--disable_tqdm", "true"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert f"evaluating the base {base} (before training)" in result.stdout
    base_json = read_json(outputs / "smoke-base.json")
    assert base_json["data"]["split"] == "validation" and base_json["model"]["kind"] == "base"
    report = (outputs / "comparison-smoke.md").read_text()
    assert row(report, "mode") == ["base", "full", "LoRA"]
    assert row(report, "perplexity")[0] == f"{base_json['perplexity']['perplexity']:.2f}"
    assert "other data" not in report


def test_a_qlora_run_is_named_qlora_beside_full_and_lora(runs, tmp_path):
    import yaml

    qlora = copy_run(runs[1], tmp_path / "smoke-qlora")
    config = yaml.safe_load((qlora / "run_config.yaml").read_text())
    (qlora / "run_config.yaml").write_text(yaml.safe_dump({**config, "load_in_4bit": True}))
    report = compare_runs([runs[0], runs[1], qlora], tmp_path / "report.md")[0].read_text()
    assert row(report, "mode") == ["full", "LoRA", "QLoRA"]
