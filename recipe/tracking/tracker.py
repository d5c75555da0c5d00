"""The hooks `run_training` calls to track and publish a run: W&B, the model card, Hub pushes.

`run_training` calls a `RunTracker` at three points: `configure` (before the Trainer is built: start
the W&B run, check the Hub), `attach` (after: guard the W&B callback, reply to validation prompts at
every evaluation, watch checkpoint pushes) and `finish` (once every local file is written: model card,
W&B summary, final push).

Nothing here may stop training or lose a local file. Only the main process starts W&B runs, writes
the model card and pushes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from ..common.files import atomic_write_json
from ..common.run_dir import RunDir, read_json_file
from ..config import ConfigError, LoraArguments, TrackingArguments
from .hub_push import HubPushMonitor, prepare_hub_repo, push_run_to_hub, retry_command, short_error
from .model_card import write_model_card
from .training_replies import training_replies_callback
from .wandb_run import (
    DEFAULT_WANDB_PROJECT,
    comparison_fields,
    guarded_wandb_callback_class,
    init_wandb_run,
    log_data_sources,
    read_wandb_record,
    run_mode,
    wandb_dir_for,
    wandb_run_record,
)

logger = logging.getLogger(__name__)

class RunTracker:
    """W&B and Hub for one training run; see the module docstring for where run_training calls it."""

    def __init__(self, tracking_args: TrackingArguments | None, lora_args: LoraArguments, run: RunDir,
                 is_main: bool, push_to_hub: bool = False):
        self.args = tracking_args or TrackingArguments()
        self.mode = run_mode(lora_args.use_lora)
        self.run = run
        self.is_main = is_main
        self.wandb_run = None
        self.hub_repo_id: str | None = None
        self.push_monitor: HubPushMonitor | None = None
        self.training_args = None
        if self.args.hub_merged_model_id and not (lora_args.use_lora and lora_args.merge_lora and push_to_hub):
            raise ConfigError("hub_merged_model_id needs --use_lora true --merge_lora true --push_to_hub true "
                              "(it pushes merged/, the base with the adapter merged in)")

    # -- before the Trainer

    def configure(self, training_args, resume: Path | None = None, parameters: tuple[int, int] | None = None):
        """Start the W&B run and check the Hub; return training arguments with what cannot work turned off.
        `parameters` (trainable, total) go into the W&B config, where runs are filtered."""
        changes: dict[str, Any] = {}
        if ("wandb" in (training_args.report_to or []) and self.is_main
                and not self._start_wandb(training_args, resume, parameters)):
            changes["report_to"] = [r for r in training_args.report_to if r != "wandb"]
        if training_args.push_to_hub:
            problem = self._check_hub(training_args)
            if problem:
                logger.warning("Hub pushes are off for this run: %s. Training goes on and every file stays in %s; "
                               "push them later with: %s", problem, self.run,
                               retry_command(self.run.path, training_args.hub_model_id, self.args.hub_merged_model_id))
                changes["push_to_hub"] = False
        if changes:
            training_args = dataclasses.replace(training_args, **changes)
        self.training_args = training_args
        return training_args

    def _start_wandb(self, training_args, resume: Path | None, parameters: tuple[int, int] | None) -> bool:
        previous = read_wandb_record(self.run.path) if resume else None
        group = self.args.wandb_group or self.mode
        tags = list(dict.fromkeys([self.mode, *(self.args.wandb_tags or [])]))
        config = self.run.read_config()
        environment = read_json_file(self.run.environment) or {}
        config.update(environment=environment, **comparison_fields(config, environment, parameters))  # mode, rank, ...
        init_kwargs = {
            "project": self.args.wandb_project or os.environ.get("WANDB_PROJECT") or DEFAULT_WANDB_PROJECT,
            "entity": self.args.wandb_entity or os.environ.get("WANDB_ENTITY"),
            "group": group,
            "tags": tags,
            "name": training_args.run_name or self.run.path.name,
            "job_type": "train",
            "config": config,
        }
        if previous and previous.get("id"):  # an interrupted run resumes its W&B run too
            init_kwargs.update(id=previous["id"], resume="allow", dir=wandb_dir_for(previous))
        run = init_wandb_run({k: v for k, v in init_kwargs.items() if v is not None},
                             (previous or {}).get("mode"))
        if run is None:
            return False
        self.wandb_run = run
        atomic_write_json(self.run.wandb_record,
                          wandb_run_record(run, "offline" if run.offline else "online", group))
        return True

    def _check_hub(self, training_args) -> str | None:
        repo = training_args.hub_model_id or self.run.path.absolute().name  # the Trainer's default
        # Only the main process creates the repo; the others only learn whether the Hub is reachable.
        self.hub_repo_id, problem = prepare_hub_repo(repo, training_args.hub_private_repo, training_args.hub_token,
                                                     create=self.is_main)
        return problem

    # -- after the Trainer is built

    def attach(self, trainer, prepared=None, data_args=None) -> None:
        """Callbacks on the built Trainer; with the prepared data, replies to validation prompts at each evaluation."""
        if "wandb" in (trainer.args.report_to or []):
            from transformers.integrations import WandbCallback

            trainer.remove_callback(WandbCallback)  # same callback, guarded: W&B failures never stop training
            trainer.add_callback(guarded_wandb_callback_class()())
        if self.wandb_run is not None and prepared is not None and prepared.report.get("sources"):
            log_data_sources(self.wandb_run, prepared.report)
        # With sharded weights every process takes part in generating the replies; the main process writes them.
        sharded = bool(getattr(getattr(trainer, "sharding", None), "shards_weights", False))
        if (self.is_main or sharded) and prepared is not None and prepared.validation_dataset is not None:
            replies = training_replies_callback(trainer, prepared.validation_dialogues, data_args, self.args,
                                                self.run.samples, self.wandb_run)
            if replies is not None:
                trainer.add_callback(replies)
        if trainer.args.push_to_hub:
            self.push_monitor = HubPushMonitor(trainer, self._retry())
            trainer.add_callback(self.push_monitor)

    def _retry(self) -> str:
        repo = self.hub_repo_id or (self.training_args.hub_model_id if self.training_args else None)
        return retry_command(self.run.path, repo, self.args.hub_merged_model_id)

    # -- once every local file is written

    def finish(self, train_metrics: dict[str, Any], eval_metrics: dict[str, Any]) -> None:
        """Model card (every run), W&B summary and end of run, final Hub push. Main process only."""
        if not self.is_main:
            return
        self._finish_wandb(train_metrics, eval_metrics)
        write_model_card(self.run, hub_model_id=self.hub_repo_id)
        if self.run.merged.is_dir():
            write_model_card(self.run, merged=True,
                             hub_model_id=self.args.hub_merged_model_id if self.hub_repo_id else None)
        if self.hub_repo_id:  # set only when push_to_hub is on and the Hub accepted the repo
            self._final_push()

    def _finish_wandb(self, train_metrics: dict[str, Any], eval_metrics: dict[str, Any]) -> None:
        if self.wandb_run is None:
            return
        names = {"train_runtime": "train/runtime", "train_steps_runtime": "train/steps_runtime",
                 "train_evaluation_runtime": "train/evaluation_runtime",
                 "train_checkpoint_runtime": "train/checkpoint_runtime", "train_real_tokens": "train/real_tokens",
                 "train_real_tokens_per_second": "train/real_tokens_per_second", "final_train_loss": "train/final_loss",
                 "peak_memory_mb": "train/peak_memory_mb", "trainable_parameters": "train/trainable_parameters",
                 "total_parameters": "train/total_parameters"}
        summary = {name: train_metrics[key] for key, name in names.items() if train_metrics.get(key) is not None}
        summary.update({f"eval/{key.removeprefix('eval_')}": value for key, value in eval_metrics.items()})
        try:
            self.wandb_run.summary.update(summary)
            self.wandb_run.finish()
        except Exception as error:  # noqa: BLE001
            logger.warning("finishing the W&B run failed (%s); local outputs are unaffected", error)
        self.wandb_run = None

    def _final_push(self) -> None:
        args = self.training_args
        failed = self.push_monitor.failures if self.push_monitor else []
        try:
            push_run_to_hub(
                self.run, self.hub_repo_id, private=args.hub_private_repo, token=args.hub_token,
                revision=args.hub_revision, merged_repo_id=self.args.hub_merged_model_id,
                include_checkpoints=bool(failed),  # re-send what the background pushes failed to upload
            )
        except Exception as error:  # noqa: BLE001 - the run is finished and saved; a push failure is not fatal
            logger.warning("the final push to the Hub failed (%s). Every local file is intact in %s; retry with: %s",
                           short_error(error), self.run, self._retry())
