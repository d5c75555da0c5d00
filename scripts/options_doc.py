"""Write docs/options.md, every option of every script grouped as its --help groups them.

    python scripts/options_doc.py            # after changing an option, or the locked transformers
    python scripts/options_doc.py --check    # exit status 1 when the page is not what it would write

The page is made from the option dataclasses' fields and help (recipe/config/), never by hand: tests/test_help.py
fails when it differs from what this writes. The Trainer's options on it are those of the installed transformers
(the page says which version): run it in the locked install (requirements/lock.txt), as CI does.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as python scripts/options_doc.py: the recipe package is the repository's

from recipe.common.library_messages import quiet_libraries  # noqa: E402
from recipe.config import RecipeParser  # noqa: E402
from recipe.config.command_line import show_value  # noqa: E402
from recipe.config.option_specs import (  # noqa: E402
    OptionSpec,
    installed_transformers_version,
    trainer_option_specs,
)

OPTIONS_PAGE = REPO / "docs" / "options.md"
# In the order a new user meets them.
SCRIPTS = ("train.py", "evaluate.py", "chat.py", "prepare_data.py", "sweep.py", "compare.py", "export_gguf.py",
           "push.py", "reproduce.py", "get_base_model.py", "build_offline_model.py")


def script_parser(name: str):
    """The parser a script builds (its `parser()`), without running the script."""
    path = REPO / "scripts" / name
    spec = importlib.util.spec_from_file_location(f"_options_doc_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # its top-level imports; `if __name__ == "__main__"` does not run
    return module.parser()


def options_page() -> str:
    """docs/options.md, with the TrainingArguments options of the installed transformers."""
    version, trainer_specs = installed_transformers_version(), trainer_option_specs()
    lines = [
        "# Options",
        "",
        "Every option of every script, grouped as its `--help` groups them: the recipe's options by stage first, then "
        "(for training) the Trainer's own. Generated from the option dataclasses (`recipe/config/`) by "
        "`python scripts/options_doc.py`; do not edit by hand (`tests/test_help.py` checks it). A YAML recipe "
        "(`--config`) takes the same names as keys. A true/false option takes `true` or `false` (also yes/no, 1/0), "
        "and alone means true.",
        "",
        "| script | what it does |",
        "|---|---|",
    ]
    sections = []
    for name in SCRIPTS:
        parser = script_parser(name)
        summary = _first_line(parser.description)
        anchor = re.sub(r"[^\w\- ]", "", f"scripts/{name}")  # GitHub's anchor of the heading below
        lines.append(f"| [`scripts/{name}`](#{anchor}) | {_cell(summary)} |")
        sections += ["", f"## scripts/{name}", ""]
        if isinstance(parser, RecipeParser):
            sections += _recipe_parser_section(parser, trainer_specs, version)
        else:
            sections += _argparse_section(parser)
    return "\n".join(lines + sections) + "\n"


def _recipe_parser_section(parser: RecipeParser, trainer_specs: list[OptionSpec], version: str) -> list[str]:
    lines = [f"`{_usage(parser.argparser())}`", ""]
    if parser.takes_recipe:
        default = f" (default: `{show_value(str(parser.default_config))}`)" if parser.default_config else ""
        lines += [f"`--config RECIPE.yaml`: a YAML recipe of option: value pairs; command-line flags override "
                  f"it{default}.", ""]
    for group in parser.groups(trainer_specs, version):
        lines += [f"### {group.title}", ""]
        if group.description:
            lines += [group.description, ""]
        lines += ["| option | type | default | help |", "|---|---|---|---|"]
        for spec in group.options:
            note = f" `--no_{spec.name}` is `--{spec.name} false`." if spec.negatable else ""
            lines.append(f"| `--{spec.name}` | {_spec_type(spec)} | {_default_cell(spec)} | "
                         f"{_cell(_help(spec.help))}{note} |")
        lines.append("")
    return lines[:-1]


def _argparse_section(parser: argparse.ArgumentParser) -> list[str]:
    lines = [f"`{_usage(parser)}`", "", "| option | type | default | help |", "|---|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = ", ".join(f"`{flag}`" for flag in action.option_strings) or f"`{action.dest}` (positional)"
        kind = {"int": "int", "float": "float", "_bool": "true/false"}.get(getattr(action.type, "__name__", ""),
                                                                         "text")
        if action.nargs in ("+", "*"):
            kind += ", one or more" if action.nargs == "+" else ", any number"
        required = action.required or not action.option_strings
        value = show_value(action.default)  # true/false, a path from the repository's root
        default = "required" if required else "unset" if action.default is None else f"`{value}`"
        # "(default: X)" at the end of the help, where X is the default column's: said once
        help_text = re.sub(rf"\s*\(default: {re.escape(value)}\)$", "", action.help or "")
        lines.append(f"| {name} | {kind} | {default} | {_cell(_help(help_text))} |")
    return lines


def _spec_type(spec: OptionSpec) -> str:
    if spec.kind == "bool":
        kind = "true/false"
    elif spec.choices is not None:
        kind = ", ".join(f"`{choice}`" for choice in spec.choices)
    else:
        kind = {"int": "int", "float": "float", "str": "text"}.get(spec.kind, spec.kind)
    return kind + (", one or more" if spec.nargs == "+" else "")


def _default_cell(spec: OptionSpec) -> str:
    if spec.required:
        return "required"
    return "unset" if spec.default is None else f"`{show_value(spec.default)}`"


def _help(text: str) -> str:
    return " ".join(text.replace("%%", "%").split())


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _first_line(text: str | None) -> str:
    """The description's first paragraph, on one line."""
    return " ".join((text or "").strip().split("\n\n")[0].split())


def _usage(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_usage().removeprefix("usage: ").split())


def main(check: bool) -> int:
    text = options_page()
    if OPTIONS_PAGE.is_file() and OPTIONS_PAGE.read_text(encoding="utf-8") == text:
        return 0
    if check:
        print(f"{OPTIONS_PAGE.relative_to(REPO)} is out of date: python scripts/options_doc.py", file=sys.stderr)
        return 1
    OPTIONS_PAGE.write_text(text, encoding="utf-8")
    print(f"wrote {OPTIONS_PAGE.relative_to(REPO)}")
    return 0


def script_option_names() -> set[str]:
    """Every flag of every script, without its dashes (--no_NAME forms included)."""
    names = set()
    for name in SCRIPTS:
        parser = script_parser(name)
        if isinstance(parser, RecipeParser):
            parser = parser.argparser()
        names |= {flag.lstrip("-") for action in parser._actions for flag in action.option_strings}
    return names


if __name__ == "__main__":
    quiet_libraries()  # building TrainingArguments' options imports transformers, and through peft bitsandbytes
    options = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    options.add_argument("--check", action="store_true", help="change nothing; exit 1 when a file is out of date")
    sys.exit(main(options.parse_args().check))
