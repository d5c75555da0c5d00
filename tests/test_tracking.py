"""W&B (offline), the model card and Hub pushes: what gets logged, written and pushed, and that neither
W&B nor the Hub failing ever stops training or loses a local file."""

import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from recipe.common.redaction import redact_command
from recipe.common.run_dir import RunDir
from recipe.config import (
    ConfigError,
    DataArguments,
    DialogueTrainingArguments,
    EvaluationArguments,
    GenerationArguments,
    LoraArguments,
    ModelArguments,
    RecipeParser,
    TrackingArguments,
)
from recipe.evaluation.run import evaluate_model, log_results_to_wandb
from recipe.tracking import (
    CARD_TAG,
    HubPushError,
    RunTracker,
    build_model_card,
    choose_wandb_mode,
    init_wandb_run,
    log_evaluation_to_wandb,
    push_run_to_hub,
)
from recipe.training.environment import environment_record
from recipe.training.run import run_training
from test_training import smoke_args

SMOKE_LORA = REPO / "recipe" / "configs" / "smoke-lora.yaml"


def train_tracked(tmp_path, *extra, output="run"):
    parser = RecipeParser((ModelArguments, DataArguments, LoraArguments, DialogueTrainingArguments, TrackingArguments))
    *configs, _ = parser.parse_args_and_config(smoke_args(tmp_path, *extra, output=output))
    return run_training(*configs)


def read_json(path):
    return json.loads(Path(path).read_text())


# ----------------------------------------------------------------------------------------------
# Reading what an offline W&B run wrote: its .wandb file is a LevelDB-style log of protobuf records
# (32 KiB blocks; each record: CRC32 (4 bytes), length (2), type (1: full, 2: first, 3: middle, 4: last)).


def wandb_records(run_dir):
    from wandb.proto import wandb_internal_pb2

    (path,) = Path(run_dir).glob("*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    position, block, pending = 7, 32768, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunk = data[position + 7:position + 7 + length]
        if len(chunk) < length:  # the service is still appending this record: what is complete so far
            return
        position += 7 + length
        if kind == 2:
            pending = chunk
            continue
        if kind == 3:
            pending += chunk
            continue
        if kind not in (1, 4):
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending + chunk if kind == 4 else chunk)
        pending = b""
        yield record


def _key(item):
    return "/".join(item.nested_key) if item.nested_key else item.key


