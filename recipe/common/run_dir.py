"""The layout of a training output directory, in one place: every file a run writes is named here.

Training writes these files, evaluation, comparison, the model card and the Hub push read them;
they all go through `RunDir`, so the layout is a single fact.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

RUN_CONFIG = "run_config.yaml"  # every resolved option; its presence marks a directory as this recipe's
ENVIRONMENT = "environment.json"  # versions, device, code and data identity, command line
REQUIREMENTS_LOCK = "requirements.lock.txt"  # every installed package pinned: `pip install -r` installs them again
DATA_REPORT = "data_report.json"
TRAIN_RESULTS = "train_results.json"  # written last: its presence means the run finished
EVAL_RESULTS = "eval_results.json"
TRAINER_STATE = "trainer_state.json"
SAMPLES = "samples.jsonl"  # replies to the same validation prompts at every evaluation during training
MODEL_CARD = "README.md"
WANDB_RECORD = "wandb_run.json"  # id, project, entity, mode and local directory of the run's W&B run
EVALUATION = "evaluation.json"  # written by scripts/evaluate.py
RESUMES = "resumes.json"  # one entry per resume: when, from which checkpoint, the options that differed
# Held (filelock) by the run writing this directory; hidden: never pushed, never counted as content.
RUN_LOCK = ".run.lock"
RUN_HOLDER = ".run.holder"  # who holds the lock (pid, host, start), for the message a second run prints
BASE_MODEL_DIR = "base_model"  # the random base of a LoRA run on a random_init model
MERGED_DIR = "merged"  # a LoRA run's base + adapter merged (merge_lora)
ADAPTER_CONFIG = "adapter_config.json"
# The weights of a model or adapter folder, in the order a reader prefers them.
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# A checkpoint of a sharded run holds its weights as one shard per process instead: FSDP's
# (torch.distributed.checkpoint, whose .metadata is written once every shard is), or DeepSpeed's (a global_stepN/
# folder, named by `latest` when whole).
FSDP_SHARDED_MODEL = "pytorch_model_fsdp_0"
DEEPSPEED_LATEST = "latest"
CHECKPOINT_PREFIX = "checkpoint-"
INCOMPLETE_PREFIX = "incomplete-"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
# Exports of a run go to RUN/gguf/ (and to gguf/ in its Hub repo), not beside the run's own files: transformers'
# `from_pretrained(folder, gguf_file=...)` would find a LoRA run's adapter_config.json there and load its base instead.
GGUF_DIR = "gguf"
GGUF_SUFFIX = ".gguf"
MODELFILE_SUFFIX = ".Modelfile"  # the Ollama Modelfile beside FILE.gguf is FILE.Modelfile


class RunDirError(UserError):
    """A run directory file that exists but cannot be read; the message names it and the fix."""


def read_json_file(path: str | os.PathLike) -> dict[str, Any] | None:
    """A JSON record, or None when the file does not exist; a corrupt one is an error naming it."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunDirError(f"{path} is not valid JSON ({error}); rerun the step that writes it") from None


def recorded_data_files(data: dict[str, Any]) -> list[dict[str, Any]]:
    """(option, path, sha256) of every data file a run's environment.json records, in either form."""
    if "files" in data:
        return list(data["files"])
    return [{"option": option, "path": data.get(option), "sha256": data.get(key)}
            for option, key in (("data_path", "data_sha256"), ("validation_path", "validation_sha256"))
            if data.get(option)]


def weights_file(folder: str | os.PathLike) -> Path | None:
    """The weights (or adapter weights) of a model folder, None when it holds none."""
    folder = Path(folder)
    return next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)


def sharded_weights(folder: str | os.PathLike) -> str | None:
    """"fsdp" or "deepspeed" when a checkpoint holds its weights as one shard per process, else None."""
    folder = Path(folder)
    if (folder / FSDP_SHARDED_MODEL / ".metadata").is_file():
        return "fsdp"
    latest = folder / DEEPSPEED_LATEST
    try:
        if latest.is_file() and (folder / latest.read_text(encoding="utf-8").strip()).is_dir():
            return "deepspeed"
    except (OSError, UnicodeDecodeError):
        return None
    return None


def modelfile_of(gguf_file: str | os.PathLike) -> Path:
    """The Ollama Modelfile written beside a GGUF export."""
    return Path(gguf_file).with_suffix(MODELFILE_SUFFIX)


