"""Every option of a script as the command line takes it, read without importing transformers.

An `OptionSpec` is what `transformers.HfArgumentParser` makes of one dataclass field (its flag, the type argparse
converts it with, its choices, default and help), plus what a YAML recipe may give it (a list, a mapping, null). The
recipe's own dataclasses need no transformers: `specs_of` reads their fields and type hints, the way HfArgumentParser
does (tests/test_help.py holds the two to the same answer). transformers' `TrainingArguments` is another matter:
importing it takes seconds (it imports peft, and peft bitsandbytes), so its options are read once from
HfArgumentParser and committed in trainer_options.json, with the transformers version they came from. Where the
installed transformers is that version, `--help`, the options page and the refusals of a command line read the file;
where it is another, they build the same list from the installed transformers (slower, still right).

Regenerate the file after upgrading transformers: python scripts/options_doc.py
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.metadata
import inspect
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

TRAINER_OPTIONS_FILE = Path(__file__).with_name("trainer_options.json")
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
# transformers' TrainingArguments: committed, or read from the installed transformers


def trainer_option_specs(live: bool = False) -> list[OptionSpec]:
    """Every option of transformers.TrainingArguments: from trainer_options.json where it was made from the
    installed transformers (no import), else from the installed transformers itself (`live`, seconds)."""
    if not live:
        committed = read_trainer_options_file()
        if committed["transformers"] == installed_transformers_version():
            return [OptionSpec.from_json(entry) for entry in committed["options"]]
    return build_trainer_option_specs()


def committed_trainer_option_specs() -> tuple[str, list[OptionSpec]]:
    """(the transformers version, its TrainingArguments options) as trainer_options.json holds them."""
    committed = read_trainer_options_file()
    return committed["transformers"], [OptionSpec.from_json(entry) for entry in committed["options"]]


def read_trainer_options_file() -> dict[str, Any]:
    return json.loads(TRAINER_OPTIONS_FILE.read_text(encoding="utf-8"))


def installed_transformers_version() -> str:
    return importlib.metadata.version("transformers")  # the package's metadata: no import


def build_trainer_option_specs() -> list[OptionSpec]:
    """TrainingArguments' options as HfArgumentParser declares them (imports transformers)."""
    from transformers import TrainingArguments

    return specs_from_hf_parser(TrainingArguments)


def specs_from_hf_parser(dataclass_type: type) -> list[OptionSpec]:
    """The options HfArgumentParser declares for a dataclass, read off its argparse actions (imports transformers).
    The reference `specs_of` is held to, and what trainer_options.json is made of."""
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


def trainer_options_file_text(version: str, specs: list[OptionSpec]) -> str:
    """trainer_options.json as scripts/options_doc.py writes it."""
    about = ("transformers.TrainingArguments' options as HfArgumentParser declares them, read by --help and the "
             "command-line checks without importing transformers (recipe/config/option_specs.py). Regenerate after "
             "upgrading transformers: python scripts/options_doc.py")
    options = ",\n".join("  " + json.dumps(spec.to_json(), ensure_ascii=False) for spec in specs)  # one a line
    return (f'{{\n "about": {json.dumps(about)},\n "transformers": {json.dumps(version)},\n "options": [\n'
            f"{options}\n ]\n}}\n")
