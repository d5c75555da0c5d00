"""Recipes: YAML files of option: value, read into the option dataclasses, with CLI flags overriding them.

A YAML recipe sets only what differs from the dataclass defaults; command-line flags override the YAML.
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
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from ..common.files import atomic_write_text
from .arguments import DataArguments, LoraArguments, ModelArguments
from .errors import ConfigError, raise_all
from .script_arguments import ChatArguments, EvaluationArguments, GenerationArguments
from .sweep_arguments import SweepArguments
from .training_arguments import DialogueTrainingArguments, TrackingArguments

DEFAULT_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "distilgpt2-full.yaml"

# Every dataclass whose fields are recipe keys: a YAML key outside them is a typo, and an error.
RECIPE_DATACLASSES: list[type] = [
    ModelArguments,
    DataArguments,
    LoraArguments,
    DialogueTrainingArguments,
    TrackingArguments,
    GenerationArguments,
    EvaluationArguments,
    ChatArguments,
    SweepArguments,
]

# Fields of TrainingArguments that are set by launchers or are secrets: never read from or written to a recipe.
_NOT_RECIPE_KEYS = {"local_rank", "hub_token", "resume_from_checkpoint"}


def recipe_keys() -> set[str]:
    return {f.name for dc in RECIPE_DATACLASSES for f in dataclasses.fields(dc) if f.init} - _NOT_RECIPE_KEYS


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
    raise_all(errors + _yaml_shape_errors(path, content))
    return content


def _yaml_shape_errors(path: Path, content: dict[str, Any]) -> list[str]:
    """A YAML list, mapping or null given to an option that takes none: argparse would see a list as
    extra flags and pass a mapping or null through unchecked. (Scalars are checked by argparse.)"""
    hints = {}
    for dataclass in RECIPE_DATACLASSES:
        hints.update(typing.get_type_hints(dataclass))
    errors = []
    for key, value in content.items():
        if key not in hints or not isinstance(value, (list, dict, type(None))):
            continue
        accepted = _accepted_shapes(hints[key])
        shape = list if isinstance(value, list) else dict if isinstance(value, dict) else type(None)
        if shape not in accepted:
            kind = {list: "a list", dict: "a mapping", type(None): "null"}[shape]
            errors.append(f"{path}: {key} is {kind}, but it takes {_type_name(hints[key])}")
    return errors


def _accepted_shapes(hint: Any) -> set[type]:
    members = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    shapes = set()
    for member in members:
        origin = typing.get_origin(member) or member
        if origin in (list, dict, type(None)):
            shapes.add(origin)
        elif member is Any:
            shapes.update((list, dict, type(None)))
    return shapes


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) if isinstance(hint, type) else str(hint).replace("typing.", "")


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
            raise_all(errors + ["see --help for every option"])
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
    """Every option of the given dataclasses (recipe, then flags) as plain values: what run_config.yaml stores.

    Written back as `--config`, it reproduces the run on any machine: options the machine settles
    (automatic precision, use_cpu; a dataclass's `asked_options`) are kept as asked, not as settled
    here. Only init fields that are recipe keys are kept, so derived state and secrets (hub_token)
    never land on disk.
    """
    keys = recipe_keys()
    resolved: dict[str, Any] = {}
    for config in configs:
        asked = getattr(config, "asked_options", {})
        for f in dataclasses.fields(config):
            if f.init and f.name in keys:
                resolved[f.name] = _plain(asked[f.name] if f.name in asked else getattr(config, f.name))
    return resolved


def save_resolved_config(path: str | os.PathLike, *configs: Any, header: str = "") -> None:
    text = yaml.safe_dump(resolved_config(*configs), sort_keys=False, allow_unicode=True)
    atomic_write_text(path, header + text)  # run_config.yaml marks a directory as this recipe's: never half-written
