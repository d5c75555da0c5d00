"""Recipes: YAML files of option: value, read into the option dataclasses, with CLI flags overriding them.

A YAML recipe sets only what differs from the dataclass defaults; command-line flags override the YAML.
`RecipeParser.parse_args_and_config` does both, and rejects a YAML key that no dataclass knows,
naming the closest valid one (a typo silently ignored is a run silently wrong).

It checks the whole command line first without transformers (command_line.py: `--help`, unknown options, values
of the wrong type, a missing recipe or required option, each refused in one line), then builds the dataclasses with
transformers' HfArgumentParser, which converts every value as the Trainer expects. `TrainingOptions` among the
dataclasses stands for `DialogueTrainingArguments` (TrainingOptions with every TrainingArguments option), built
only then: importing transformers takes seconds, which `--help` and a refusal no longer wait for.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from ..common.files import atomic_write_text
from .arguments import DataArguments, LoraArguments, ModelArguments
from .command_line import OptionGroup, OptionsParser, dataclass_groups, missing_required, options_parser, replace_specs
from .errors import ConfigError, raise_all
from .option_specs import OptionSpec, installed_transformers_version, specs_of, trainer_option_specs
from .script_arguments import ChatArguments, EvaluationArguments, GenerationArguments
from .sweep_arguments import SweepArguments
from .training_options import TrackingArguments, TrainingOptions

DEFAULT_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "distilgpt2-full.yaml"

# Every dataclass whose fields are recipe keys: a YAML key outside them is a typo, and an error. TrainingOptions
# brings every option of transformers' TrainingArguments with it (DialogueTrainingArguments is both).
RECIPE_DATACLASSES: list[type] = [
    ModelArguments,
    DataArguments,
    LoraArguments,
    TrainingOptions,
    TrackingArguments,
    GenerationArguments,
    EvaluationArguments,
    ChatArguments,
    SweepArguments,
]

# Fields of TrainingArguments that are set by launchers or are secrets: never read from or written to a recipe.
_NOT_RECIPE_KEYS = {"local_rank", "hub_token", "resume_from_checkpoint"}

TRAINER_GROUP = "Trainer options (transformers.TrainingArguments)"
TRAINER_DESCRIPTION = (
    "Every other option of the Hugging Face Trainer, with transformers' own defaults and help (transformers {version}; "
    "https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments)."
)


@functools.lru_cache(maxsize=1)
def _trainer_specs() -> tuple[OptionSpec, ...]:
    return tuple(trainer_option_specs())


def takes_trainer_options(dataclass_type: type) -> bool:
    """TrainingOptions, or DialogueTrainingArguments built on it: the Trainer's options come with it."""
    return issubclass(dataclass_type, TrainingOptions)


def option_specs_of(dataclass_type: type) -> list[OptionSpec]:
    """Every option a dataclass takes on the command line, without importing transformers."""
    if not takes_trainer_options(dataclass_type):
        return specs_of(dataclass_type)
    own = specs_of(TrainingOptions)
    return replace_specs(list(_trainer_specs()), own) + own


def all_option_specs() -> dict[str, OptionSpec]:
    """Every option of every recipe dataclass, by name; a name two of them define (data_path: the training data,
    or the file an evaluation reads instead of the run's) is the first one's, as a recipe means it."""
    specs: dict[str, OptionSpec] = {}
    for dc in RECIPE_DATACLASSES:
        for spec in option_specs_of(dc):
            specs.setdefault(spec.name, spec)
    return specs


def recipe_keys() -> set[str]:
    return set(all_option_specs()) - _NOT_RECIPE_KEYS


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
    specs = all_option_specs()
    errors = []
    for key, value in content.items():
        if key not in specs or not isinstance(value, (list, dict, type(None))):
            continue
        shape = "list" if isinstance(value, list) else "mapping" if isinstance(value, dict) else "null"
        if shape not in specs[key].shapes:
            kind = {"list": "a list", "mapping": "a mapping", "null": "null"}[shape]
            errors.append(f"{path}: {key} is {kind}, but it takes {specs[key].type_name}")
    return errors


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


