"""A script's command line before anything heavy loads: the grouped `--help`, and the refusals that need no model.

`options_parser` builds a plain argparse parser from `OptionSpec` groups (option_specs.py): one group per stage of the
recipe (model, quantized base, data, LoRA, training, memory plan, tracking, ...), then, for training, transformers'
TrainingArguments under their own heading. Each option is listed once, with one default; a true/false option reads
`--NAME {true,false}`, and its `--no_NAME` form (HfArgumentParser's) is a note in that entry, not an entry of its own.
The same parser checks a command line (unknown options, values of the wrong type, a choice not offered, a missing
required option) in milliseconds, so a typo is refused before torch and transformers take seconds to import.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError
from .option_specs import OptionSpec

REPO = Path(__file__).resolve().parents[2]
BOOL_CHOICES = "{true,false}"
LONG_CHOICES = 48  # characters: longer choice lists are written out in the help text instead


@dataclass(frozen=True)
class OptionGroup:
    """One heading of --help and of the options page."""

    title: str
    description: str
    options: tuple[OptionSpec, ...]


def string_to_bool(text: str) -> bool:
    """As transformers.hf_argparser.string_to_bool reads a true/false value."""
    if isinstance(text, bool):
        return text
    if text.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if text.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def choice_type(choices: tuple) -> Callable[[str], Any]:
    """As transformers' make_choice_type_function: a value's text to the choice it names."""
    by_text = {str(choice): choice for choice in choices}
    return lambda text: by_text.get(text, text)


_TYPES: dict[str, Callable[[str], Any]] = {"bool": string_to_bool, "int": int, "float": float, "str": str}


def show_value(value: Any) -> str:
    """A default as --help and the options page show it."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "unset"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value) if value else "none"
    if isinstance(value, str):
        if not value or value != value.strip() or "\n" in value:
            return json.dumps(value)  # "", "\n": visible
        try:  # a path inside the repository, shown from its root
            return str(Path(value).relative_to(REPO)) if os.path.isabs(value) else value
        except ValueError:
            return value
    return str(value)


def help_text(spec: OptionSpec) -> str:
    """The help of an option, with its default said once (unless the help already says it) and its --no_ form."""
    text = " ".join(spec.help.split())
    notes = []
    if spec.choices is not None and len(_choice_list(spec)) > LONG_CHOICES:
        text = f"{text} One of: {', '.join(str(c) for c in spec.choices)}." if text else ""
    if spec.required:
        notes.append("required")
    elif "default" not in text.lower():
        notes.append(f"default: {show_value(spec.default)}")
    if spec.negatable:
        notes.append(f"--no_{spec.name} is --{spec.name} false")
    if notes:
        text = f"{text} ({'; '.join(notes)})" if text else "; ".join(notes).capitalize()
    return text


def metavar(spec: OptionSpec) -> str:
    if spec.kind == "bool":
        return BOOL_CHOICES
    if spec.choices is not None:
        return "CHOICE" if len(_choice_list(spec)) > LONG_CHOICES else _choice_list(spec)
    if spec.kind in ("int", "float"):
        return spec.kind.upper()
    return "PATH" if spec.name.endswith(("_path", "_dir", "_file", "_recipe", "_script")) else "TEXT"


def _choice_list(spec: OptionSpec) -> str:
    return "{" + ",".join(str(c) for c in spec.choices) + "}"


def invocation(spec: OptionSpec) -> str:
    """`--NAME VALUE` as --help and the options page write it; a list takes one value or more."""
    return f"--{spec.name} {metavar(spec)}" + (" ..." if spec.nargs == "+" else "")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """One line of invocation per option (`--use_lora {true,false}`), none for the hidden aliases."""

    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=36, width=min(120, max(80, _terminal_width())))

    def _format_action_invocation(self, action: argparse.Action) -> str:
        spec = getattr(action, "spec", None)
        return invocation(spec) if spec is not None else super()._format_action_invocation(action)


def _terminal_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 100


class OptionsParser(argparse.ArgumentParser):
    """argparse that raises ConfigError (one line: the option and what it takes) instead of printing the usage
    and exiting, so every script reports a bad command line as it reports any other user error."""

    def error(self, message: str):
        # "invalid int value: 'long'" says what is wrong, not what the option takes: --help does
        raise ConfigError(f"{message}; see --help" if re.search(r"invalid \w+ value", message) else message)


