"""Replies during training: at every evaluation, the same validation prompts answered greedily, written to
OUTPUT_DIR/samples.jsonl and logged to W&B as one table per evaluation plus a cumulative one.

The prompts are the evaluation script's (`models.generation.prompts_from_dialogues`: the first context turns of a
validation dialogue, then the next speaker's cue), so the full and LoRA runs of one recipe answer the same
prompts and their replies line up row for row. W&B shows only the latest version of a table logged under
one key, so each evaluation gets its own key (`eval_replies/step_000058`) and `eval_replies/all` holds
every row so far. Replies are greedy, and the random state of training is restored afterwards: sampling
replies never changes what training does next.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from ..common.files import atomic_write_jsonl
from ..common.run_dir import RunDirError
from ..config import DataArguments, GenerationArguments, TrackingArguments
from ..models.generation import Prompt, prompts_from_dialogues, reply_samples

logger = logging.getLogger(__name__)

SAMPLES_KEY = "eval_replies"  # W&B: eval_replies/step_NNNNNN per evaluation, eval_replies/all for all of them
TABLE_COLUMNS = ["prompt", "reference", "reply", "ended_by", "epoch", "step"]
SECONDS_METRIC = "eval_replies_seconds"  # in the Trainer's log history; W&B shows it as eval/replies_seconds


def read_samples(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a samples.jsonl ([] when there is none); a corrupt line is an error naming it."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise RunDirError(f"{path} line {number} is not valid JSON ({error.msg}); delete the file to "
                                  "start its rows again") from None
    return rows


@contextlib.contextmanager
def training_random_state_kept():
    """Generation may reseed (generate_replies does); the data order and dropout of training must not move."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class TrainingReplies(TrainerCallback):
    """Answers `prompts` at every evaluation during training (main process only; see the module docstring).

    The evaluation that follows training (of the best checkpoint) is not sampled: that model is one of the
    checkpoints already sampled, and greedy replies of the same weights are the same.
    """

    def __init__(self, trainer, prompts: list[Prompt], data_args: DataArguments, gen_args: GenerationArguments,
                 path: Path, wandb_run=None, every_process: bool = False):
        """`every_process`: the weights are sharded (FSDP, ZeRO-3), so every process generates, in step with the
        others (each forward pass gathers the weights from all of them); the main process writes the rows."""
        self.trainer = trainer
        self.every_process = every_process
        self.prompts = prompts
        self.data_args = data_args
        self.gen_args = gen_args
        self.path = Path(path)
        self.wandb_run = wandb_run
        self.rows: list[dict[str, Any]] = []
        self.training = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True
        # A resumed run keeps the rows up to its checkpoint; evaluations after it are run (and sampled) again, and
        # so is the one at its step with eval_on_start. A fresh start (step 0) keeps none.
        step = state.global_step
        if not state.is_world_process_zero:  # generates in step with the main process, which writes the rows
            return
        kept = [row for row in read_samples(self.path)
                if row.get("step", 0) < step or (row.get("step") == step and step > 0 and not args.eval_on_start)]
        self.rows = kept
        if self.path.is_file():
            atomic_write_jsonl(self.path, kept)

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if not self.training or model is None or not (state.is_world_process_zero or self.every_process):
            return
        started = time.perf_counter()
        new_rows = self.reply(model, state)
        seconds = time.perf_counter() - started
        if not state.is_world_process_zero:
            return
        self.rows += new_rows
        atomic_write_jsonl(self.path, self.rows)
        self.log_to_wandb(new_rows, state.global_step)
        logger.info("replies to %d validation prompts at step %d in %.2f s: %s", len(new_rows), state.global_step,
                    seconds, self.path)
        self.trainer.log({SECONDS_METRIC: round(seconds, 3)})  # trainer_state.json and W&B (eval/replies_seconds)

    def reply(self, model, state) -> list[dict[str, Any]]:
        was_training = model.training
        model.eval()
        try:
            with training_random_state_kept():
                samples = reply_samples(model, self.trainer.processing_class, self.prompts, self.data_args,
                                        self.gen_args, batch_size=len(self.prompts),
                                        synced_processes=self.every_process)
        finally:
            model.train(was_training)
        epoch = round(float(state.epoch or 0.0), 4)
        return [{"epoch": epoch, "step": state.global_step, **sample} for sample in samples]

    def log_to_wandb(self, new_rows: list[dict[str, Any]], step: int) -> None:
        if self.wandb_run is None:
            return
        try:
            import wandb

            def table(rows):
                return wandb.Table(columns=TABLE_COLUMNS, data=[[row.get(c) for c in TABLE_COLUMNS] for row in rows])

            self.wandb_run.log({f"{SAMPLES_KEY}/step_{step:06d}": table(new_rows),
                                f"{SAMPLES_KEY}/all": table(self.rows), "train/global_step": step})
        except Exception as error:  # noqa: BLE001 - W&B never stops training; samples.jsonl still gets every row
            self.wandb_run = None
            logger.warning("logging replies to W&B failed (%s); they still go to %s", error, self.path)


def training_replies_callback(trainer, validation_dialogues, data_args: DataArguments,
                              tracking_args: TrackingArguments, path: Path, wandb_run=None) -> TrainingReplies | None:
    """The callback for a run, or None when it has nothing to do (eval_samples 0, no evaluation, no prompt).
    Where the weights are sharded (FSDP, DeepSpeed ZeRO-3), every process takes part in generating."""
    if not tracking_args.eval_samples or trainer.args.eval_strategy == "no" or not validation_dialogues:
        return None
    prompts = prompts_from_dialogues(validation_dialogues, data_args, trainer.processing_class,
                                     tracking_args.eval_samples, tracking_args.eval_sample_context_turns)
    if not prompts:
        return None
    gen_args = GenerationArguments(max_new_tokens=tracking_args.eval_sample_max_new_tokens, do_sample=False,
                                   generation_seed=trainer.args.seed)
    sharding = getattr(trainer, "sharding", None)
    every_process = bool(sharding and sharding.shards_weights)
    return TrainingReplies(trainer, prompts, data_args, gen_args, path, wandb_run, every_process)