def checkpoint_is_complete(path: str | os.PathLike) -> bool:
    """A checkpoint is complete once the Trainer wrote trainer_state.json, which it writes after the
    weights (whole or sharded), optimizer, scheduler and RNG states; a run killed mid-save leaves none or a
    torn one."""
    path = Path(path)
    if weights_file(path) is None and sharded_weights(path) is None:
        return False
    try:
        return "global_step" in (read_json_file(path / TRAINER_STATE) or {})
    except RunDirError:
        return False


@dataclass(frozen=True)
class RunDir:
    """A training output directory: the paths of what a run writes, and the questions asked of it."""

    path: Path

    def __init__(self, path: str | os.PathLike):
        object.__setattr__(self, "path", Path(path))

    def __str__(self) -> str:
        return str(self.path)

    @classmethod
    def containing(cls, model_path: str | os.PathLike) -> RunDir | None:
        """The run a model belongs to: the folder itself, or the parent of its checkpoint-N / base_model /
        merged folder; None for a model that no run of this recipe wrote."""
        path = Path(model_path)
        for candidate in (path, path.parent):
            if (candidate / RUN_CONFIG).is_file():
                return cls(candidate)
        return None

    # -- paths

    @property
    def run_config(self) -> Path:
        return self.path / RUN_CONFIG

    @property
    def environment(self) -> Path:
        return self.path / ENVIRONMENT

    @property
    def requirements_lock(self) -> Path:
        return self.path / REQUIREMENTS_LOCK

    @property
    def data_report(self) -> Path:
        return self.path / DATA_REPORT

    @property
    def train_results(self) -> Path:
        return self.path / TRAIN_RESULTS

    @property
    def eval_results(self) -> Path:
        return self.path / EVAL_RESULTS

    @property
    def trainer_state(self) -> Path:
        return self.path / TRAINER_STATE

    @property
    def samples(self) -> Path:
        return self.path / SAMPLES

    @property
    def model_card(self) -> Path:
        return self.path / MODEL_CARD

    @property
    def wandb_record(self) -> Path:
        return self.path / WANDB_RECORD

    @property
    def evaluation(self) -> Path:
        return self.path / EVALUATION

    @property
    def resumes(self) -> Path:
        return self.path / RESUMES

    @property
    def lock(self) -> Path:
        return self.path / RUN_LOCK

    @property
    def lock_holder(self) -> Path:
        return self.path / RUN_HOLDER

    @property
    def base_model(self) -> Path:
        return self.path / BASE_MODEL_DIR

    @property
    def merged(self) -> Path:
        return self.path / MERGED_DIR

    @property
    def gguf_dir(self) -> Path:
        return self.path / GGUF_DIR

    def replay_command(self, output_dir: str = "NEW") -> str:
        """Train this run again into another directory, from the repository root: its run_config.yaml holds
        every option as asked (the old output_dir too, which holds a finished run, so a new one is needed)."""
        return shlex.join(["python", "scripts/train.py", "--config", str(self.run_config), "--output_dir", output_dir])

    # -- questions

    def is_recipe_run(self) -> bool:
        """Written by this recipe (it has run_config.yaml): the only kind of folder it may delete."""
        return self.run_config.is_file()

    def is_finished(self) -> bool:
        return self.train_results.is_file()

    def read_config(self) -> dict[str, Any]:
        """run_config.yaml as a dict ({} when there is none)."""
        if not self.run_config.is_file():
            return {}
        try:
            return yaml.safe_load(self.run_config.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise RunDirError(f"{self.run_config} is not valid YAML ({error})") from None

    def gguf_files(self) -> list[Path]:
        """The run's GGUF exports (in RUN/gguf/), by name."""
        return sorted(p for p in self.gguf_dir.glob(f"*{GGUF_SUFFIX}") if p.is_file())

    def checkpoints(self) -> list[Path]:
        """checkpoint-N folders, oldest first (complete or not)."""
        if not self.path.is_dir():
            return []
        found = [p for p in self.path.iterdir() if p.is_dir() and CHECKPOINT_PATTERN.match(p.name)]
        return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))

    def complete_checkpoints(self) -> list[Path]:
        return [p for p in self.checkpoints() if checkpoint_is_complete(p)]

    def last_complete_checkpoint(self) -> Path | None:
        complete = self.complete_checkpoints()
        return complete[-1] if complete else None

    def set_aside_incomplete_checkpoints(self) -> list[Path]:
        """Rename half-written checkpoints to incomplete-checkpoint-N, so neither we nor the Trainer
        resume from (or rotate around) them; they stay on disk for inspection."""
        moved = []
        for path in self.checkpoints():
            if not checkpoint_is_complete(path):
                target = path.with_name(INCOMPLETE_PREFIX + path.name)
                if target.exists():
                    shutil.rmtree(target)
                path.rename(target)
                moved.append(target)
        return moved
