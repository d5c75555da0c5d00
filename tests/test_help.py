"""--help by stage, before anything heavy loads; refusals of a command line in one line, as fast; the options page and
the committed TrainingArguments options generated, not written by hand."""

import importlib.util
import json
import re
import subprocess
import sys
import time

import pytest

from conftest import REPO
from recipe.config import (
    RECIPE_DATACLASSES,
    DialogueTrainingArguments,
    GGUFExportArguments,
    RecipeParser,
    TrainingOptions,
)
from recipe.config.option_specs import (
    build_trainer_option_specs,
    committed_trainer_option_specs,
    installed_transformers_version,
    specs_from_hf_parser,
    specs_of,
    trainer_options_file_text,
)
from recipe.config.parser import option_specs_of

# The scripts a user meets first; not scripts/chat.py, which imports torch at its top (another change's file).
LIGHT_SCRIPTS = ("train.py", "evaluate.py", "prepare_data.py", "sweep.py", "compare.py", "push.py", "export_gguf.py")
HEAVY = ("torch", "transformers", "datasets", "peft", "bitsandbytes", "deepspeed", "matplotlib")
# Runs a script as `python scripts/NAME ARGS...` does, then says which heavy modules it imported, even when it exits.
DRIVER = """
import runpy, sys, json
name, *args = sys.argv[1:]
sys.argv = [name, *args]
try:
    runpy.run_path(name, run_name="__main__")
except SystemExit as stop:
    code = stop.code
else:
    code = 0
print(json.dumps({"exit": code, "heavy": sorted(m for m in %r if m in sys.modules)}), file=sys.__stdout__)
""" % (HEAVY,)


def run_script(name, *args):
    """(exit status, heavy modules imported, stdout before the record, stderr, seconds)."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", DRIVER, f"scripts/{name}", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    seconds = time.monotonic() - start
    *out, record = done.stdout.rstrip("\n").split("\n")
    record = json.loads(record)
    return record["exit"], record["heavy"], "\n".join(out), done.stderr, seconds


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"_help_{name.removesuffix('.py')}", REPO / "scripts" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", LIGHT_SCRIPTS)
def test_help_imports_nothing_heavy_and_answers_at_once(name):
    code, heavy, out, err, seconds = run_script(name, "--help")
    assert code == 0 and err == ""
    assert heavy == [], f"scripts/{name} --help imported {heavy}"
    assert out.startswith("usage: ") and "show this help message" in out
    assert seconds < 3, f"scripts/{name} --help took {seconds:.1f} s"  # torch alone takes 2.6 s here


def test_train_help_lists_each_option_once_by_stage_with_the_trainers_last():
    code, heavy, out, _, _ = run_script("train.py", "--help")
    assert code == 0 and heavy == []
    headings = re.findall(r"(?m)^(\S[^\n]*):$", out)
    assert headings == ["options", "Model", "Quantized base (QLoRA)", "Data", "LoRA", "Training", "Memory plan",
                        "Tracking", "Trainer options (transformers.TrainingArguments)"]
    entries = re.findall(r"(?m)^  (--\w+)", out)
    assert len(entries) == len(set(entries)), "an option listed twice"
    assert not [entry for entry in entries if entry.startswith("--no_")], "--no_X is a note, not an entry"
    trainer = out.split("Trainer options (transformers.TrainingArguments):")[1]
    recipe = out.split("Trainer options (transformers.TrainingArguments):")[0]
    assert "--use_lora {true,false}" in recipe and "--train_on_speakers TEXT ..." in recipe
    assert "--learning_rate FLOAT" in recipe.split("\nTraining:")[1]  # the recipe changes its default: shown there
    assert "--num_train_epochs FLOAT" in trainer and "--learning_rate" not in trainer
    assert "--load_best_model_at_end {true,false}" in recipe
    assert "(default: true; --no_load_best_model_at_end is --load_best_model_at_end false)" in " ".join(recipe.split())
    config = " ".join(out.split("\n  --config RECIPE.yaml")[1].split("\n\n")[0].split())
    assert config.count("default") == 1 and "(default: recipe/configs/distilgpt2-full.yaml)" in config
    for entry in re.split(r"\n  (?=--)", out)[1:]:  # one default per option
        assert " ".join(entry.split()).lower().count("(default:") <= 1, entry


@pytest.mark.parametrize(("name", "args", "message"), [
    ("train.py", ["--lerning_rate", "1"], "error: unknown option --lerning_rate; did you mean --learning_rate? "
                                          "(see --help for every option)"),
    ("train.py", ["--max_length", "long"], "error: argument --max_length: invalid int value: 'long'; see --help"),
    ("train.py", ["--padding", "sideways"], "error: argument --padding: invalid choice: 'sideways' (choose from "
                                            "'packing', 'longest', 'max_length')"),
    ("train.py", ["--config", "nope.yaml"], "error: recipe nope.yaml not found; the shipped recipes are in "
                                            f"{REPO / 'recipe' / 'configs'}"),
    ("evaluate.py", [], "error: --model_path is required: A training output dir (full model or LoRA adapter), one of "
                        "its checkpoint-N dirs, or a base model (Hub id or local dir) for a baseline row"),
    ("evaluate.py", ["--model_path", "x", "--do_sample", "maybe"], "error: argument --do_sample: expected true or "
                                                                   "false, got 'maybe'"),
    ("prepare_data.py", ["--config", "recipe/configs/smoke.yaml"],
     "error: --output_dir is required: Folder for train.jsonl, validation.jsonl and data_report.json"),
    ("sweep.py", ["--grid", "lora_r"], "error: grid axis 'lora_r' is not AXIS=V1,V2,...; e.g. lora_r=8,16 or "
                                       "learning_rate_scale=0.5,1"),
    ("export_gguf.py", ["--model_path", "x", "--outtype", "q4"], "error: argument --outtype: invalid choice: 'q4' "
                                                                 "(choose from 'f16', 'bf16', 'q8_0')"),
    ("compare.py", [], "error: the following arguments are required: run_dirs"),
    ("push.py", ["run", "--include_checkpoints", "maybe"], "error: argument --include_checkpoints: expected true or "
                                                           "false, got 'maybe'"),
])
def test_a_bad_command_line_is_refused_in_one_line_before_the_heavy_imports(name, args, message):
    code, heavy, out, err, seconds = run_script(name, *args)
    assert (code, err, heavy) == (2, message + "\n", []), err
    assert seconds < 3


def test_the_light_option_specs_are_what_hf_argument_parser_declares():
    """--help and the refusals read the dataclasses without transformers; HfArgumentParser builds them: the two agree
    on every option's flag, type, choices, default and help."""
    for dataclass_type in [*RECIPE_DATACLASSES, GGUFExportArguments]:
        if dataclass_type is TrainingOptions:
            continue
        assert specs_of(dataclass_type) == specs_from_hf_parser(dataclass_type), dataclass_type.__name__
    light = {spec.name: spec for spec in option_specs_of(TrainingOptions)}
    built = {spec.name: spec for spec in specs_from_hf_parser(DialogueTrainingArguments)}
    assert light == built


