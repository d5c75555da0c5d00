"""--help by stage, before anything heavy loads; refusals of a command line in one line, as fast; the options page and
the committed TrainingArguments options generated, not written by hand."""

import importlib.util
import json
import os
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
    installed_transformers_version,
    specs_from_hf_parser,
    specs_of,
    trainer_option_specs,
    trainer_options_cache_file,
)
from recipe.config.parser import option_specs_of

# The scripts a user meets first; not scripts/chat.py, which imports torch at its top (another change's file).
LIGHT_SCRIPTS = ("train.py", "evaluate.py", "prepare_data.py", "sweep.py", "compare.py", "push.py", "export_gguf.py",
                 "reproduce.py")
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


@pytest.fixture(scope="module", autouse=True)
def trainer_options_cached():
    """The Trainer's options are read from the installed transformers once per version, then cached: these tests time
    the answers after that first time (test_the_first_help_after_an_upgrade_reads_the_options_once times the first)."""
    trainer_option_specs()


def run_script(name, *args, env=None):
    """(exit status, heavy modules imported, stdout before the record, stderr, seconds)."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", DRIVER, f"scripts/{name}", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=env)
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
    ("reproduce.py", [], "error: the following arguments are required: run_dir"),
    ("reproduce.py", ["run", "--steps", "-1"], "error: --steps is -1; use 0 or more"),
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


def test_the_cached_trainer_options_are_the_installed_transformers():
    assert trainer_options_cache_file().is_file()
    assert trainer_option_specs() == build_trainer_option_specs()


def test_the_first_help_after_an_upgrade_reads_the_options_once(tmp_path):
    """A cache of no installed version: the first --help reads the Trainer's options from transformers (and says
    so), the next reads the cache and imports nothing heavy; the file is named after the versions it was read from."""
    env = {**os.environ, "DIALOGUE_FINETUNE_CACHE": str(tmp_path)}
    code, heavy, out, err, _ = run_script("train.py", "--help", env=env)
    assert code == 0 and "transformers" in heavy and "--num_train_epochs FLOAT" in out
    files = list((tmp_path / "trainer-options").iterdir())
    assert len(files) == 1 and f"transformers-{installed_transformers_version()}_" in files[0].name
    assert err == f"(reading the Trainer's options from transformers {installed_transformers_version()} once; " \
                  f"cached in {files[0]})\n"
    code, heavy, again, err, seconds = run_script("train.py", "--help", env=env)
    assert (code, heavy, err, again) == (0, [], "", out)
    assert seconds < 3


def test_another_transformers_version_reads_its_own_options(monkeypatch, tmp_path):
    """A cache file is one version's: after an upgrade the options are read again, never taken from the old file."""
    import recipe.config.option_specs as option_specs

    monkeypatch.setenv("DIALOGUE_FINETUNE_CACHE", str(tmp_path))
    installed = option_specs.installed_version
    monkeypatch.setattr(option_specs, "installed_version",
                        lambda name: "0.0.1" if name == "transformers" else installed(name))
    old = option_specs.trainer_options_cache_file()
    option_specs.atomic_write_text(old, option_specs.trainer_options_file_text([]))  # an old version's list
    assert option_specs.trainer_option_specs() == []
    monkeypatch.setattr(option_specs, "installed_version",
                        lambda name: "0.0.2" if name == "transformers" else installed(name))
    assert option_specs.trainer_options_cache_file() != old
    assert option_specs.trainer_option_specs() == build_trainer_option_specs()


def test_the_options_page_is_generated_from_the_dataclasses():
    """The recipe's options always; the Trainer's under the transformers the page names (the locked one: CI installs
    it), since another release has other options (the newest-versions check runs the suite under one)."""
    options_doc = load_script("options_doc.py")
    page = (REPO / "docs" / "options.md").read_text(encoding="utf-8")
    written = options_doc.options_page()
    page_version = re.search(r"\(transformers ([^;]+);", page).group(1)
    if page_version != installed_transformers_version():
        page, written = (re.sub(r"(?ms)^### Trainer options.*?(?=^## |\Z)", "", text) for text in (page, written))
    assert page == written, "docs/options.md is stale: python scripts/options_doc.py"


def test_the_options_page_names_the_locked_transformers():
    page = (REPO / "docs" / "options.md").read_text(encoding="utf-8")
    lock = (REPO / "requirements" / "lock.txt").read_text(encoding="utf-8")
    locked = re.search(r"(?m)^transformers==(\S+)", lock).group(1)
    assert f"(transformers {locked};" in page, "docs/options.md: python scripts/options_doc.py in the locked install"


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
