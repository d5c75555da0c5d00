"""Training runs on the tiny offline model: full and LoRA, checkpoints, resume, refusal to overwrite."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import OFFLINE_MODEL, REPO
from recipe.config import (
    DataArguments,
    DialogueTrainingArguments,
    LoraArguments,
    ModelArguments,
    RecipeParser,
)
from recipe.training.output_dir import OutputDirError
from recipe.training.run import run_training

SMOKE = REPO / "recipe" / "configs" / "smoke.yaml"


def parse(*argv):
    parser = RecipeParser((ModelArguments, DataArguments, LoraArguments, DialogueTrainingArguments))
    *configs, _ = parser.parse_args_and_config(list(argv))
    return configs


def smoke_args(tmp_path, *extra, output="run"):
    """The smoke recipe on a small slice of the data; fp32 so that runs compare exactly."""
    return [
        "--config", str(SMOKE), "--output_dir", str(tmp_path / output), "--max_dialogues", "80",
        "--num_train_epochs", "2", "--bf16", "false", "--save_total_limit", "5", "--per_device_train_batch_size", "2",
        "--dataset_cache_dir", str(tmp_path / "cache"), "--report_to", "none", "--disable_tqdm", "true", *extra,
    ]


def train(tmp_path, *extra, output="run"):
    return run_training(*parse(*smoke_args(tmp_path, *extra, output=output)))


def losses(run_dir):
    state = json.loads((Path(run_dir) / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def test_full_run_writes_checkpoints_metrics_and_records(tmp_path):
    result = train(tmp_path, "--logging_steps", "1")
    out = result.output_dir
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-14", "checkpoint-7"]  # one per epoch, 7 steps each (14 packed rows, 2 per step)
    eval_results = json.loads((out / "eval_results.json").read_text())
    assert eval_results["eval_perplexity"] == pytest.approx(2.718281828459045 ** eval_results["eval_token_loss"])
    assert eval_results["eval_num_tokens"] > 0
    train_results = json.loads((out / "train_results.json").read_text())
    assert train_results["global_step"] == 14 and train_results["mode"] == "full"
    report = json.loads((out / "data_report.json").read_text())
    assert train_results["train_real_tokens"] == 2 * report["train"]["tokens"]
    environment = json.loads((out / "environment.json").read_text())
    assert environment["packages"]["transformers"] and environment["data"]["data_sha256"]
    run_config = yaml.safe_load((out / "run_config.yaml").read_text())
    assert run_config["max_dialogues"] == 80 and run_config["num_train_epochs"] == 2.0
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 0
    assert json.loads((out / "config.json").read_text())["use_cache"] is True
    history = losses(out)
    assert history[-1] < history[0] - 1.0  # learning happens


def test_overfitting_a_few_dialogues_drives_the_loss_down_and_moves_every_weight(tmp_path):
    from transformers import AutoModelForCausalLM

    result = train(
        tmp_path, "--max_dialogues", "8", "--validation_split_ratio", "0", "--num_train_epochs", "100",
        "--save_strategy", "no", "--load_best_model_at_end", "false", "--learning_rate", "1e-2", "--logging_steps", "1",
        "--warmup_steps", "0",
    )
    history = losses(result.output_dir)
    assert history[-1] < 1.0 < history[0]
    assert not (result.output_dir / "eval_results.json").exists()  # no validation data, no evaluation
    initial = fresh_base(ModelArguments(model_name_or_path=str(OFFLINE_MODEL), random_init=True))
    trained = AutoModelForCausalLM.from_pretrained(result.output_dir)
    for (name, before), after in zip(initial.named_parameters(), trained.parameters()):
        assert not torch.equal(before, after), f"{name} did not change"


def test_lora_trains_adapters_only_and_merges_to_the_same_logits(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = train(tmp_path, "--config", str(REPO / "recipe/configs/smoke-lora.yaml"), "--merge_lora", "true",
                   "--lora_dropout", "0")
    out = result.output_dir
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert not (out / "model.safetensors").exists()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-14", "checkpoint-7"]
    assert (out / "checkpoint-7" / "adapter_model.safetensors").is_file()

    # Trainable count: r * (in + out) per adapted projection; 2 layers x (c_attn, c_proj x 2, c_fc).
    r, width = 8, 64
    per_layer = r * (width + 3 * width) + r * (width + width) + r * (width + 4 * width) + r * (4 * width + width)
    metrics = result.train_metrics
    assert metrics["trainable_parameters"] == 2 * per_layer
    assert metrics["total_parameters"] == 263_936 + 2 * per_layer

    # merged/ was written from the trained model in memory. It must equal a fresh base (same seed)
    # plus the saved adapter: so training moved no base weight, and merging is exact.
    model_args = ModelArguments(model_name_or_path=str(OFFLINE_MODEL), random_init=True)
    expected = PeftModel.from_pretrained(fresh_base(model_args), out).merge_and_unload().state_dict()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    for name, weight in merged.state_dict().items():
        torch.testing.assert_close(weight, expected[name], atol=1e-6, rtol=1e-6, msg=f"{name} differs")

    adapted = PeftModel.from_pretrained(fresh_base(model_args), out).eval()
    inputs = torch.tensor([[5, 17, 300, 42, 9, 1000]])
    with torch.no_grad():
        torch.testing.assert_close(merged(inputs).logits, adapted(inputs).logits, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(adapted(inputs).logits, fresh_base(model_args)(inputs).logits, atol=1e-3)


def fresh_base(model_args):
    """The random base model exactly as training built it (the smoke recipes use seed 42)."""
    from recipe.models.loading import get_model, get_tokenizer

    torch.manual_seed(42)
    return get_model(model_args, get_tokenizer(model_args)).eval()


def test_resume_from_epoch_one_matches_an_uninterrupted_run(tmp_path):
    full = train(tmp_path, "--num_train_epochs", "3", output="full")
    # An interrupted run: what the full run had on disk after epoch 1, plus a checkpoint torn mid-save.
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    shutil.copy(full.output_dir / "run_config.yaml", interrupted)
    shutil.copytree(full.output_dir / "checkpoint-7", interrupted / "checkpoint-7")
    torn = interrupted / "checkpoint-14"
    torn.mkdir()
    shutil.copy(full.output_dir / "checkpoint-14" / "model.safetensors", torn)  # weights, no trainer_state.json
    resumed = train(tmp_path, "--num_train_epochs", "3", output="interrupted")
    assert resumed.train_metrics["resumed_from"] == str(interrupted / "checkpoint-7")
    assert (interrupted / "incomplete-checkpoint-14").is_dir()  # set aside, not deleted, not used
    assert resumed.eval_metrics["eval_token_loss"] == pytest.approx(full.eval_metrics["eval_token_loss"], rel=1e-5)
    assert losses(interrupted)[-1] == pytest.approx(losses(full.output_dir)[-1], rel=1e-5)


def test_same_seed_gives_identical_losses_step_for_step(tmp_path):
    first = train(tmp_path, "--logging_steps", "1", output="a")
    second = train(tmp_path, "--logging_steps", "1", output="b")
    assert losses(first.output_dir) == losses(second.output_dir)
    assert len(losses(first.output_dir)) == 14


def test_a_finished_run_is_never_silently_overwritten(tmp_path):
    train(tmp_path, "--num_train_epochs", "1")
    with pytest.raises(OutputDirError,
                       match=r"holds a finished run \(train_results\.json\); pass --overwrite_output_dir true"):
        train(tmp_path, "--num_train_epochs", "1")
    again = train(tmp_path, "--num_train_epochs", "1", "--overwrite_output_dir", "true")
    assert again.train_metrics["resumed_from"] is None


def test_foreign_output_dir_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="not empty and was not written by this recipe"):
        train(tmp_path, "--overwrite_output_dir", "true")
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_lora_with_gradient_checkpointing(tmp_path):
    result = train(tmp_path, "--config", str(REPO / "recipe/configs/smoke-lora.yaml"), "--gradient_checkpointing",
                   "true", "--num_train_epochs", "1", "--max_dialogues", "30")
    assert result.train_metrics["final_train_loss"] is not None
    assert (result.output_dir / "adapter_model.safetensors").is_file()


def test_early_stopping_needs_and_uses_evaluation(tmp_path):
    result = train(tmp_path, "--early_stopping_patience", "1", "--early_stopping_threshold", "10",
                   "--num_train_epochs", "4")
    assert result.train_metrics["global_step"] == 14  # stopped after epoch 2: epoch 2 did not improve by 10 nats


def test_tokens_per_second_counts_training_steps_only(tmp_path, monkeypatch):
    """Evaluation and checkpoints run inside trainer.train(): they are timed apart, and throughput divides the
    real tokens by the steps' time alone. Here every evaluation is made 1 s slower than it is."""
    import time

    from transformers import Trainer

    evaluate = Trainer.evaluate

    def slow_evaluate(self, *args, **kwargs):
        time.sleep(1.0)
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "evaluate", slow_evaluate)
    result = train(tmp_path)
    metrics = json.loads((result.output_dir / "train_results.json").read_text())
    assert metrics["train_evaluation_runtime"] >= 2.0  # two evaluations inside train(), the final one outside
    assert metrics["train_checkpoint_runtime"] > 0
    phases = metrics["train_steps_runtime"] + metrics["train_evaluation_runtime"] + metrics["train_checkpoint_runtime"]
    assert 0 < metrics["train_steps_runtime"] and phases <= metrics["train_runtime"] + 0.05
    assert metrics["train_real_tokens_per_second"] == pytest.approx(
        metrics["train_real_tokens"] / metrics["train_steps_runtime"], rel=0.01)
    assert metrics["train_steps_per_second"] == pytest.approx(14 / metrics["train_steps_runtime"], rel=0.01)


