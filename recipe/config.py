"""Every option of the recipe, defined once as a dataclass field, loaded from a YAML recipe and the CLI.

A YAML recipe sets only what differs from these defaults; command-line flags override the YAML.
`RecipeParser.parse_args_and_config` does both, and rejects a YAML key that no dataclass knows,
naming the closest valid one (a typo silently ignored is a run silently wrong).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from transformers import HfArgumentParser, TrainingArguments

DEFAULT_RECIPE = Path(__file__).parent / "configs" / "distilgpt2-full.yaml"


class ConfigError(ValueError):
    """A recipe or command line that cannot run; the message names the option and the fix."""


@dataclass
class ModelArguments:
    """Which model and tokenizer to start from."""

    model_name_or_path: str = field(
        default="distilgpt2",
        metadata={"help": "Hub model id or local directory (config, weights, tokenizer)."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to use, when it differs from model_name_or_path."}
    )
    random_init: bool = field(
        default=False,
        metadata={
            "help": "Build the model from its config with random weights instead of loading weights. "
            "Used by the offline smoke recipes, whose model directory holds only a config and a tokenizer."
        },
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = field(
        default="float32",
        metadata={
            "help": "dtype of the loaded weights. float32 keeps full-precision master weights; bf16 mixed "
            "precision is set by --bf16, not here."
        },
    )
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of a Hub model."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the Hub repository."})
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention kernel: sdpa, eager or flash_attention_2 (default: the model's)."}
    )


@dataclass
class DataArguments:
    """Where the dialogues come from, how they become text, and how that text is batched."""

    data_path: str = field(
        default="data/sample_dialogues.json",
        metadata={
            "help": "Dialogue file (.json or .jsonl), a directory written by datasets' save_to_disk, "
            "or a Hub dataset name."
        },
    )
    data_format: Literal["auto", "speaker_map", "turns", "messages"] = field(
        default="auto",
        metadata={
            "help": "Shape of each dialogue: speaker_map ({'Alex': ..., 'Bob': ..., 'Alex': ...}), "
            "turns ({'turns': [{'speaker', 'text'}]}), messages ({'messages': [{'role', 'content'}]}); "
            "auto detects it per dialogue."
        },
    )
    validation_path: str | None = field(
        default=None, metadata={"help": "Separate validation file; when set, validation_split_ratio is ignored."}
    )
    validation_split_ratio: float = field(
        default=0.2,
        metadata={"help": "Share of dialogues held out for validation; 0 trains on all of them (no evaluation)."},
    )
    split_seed: int = field(
        default=42, metadata={"help": "Seed of the train/validation split, kept apart from the training seed."}
    )
    max_dialogues: int | None = field(
        default=None, metadata={"help": "Use only the first N valid dialogues of the file (quick experiments)."}
    )
    on_bad_dialogue: Literal["error", "skip"] = field(
        default="error",
        metadata={"help": "error: stop at invalid dialogues; skip: leave them out, counted in data_report.json."},
    )
    max_length: int = field(
        default=256, metadata={"help": "Longest training example in tokens; also the row length when packing."}
    )
    overflow_strategy: Literal["split", "truncate"] = field(
        default="split",
        metadata={
            "help": "A dialogue longer than max_length: split it at turn boundaries into windows that fit, "
            "or truncate it (the dropped token count is reported)."
        },
    )
    padding: Literal["packing", "longest", "max_length"] = field(
        default="packing",
        metadata={
            "help": "packing: best-fit dialogues into rows of max_length, each attending only to itself; "
            "longest: pad each batch to its longest example; max_length: pad every example to max_length."
        },
    )
    pad_to_multiple_of: int | None = field(
        default=None, metadata={"help": "Round padded lengths up to a multiple of this (8 suits tensor cores)."}
    )
    turn_template: str = field(
        default="{speaker}: {text}", metadata={"help": "How one turn is written; must contain {speaker} and {text}."}
    )
    turn_separator: str = field(default="\n", metadata={"help": "Text between two turns."})
    train_on_speakers: list[str] | None = field(
        default=None,
        metadata={
            "help": "Only these speakers' turns (text, turn end and EOS) carry loss; the other turns still "
            "condition the model. Default: every token of the dialogue carries loss."
        },
    )
    use_chat_template: bool = field(
        default=False,
        metadata={"help": "Render dialogues with the tokenizer's chat template instead of turn_template."},
    )
    role_to_speaker: list[str] | None = field(
        default=None,
        metadata={
            "help": "For messages data: role=Speaker pairs, e.g. user=Alex assistant=Bob. Unmapped roles are "
            "capitalised (user -> User); a message's 'name' field wins over both."
        },
    )
    speaker_field: str = field(default="speaker", metadata={"help": "Key of the speaker inside a turn."})
    text_field: str = field(default="text", metadata={"help": "Key of the text inside a turn."})
    turns_field: str = field(default="turns", metadata={"help": "Key of the turn list inside a dialogue."})
    messages_field: str = field(default="messages", metadata={"help": "Key of the message list inside a dialogue."})
    role_field: str = field(default="role", metadata={"help": "Key of the role inside a message."})
    content_field: str = field(default="content", metadata={"help": "Key of the content inside a message."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Config name of a Hub dataset."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split of a Hub/saved dataset to train on."})
    dataset_validation_split: str | None = field(
        default=None, metadata={"help": "Split of a Hub/saved dataset to validate on (default: split the train one)."}
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for tokenization (datasets.map num_proc)."}
    )
    packing_batch_size: int = field(
        default=1000, metadata={"help": "Examples considered together by the best-fit packer."}
    )
    dataset_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where tokenized splits are cached (default: the datasets cache, dialogue_finetune/)."},
    )

    def __post_init__(self) -> None:
        errors = []
        for placeholder in ("{speaker}", "{text}"):
            if self.turn_template.count(placeholder) != 1:
                errors.append(f"turn_template {self.turn_template!r} must contain {placeholder} exactly once")
        if not 0 <= self.validation_split_ratio < 1:
            errors.append(f"validation_split_ratio is {self.validation_split_ratio}; use a value in [0, 1)")
        if self.max_length < 8:
            errors.append(f"max_length is {self.max_length}; use at least 8 tokens")
        if self.max_dialogues is not None and self.max_dialogues < 1:
            errors.append(f"max_dialogues is {self.max_dialogues}; use a positive number or leave it unset")
        for pair in self.role_to_speaker or []:
            if pair.count("=") != 1 or not all(part.strip() for part in pair.split("=")):
                errors.append(f"role_to_speaker entry {pair!r} must look like role=Speaker, e.g. user=Alex")
        _raise_all(errors)

    @property
    def role_speaker_map(self) -> dict[str, str]:
        return dict(pair.split("=", 1) for pair in self.role_to_speaker or [])


@dataclass
class LoraArguments:
    """Low-rank adaptation through PEFT: train small adapters, leave the base weights untouched."""

    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of every weight."})
    lora_r: int = field(default=16, metadata={"help": "Rank of the adapter matrices."})
    lora_alpha: int = field(default=32, metadata={"help": "Adapter scaling; usually 2 x lora_r."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the adapter input."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["c_attn", "c_proj", "c_fc"],
        metadata={"help": "Modules that get adapters; the default fits GPT-2; 'all-linear' picks every linear layer."},
    )
    merge_lora: bool = field(
        default=False, metadata={"help": "At the end, also write base+adapter merged into a full model (merged/)."}
    )

    def __post_init__(self) -> None:
        errors = []
        if self.lora_r < 1:
            errors.append(f"lora_r is {self.lora_r}; use a positive rank such as 8 or 16")
        if not 0 <= self.lora_dropout < 1:
            errors.append(f"lora_dropout is {self.lora_dropout}; use a value in [0, 1)")
        _raise_all(errors)


@dataclass
class GenerationArguments:
    """How replies are sampled, by the evaluation script and by chat."""

    max_new_tokens: int = field(default=48, metadata={"help": "Longest reply, in tokens."})
    do_sample: bool = field(default=True, metadata={"help": "Sample (true) or decode greedily (false)."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature."})
    top_k: int = field(default=50, metadata={"help": "Sample among the k most likely tokens (0: no limit)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling: smallest set with this probability."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "Above 1 discourages repeating tokens."})
    num_return_sequences: int = field(default=1, metadata={"help": "Replies generated per prompt."})
    generation_seed: int = field(default=42, metadata={"help": "Seed for sampling, so samples reproduce."})
    stop_at_turn_end: bool = field(
        default=True,
        metadata={
            "help": "Stop a reply where its turn ends (the turn separator, a newline by default, which "
            "always precedes the next speaker's label) as well as at EOS: one reply, not a monologue."
        },
    )

    def __post_init__(self) -> None:
        errors = []
        if self.max_new_tokens < 1:
            errors.append(f"max_new_tokens is {self.max_new_tokens}; use at least 1")
        if self.do_sample and self.temperature <= 0:
            errors.append(f"temperature is {self.temperature}; use a positive value, or --do_sample false")
        if not 0 < self.top_p <= 1:
            errors.append(f"top_p is {self.top_p}; use a value in (0, 1]")
        if self.num_return_sequences < 1:
            errors.append(f"num_return_sequences is {self.num_return_sequences}; use at least 1")
        if self.num_return_sequences > 1 and not self.do_sample:
            errors.append("num_return_sequences > 1 needs --do_sample true (greedy decoding gives one reply)")
        _raise_all(errors)


@dataclass
class EvaluationArguments:
    """What to evaluate, on which data, and where the results go."""

    model_path: str = field(
        metadata={
            "help": "A training output dir (full model or LoRA adapter), one of its checkpoint-N dirs, or a "
            "base model (Hub id or local dir) for a baseline row."
        }
    )
    base_model: str | None = field(
        default=None,
        metadata={"help": "Base model of a LoRA adapter (default: the run's base_model/ or the adapter config)."},
    )
    data_path: str | None = field(
        default=None, metadata={"help": "Evaluate on all dialogues of this file instead of the run's split."}
    )
    split: Literal["validation", "train"] = field(
        default="validation", metadata={"help": "Which split of the training run's data to evaluate on."}
    )
    data_config: str | None = field(
        default=None,
        metadata={
            "help": "run_config.yaml or recipe whose data options and split to use (default: the model's own "
            "run_config.yaml); lets a base model be evaluated on a run's exact validation split."
        },
    )
    prompts: str | None = field(
        default=None,
        metadata={
            "help": "Prompts file: .txt one per line (\\n for a line break), or .json/.jsonl of strings or "
            "{'prompt': ..., 'reference': ...}. Default: prompts built from the evaluation dialogues."
        },
    )
    num_samples: int = field(default=32, metadata={"help": "Prompts built from evaluation dialogues."})
    context_turns: int = field(
        default=1, metadata={"help": "Turns of a dialogue given as context before the cue of the next speaker."}
    )
    stride: int | None = field(
        default=None,
        metadata={
            "help": "Perplexity of long dialogues with a sliding window of max_length tokens moving by this "
            "stride (every token predicted once, with up to max_length of context). Default: the windows "
            "used in training."
        },
    )
    batch_size: int = field(default=8, metadata={"help": "Sequences per forward pass."})
    max_eval_dialogues: int | None = field(default=None, metadata={"help": "Evaluate on the first N only."})
    output_file: str | None = field(
        default=None, metadata={"help": "Results JSON (default: MODEL_DIR/evaluation.json, else ./evaluation.json)."}
    )
    wandb: Literal["auto", "off", "new"] = field(
        default="auto",
        metadata={
            "help": "auto: log to the training run's W&B run when it had one; new: log to a new W&B run; off."
        },
    )
    dtype: Literal["float32", "bfloat16"] = field(default="float32", metadata={"help": "Evaluation dtype."})

    def __post_init__(self) -> None:
        errors = []
        if self.stride is not None and self.stride < 1:
            errors.append(f"stride is {self.stride}; use a positive number of tokens or leave it unset")
        if self.context_turns < 1:
            errors.append(f"context_turns is {self.context_turns}; use at least 1")
        if self.batch_size < 1:
            errors.append(f"batch_size is {self.batch_size}; use at least 1")
        _raise_all(errors)


@dataclass
class ChatArguments:
    """Talk to a trained model in the terminal; it answers as one speaker of the dialogues."""

    model_path: str = field(metadata={"help": "A training output dir, checkpoint, adapter or model."})
    base_model: str | None = field(default=None, metadata={"help": "Base model of a LoRA adapter, if not found."})
    speaker: str | None = field(
        default=None,
        metadata={"help": "Who the model plays (default: the run's train_on_speakers, else its second speaker)."},
    )
    user: str | None = field(default=None, metadata={"help": "Who you are (default: the run's first speaker)."})
    max_context_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Longest prompt; the oldest turns are dropped to fit (default: the run's max_length minus "
            "max_new_tokens)."
        },
    )


def _cpu_has_fast_bf16() -> bool:
    """AMX or AVX-512 BF16 make bf16 matmuls several times faster than fp32 on a CPU."""
    import torch

    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


@dataclass
class DialogueTrainingArguments(TrainingArguments):
    """HF TrainingArguments with defaults for dialogue fine-tuning; each changed default says why."""

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
    # Exact per-token eval loss (see evaluation.py); the Trainer's eval_loss is a mean of batch means.
    metric_for_best_model: str | None = field(
        default="eval_token_loss", metadata={"help": "Metric that picks the best checkpoint."}
    )
    # Plain AdamW rather than the fused default: identical maths, runs on every device and torch build.
    optim: str = field(default="adamw_torch", metadata={"help": "Optimizer (HF name)."})
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
    # --- Hub pushes (see recipe/tracking.py) ---
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

    def __post_init__(self) -> None:
        if not self.use_cpu and not _accelerator_available():
            # Without use_cpu, a CPU-only machine neither starts gloo data parallelism under torchrun /
            # accelerate launch (each process trains alone) nor accepts bf16.
            self.use_cpu = True
        if self.bf16 is None:
            self.bf16 = _default_bf16(self.use_cpu, self.fp16)
            if not self.bf16 and not self.fp16 and not self.use_cpu and _cuda_without_bf16():
                self.fp16 = True  # older GPUs (V100, T4): fp16 mixed precision with loss scaling
        super().__post_init__()
        if self.early_stopping_patience is not None and self.eval_strategy == "no":
            raise ConfigError("early_stopping_patience needs evaluations: set eval_strategy to epoch or steps")


def _accelerator_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(mps and mps.is_available()) or bool(xpu and xpu.is_available())


def _cuda_without_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and not torch.cuda.is_bf16_supported()


def _default_bf16(use_cpu: bool, fp16: bool) -> bool:
    import torch

    if fp16:
        return False
    if torch.cuda.is_available() and not use_cpu:
        return torch.cuda.is_bf16_supported()
    return _cpu_has_fast_bf16()


RECIPE_DATACLASSES: list[type] = [
    ModelArguments,
    DataArguments,
    LoraArguments,
    DialogueTrainingArguments,
    GenerationArguments,
    EvaluationArguments,
    ChatArguments,
]


def register_recipe_dataclass(dataclass_type: type) -> type:
    """Add a dataclass whose fields are valid recipe keys (used by the evaluation and tracking options)."""
    if dataclass_type not in RECIPE_DATACLASSES:
        RECIPE_DATACLASSES.append(dataclass_type)
    return dataclass_type


@register_recipe_dataclass
@dataclass
class TrackingArguments:
    """Weights & Biases and Hugging Face Hub options beyond TrainingArguments' own (report_to, run_name,
    push_to_hub, hub_model_id, hub_private_repo, hub_strategy); used by recipe/tracking.py."""

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


# Fields of TrainingArguments that are set by launchers or are secrets: never read from or written to a recipe.
_NOT_RECIPE_KEYS = {"local_rank", "hub_token", "resume_from_checkpoint"}


def recipe_keys() -> set[str]:
    return {f.name for dc in RECIPE_DATACLASSES for f in dataclasses.fields(dc) if f.init} - _NOT_RECIPE_KEYS


def _raise_all(errors: list[str]) -> None:
    if errors:
        raise ConfigError("invalid recipe options:\n  - " + "\n  - ".join(errors))


def load_recipe_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML recipe (a flat mapping of option: value) and reject keys no dataclass knows."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} not found; the shipped recipes are in {DEFAULT_RECIPE.parent}")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"recipe {path} is not valid YAML: {error}") from error
    if not isinstance(content, dict):
        raise ConfigError(f"recipe {path} must be a mapping of option: value, found {type(content).__name__}")
    known = recipe_keys()
    errors = []
    for key in content:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            errors.append(f"{path}: unknown option {key!r}{hint}")
    _raise_all(errors)
    return content


def _yaml_value_to_argv(key: str, value: Any) -> list[str]:
    """Turn one YAML entry into command-line tokens, so that argparse applies the same types to both."""
    flag = f"--{key}"
    if isinstance(value, bool):
        return [flag, str(value).lower()]
    if isinstance(value, list):
        return [flag, *(json.dumps(v) if isinstance(v, dict) else str(v) for v in value)]
    if isinstance(value, dict):
        return [flag, json.dumps(value)]
    return [flag, str(value)]


class RecipeParser(HfArgumentParser):
    """HfArgumentParser that reads `--config recipe.yaml` first and lets CLI flags override it."""

    def __init__(self, dataclass_types, default_config: str | os.PathLike | None = None, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # --lr must not silently mean --lr_scheduler_type
        super().__init__(dataclass_types, **kwargs)
        self.default_config = default_config
        self.add_argument(
            "--config",
            default=None,
            help="YAML recipe with option: value pairs; command-line flags override it"
            + (f" (default: {default_config})" if default_config else ""),
        )

    def parse_args_and_config(
        self, args: list[str] | None = None, yaml_ignored_keys: tuple[str, ...] = ()
    ) -> tuple[Any, ...]:
        """Return one instance per dataclass, plus the recipe path used (or None) as the last element."""
        args = list(sys.argv[1:] if args is None else args)
        config_path = _pop_config_flag(args) or self.default_config
        own_keys = {f.name for dc in self.dataclass_types for f in dataclasses.fields(dc) if f.init}
        yaml_argv: list[str] = []
        if config_path is not None:
            for key, value in load_recipe_yaml(config_path).items():
                if key not in own_keys or key in yaml_ignored_keys:
                    continue  # a valid option of another script (e.g. training options seen by prepare_data)
                if value is None or value == [] or isinstance(value, dict):
                    self.set_defaults(**{key: value})  # argparse cannot spell these as flags
                else:
                    yaml_argv += _yaml_value_to_argv(key, value)
        # argparse keeps the last occurrence of a flag, so CLI flags placed after the YAML ones win.
        *outputs, remaining = self.parse_args_into_dataclasses(
            args=yaml_argv + args, look_for_args_file=False, return_remaining_strings=True
        )
        if remaining:
            flags = [a for a in remaining if a.startswith("-")] or remaining
            valid = [f"--{key}" for key in own_keys]
            errors = []
            for flag in flags:
                close = difflib.get_close_matches(flag.split("=")[0], valid, n=1)
                errors.append(f"unknown option {flag}" + (f"; did you mean {close[0]}?" if close else ""))
            _raise_all(errors + ["see --help for every option"])
        outputs = [o for o in outputs if dataclasses.is_dataclass(o)]  # drop the namespace holding --config
        return (*outputs, str(config_path) if config_path else None)


def _pop_config_flag(args: list[str]) -> str | None:
    """Remove every --config flag from args and return the last one's path (the last flag wins)."""
    path, i = None, 0
    while i < len(args):
        if args[i] == "--config":
            if i + 1 >= len(args):
                raise ConfigError("--config needs a path, e.g. --config recipe/configs/smoke.yaml")
            path = args[i + 1]
            del args[i : i + 2]
        elif args[i].startswith("--config="):
            path = args.pop(i).split("=", 1)[1]
        else:
            i += 1
    return path


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def resolved_config(*configs: Any) -> dict[str, Any]:
    """Every option of the given dataclasses as plain values: what run_config.yaml stores.

    Written back as `--config`, it reproduces the run. Only init fields that are recipe keys are kept,
    so derived state and secrets (hub_token) never land on disk.
    """
    keys = recipe_keys()
    resolved: dict[str, Any] = {}
    for config in configs:
        for f in dataclasses.fields(config):
            if f.init and f.name in keys:
                resolved[f.name] = _plain(getattr(config, f.name))
    return resolved


def save_resolved_config(path: str | os.PathLike, *configs: Any, header: str = "") -> None:
    text = yaml.safe_dump(resolved_config(*configs), sort_keys=False, allow_unicode=True)
    Path(path).write_text(header + text, encoding="utf-8")
