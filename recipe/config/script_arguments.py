"""Options of the evaluation and chat scripts: how replies are sampled, what is evaluated, who chats."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .errors import raise_all


@dataclass
class GenerationArguments:
    """How replies are sampled, by the evaluation script and by chat."""

    help_group = "Generation"

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
        raise_all(errors)


@dataclass
class EvaluationArguments:
    """What to evaluate, on which data, and where the results go."""

    help_group = "Evaluation"

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
        default=None,
        metadata={"help": "Results JSON (default: MODEL_PATH/evaluation.json for a run of this recipe or its "
                          "checkpoint, else ./evaluation-NAME.json: nothing is written into a base model's folder)."},
    )
    wandb: Literal["auto", "off", "new"] = field(
        default="auto",
        metadata={
            "help": "auto: log to the training run's W&B run when it had one; new: log to a new W&B run; off."
        },
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] | None = field(
        default=None,
        metadata={"help": "dtype of the weights for evaluation (default: the run's --dtype, and a 4-bit or 8-bit "
                          "base as it trained; float32 for a model no run of this recipe wrote). Set, it loads a "
                          "k-bit base at full precision in this dtype."},
    )

    def __post_init__(self) -> None:
        errors = []
        if self.stride is not None and self.stride < 1:
            errors.append(f"stride is {self.stride}; use a positive number of tokens or leave it unset")
        if self.context_turns < 1:
            errors.append(f"context_turns is {self.context_turns}; use at least 1")
        if self.batch_size < 1:
            errors.append(f"batch_size is {self.batch_size}; use at least 1")
        raise_all(errors)


@dataclass
class ChatArguments:
    """Talk to a trained model in the terminal; it answers as one speaker of the dialogues."""

    help_group = "Chat"

    model_path: str = field(metadata={"help": "A training output dir, checkpoint, adapter or model."})
    base_model: str | None = field(default=None, metadata={"help": "Base model of a LoRA adapter, if not found."})
    speaker: str | None = field(
        default=None,
        metadata={"help": "Who the model plays (default: the run's train_on_speakers, else its second speaker)."},
    )
    user: str | None = field(default=None, metadata={"help": "Who you are (default: the run's first speaker)."})
    dtype: Literal["float32", "bfloat16", "float16", "auto"] | None = field(
        default=None,
        metadata={"help": "dtype of the weights (default: the run's --dtype, and a 4-bit or 8-bit base as it "
                          "trained); set, it loads such a base at full precision in this dtype."},
    )
    max_context_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Longest prompt; the oldest turns are dropped to fit (default: the run's max_length minus "
            "max_new_tokens)."
        },
    )


# scripts/export_gguf.py (recipe/export/gguf_export.py); here, so that its --help needs no torch.
OUTTYPES = ("f16", "bf16", "q8_0")


@dataclass
class GGUFExportArguments:
    """What to export, to which type and file, and who speaks in its chat template."""

    help_group = "GGUF export"

    model_path: str = field(metadata={"help": "A training output dir, checkpoint, LoRA/QLoRA adapter or model folder."})
    outtype: Literal["f16", "bf16", "q8_0"] = field(
        default="f16",
        metadata={"help": "Type of the 2-D weights: f16 (half the float32 size), bf16, or q8_0 (8-bit blocks, about "
                          "a quarter). Norms and biases stay float32."},
    )
    output: str | None = field(
        default=None, metadata={"help": "The .gguf file to write (default: MODEL_PATH/gguf/NAME.OUTTYPE.gguf)."}
    )
    base_model: str | None = field(
        default=None,
        metadata={"help": "Base model of a LoRA adapter (default: the run's base_model/ or the adapter config)."},
    )
    speaker: str | None = field(
        default=None,
        metadata={"help": "Who the model plays in the chat template (assistant): default the run's train_on_speakers, "
                          "else its second speaker."},
    )
    user: str | None = field(default=None, metadata={"help": "Who the user is in the chat template (default: the "
                                                             "run's first speaker)."})
