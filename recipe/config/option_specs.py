"""Every option of a script as the command line takes it, read without importing transformers.

An `OptionSpec` is what `transformers.HfArgumentParser` makes of one dataclass field (its flag, the type argparse
converts it with, its choices, default and help), plus what a YAML recipe may give it (a list, a mapping, null). The
recipe's own dataclasses need no transformers: `specs_of` reads their fields and type hints, the way HfArgumentParser
does (tests/test_help.py holds the two to the same answer). transformers' `TrainingArguments` is another matter:
importing it takes seconds (torch, and peft, and through it bitsandbytes), and its options change from one release to
the next. So they are read once per installed transformers (and torch, accelerate and Python: a default or a type may
depend on them) from HfArgumentParser, and kept in the user's cache, outside the repository
(`~/.cache/dialogue-finetune/trainer-options/`, or under $DIALOGUE_FINETUNE_CACHE): the first `--help`, refusal or
run after an upgrade takes those seconds, once, and says so; every later one reads the file. Nothing in the
repository matches one version only.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.metadata
import inspect
import json
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..common.files import atomic_write_text, user_cache_dir

REQUIRED = "required"  # OptionSpec.default of an option without a default


@dataclass(frozen=True)
class OptionSpec:
    """One option, as argparse takes it and as the help and the options page show it."""

    name: str
    kind: str  # "bool" (true/false, yes/no, 1/0), "int", "float", "str", "choice", or another type's name
    help: str = ""
    default: Any = None  # REQUIRED when the option has none; JSON values (an enum's value, not the enum)
    choices: tuple | None = None
    nargs: str | None = None  # "+" (a list), "?" (a bool given alone means true)
    negatable: bool = False  # --no_NAME sets it false (a bool that defaults to true)
    type_name: str = ""  # the field's type, as a YAML value of the wrong shape is told
    shapes: tuple[str, ...] = ()  # YAML shapes it takes besides a scalar: "list", "mapping", "null"

    @property
    def required(self) -> bool:
        return self.default == REQUIRED

    def to_json(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> OptionSpec:
        entry = dict(entry)
        for key in ("choices", "shapes"):
            if entry.get(key) is not None:
                entry[key] = tuple(entry[key])
        return cls(**entry)


# ----------------------------------------------------------------------------------------------
# The recipe's dataclasses: from their fields and type hints, as HfArgumentParser reads them


def specs_of(dataclass_type: type) -> list[OptionSpec]:
    """The options of a dataclass that imports no transformers, as HfArgumentParser would declare them."""
    hints = typing.get_type_hints(dataclass_type)
    return [_field_spec(f, hints[f.name]) for f in dataclasses.fields(dataclass_type) if f.init]


def _field_spec(field: dataclasses.Field, hint: Any) -> OptionSpec:
    """transformers.HfArgumentParser._parse_dataclass_field, reduced to what it declares."""
    common = {"name": field.name, "help": field.metadata.get("help", ""), "type_name": type_name(hint),
              "shapes": yaml_shapes(hint)}
    kind_type = _without_union(field.name, hint)
    origin = getattr(kind_type, "__origin__", kind_type)
    has_default = field.default is not dataclasses.MISSING
    has_factory = field.default_factory is not dataclasses.MISSING
    if origin is Literal or (inspect.isclass(kind_type) and issubclass(kind_type, enum.Enum)):
        choices = tuple(kind_type.__args__) if origin is Literal else tuple(x.value for x in kind_type)
        return OptionSpec(kind="choice", choices=choices, default=field.default if has_default else REQUIRED,
                          **common)
    if kind_type is bool or kind_type == bool | None:
        if kind_type is bool or (field.default is not None and has_default):
            default = False if not has_default else field.default
            return OptionSpec(kind="bool", default=default, nargs="?", negatable=field.default is True, **common)
        return OptionSpec(kind="bool", default=field.default if has_default else None, **common)
    if inspect.isclass(origin) and issubclass(origin, list):
        default = field.default_factory() if has_factory else field.default if has_default else REQUIRED
        return OptionSpec(kind=_kind(kind_type.__args__[0]), nargs="+", default=default, **common)
    default = field.default if has_default else field.default_factory() if has_factory else REQUIRED
    return OptionSpec(kind=_kind(kind_type), default=default, **common)


def _without_union(name: str, hint: Any) -> Any:
    """The one type argparse converts with, as HfArgumentParser picks it out of a Union."""
    origin = getattr(hint, "__origin__", hint)
    if not (origin is typing.Union or isinstance(hint, types.UnionType)):
        return hint
    members = hint.__args__
    if str not in members and (len(members) != 2 or type(None) not in members):
        raise ValueError(f"option {name}: only X | None (or a union with str) can be parsed, not {hint}")
    if type(None) not in members:
        return members[0] if members[1] is str else members[1]
    if bool not in members:
        return members[0] if isinstance(None, members[1]) else members[1]
    return hint


def _kind(python_type: Any) -> str:
    names = {bool: "bool", int: "int", float: "float", str: "str"}
    return names.get(python_type) or getattr(python_type, "__name__", str(python_type))


def yaml_shapes(hint: Any) -> tuple[str, ...]:
    """The YAML values besides scalars an option takes: a list, a mapping, null."""
    members = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    shapes = set()
    for member in members:
        origin = typing.get_origin(member) or member
        if origin in (list, dict, type(None)):
            shapes.add({list: "list", dict: "mapping", type(None): "null"}[origin])
        elif member is Any:
            shapes.update(("list", "mapping", "null"))
    return tuple(sorted(shapes))


def type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) if isinstance(hint, type) else str(hint).replace("typing.", "")


# ----------------------------------------------------------------------------------------------
# transformers' TrainingArguments: read once per installed version, kept in the user's cache

# The cache file's layout; a change to OptionSpec changes it, and the files of the old one are not read.
TRAINER_OPTIONS_FORMAT = 1
# The packages whose versions can change what HfArgumentParser declares for TrainingArguments (optim's default
# follows torch's version; parallelism_config's type is accelerate's).
TRAINER_OPTIONS_DEPEND_ON = ("transformers", "torch", "accelerate")


def trainer_option_specs() -> list[OptionSpec]:
    """Every option of transformers.TrainingArguments, from the cache made for the installed versions (no import),
    else read from the installed transformers (seconds, said on stderr unless transformers is loaded already) and
    cached for the next time. A cache that cannot be written (a read-only home) is no error: the options are read
    again next time."""
    path = trainer_options_cache_file()
    try:
        return [OptionSpec.from_json(entry) for entry in json.loads(path.read_text(encoding="utf-8"))["options"]]
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or not a file this code wrote: read them again
        pass
    if "transformers.training_args" not in sys.modules:
        sys.stderr.write(f"(reading the Trainer's options from transformers {installed_version('transformers')} "
                         f"once; cached in {path})\n")
    specs = build_trainer_option_specs()
    try:
        atomic_write_text(path, trainer_options_file_text(specs))
    except OSError:
        pass
    return specs


def trainer_options_cache_file() -> Path:
    """The cache file of the installed versions: one per (transformers, torch, accelerate, Python, format)."""
    versions = "_".join(f"{name}-{installed_version(name)}" for name in TRAINER_OPTIONS_DEPEND_ON)
    python = f"py{sys.version_info.major}.{sys.version_info.minor}"
    return user_cache_dir() / "trainer-options" / f"{versions}_{python}_format-{TRAINER_OPTIONS_FORMAT}.json"


def installed_version(distribution: str) -> str:
    """A package's version from its metadata (no import); "none" when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def installed_transformers_version() -> str:
    return installed_version("transformers")


