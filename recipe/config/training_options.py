"""The recipe's training options that need no transformers: `TrainingOptions` (the recipe's own training options
and the Trainer defaults it changes, each saying why) and `TrackingArguments` (W&B, the Hub, replies during training).

`DialogueTrainingArguments` (training_arguments.py) is `TrainingOptions` on top of transformers' `TrainingArguments`.
Kept apart so that `--help`, the options page and the refusals of a command line read these fields without importing
transformers (seconds); TrainingArguments' own options are read once per transformers version and cached (see
option_specs.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import raise_all


@dataclass
class TrainingOptions:
    """The recipe's own training options, and the Trainer defaults it changes. Parsed, they are part of
    `DialogueTrainingArguments`, with every other option of transformers' TrainingArguments."""

    help_group = "Training"
    help_subgroups = (("Memory plan", ("dry_run", "check_memory"),
                       "What the run will hold at its peak, against the device's free memory (docs/memory.md)."),)

    output_dir: str | None = field(
        default="outputs/run", metadata={"help": "Where checkpoints, the final model and reports go."}
    )
    # Evaluate and checkpoint once per epoch, as the recipe promises, and keep the best model.
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate: no, steps or epoch."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to checkpoint: no, steps, epoch or best."})
    save_total_limit: int | None = field(
        default=2, metadata={"help": "Checkpoints kept on disk (the best one is always kept)."}
    )
    load_best_model_at_end: bool = field(
        default=True, metadata={"help": "Reload the checkpoint with the lowest eval loss when training ends."}
    )
    # Exact per-token eval loss (see evaluation/metrics.py); the Trainer's eval_loss is a mean of batch means.
    metric_for_best_model: str | None = field(
        default="eval_token_loss", metadata={"help": "Metric that picks the best checkpoint."}
    )
    # Fused AdamW (one kernel per tensor, on CPU and GPU): the same maths as adamw_torch, in less time per
    # step (benchmarks/throughput.py: 439 against 419 real tokens/s unfused; README Performance).
    optim: str = field(default="adamw_torch_fused",
                       metadata={"help": "Optimizer (HF name); adamw_torch is the unfused one."})
    # Packed rows put ~26 dialogues in a batch of 8 rows where a loop over padded dialogues puts 8: a step twice
    # the usual 5e-5 (about the square root of that ratio) learns at least as much per epoch (README Performance).
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate of AdamW."})
    # A short warmup (5% of steps) keeps the first updates of a pre-trained model gentle.
    warmup_steps: float = field(default=0.05, metadata={"help": "Warmup steps, or a ratio of all steps if < 1."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    logging_steps: float = field(default=10, metadata={"help": "Log the training loss every N steps."})
    logging_first_step: bool = field(default=True, metadata={"help": "Log the loss of the very first step too."})
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bf16 mixed precision. Unset: on where the device has fast bf16 (a CUDA GPU with bf16, "
            "or a CPU with AMX / AVX-512 BF16); a GPU without bf16 gets fp16 instead; off elsewhere."
        },
    )
    chunked_lm_loss: bool = field(
        default=True,
        metadata={
            "help": "Compute the LM head and cross-entropy only where a label exists, in chunks, never the full "
            "logits (exact; less memory and time). Falls back to the model's own loss where it does not apply."
        },
    )
    dry_run: bool = field(
        default=False,
        metadata={"help": "Print the memory plan (weights, gradients, optimizer states, activations against the "
                          "device's free memory) and exit, before any data or model is loaded."},
    )
    check_memory: bool = field(
        default=True,
        metadata={"help": "Stop before the model loads when the memory plan does not fit the device's free memory, "
                          "naming options that fit; false: warn and start anyway."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start over in an output_dir that holds checkpoints or a finished run (they are deleted)."},
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after this many evaluations without improvement (default: never)."}
    )
    early_stopping_threshold: float = field(
        default=0.0, metadata={"help": "Smallest eval-loss improvement that counts for early stopping."}
    )
    # max_steps would shorten the run, and the learning-rate schedule with it: a replay of a run's first steps
    # (scripts/reproduce.py) keeps the whole run's schedule and stops early instead.
    stop_after_steps: int | None = field(
        default=None,
        metadata={"help": "Stop after this many optimizer steps, with the learning-rate schedule and everything "
                          "else as for the whole run (unlike max_steps): to replay the start of a run."},
    )
    max_nonfinite_loss_steps: int = field(
        default=0,
        metadata={
            "help": "Steps with a NaN or inf training loss tolerated (each one's update skipped) before the run "
            "stops without saving; 0 stops at the first. See recipe/training/safeguards.py."
        },
    )
    # --- Hub pushes (see recipe/tracking/hub_push.py) ---
    # Trainer pushes on each save: "every_save" uploads only the model files, "checkpoint" one last-checkpoint/
    # folder that each save overwrites, "end" nothing until the end. "all_checkpoints" uploads every epoch's
    # checkpoint-N/ folder (weights, optimizer, scheduler: resumable) besides the model files: what we want.
    hub_strategy: str = field(
        default="all_checkpoints",
        metadata={"help": "With push_to_hub: end, every_save, checkpoint, or all_checkpoints (every checkpoint-N/)."},
    )
    # The Trainer skips a checkpoint push while the previous one is still uploading unless this is true.
    hub_always_push: bool = field(
        default=True, metadata={"help": "Push every checkpoint, even while the previous push is still uploading."}
    )


@dataclass
class TrackingArguments:
    """Weights & Biases, the Hugging Face Hub and replies during training, beyond TrainingArguments' own options
    (report_to, run_name, push_to_hub, hub_model_id, hub_private_repo, hub_strategy); used by recipe/tracking/."""

    help_group = "Tracking"

    wandb_project: str | None = field(
        default=None, metadata={"help": "W&B project (default: $WANDB_PROJECT, else dialogue-finetune)."}
    )
    wandb_entity: str | None = field(
        default=None, metadata={"help": "W&B team or user (default: $WANDB_ENTITY, else your default entity)."}
    )
    wandb_group: str | None = field(
        default=None,
        metadata={"help": "W&B group (default: full or lora, by use_lora, so the two modes sit side by side)."},
    )
    wandb_tags: list[str] | None = field(
        default=None, metadata={"help": "Extra W&B tags; the mode tag (full or lora) is always added."}
    )
    hub_merged_model_id: str | None = field(
        default=None,
        metadata={"help": "LoRA with merge_lora and push_to_hub: also push merged/ (base + adapter) to this repo."},
    )
    # --- Replies during training (see recipe/tracking/training_replies.py) ---
    # A handful: each evaluation then costs a few greedy replies (README: seconds per evaluation measured).
    eval_samples: int = field(
        default=4,
        metadata={"help": "Validation prompts answered (greedy) at every evaluation, the same ones each time and "
                          "for full and LoRA runs of a recipe: to OUTPUT_DIR/samples.jsonl and W&B tables. 0: off."},
    )
    eval_sample_max_new_tokens: int = field(
        default=32, metadata={"help": "Longest reply, in tokens, of the replies generated at each evaluation."}
    )
    eval_sample_context_turns: int = field(
        default=1,
        metadata={"help": "Turns of a validation dialogue given as context before the next speaker's cue "
                          "(as scripts/evaluate.py's --context_turns)."},
    )

    def __post_init__(self) -> None:
        errors = []
        if self.eval_samples < 0:
            errors.append(f"eval_samples is {self.eval_samples}; use 0 (off) or a few prompts, e.g. 4")
        if self.eval_sample_max_new_tokens < 1:
            errors.append(f"eval_sample_max_new_tokens is {self.eval_sample_max_new_tokens}; use at least 1")
        if self.eval_sample_context_turns < 1:
            errors.append(f"eval_sample_context_turns is {self.eval_sample_context_turns}; use at least 1")
        raise_all(errors)
