"""Recipes: YAML then CLI, unknown keys refused, resolved configs that reproduce a run."""

from pathlib import Path

import pytest

from conftest import REPO, write
from recipe.config import (
    ConfigError,
    DataArguments,
    DialogueTrainingArguments,
    LoraArguments,
    ModelArguments,
    RecipeParser,
    resolved_config,
    save_resolved_config,
)

TRAIN_DATACLASSES = (ModelArguments, DataArguments, LoraArguments, DialogueTrainingArguments)


def parse(argv):
    return RecipeParser(TRAIN_DATACLASSES).parse_args_and_config(argv)


def test_cli_overrides_yaml_which_overrides_defaults(tmp_path):
    recipe = write(
        tmp_path / "r.yaml",
        "learning_rate: 5e-5\nmax_length: 64\ntrain_on_speakers: [Bob]\nuse_lora: true\n"
        f"output_dir: {tmp_path / 'out'}\nlora_target_modules: [c_attn]\n",
    )
    model, data, lora, training, config_path = parse(["--config", recipe, "--max_length", "32", "--lora_r", "4"])
    assert config_path == recipe
    assert data.max_length == 32  # CLI beats YAML
    assert training.learning_rate == 5e-5  # YAML's "5e-5" (a string to YAML 1.1) still becomes a float
    assert data.train_on_speakers == ["Bob"] and lora.use_lora is True and lora.lora_target_modules == ["c_attn"]
    assert lora.lora_r == 4 and data.padding == "packing"  # CLI value, and an untouched default
    assert model.model_name_or_path == "distilgpt2"


def test_unknown_yaml_key_names_the_closest_valid_one(tmp_path):
    recipe = write(tmp_path / "r.yaml", "learnig_rate: 0.1\nmax_lenght: 3\n")
    with pytest.raises(ConfigError, match=r"(?s)unknown option 'learnig_rate'; did you mean 'learning_rate'\?.*"
                                           r"'max_lenght'; did you mean 'max_length'"):
        parse(["--config", recipe])


def test_unknown_cli_flag_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown option --learning_rat; did you mean --learning_rate"):
        parse(["--output_dir", str(tmp_path), "--learning_rat", "1"])


def test_missing_recipe_and_invalid_values(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe nope\.yaml not found"):
        parse(["--config", "nope.yaml"])
    with pytest.raises(ConfigError, match=r"turn_template '\{text\}' must contain \{speaker\} exactly once"):
        parse(["--output_dir", str(tmp_path), "--turn_template", "{text}"])
    with pytest.raises(ConfigError, match=r"^argument --padding: invalid choice: 'sideways' \(choose from 'packing', "
                                          r"'longest', 'max_length'\)$"):  # one line, the valid choices listed
        parse(["--output_dir", str(tmp_path), "--padding", "sideways"])


@pytest.mark.parametrize("recipe", sorted((REPO / "recipe" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads(recipe, tmp_path):
    text = Path(recipe).read_text()
    assert text.startswith("#"), "each recipe starts with a header saying what it is for and how to run it"
    *configs, _ = parse(["--config", str(recipe), "--output_dir", str(tmp_path)])
    assert configs[3].output_dir == str(tmp_path)


def test_resolved_config_reproduces_the_run(tmp_path):
    recipe = REPO / "recipe" / "configs" / "smoke.yaml"
    *configs, _ = parse(["--config", str(recipe), "--output_dir", str(tmp_path / "o"), "--train_on_speakers", "Bob",
                         "Alex"])
    saved = tmp_path / "run_config.yaml"
    save_resolved_config(saved, *configs)
    assert "hub_token" not in saved.read_text()
    *again, _ = parse(["--config", str(saved)])
    assert resolved_config(*again) == resolved_config(*configs)


def test_run_config_keeps_what_the_machine_decides_as_asked(tmp_path, monkeypatch):
    """A run recorded on a CPU must replay on a GPU machine's GPU: automatic precision stays automatic."""
    import recipe.config.training_arguments as training_arguments

    monkeypatch.setattr(training_arguments, "_accelerator_available", lambda: False)
    monkeypatch.setattr(training_arguments, "_cpu_has_fast_bf16", lambda: True)  # an AMX CPU
    *configs, _ = parse(["--config", str(REPO / "recipe" / "configs" / "smoke.yaml"), "--output_dir", str(tmp_path)])
    training = configs[3]
    assert training.use_cpu and training.bf16 and not training.dataloader_pin_memory  # settled for this machine
    recorded = resolved_config(*configs)
    assert (recorded["use_cpu"], recorded["bf16"], recorded["fp16"], recorded["dataloader_pin_memory"]) == (
        False, None, False, True)
    assert training.resolved_options() == {"bf16": True, "fp16": False, "use_cpu": True,
                                           "dataloader_pin_memory": False, "report_to": []}

    monkeypatch.setattr(training_arguments, "_cpu_has_fast_bf16", lambda: False)  # replayed on an AVX2-only CPU
    saved = tmp_path / "run_config.yaml"
    save_resolved_config(saved, *configs)
    *again, _ = parse(["--config", str(saved)])
    assert again[3].bf16 is False and resolved_config(*again) == recorded  # decided again, recorded the same
    *forced, _ = parse(["--config", str(saved), "--bf16", "true", "--use_cpu", "true"])
    assert resolved_config(*forced)["bf16"] is True and resolved_config(*forced)["use_cpu"] is True  # asked: kept
