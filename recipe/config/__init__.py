"""Every option of the recipe, defined once as a dataclass field, loaded from a YAML recipe and the CLI.

- `arguments`: model, data and LoRA options.
- `training_arguments`: `DialogueTrainingArguments` (HF `TrainingArguments` with the recipe's defaults)
  and the W&B / Hub tracking options.
- `script_arguments`: generation, evaluation and chat options.
- `sweep_arguments`: the sweep script's options (recipe pair, grid, where the runs go).
- `parser`: `RecipeParser` (YAML recipe, then CLI flags) and the resolved config a run stores.
- `run_options`: the options a finished run trained with, read back from its run_config.yaml.
- `sharding`: what the launch asked for (one process, DDP, FSDP, DeepSpeed ZeRO) and the command that launched it.
"""

from .arguments import DataArguments, LoraArguments, ModelArguments
from .errors import ConfigError
from .parser import (
    DEFAULT_RECIPE,
    RECIPE_DATACLASSES,
    RecipeParser,
    load_recipe_yaml,
    recipe_keys,
    resolved_config,
    save_resolved_config,
)
from .run_options import options_from_config, run_data_arguments, run_model_arguments
from .script_arguments import ChatArguments, EvaluationArguments, GenerationArguments
from .sharding import Sharding, get_sharding
from .sweep_arguments import DEFAULT_GRID, SweepArguments, parse_axis
from .training_arguments import DialogueTrainingArguments, TrackingArguments

__all__ = [
    "DEFAULT_GRID",
    "DEFAULT_RECIPE",
    "RECIPE_DATACLASSES",
    "ChatArguments",
    "ConfigError",
    "DataArguments",
    "DialogueTrainingArguments",
    "EvaluationArguments",
    "GenerationArguments",
    "LoraArguments",
    "ModelArguments",
    "RecipeParser",
    "Sharding",
    "SweepArguments",
    "TrackingArguments",
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