def build_trainer_option_specs() -> list[OptionSpec]:
    """TrainingArguments' options as HfArgumentParser declares them (imports transformers)."""
    from transformers import TrainingArguments

    return specs_from_hf_parser(TrainingArguments)


def specs_from_hf_parser(dataclass_type: type) -> list[OptionSpec]:
    """The options HfArgumentParser declares for a dataclass, read off its argparse actions (imports transformers).
    The reference `specs_of` is held to, and what the cache of TrainingArguments' options holds."""
    from transformers import HfArgumentParser
    from transformers.hf_argparser import string_to_bool

    parser = HfArgumentParser(dataclass_type)
    hints = typing.get_type_hints(dataclass_type)
    negatable = {action.dest for action in parser._actions if action.option_strings
                 and action.option_strings[0] == f"--no_{action.dest}"}
    specs = []
    for action in parser._actions:
        if not action.option_strings or action.option_strings[0] != f"--{action.dest}":
            continue  # -h, and the --no_NAME flags (negatable above)
        if action.choices is not None:
            kind = "choice"
        elif action.type is string_to_bool:
            kind = "bool"
        else:
            kind = _kind(action.type)
        specs.append(OptionSpec(
            name=action.dest, kind=kind, help=action.help or "",
            default=REQUIRED if action.required else _json_value(action.default),
            choices=tuple(_json_value(c) for c in action.choices) if action.choices is not None else None,
            nargs=action.nargs, negatable=action.dest in negatable, type_name=type_name(hints[action.dest]),
            shapes=yaml_shapes(hints[action.dest]),
        ))
    return specs


def _json_value(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def trainer_options_file_text(specs: list[OptionSpec]) -> str:
    """The cache file: the versions it was read from, then one option a line."""
    versions = {name: installed_version(name) for name in TRAINER_OPTIONS_DEPEND_ON}
    about = ("transformers.TrainingArguments' options as HfArgumentParser declares them, read by --help and the "
             "command-line checks of dialogue-finetune without importing transformers (recipe/config/option_specs.py)")
    options = ",\n".join("  " + json.dumps(spec.to_json(), ensure_ascii=False) for spec in specs)  # one a line
    return (f'{{\n "about": {json.dumps(about)},\n "versions": {json.dumps(versions)},\n "format": '
            f'{TRAINER_OPTIONS_FORMAT},\n "options": [\n{options}\n ]\n}}\n')
