"""dialogue-finetune: fine-tune and evaluate causal LMs on multi-speaker dialogue with the HF Trainer."""

import os as _os
import sys as _sys

# scripts/evaluate.py shares its name with the `evaluate` library. Python puts the folder of the
# script it runs first on sys.path, where `import evaluate` would find that file instead of the
# library; every script imports this package first, so the folder is taken off the path here.
_SCRIPTS = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))), "scripts")
_sys.path[:] = [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != _SCRIPTS]

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
