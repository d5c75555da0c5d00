"""What a user deciding between full fine-tuning and LoRA reads, checked on a smoke pair: replies during training
(samples.jsonl, a W&B table per evaluation and a cumulative one, training left exactly as it was), the filter
fields at the top of the W&B config (read back from offline W&B run files), and the figures in the model cards
(model-index, loaded by huggingface_hub's own card loader)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from recipe.common.files import file_sha256
from recipe.common.run_dir import RunDir
from recipe.config import (
    ConfigError,
    EvaluationArguments,
    GenerationArguments,
    TrackingArguments,
    run_data_arguments,
    run_model_arguments,
)
from recipe.data import load_dialogue_splits
from recipe.evaluation.run import evaluate_model
from recipe.models.generation import prompts_from_dialogues
from recipe.models.loading import get_tokenizer
from recipe.tracking import read_samples
from recipe.tracking.training_replies import TABLE_COLUMNS
from test_tracking import SMOKE_LORA, read_offline_run, series, train_tracked


def read_json(path):
    return json.loads(Path(path).read_text())


def logged_tables(history, run_dir, prefix="eval_replies/"):
    """{key: [table as logged, one per log call]} for the tables an offline run logged under prefix."""
    tables = {}
    for row in history:
        for key, value in row.items():
            if key.startswith(prefix) and key.endswith("/path"):
                tables.setdefault(key.removesuffix("/path"), []).append(read_json(Path(run_dir, "files", value)))
    return tables


def table_rows(rows):
    return [[row[column] for column in TABLE_COLUMNS] for row in rows]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A full run (2 epochs) and its LoRA twin (1 epoch), logged to W&B offline, 3 replies per evaluation."""
    tmp_path = tmp_path_factory.mktemp("replies")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_DIR", str(tmp_path))
        full = train_tracked(tmp_path, "--report_to", "wandb", "--eval_samples", "3", output="smoke-full")
        lora = train_tracked(tmp_path, "--config", str(SMOKE_LORA), "--report_to", "wandb", "--eval_samples", "3",
                             "--num_train_epochs", "1", output="smoke-lora")
    return full.output_dir, lora.output_dir


def test_every_evaluation_answers_the_evaluation_scripts_prompts(pair):
    full, _ = pair
    rows = read_samples(full / "samples.jsonl")
    assert [(row["epoch"], row["step"]) for row in rows] == [(1.0, 7)] * 3 + [(2.0, 14)] * 3
    assert [row["prompt"] for row in rows[:3]] == [row["prompt"] for row in rows[3:]]  # the same prompts each time
    assert {row["ended_by"] for row in rows} <= {"eos", "turn_end", "max_new_tokens"}
    assert all(row["new_tokens"] <= 32 for row in rows)

    # The prompts are the evaluation script's own: the same builder on the same validation split.
    config = RunDir(full).read_config()
    data_args = run_data_arguments(config, None)
    tokenizer = get_tokenizer(run_model_arguments(RunDir(full)))
    expected = prompts_from_dialogues(load_dialogue_splits(data_args).validation, data_args, tokenizer, 3, 1)
    assert [row["prompt"] for row in rows[:3]] == [p.prompt for p in expected]
    assert [row["reference"] for row in rows[:3]] == [p.reference for p in expected]

    # Greedy: the final model (the best checkpoint, epoch 2 here) answers scripts/evaluate.py as it did in training.
    assert read_json(full / "train_results.json")["best_checkpoint"].endswith("checkpoint-14")
    results = evaluate_model(EvaluationArguments(model_path=str(full), num_samples=3, wandb="off"),
                             GenerationArguments(do_sample=False, max_new_tokens=32))
    assert [(s["prompt"], s["reply"], s["ended_by"]) for s in results["samples"]] == [
        (row["prompt"], row["reply"], row["ended_by"]) for row in rows[3:]]

    # Its cost is in the Trainer's log history (trainer_state.json), once per evaluation during training.
    history = read_json(full / "trainer_state.json")["log_history"]
    assert [entry["step"] for entry in history if "eval_replies_seconds" in entry] == [7, 14]


def test_wandb_gets_a_table_per_evaluation_and_a_cumulative_one(pair):
    full, _ = pair
    record = read_json(full / "wandb_run.json")
    _, _, history, _ = read_offline_run(record["run_dir"])
    tables = logged_tables(history, record["run_dir"])
    assert sorted(tables) == ["eval_replies/all", "eval_replies/step_000007", "eval_replies/step_000014"]
    rows = read_samples(full / "samples.jsonl")
    (epoch_1,), (epoch_2,) = tables["eval_replies/step_000007"], tables["eval_replies/step_000014"]
    assert epoch_1["columns"] == TABLE_COLUMNS == ["prompt", "reference", "reply", "ended_by", "epoch", "step"]
    assert epoch_1["data"] == table_rows(rows[:3]) and epoch_2["data"] == table_rows(rows[3:])
    # The cumulative table: each version holds every row so far, so its latest one shows both epochs.
    assert [table["data"] for table in tables["eval_replies/all"]] == [table_rows(rows[:3]), table_rows(rows)]
    assert len(series(history, "eval/replies_seconds")) == 2


