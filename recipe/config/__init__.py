"""Every option of the recipe, defined once as a dataclass field, loaded from a YAML recipe and the CLI.

- `arguments`: model, data and LoRA options.
- `training_options`: `TrainingOptions` (the recipe's training options and the Trainer defaults it changes) and
  `TrackingArguments` (W&B, the Hub, replies during training).
- `training_arguments`: `DialogueTrainingArguments` (HF `TrainingArguments` with `TrainingOptions`); the one module
  here that imports transformers, loaded when first named (`from recipe.config import DialogueTrainingArguments`).
- `script_arguments`: generation, evaluation and chat options.
- `sweep_arguments`: the sweep script's options (recipe pair, grid, where the runs go).
- `parser`: `RecipeParser` (YAML recipe, then CLI flags) and the resolved config a run stores.
- `command_line`, `option_specs`: `--help` by stage and the command-line checks, before transformers is imported
  (TrainingArguments' options read once per installed transformers, then from the user's cache).
- `run_options`: the options a finished run trained with, read back from its run_config.yaml.
- `sharding`: what the launch asked for (one process, DDP, FSDP, DeepSpeed ZeRO) and the command that launched it.
"""

from .arguments import DataArguments, LoraArguments, ModelArguments
from .errors import ConfigError
from .parser import (
    DEFAULT_RECIPE,
    RECIPE_DATACLASSES,
    RecipeParser,
    all_option_specs,
    load_recipe_yaml,
    recipe_keys,
    resolved_config,
    save_resolved_config,
)
from .run_options import options_from_config, run_data_arguments, run_model_arguments
from .script_arguments import OUTTYPES, ChatArguments, EvaluationArguments, GenerationArguments, GGUFExportArguments
from .sharding import Sharding, get_sharding
from .sweep_arguments import DEFAULT_GRID, SweepArguments, parse_axis
from .training_options import TrackingArguments, TrainingOptions


def __getattr__(name: str):
    """`DialogueTrainingArguments` imports transformers (seconds): loaded when first asked for, so that scripts parse
    and check their options, and print --help, without it."""
    if name == "DialogueTrainingArguments":
        from .training_arguments import DialogueTrainingArguments

        return DialogueTrainingArguments
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_GRID",
    "DEFAULT_RECIPE",
    "OUTTYPES",
    "RECIPE_DATACLASSES",
    "ChatArguments",
    "ConfigError",
    "DataArguments",
    "DialogueTrainingArguments",
    "EvaluationArguments",
    "GGUFExportArguments",
    "GenerationArguments",
    "LoraArguments",
    "ModelArguments",
    "RecipeParser",
    "Sharding",
    "SweepArguments",
    "TrackingArguments",
    "TrainingOptions",
    "all_option_specs",
    "get_sharding",
    "load_recipe_yaml",
    "options_from_config",
    "parse_axis",
    "recipe_keys",
    "resolved_config",
    "run_data_arguments",
    "run_model_arguments",
    "save_resolved_config",
]
