"""dialogue-finetune: fine-tune and evaluate causal LMs on multi-speaker dialogue with the HF Trainer."""

from .config import (
    ConfigError,
    DataArguments,
    DialogueTrainingArguments,
    LoraArguments,
    ModelArguments,
    RecipeParser,
)
from .data import (
    DialogueCollator,
    DialogueDataError,
    PreparedData,
    build_datasets,
    encode_dialogue,
    read_dialogues,
    split_dialogues,
)
from .modeling import apply_lora, get_model, get_tokenizer

__all__ = [
    "ConfigError",
    "DataArguments",
    "DialogueCollator",
    "DialogueDataError",
    "DialogueTrainingArguments",
    "LoraArguments",
    "ModelArguments",
    "PreparedData",
    "RecipeParser",
    "apply_lora",
    "build_datasets",
    "encode_dialogue",
    "get_model",
    "get_tokenizer",
    "read_dialogues",
    "split_dialogues",
]