def options_parser(groups: list[OptionGroup], prog: str | None = None, description: str | None = None,
                   leading: list[tuple[tuple[str, ...], dict[str, Any]]] = ()) -> OptionsParser:
    """A parser that shows and checks `groups` (plus `leading` arguments, such as --config, in the first group).

    Every value is parsed with SUPPRESS as its default: the namespace holds what the command line gave, so a
    missing required option is found by name, and no default is printed twice (the help text says it once).
    """
    usage = "%(prog)s [-h]" + (" [--config RECIPE.yaml]" if leading else "") + " [--OPTION VALUE ...]"
    parser = OptionsParser(prog=prog, description=description, formatter_class=_HelpFormatter,
                           allow_abbrev=False, argument_default=argparse.SUPPRESS, usage=usage)
    parser._optionals.title = "options"  # -h, --config
    for flags, kwargs in leading:
        parser.add_argument(*flags, **kwargs)
    width = _HelpFormatter(parser.prog)._width
    for group in groups:
        description = textwrap.fill(group.description, width - 2) if group.description else None
        section = parser.add_argument_group(group.title, description)
        for spec in group.options:
            add_option(section, spec)
    return parser


def add_option(section, spec: OptionSpec) -> None:
    """`--name`, with HfArgumentParser's aliases hidden: `--name-with-hyphens`, and `--no_name` for a bool that
    defaults to true."""
    kwargs: dict[str, Any] = {"dest": spec.name, "help": help_text(spec).replace("%", "%%")}
    if spec.choices is not None:
        kwargs.update(choices=spec.choices, type=choice_type(spec.choices))
    else:
        kwargs["type"] = _TYPES.get(spec.kind, str)  # another type (a dict, an enum list): checked when built
    if spec.nargs is not None:
        kwargs["nargs"] = spec.nargs
        if spec.nargs == "?":
            kwargs["const"] = True
    action = section.add_argument(f"--{spec.name}", **kwargs)
    action.spec = spec
    hidden = {**kwargs, "help": argparse.SUPPRESS}
    if "_" in spec.name:
        section.add_argument(f"--{spec.name.replace('_', '-')}", **hidden)
    if spec.negatable:
        section.add_argument(f"--no_{spec.name}", f"--no-{spec.name.replace('_', '-')}", action="store_false",
                             dest=spec.name, help=argparse.SUPPRESS)


def missing_required(groups: list[OptionGroup], given: argparse.Namespace) -> list[str]:
    return [f"--{spec.name} is required: {first_sentence(spec.help)}" for group in groups for spec in group.options
            if spec.required and not hasattr(given, spec.name)]


def first_sentence(text: str) -> str:
    text = " ".join(text.split())
    return text.split(". ")[0].rstrip(".")


# ----------------------------------------------------------------------------------------------
# Groups of a dataclass


def dataclass_groups(dataclass_type: type, specs: list[OptionSpec]) -> list[OptionGroup]:
    """The dataclass's heading (its `help_group`, else its name), its description (its docstring's first
    paragraph), and the headings it splits off for some of its fields (`help_subgroups`: (title, names))."""
    title = getattr(dataclass_type, "help_group", None) or dataclass_type.__name__.removesuffix("Arguments")
    doc = dataclass_type.__doc__ or ""
    description = "" if doc.startswith(f"{dataclass_type.__name__}(") else " ".join(doc.split("\n\n")[0].split())
    subgroups = getattr(dataclass_type, "help_subgroups", ())  # (title, field names, description)
    taken = {name for _, names, _ in subgroups for name in names}
    by_name = {spec.name: spec for spec in specs}
    groups = [OptionGroup(title, description, tuple(s for s in specs if s.name not in taken))]
    for sub_title, names, sub_description in subgroups:
        groups.append(OptionGroup(sub_title, sub_description,
                                  tuple(by_name[name] for name in names if name in by_name)))
    return [group for group in groups if group.options]


def replace_specs(specs: list[OptionSpec], overrides: list[OptionSpec]) -> list[OptionSpec]:
    """`specs` less the names `overrides` declares again (a subclass's field replaces its base's)."""
    names = {spec.name for spec in overrides}
    return [spec for spec in specs if spec.name not in names]