def finished_records(run_dir, timeout=30.0):
    """The run's records once its exit record is on disk: wandb's service process writes the log
    asynchronously, so run.finish() can return before the file is complete."""
    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + timeout
    while True:
        try:
            records = list(wandb_records(run_dir))
        except DecodeError:  # read in the middle of a write; a later read sees it whole
            if time.monotonic() > deadline:
                raise
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def read_offline_run(run_dir):
    """The run record, config, history rows and final summary of an offline run directory."""
    run, config, history, summary = None, {}, [], {}
    for record in finished_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            config.update({_key(i): json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            config.update({_key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
    return run, config, history, summary


def series(history, key):
    return [row[key] for row in history if key in row]


class LogLines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory):
    """One full smoke run logged to W&B offline, shared by the tests that read what it wrote."""
    tmp_path = tmp_path_factory.mktemp("wandb-run")
    log = LogLines()
    logging.getLogger("recipe").addHandler(log)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_DIR", str(tmp_path))
        try:
            result = train_tracked(tmp_path, "--report_to", "wandb", "--logging_steps", "1")
        finally:
            logging.getLogger("recipe").removeHandler(log)
    return result.output_dir, log.lines


# ----------------------------------------------------------------------------------------------
# Weights & Biases


def test_wandb_logs_curves_eval_metrics_config_and_environment_offline(wandb_run):
    run_dir, log_lines = wandb_run
    record = read_json(run_dir / "wandb_run.json")
    assert record["mode"] == "offline" and record["project"] == "dialogue-finetune" and record["group"] == "full"
    assert Path(record["run_dir"]).name.startswith("offline-run-") and record["id"] in record["run_dir"]
    run, config, history, summary = read_offline_run(record["run_dir"])
    assert run.run_id == record["id"] and run.run_group == "full" and list(run.tags) == ["full"]
    assert run.display_name == "run" and run.job_type == "train"

    # The resolved config (run_config.yaml) and the environment (environment.json) are the run's config.
    assert config["mode"] == "full" and config["use_lora"] is False and config["max_dialogues"] == 80
    assert config["environment"] == read_json(run_dir / "environment.json")
    assert config["report_to"] == ["wandb"]

    # Training curve and per-epoch evaluation, the same numbers the Trainer recorded.
    state = read_json(run_dir / "trainer_state.json")["log_history"]
    assert series(history, "train/loss") == [e["loss"] for e in state if "loss" in e]
    assert len(series(history, "train/loss")) == 14
    assert series(history, "eval/token_loss") == [e["eval_token_loss"] for e in state if "eval_token_loss" in e]
    assert len(series(history, "eval/token_loss")) == 3  # epochs 1 and 2, then the final evaluation

    train_results, eval_results = read_json(run_dir / "train_results.json"), read_json(run_dir / "eval_results.json")
    assert summary["train/real_tokens_per_second"] == train_results["train_real_tokens_per_second"]
    assert summary["train/peak_memory_mb"] == train_results["peak_memory_mb"]
    assert summary["train/trainable_parameters"] == train_results["trainable_parameters"]
    assert summary["eval/token_loss"] == pytest.approx(eval_results["eval_token_loss"])
    assert summary["eval/perplexity"] == pytest.approx(eval_results["eval_perplexity"])

    offline_lines = [line for line in log_lines if "W&B is offline" in line]
    assert len(offline_lines) == 1 and f"wandb sync {record['run_dir']}" in offline_lines[0]


def test_a_lora_run_sits_in_the_lora_group_under_the_same_metric_names(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    result = train_tracked(tmp_path, "--config", str(SMOKE_LORA), "--report_to", "wandb", "--num_train_epochs", "1",
                           "--wandb_tags", "exp1", "--wandb_project", "dialogue-tests", "--run_name", "lora-1",
                           "--merge_lora", "true")
    record = read_json(result.output_dir / "wandb_run.json")
    assert record["group"] == "lora" and record["project"] == "dialogue-tests"
    run, config, history, _ = read_offline_run(record["run_dir"])
    assert run.run_group == "lora" and list(run.tags) == ["lora", "exp1"] and run.display_name == "lora-1"
    assert config["mode"] == "lora" and config["use_lora"] is True
    assert series(history, "train/loss") and series(history, "eval/token_loss")

    # The model card is ours, not the draft PEFT writes next to the adapter.
    from huggingface_hub import ModelCard

    card = ModelCard.load(result.output_dir / "README.md")
    assert card.data.library_name == "peft" and CARD_TAG in card.data.tags and "lora" in card.data.tags
    # tests/test_outputs.py runs it
    assert f'AutoPeftModelForCausalLM.from_pretrained("{result.output_dir}")' in card.text
    merged = ModelCard.load(result.output_dir / "merged" / "README.md")  # merged/ gets a card of its own
    assert merged.data.library_name == "transformers"
    assert f'AutoModelForCausalLM.from_pretrained("{result.output_dir}/merged")' in merged.text


def test_without_key_or_server_wandb_runs_offline(tmp_path, monkeypatch):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    assert choose_wandb_mode() == ("offline", "no W&B API key (set WANDB_API_KEY or run `wandb login`)")
    (tmp_path / "netrc").write_text("machine 127.0.0.1\n  login user\n  password " + "k" * 40 + "\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # `wandb login` stores the key here
    assert choose_wandb_mode() == ("offline", "http://127.0.0.1:9 is not reachable")
    assert choose_wandb_mode(preferred="offline")[0] == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert choose_wandb_mode()[0] == "disabled"
    assert init_wandb_run({"project": "p"}) is None  # disabled: no run, no error

    monkeypatch.setenv("WANDB_MODE", "online")  # asked for online, but without a key it cannot be
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert choose_wandb_mode()[0] == "offline"


def test_when_wandb_fails_online_it_goes_offline(tmp_path, monkeypatch, caplog):
    import wandb

    import recipe.tracking

    real_init = wandb.init

    def init(*args, mode=None, **kwargs):
        if mode == "online":
            raise RuntimeError("401 invalid API key")
        return real_init(*args, mode=mode, **kwargs)

    monkeypatch.setattr(recipe.tracking.wandb_run, "choose_wandb_mode", lambda preferred=None: ("online", None))
    monkeypatch.setattr(wandb, "init", init)
    with caplog.at_level(logging.WARNING, logger="recipe"):
        run = init_wandb_run({"project": "p", "dir": str(tmp_path)})
    assert run is not None and run.offline
    run.finish()
    (line,) = [m for m in caplog.messages if "W&B is offline" in m]
    assert "wandb.init online failed: 401 invalid API key" in line and "wandb sync" in line


@pytest.mark.parametrize("failure", ["init", "log"])
def test_wandb_failures_never_stop_training(tmp_path, monkeypatch, caplog, failure):
    import wandb
    from wandb.sdk.wandb_run import Run

    def fail(*args, **kwargs):
        raise RuntimeError("W&B is down")

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setattr(wandb, "init", fail) if failure == "init" else monkeypatch.setattr(Run, "log", fail)
    with caplog.at_level(logging.WARNING, logger="recipe"):
        result = train_tracked(tmp_path, "--report_to", "wandb", "--num_train_epochs", "1")
    out = result.output_dir
    for name in ("train_results.json", "eval_results.json", "model.safetensors", "README.md", "checkpoint-7"):
        assert (out / name).exists(), name
    expected = "W&B could not start (W&B is down)" if failure == "init" else "W&B logging failed (W&B is down)"
    assert sum(expected in message for message in caplog.messages) == 1
    assert (out / "wandb_run.json").exists() == (failure == "log")


def test_evaluation_is_logged_to_the_training_run(wandb_run, tmp_path):
    from huggingface_hub import ModelCard  # noqa: F401 - imported here to keep the module import light

    run_dir, _ = wandb_run
    training = read_json(run_dir / "wandb_run.json")
    metrics = {"eval/perplexity": 12.5, "eval/distinct_1": 0.4}
    samples = [
        {"prompt": "Alex: Hi\nBob:", "reply": "Hello there.", "reference": "Hi!", "speaker": "Bob"},
        {"prompt": "Alex: Bye\nBob:", "reply": "", "reference": None},
    ]
    logged = log_evaluation_to_wandb(run_dir, metrics, samples)
    assert logged is not None and logged != training["run_dir"]
    run, _, history, summary = read_offline_run(logged)
    assert run.run_id == training["id"]  # resumed: `wandb sync` uploads both parts into one run
    assert series(history, "eval/perplexity") == [12.5] and summary["eval/distinct_1"] == 0.4
    (table_file,) = Path(logged, "files", "media", "table", "posthoc_eval").glob("samples_*.table.json")
    table = read_json(table_file)
    assert table["columns"] == ["prompt", "reply", "reference"]
    assert table["data"] == [["Alex: Hi\nBob:", "Hello there.", "Hi!"], ["Alex: Bye\nBob:", "", None]]

    new = log_evaluation_to_wandb(run_dir, metrics, samples, new_run=True, project="dialogue-evals")
    run, _, _, _ = read_offline_run(new)
    assert run.run_id != training["id"] and run.project == "dialogue-evals" and run.job_type == "evaluation"
    assert run.run_group == "full"  # from the run's run_config.yaml


def test_posthoc_evaluation_has_its_own_names_and_records_its_data(wandb_run, tmp_path):
    """scripts/evaluate.py's figures never mix with the Trainer's eval/ ones, and say what they measured."""
    run_dir, _ = wandb_run
    eval_args = EvaluationArguments(model_path=str(run_dir), num_samples=2, output_file=str(tmp_path / "e.json"))
    results = evaluate_model(eval_args, GenerationArguments(max_new_tokens=4))
    assert results["differs_from_training_eval"] == []  # the run's split, every token, fp32 as trained
    trained = read_json(run_dir / "eval_results.json")["eval_token_loss"]
    assert results["perplexity"]["token_loss"] == pytest.approx(trained, rel=1e-4)
    data = results["data"]
    assert (data["data_path"], data["split"], data["num_dialogues"], data["train_on_speakers_ignored"]) == (
        "data/sample_dialogues.json", "validation", 16, False)
    assert data["data_sha256"] == read_json(run_dir / "environment.json")["data"]["data_sha256"]

    logged = log_results_to_wandb(eval_args, results)
    run, config, history, summary = read_offline_run(logged)
    assert run.run_id == read_json(run_dir / "wandb_run.json")["id"]  # the training run, resumed
    assert series(history, "posthoc_eval/perplexity") == [results["perplexity"]["perplexity"]]
    assert series(history, "posthoc_eval/token_loss") == [results["perplexity"]["token_loss"]]
    assert not [key for row in history for key in row if key.startswith("eval/")]  # the Trainer's names stay its own
    assert config["posthoc_eval"] == summary["posthoc_eval/source"]
    assert {k: config["posthoc_eval"][k] for k in data} == data
    assert config["posthoc_eval"]["differs_from_training_eval"] == []

    # Another quantity: every speaker's tokens of a run that trained on Bob's only.
    recipe_file = tmp_path / "bob.yaml"
    recipe_file.write_text(yaml.safe_dump({**yaml.safe_load((run_dir / "run_config.yaml").read_text()),
                                           "train_on_speakers": ["Bob"]}))
    other = evaluate_model(EvaluationArguments(model_path=str(run_dir), num_samples=1, data_config=str(recipe_file),
                                               wandb="off"), GenerationArguments(max_new_tokens=2))
    assert other["data"]["train_on_speakers"] == ["Bob"] and other["data"]["train_on_speakers_ignored"] is True
    assert other["differs_from_training_eval"] == [
        f"the data and split of --data_config {recipe_file}",
        "every speaker's tokens, where training counted only those of ['Bob']",
    ]


def test_evaluation_logging_never_raises(wandb_run, monkeypatch, caplog):
    import wandb

    def fail(*args, **kwargs):
        raise RuntimeError("no W&B today")

    monkeypatch.setattr(wandb, "init", fail)
    with caplog.at_level(logging.WARNING, logger="recipe"):
        assert log_evaluation_to_wandb(wandb_run[0], {"eval/perplexity": 3.0}, []) is None
    assert any("no W&B today" in message for message in caplog.messages)


# ----------------------------------------------------------------------------------------------
# Model card


def test_model_card_describes_the_run(wandb_run):
    from huggingface_hub import ModelCard

    run_dir, _ = wandb_run
    card = ModelCard.load(run_dir / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert {CARD_TAG, "full", "dialogue"} <= set(card.data.tags)
    assert card.data.base_model is None  # a random-init model has no Hub base to point at
    train, evaluation = read_json(run_dir / "train_results.json"), read_json(run_dir / "eval_results.json")
    report = read_json(run_dir / "data_report.json")
    text = card.text
    assert f"| eval token loss (nats/token, exact) | {evaluation['eval_token_loss']:.4f} |" in text
    assert f"| eval perplexity | {evaluation['eval_perplexity']:.2f} |" in text
    assert f"| final train loss | {train['final_train_loss']:.4f} |" in text
    assert f"| train runtime (s) | {train['train_runtime']:.1f} |" in text
    t = report["train"]
    assert f"| train | {t['dialogues']} | {t['turns']} | {t['tokens']:,} | {t['loss_tokens']:,} |" in text
    assert "Split by dialogue: 0.2 held out for validation (split_seed 42)" in text
    assert "| mode | full fine-tuning |" in text and "| epochs | 2.0 |" in text
    assert f'AutoModelForCausalLM.from_pretrained("{run_dir}")' in text
    assert f"python scripts/chat.py --model_path {run_dir}" in text
    assert f"python scripts/evaluate.py --model_path {run_dir}" in text


def test_model_card_metadata_for_a_hub_base_model_and_dataset(wandb_run, tmp_path):
    run_dir, _ = wandb_run
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("train_results.json", "eval_results.json", "data_report.json", "environment.json"):
        shutil.copy(run_dir / name, copy)
    config = yaml.safe_load((run_dir / "run_config.yaml").read_text())
    config.update(model_name_or_path="distilgpt2", random_init=False, data_path="someone/dialogues",
                  use_lora=True, lora_r=16, lora_alpha=32)
    (copy / "run_config.yaml").write_text(yaml.safe_dump(config))
    card = build_model_card(RunDir(copy), hub_model_id="me/dialogue-distilgpt2")
    assert card.data.base_model == "distilgpt2" and card.data.datasets == ["someone/dialogues"]
    assert card.data.library_name == "peft" and card.data.model_name == "dialogue-distilgpt2"
    assert 'AutoPeftModelForCausalLM.from_pretrained("me/dialogue-distilgpt2")  # base: distilgpt2' in card.text
    assert "hf download me/dialogue-distilgpt2 --local-dir MODEL_DIR" in card.text
    assert "A LoRA adapter (r=16, alpha=32" in card.text


# ----------------------------------------------------------------------------------------------
# Hugging Face Hub


def test_hub_options_configure_the_trainer():
    from transformers.trainer_utils import HubStrategy

    parser = RecipeParser((ModelArguments, DataArguments, LoraArguments, DialogueTrainingArguments, TrackingArguments))
    *_, training_args, tracking_args, _ = parser.parse_args_and_config(
        ["--config", str(SMOKE_LORA), "--push_to_hub", "true", "--hub_model_id", "me/smoke", "--hub_private_repo",
         "true", "--merge_lora", "true", "--hub_merged_model_id", "me/smoke-merged", "--bf16", "false"]
    )
    assert training_args.push_to_hub and training_args.hub_model_id == "me/smoke" and training_args.hub_private_repo
    assert training_args.hub_strategy == HubStrategy.ALL_CHECKPOINTS  # every epoch's checkpoint-N/ is pushed
    assert training_args.hub_always_push  # even while the previous push is still uploading
    assert tracking_args.hub_merged_model_id == "me/smoke-merged"
    with pytest.raises(ConfigError, match="hub_merged_model_id needs --use_lora true --merge_lora true"):
        RunTracker(tracking_args, LoraArguments(use_lora=True), RunDir("out"), True, push_to_hub=True)


class FakeHubApi:
    """Stands in for HfApi (the Trainer's and ours): records what would be uploaded, or fails."""

    def __init__(self, fail_uploads=False):
        self.fail_uploads = fail_uploads
        self.created, self.uploads = [], []

    def create_repo(self, repo_id, token=None, private=None, exist_ok=False, **kwargs):
        from huggingface_hub import RepoUrl

        self.created.append((repo_id, private))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, path_in_repo=None, ignore_patterns=None, run_as_future=False,
                      **kwargs):
        from huggingface_hub.utils import filter_repo_objects

        folder = Path(folder_path)
        files = sorted(filter_repo_objects(
            [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()],
            ignore_patterns=ignore_patterns,
        ))
        readme = (folder / "README.md").read_text() if "README.md" in files else None
        self.uploads.append({"repo": repo_id, "folder": folder, "path_in_repo": path_in_repo, "files": files,
                             "readme": readme})
        error = OSError("503 Service Unavailable") if self.fail_uploads else None
        if run_as_future:
            future = Future()
            future.set_exception(error) if error else future.set_result("ok")
            return future
        if error:
            raise error
        return "ok"


@pytest.fixture
def fake_hub(monkeypatch):
    import transformers.trainer

    import recipe.tracking

    def install(**kwargs):
        api = FakeHubApi(**kwargs)
        monkeypatch.setattr(recipe.tracking.hub_push, "hub_api", lambda: api)
        monkeypatch.setattr(transformers.trainer, "hf_api", lambda: api)
        monkeypatch.setattr(recipe.tracking.hub_push, "hub_unreachable_reason", lambda: None)
        return api

    return install


def test_every_epoch_checkpoint_and_then_the_model_with_our_card_are_pushed(tmp_path, fake_hub):
    api = fake_hub()
    result = train_tracked(tmp_path, "--push_to_hub", "true", "--hub_model_id", "me/smoke", "--hub_private_repo",
                           "true")
    out = result.output_dir
    assert ("me/smoke", True) in api.created
    checkpoint_pushes = [u["path_in_repo"] for u in api.uploads if u["path_in_repo"]]
    assert checkpoint_pushes == ["checkpoint-7", "checkpoint-14"]  # each epoch, as its own folder
    final = api.uploads[-1]
    assert final["folder"] == out and final["path_in_repo"] is None
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "train_results.json",
            "eval_results.json", "run_config.yaml", "data_report.json"} <= set(final["files"])
    assert not [f for f in final["files"] if f.startswith("checkpoint-")]
    assert CARD_TAG in final["readme"] and 'from_pretrained("me/smoke")' in final["readme"]  # ours, not the Trainer's
    assert (out / "README.md").read_text() == final["readme"]


def test_a_lora_run_pushes_its_adapter_and_the_merged_model_to_a_second_repo(tmp_path, fake_hub):
    from huggingface_hub import ModelCard

    api = fake_hub()
    result = train_tracked(tmp_path, "--config", str(SMOKE_LORA), "--num_train_epochs", "1", "--merge_lora", "true",
                           "--push_to_hub", "true", "--hub_model_id", "me/smoke-lora",
                           "--hub_merged_model_id", "me/smoke-merged")
    adapter, merged = api.uploads[-2], api.uploads[-1]
    assert adapter["repo"] == "me/smoke-lora" and merged["repo"] == "me/smoke-merged"
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= set(adapter["files"])
    assert "model.safetensors" not in adapter["files"] and not [f for f in adapter["files"] if "merged" in f]
    assert merged["folder"] == result.output_dir / "merged"
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= set(merged["files"])
    adapter_card = ModelCard.load(result.output_dir / "README.md")
    merged_card = ModelCard.load(result.output_dir / "merged" / "README.md")
    assert adapter_card.data.library_name == "peft" and merged_card.data.library_name == "transformers"
    assert 'PeftModel.from_pretrained(base, "me/smoke-lora")' in adapter_card.text
    assert "base_model/model.safetensors" in adapter["files"]  # the random base travels with its adapter
    assert 'AutoModelForCausalLM.from_pretrained("me/smoke-merged")' in merged_card.text
    assert "with its LoRA adapter merged in" in merged_card.text


def test_failed_pushes_warn_with_the_retry_command_and_lose_nothing(tmp_path, fake_hub, caplog):
    fake_hub(fail_uploads=True)
    with caplog.at_level(logging.WARNING, logger="recipe"):
        result = train_tracked(tmp_path, "--push_to_hub", "true", "--hub_model_id", "me/smoke")
    out = result.output_dir
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-14", "checkpoint-7"]
    for name in ("model.safetensors", "train_results.json", "eval_results.json", "README.md"):
        assert (out / name).is_file(), name
    retry = f"python scripts/push.py {out} --hub_model_id me/smoke"
    assert any("pushing checkpoint-7 to the Hub failed" in m and "503" in m for m in caplog.messages)
    assert any("final push to the Hub failed" in m and retry in m for m in caplog.messages)


def test_push_refuses_an_unfinished_run_and_an_unreachable_hub(tmp_path, wandb_run, monkeypatch):
    (tmp_path / "half").mkdir()
    with pytest.raises(HubPushError, match="has no train_results.json: it is not a finished training run"):
        push_run_to_hub(RunDir(tmp_path / "half"), "me/x")
    import recipe.tracking

    monkeypatch.setattr(recipe.tracking.hub_push, "hub_unreachable_reason",
                        lambda: "http://127.0.0.1:9 is not reachable")
    with pytest.raises(HubPushError, match=r"127.0.0.1:9 is not reachable\. Every local file is intact; retry"):
        push_run_to_hub(RunDir(wandb_run[0]), "me/x")


def test_an_unreachable_hub_does_not_stop_training(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_not_a_token"}
    out = tmp_path / "run"
    command = [sys.executable, "scripts/train.py", *smoke_args(tmp_path), "--push_to_hub", "true",
               "--hub_model_id", "me/smoke"]
    start = time.monotonic()
    trained = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert time.monotonic() - start < 60  # no minute of Hub retries
    assert "Hub pushes are off for this run: http://127.0.0.1:9 is not reachable" in trained.stderr
    assert f"python scripts/push.py {out} --hub_model_id me/smoke" in trained.stderr
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-14", "checkpoint-7"]
    for name in ("model.safetensors", "tokenizer.json", "train_results.json", "README.md"):
        assert (out / name).is_file(), name

    start = time.monotonic()
    pushed = subprocess.run([sys.executable, "scripts/push.py", str(out)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert pushed.returncode == 2 and time.monotonic() - start < 30
    assert f"error: cannot push {out} to the Hub: http://127.0.0.1:9 is not reachable" in pushed.stderr
    assert "Traceback" not in pushed.stderr


def test_the_hub_token_never_reaches_environment_json(monkeypatch):
    assert redact_command(["train.py", "--hub_token", "hf_secret", "--hub_token=hf_other", "--x", "1"]) == [
        "train.py", "--hub_token", "***", "--hub_token=***", "--x", "1"]
    monkeypatch.setattr(sys, "argv", ["scripts/train.py", "--hub_token", "hf_secret"])
    record = environment_record(DataArguments(), DialogueTrainingArguments(output_dir="o", bf16=False))
    assert "hf_secret" not in json.dumps(record) and record["command"].endswith("--hub_token ***")


class FakeHubApiWithPatterns(FakeHubApi):
    """FakeHubApi that also honours allow_patterns, as HfApi.upload_folder does (GGUF pushes name their files)."""

    def upload_folder(self, *, allow_patterns=None, **kwargs):
        result = super().upload_folder(**kwargs)
        if allow_patterns:
            from huggingface_hub.utils import filter_repo_objects

            upload = self.uploads[-1]
            upload["files"] = sorted(filter_repo_objects(upload["files"], allow_patterns=allow_patterns))
        return result


def test_gguf_exports_are_pushed_only_when_asked_with_their_modelfile_and_listed_in_the_card(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    import recipe.tracking
    from recipe.export.gguf_export import GGUFExportArguments, export_gguf
    from recipe.tracking.hub_push import push_run_dir

    out = train_tracked(tmp_path, "--num_train_epochs", "1", "--max_dialogues", "40", output="smoke").output_dir
    exported = export_gguf(GGUFExportArguments(model_path=str(out), outtype="q8_0")).path
    assert "| `smoke.Q8_0.gguf` | Q8_0 |" in (out / "README.md").read_text()  # the local card lists it
    api = FakeHubApiWithPatterns()
    monkeypatch.setattr(recipe.tracking.hub_push, "hub_api", lambda: api)
    monkeypatch.setattr(recipe.tracking.hub_push, "hub_unreachable_reason", lambda: None)

    push_run_dir(out, "me/smoke")  # not asked: the run's files without its exports, a card without them
    (plain,) = api.uploads
    assert "model.safetensors" in plain["files"] and not [f for f in plain["files"] if "gguf" in f or "Modelfile" in f]
    assert "GGUF" not in plain["readme"]

    push_run_dir(out, "me/smoke", gguf=[])  # --gguf: every export in the run directory, with its Modelfile
    run_files, gguf_files = api.uploads[1:]
    assert gguf_files["files"] == ["smoke.Q8_0.Modelfile", "smoke.Q8_0.gguf"] and gguf_files["repo"] == "me/smoke"
    assert gguf_files["path_in_repo"] == "gguf"
    assert "## GGUF (llama.cpp, Ollama, LM Studio)" in run_files["readme"]
    assert "`smoke.Q8_0.gguf` | Q8_0" in run_files["readme"]
    assert "hf download me/smoke gguf/smoke.Q8_0.gguf gguf/smoke.Q8_0.Modelfile --local-dir ." in run_files["readme"]
    assert "ollama create smoke -f gguf/smoke.Q8_0.Modelfile" in run_files["readme"]

    elsewhere = tmp_path / "exports" / exported.name  # a file named by path, kept outside the run
    elsewhere.parent.mkdir()
    shutil.copy(exported, elsewhere)
    push_run_dir(out, "me/smoke", gguf=[str(elsewhere)])
    assert api.uploads[-1]["folder"] == elsewhere.parent and api.uploads[-1]["files"] == [exported.name]
    with pytest.raises(HubPushError, match=r"--gguf .*missing.gguf: no such \.gguf file; export one with python "
                                           r"scripts/export_gguf.py --model_path"):
        push_run_dir(out, "me/smoke", gguf=[str(tmp_path / "missing.gguf")])