def test_full_and_lora_runs_share_a_project_differ_by_group_and_carry_the_filter_fields(pair):
    full, lora = pair
    runs = {}
    for run_dir in pair:
        record = read_json(run_dir / "wandb_run.json")
        runs[run_dir.name] = (record, *read_offline_run(record["run_dir"]))
    (full_record, full_run, full_config, _, _), (lora_record, lora_run, lora_config, _, _) = runs.values()
    assert full_run.project == lora_run.project == "dialogue-finetune"
    assert (full_run.run_group, lora_run.run_group) == ("full", "lora")

    for run_dir, config in ((full, full_config), (lora, lora_config)):
        train = read_json(run_dir / "train_results.json")
        environment = read_json(run_dir / "environment.json")
        run_config = RunDir(run_dir).read_config()
        assert config["trainable_parameters"] == train["trainable_parameters"]
        assert config["total_parameters"] == train["total_parameters"]
        assert config["trainable_share"] == pytest.approx(train["trainable_parameters"] / train["total_parameters"])
        assert config["data_sha256"] == environment["data"]["data_sha256"]
        assert config["base_model"] == run_config["model_name_or_path"] == "recipe/assets/tiny-gpt2"
        assert config["learning_rate"] == run_config["learning_rate"]
    assert (full_config["mode"], full_config["lora_rank"]) == ("full", None)  # lora_r in its config means nothing
    assert (lora_config["mode"], lora_config["lora_rank"]) == ("lora", 8)
    assert full_config["data_sha256"] == lora_config["data_sha256"]
    assert lora_config["trainable_parameters"] < full_config["trainable_parameters"]

    # The two runs answer the same prompts: their replies line up row for row.
    full_rows, lora_rows = read_samples(full / "samples.jsonl"), read_samples(lora / "samples.jsonl")
    assert [r["prompt"] for r in lora_rows] == [r["prompt"] for r in full_rows if r["epoch"] == 1.0]


def test_replies_leave_training_exactly_as_it_was(tmp_path):
    """LoRA dropout and the data order draw from the random state that generation reseeds: it is restored."""
    def losses(run_dir):
        return [e["loss"] for e in read_json(run_dir / "trainer_state.json")["log_history"] if "loss" in e]

    without = train_tracked(tmp_path, "--config", str(SMOKE_LORA), "--eval_samples", "0", "--num_train_epochs", "3",
                            "--logging_steps", "1", output="without").output_dir
    with_replies = train_tracked(tmp_path, "--config", str(SMOKE_LORA), "--eval_samples", "2", "--num_train_epochs",
                                 "3", "--logging_steps", "1", output="with").output_dir
    assert losses(with_replies) == losses(without) and len(losses(without)) == 21
    assert not (without / "samples.jsonl").exists() and len(read_samples(with_replies / "samples.jsonl")) == 6
    assert not [e for e in read_json(without / "trainer_state.json")["log_history"] if "eval_replies_seconds" in e]


def test_a_resumed_run_redoes_the_replies_of_evaluations_after_its_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    args = ("--report_to", "wandb", "--eval_samples", "2")
    run_dir = train_tracked(tmp_path, *args).output_dir
    first = read_samples(run_dir / "samples.jsonl")
    # As if the run had stopped after the epoch-2 evaluation, before its checkpoint was saved.
    shutil.rmtree(run_dir / "checkpoint-14")
    (run_dir / "train_results.json").unlink()
    resumed = train_tracked(tmp_path, *args)
    assert read_json(resumed.output_dir / "train_results.json")["resumed_from"].endswith("checkpoint-7")
    rows = read_samples(run_dir / "samples.jsonl")
    assert [row["step"] for row in rows] == [7, 7, 14, 14] and rows == first  # no row lost, none twice

    record = read_json(run_dir / "wandb_run.json")
    _, _, history, _ = read_offline_run(record["run_dir"])  # the resumed part of the same W&B run
    tables = logged_tables(history, record["run_dir"])
    assert sorted(tables) == ["eval_replies/all", "eval_replies/step_000014"]
    assert tables["eval_replies/all"][-1]["data"] == table_rows(rows)  # epoch 1's rows kept from samples.jsonl


def test_reply_options_are_checked():
    with pytest.raises(ConfigError, match=r"eval_samples is -1; use 0 \(off\) or a few prompts"):
        TrackingArguments(eval_samples=-1)
    with pytest.raises(ConfigError, match="eval_sample_max_new_tokens is 0; use at least 1"):
        TrackingArguments(eval_sample_max_new_tokens=0)


# ----------------------------------------------------------------------------------------------
# Figures in the model cards


def load_card(path):
    """The card through huggingface_hub's own loader, which refuses metadata the Hub would not take."""
    from huggingface_hub import ModelCard

    return ModelCard.load(path, ignore_metadata_errors=False)