@pytest.fixture
def interrupted(tmp_path):
    """What a run of 2 epochs leaves when stopped after epoch 1: its records and checkpoint-7, on a copy of the data."""
    data = tmp_path / "dialogues.json"
    shutil.copy(REPO / "data" / "sample_dialogues.json", data)
    finished = train(tmp_path, "--data_path", str(data), output="finished")
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(finished.output_dir / "environment.json", run)
    (run / "run_config.yaml").write_text((finished.output_dir / "run_config.yaml").read_text().replace(
        str(finished.output_dir), str(run)))
    shutil.copytree(finished.output_dir / "checkpoint-7", run / "checkpoint-7")
    return run, data


@pytest.mark.parametrize("flags, named", [
    (["--learning_rate", "0.001"], r"learning_rate 0\.006 -> 0\.001"),
    (["--max_length", "64", "--use_lora", "true"], r"max_length 128 -> 64; use_lora False -> True"),
    (["--num_train_epochs", "1"], r"num_train_epochs 2\.0 -> 1\.0"),  # shortened: not an extension
])
def test_resuming_with_other_options_is_refused_before_any_work(tmp_path, interrupted, flags, named):
    run, data = interrupted
    before = (run / "run_config.yaml").read_text()
    with pytest.raises(OutputDirError, match=rf"output_dir {run} holds an interrupted run \(last checkpoint "
                                             rf"checkpoint-7\) with other options than these: {named}\. .*"
                                             r"--output_dir NEW, or replace this one with --overwrite_output_dir true"):
        train(tmp_path, "--data_path", str(data), *flags)
    assert (run / "run_config.yaml").read_text() == before  # the records still describe the interrupted run
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-7"] and not (run / "resumes.json").exists()


def test_resuming_with_an_edited_data_file_is_refused(tmp_path, interrupted):
    run, data = interrupted
    data.write_text(data.read_text().replace('"Hello', '"Hi', 1))
    with pytest.raises(OutputDirError, match=rf"other options than these: data_path {data} \(its content, SHA-256\) "):
        train(tmp_path, "--data_path", str(data))


def test_extending_a_run_and_changing_its_logging_resume_and_are_recorded(tmp_path, interrupted):
    run, data = interrupted
    result = train(tmp_path, "--data_path", str(data), "--num_train_epochs", "3", "--logging_steps", "2")
    assert result.train_metrics["resumed_from"] == str(run / "checkpoint-7")
    assert result.train_metrics["global_step"] == 21
    (entry,) = json.loads((run / "resumes.json").read_text())
    assert entry["checkpoint"] == str(run / "checkpoint-7") and entry["compared"] is True
    assert entry["changed"] == {"logging_steps": [10, 2], "num_train_epochs": [2.0, 3.0]}
    assert entry["machine_changed"] == {}  # same machine, same process count
    header = (run / "run_config.yaml").read_text().split("\n")[:3]
    assert header[2] == ("# It was resumed with other options (resumes.json): a replay runs the options below from "
                         "the start.")
