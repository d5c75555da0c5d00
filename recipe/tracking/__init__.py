"""Experiment tracking and publishing: Weights & Biases runs, the model card, Hugging Face Hub pushes.

- `wandb_run`: start W&B runs online or offline, never fatally; log evaluations into a training run.
- `hub_push`: push a finished run (and its merged model) to the Hub; watch the Trainer's checkpoint pushes.
- `model_card`: the README.md of a run, from its own files.
- `training_replies`: replies to the same validation prompts at every evaluation (samples.jsonl, W&B tables).
- `tracker`: `RunTracker`, the three hooks `run_training` calls.
"""

from .hub_push import HubPushError, push_run_dir, push_run_to_hub, retry_command
from .model_card import CARD_TAG, build_model_card, refresh_model_cards, write_model_card
from .tracker import RunTracker
from .training_replies import SAMPLES_KEY, read_samples
from .wandb_run import (
    POSTHOC_EVAL_PREFIX,
    choose_wandb_mode,
    init_wandb_run,
    log_evaluation_to_wandb,
    read_wandb_record,
    run_mode,
)

__all__ = [
    "CARD_TAG",
    "HubPushError",
    "POSTHOC_EVAL_PREFIX",
    "RunTracker",
    "SAMPLES_KEY",
    "build_model_card",
    "choose_wandb_mode",
    "init_wandb_run",
    "log_evaluation_to_wandb",
    "push_run_dir",
    "push_run_to_hub",
    "read_samples",
    "refresh_model_cards",
    "read_wandb_record",
    "retry_command",
    "run_mode",
    "write_model_card",
]