class RecipeParser:
    """Reads `--config recipe.yaml` first and lets CLI flags override it; `--help` lists every option by stage."""

    def __init__(self, dataclass_types, default_config: str | os.PathLike | None = None,
                 description: str | None = None, prog: str | None = None, takes_recipe: bool = True):
        """`takes_recipe` False: no --config (a script whose options are no recipe's keys)."""
        self.dataclass_types = tuple(dataclass_types)
        self.default_config = default_config
        self.description = description
        self.prog = prog
        self.takes_recipe = takes_recipe

    def groups(self, trainer_specs: list[OptionSpec] | None = None, trainer_version: str | None = None
               ) -> list[OptionGroup]:
        """The --help headings: the recipe's dataclasses by stage, then the Trainer's options under their own (those
        of the installed transformers, or `trainer_specs` of transformers `trainer_version`)."""
        groups, trainer = [], []
        for dataclass_type in self.dataclass_types:
            shown = TrainingOptions if takes_trainer_options(dataclass_type) else dataclass_type
            specs = specs_of(shown)
            groups += dataclass_groups(shown, specs)
            if shown is TrainingOptions:
                description = TRAINER_DESCRIPTION.format(version=trainer_version or _trainer_version())
                trainer.append(OptionGroup(TRAINER_GROUP, description,
                                           tuple(replace_specs(list(trainer_specs or _trainer_specs()), specs))))
        return groups + trainer

    def argparser(self) -> OptionsParser:
        leading = []
        if self.takes_recipe:
            config_help = "YAML recipe of option: value pairs; command-line flags override it"
            if self.default_config:
                config_help += f" (default: {_shown_path(self.default_config)})"
            leading.append((("--config",), {"metavar": "RECIPE.yaml", "help": config_help}))
        return options_parser(self.groups(), prog=self.prog, description=self.description, leading=leading)

    def format_help(self) -> str:
        return self.argparser().format_help()

    def parse_args_and_config(
        self, args: list[str] | None = None, yaml_ignored_keys: tuple[str, ...] = ()
    ) -> tuple[Any, ...]:
        """Return one instance per dataclass, plus the recipe path used (or None) as the last element."""
        args = list(sys.argv[1:] if args is None else args)
        if "-h" in args or "--help" in args:  # before the recipe is read: the help shows whatever else is wrong
            self.argparser().print_help()
            sys.exit(0)
        config_path = (_pop_config_flag(args) or self.default_config) if self.takes_recipe else None
        groups = self.groups()
        own_keys = {spec.name for group in groups for spec in group.options}
        yaml_argv: list[str] = []
        yaml_values: dict[str, Any] = {}
        if config_path is not None:
            for key, value in load_recipe_yaml(config_path).items():
                if key not in own_keys or key in yaml_ignored_keys:
                    continue  # a valid option of another script (e.g. training options seen by prepare_data)
                if value is None or value == [] or isinstance(value, dict):
                    yaml_values[key] = value  # argparse cannot spell these as flags
                else:
                    yaml_argv += _yaml_value_to_argv(key, value)
        # argparse keeps the last occurrence of a flag, so CLI flags placed after the YAML ones win.
        given, remaining = self.argparser().parse_known_args(yaml_argv + args)
        if remaining:
            flags = [a for a in remaining if a.startswith("-")] or remaining
            valid = [f"--{key}" for key in own_keys]
            errors = []
            for flag in flags:
                close = difflib.get_close_matches(flag.split("=")[0], valid, n=1)
                errors.append(f"unknown option {flag}" + (f"; did you mean {close[0]}?" if close else ""))
            errors[-1] += " (see --help for every option)"
            raise_all(errors)
        for name, value in yaml_values.items():
            if not hasattr(given, name):
                setattr(given, name, value)
        raise_all(missing_required(groups, given))
        if any(takes_trainer_options(dc) for dc in self.dataclass_types):
            outputs = self._build_with_trainer_options(yaml_argv + args, yaml_values)
        else:  # the values as parsed above: the same conversions as HfArgumentParser's (tests/test_help.py)
            outputs = [dc(**{f.name: getattr(given, f.name) for f in dataclasses.fields(dc)
                             if f.init and hasattr(given, f.name)}) for dc in self.dataclass_types]
        return (*outputs, str(config_path) if config_path else None)

    def _build_with_trainer_options(self, argv: list[str], yaml_values: dict[str, Any]) -> list[Any]:
        """The dataclasses from a command line already checked, converted by HfArgumentParser as the Trainer's own
        options expect (some take a JSON mapping or a list of enum values; this imports transformers)."""
        classes = [_dialogue_training_arguments() if dc is TrainingOptions else dc for dc in self.dataclass_types]
        parser = _hf_parser(classes)
        parser.set_defaults(**yaml_values)
        *outputs, remaining = parser.parse_args_into_dataclasses(
            args=argv, look_for_args_file=False, return_remaining_strings=True
        )
        if remaining:  # the check above passed: a difference between the two parsers
            raise ConfigError(f"unknown option {' '.join(remaining)} (see --help for every option)")
        return [o for o in outputs if dataclasses.is_dataclass(o)]


def _dialogue_training_arguments() -> type:
    from .training_arguments import DialogueTrainingArguments  # imports transformers: seconds

    return DialogueTrainingArguments


def _hf_parser(classes: list[type]):
    from transformers import HfArgumentParser

    class Parser(HfArgumentParser):
        def error(self, message: str):
            raise ConfigError(f"{message}; see --help")

    return Parser(classes, allow_abbrev=False)


def _trainer_version() -> str:
    return installed_transformers_version()  # "none" where it is not installed: nothing can train anyway


def _shown_path(path: str | os.PathLike) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(__file__).resolve().parents[2]))
    except ValueError:
        return str(path)


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
