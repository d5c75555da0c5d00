"""A loss that becomes NaN stops the run at that step, names it and the last good checkpoint, and nothing
after it is saved as final or best, or pushed; `max_nonfinite_loss_steps` tolerates (and skips) a few."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import recipe.training.run
import recipe.training.trainer
from conftest import REPO
from fault_runs import smoke_args
from inject import with_fault
from recipe.common.errors import RunStopped
from recipe.config import (
    DataArguments,
    DialogueTrainingArguments,
    LoraArguments,
    ModelArguments,
    RecipeParser,
    TrackingArguments,
)


def assert_finite(weights_file: Path) -> None:
    for name, tensor in load_file(weights_file).items():
        assert torch.isfinite(tensor).all(), f"{name} in {weights_file} is not finite"


def run_in_process(tmp_path, monkeypatch, fault: str, *extra: str):
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(recipe.training.run, "build_trainer", with_fault(recipe.training.run.build_trainer, fault))
    parser = RecipeParser((ModelArguments, DataArguments, LoraArguments, DialogueTrainingArguments, TrackingArguments))
    arguments = smoke_args(tmp_path / "run", "--per_device_train_batch_size", "2", *extra)
    *configs, _ = parser.parse_args_and_config(arguments)
    return recipe.training.run.run_training(*configs)


class FakeHub:
    """The Hub as training sees it: a repo that exists, and a record of what was pushed."""

    def __init__(self, monkeypatch):
        self.checkpoints, self.final = [], []
        monkeypatch.setattr("recipe.tracking.tracker.prepare_hub_repo", lambda repo, *a, **k: (repo, None))
        monkeypatch.setattr("recipe.tracking.tracker.push_run_to_hub", lambda run, *a, **k: self.final.append(run.path))
        monkeypatch.setattr(recipe.training.trainer.DialogueTrainer, "init_hf_repo", self.init_repo)
        monkeypatch.setattr(recipe.training.trainer.DialogueTrainer, "_push_from_checkpoint",
                            lambda trainer, folder: self.checkpoints.append(Path(folder).name))

    @staticmethod
    def init_repo(trainer, *args, **kwargs):
        trainer.hub_model_id, trainer.push_in_progress = trainer.args.hub_model_id, None


def test_a_nan_loss_stops_the_run_at_that_step_and_nothing_after_it_is_saved_or_pushed(tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch)
    out = tmp_path / "run"
    with pytest.raises(RunStopped) as stopped:  # step 10: in epoch 2 of 7-step epochs
        run_in_process(tmp_path, monkeypatch, "nan:10", "--push_to_hub", "true", "--hub_model_id", "me/run")
    message = str(stopped.value)
    assert stopped.value.exit_code == 1  # what scripts/train.py exits with, printing the message
    assert message.startswith("training stopped at step 10: the training loss is nan")
    assert f"Last good checkpoint: {out / 'checkpoint-7'}" in message
    assert f"resume from it with: python scripts/train.py --config {out / 'run_config.yaml'}" in message
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-7"]
    for final in ("model.safetensors", "train_results.json", "eval_results.json", "README.md", "trainer_state.json"):
        assert not (out / final).exists(), f"{final} was written by a diverged run"
    assert_finite(out / "checkpoint-7" / "model.safetensors")
    assert hub.checkpoints == ["checkpoint-7"] and hub.final == []


def test_tolerated_nan_steps_are_skipped_and_recorded(tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch)
    result = run_in_process(tmp_path, monkeypatch, "nan:3", "--max_nonfinite_loss_steps", "1", "--push_to_hub", "true",
                            "--hub_model_id", "me/run")
    assert result.train_metrics["skipped_nonfinite_loss_steps"] == [3]
    assert json.loads((result.output_dir / "train_results.json").read_text())["global_step"] == 14
    assert_finite(result.output_dir / "model.safetensors")  # the NaN step's update was skipped
    assert hub.final == [result.output_dir]