def test_card_metadata_holds_the_exact_validation_figures(pair):
    from huggingface_hub.repocard_data import model_index_to_eval_results

    for run_dir in pair:
        card = load_card(run_dir / "README.md")
        evaluation = read_json(run_dir / "eval_results.json")
        results = card.data.eval_results
        assert [(r.metric_type, r.metric_value) for r in results] == [
            ("perplexity", evaluation["eval_perplexity"]), ("loss", evaluation["eval_token_loss"])]  # exact values
        for result in results:
            assert (result.task_type, result.dataset_name, result.dataset_split) == (
                "text-generation", "sample_dialogues.json", "validation")
            assert result.dataset_revision == file_sha256(REPO / "data" / "sample_dialogues.json")
            assert result.dataset_args == {"validation_split_ratio": 0.2, "split_seed": 42, "max_dialogues": 80,
                                           "data_path": "data/sample_dialogues.json"}
        model_index = card.data.to_dict()["model-index"]
        assert model_index[0]["name"] == run_dir.name and len(model_index[0]["results"]) == 1  # one dataset, 2 metrics
        assert model_index_to_eval_results(model_index)[1] == results


def test_card_body_shows_each_epoch_and_the_adapter(pair):
    full, lora = pair
    for run_dir in pair:
        text = load_card(run_dir / "README.md").text
        history = read_json(run_dir / "trainer_state.json")["log_history"]
        evals = [e for e in history if "eval_token_loss" in e]
        steps = sorted({e["step"] for e in evals})
        for step in steps:
            entry = next(e for e in evals if e["step"] == step)
            train_loss = [e["loss"] for e in history if "loss" in e and e["step"] <= step][-1]
            best_checkpoint = read_json(run_dir / "train_results.json")["best_checkpoint"]
            best = " best |" if best_checkpoint.endswith(f"-{step}") else "  |"
            assert (f"| {entry['epoch']:g} | {step} | {train_loss:.4f} | {entry['eval_token_loss']:.4f} | "
                    f"{entry['eval_perplexity']:.2f} |{best}") in text
        assert "The weights here are the best checkpoint's" in text
    adapter = read_json(lora / "adapter_config.json")
    targets = ", ".join(sorted(adapter["target_modules"]))
    assert sorted(adapter["target_modules"]) == ["c_attn", "c_fc", "c_proj"]  # GPT-2's defaults, as PEFT resolved them
    text = load_card(lora / "README.md").text
    assert f"| LoRA | r 8, alpha 16, dropout 0.05, modules {targets} |" in text
    assert f"A LoRA adapter (r=8, alpha=16, on {targets})" in text


def test_evaluating_the_run_puts_its_figures_in_the_card(pair, tmp_path):
    run_dir = Path(shutil.copytree(pair[1], tmp_path / "smoke-lora", ignore=shutil.ignore_patterns("checkpoint-*")))
    result = subprocess.run([sys.executable, "scripts/evaluate.py", "--model_path", str(run_dir), "--num_samples", "4",
                             "--max_new_tokens", "8", "--wandb", "off"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"model card: {run_dir / 'README.md'}" in result.stdout
    evaluation = read_json(run_dir / "evaluation.json")
    results = load_card(run_dir / "README.md").data.eval_results
    training, posthoc = results[:2], results[2:]
    assert [r.metric_value for r in training] == [read_json(run_dir / "eval_results.json")[k]
                                                  for k in ("eval_perplexity", "eval_token_loss")]
    speakers = evaluation["perplexity"]["per_speaker"]
    assert [(r.metric_type, r.metric_value) for r in posthoc] == [
        ("perplexity", evaluation["perplexity"]["perplexity"]), ("loss", evaluation["perplexity"]["token_loss"]),
        *[("perplexity", speakers[name]["perplexity"]) for name in speakers],
        ("distinct-2", evaluation["quality"]["distinct_2"]),
        ("clean_end_share", evaluation["quality"]["clean_end_share"])]
    assert [r.metric_name for r in posthoc[2:4]] == [f"Perplexity of {name}'s turns (scripts/evaluate.py)"
                                                     for name in ("Alex", "Bob")]
    assert {(r.dataset_name, r.dataset_split, r.dataset_revision) for r in posthoc} == {
        ("sample_dialogues.json", "validation", evaluation["data"]["data_sha256"])}

    # A checkpoint's evaluation goes to its own folder and leaves the run's card alone.
    card_before = (pair[0] / "README.md").read_text()
    checkpoint = pair[0] / "checkpoint-7"
    result = subprocess.run([sys.executable, "scripts/evaluate.py", "--model_path", str(checkpoint), "--num_samples",
                             "1", "--max_new_tokens", "2", "--wandb", "off", "--output_file",
                             str(tmp_path / "checkpoint.json")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "model card:" not in result.stdout
    assert (pair[0] / "README.md").read_text() == card_before