def test_the_committed_trainer_options_are_the_installed_transformers():
    version, _ = committed_trainer_option_specs()
    if version != installed_transformers_version():
        pytest.skip(f"trainer_options.json is transformers {version}'s, {installed_transformers_version()} is "
                    "installed (--help builds the list live): python scripts/options_doc.py writes it again")
    text = (REPO / "recipe" / "config" / "trainer_options.json").read_text(encoding="utf-8")
    assert text == trainer_options_file_text(version, build_trainer_option_specs()), \
        "recipe/config/trainer_options.json is stale: python scripts/options_doc.py"


def test_another_transformers_version_builds_the_trainer_options_live(monkeypatch):
    import recipe.config.option_specs as option_specs
    import recipe.config.parser as parser

    committed = parser._trainer_specs()
    parser._trainer_specs.cache_clear()
    monkeypatch.setattr(option_specs, "installed_transformers_version", lambda: "0.0.0")
    try:
        live = parser._trainer_specs()
    finally:
        parser._trainer_specs.cache_clear()
    assert [spec.name for spec in live] == [spec.name for spec in committed]


def test_the_options_page_is_generated_from_the_dataclasses():
    options_doc = load_script("options_doc.py")
    assert (REPO / "docs" / "options.md").read_text(encoding="utf-8") == options_doc.options_page(), \
        "docs/options.md is stale: python scripts/options_doc.py"


def test_every_script_parser_shows_on_the_options_page():
    options_doc = load_script("options_doc.py")
    page = (REPO / "docs" / "options.md").read_text(encoding="utf-8")
    shipped = {path.name for path in (REPO / "scripts").glob("*.py")} - {"options_doc.py", "memory_table.py"}
    assert shipped == set(options_doc.SCRIPTS)  # memory_table.py takes no option; options_doc.py writes the page
    for name in options_doc.SCRIPTS:
        assert f"\n## scripts/{name}\n" in page
    assert "| `--no_" not in page


def test_the_recipe_parser_help_is_the_scripts():
    """A RecipeParser built in a test or a notebook shows the same grouped help."""
    text = RecipeParser((TrainingOptions,)).format_help()
    assert "Training:" in text and "Trainer options (transformers.TrainingArguments):" in text
