"""The options a finished run trained with, read back from its run_config.yaml: evaluation, chat and the GGUF
export load and prompt its model the way it trained."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..common.run_dir import RunDir
from .arguments import DataArguments, ModelArguments
from .parser import load_recipe_yaml


def options_from_config(options_class, config: dict[str, Any]):
    """`options_class` built from the entries of a run_config.yaml (or recipe) that are its fields."""
    names = {f.name for f in dataclasses.fields(options_class) if f.init}
    return options_class(**{k: v for k, v in config.items() if k in names})


def run_model_arguments(run: RunDir | None) -> ModelArguments:
    """The model options a run trained with (defaults for a model no run of this recipe wrote)."""
    return options_from_config(ModelArguments, run.read_config() if run else {})


def run_data_arguments(run_config: dict[str, Any] | None, data_config: str | None = None) -> DataArguments:
    """The data options of a run (or of --data_config, a recipe), so that its split and format are the same."""
    options = load_recipe_yaml(data_config) if data_config else run_config or {}  # a missing or bad file is named
    return options_from_config(DataArguments, options)
