"""Option mistakes are errors naming the option and the fix, before anything runs: wrong types (flag or
YAML), values that cannot train, LoRA options while LoRA is off, max_length beyond the model's positions."""

import pytest

from conftest import REPO, write
from recipe.config import (
    ConfigError,
    DataArguments,
    DialogueTrainingArguments,
    LoraArguments,
    ModelArguments,
    RecipeParser,
    TrackingArguments,
)

DATACLASSES = (ModelArguments, DataArguments, LoraArguments, DialogueTrainingArguments, TrackingArguments)


def parse(tmp_path, *argv):
    return RecipeParser(DATACLASSES).parse_args_and_config(["--output_dir", str(tmp_path / "o"), *argv])


@pytest.mark.parametrize("argv, message", [
    (["--learning_rate", "0"], r"learning_rate is 0\.0; use a positive step size"),
    (["--learning_rate=-0.001"], r"learning_rate is -0\.001; use a positive step size"),
    (["--per_device_train_batch_size", "0"], r"per_device_train_batch_size is 0; use 1 or more"),
    (["--per_device_eval_batch_size", "-2"], r"per_device_eval_batch_size is -2; use 1 or more"),
    (["--gradient_accumulation_steps", "0"], r"gradient_accumulation_steps is 0; use 1 or more"),
    (["--num_train_epochs", "0"], r"num_train_epochs is 0\.0; use a positive number of epochs \(or set max_steps\)"),
    (["--num_train_epochs", "-1"], r"num_train_epochs is -1\.0"),
    (["--weight_decay", "-0.1"], r"weight_decay is -0\.1; use 0 or more"),
    (["--max_grad_norm", "-1"], r"max_grad_norm is -1\.0; use a positive norm, or 0 to turn clipping off"),
    (["--max_nonfinite_loss_steps", "-1"], r"max_nonfinite_loss_steps is -1"),
    (["--early_stopping_patience", "0"], r"early_stopping_patience is 0; use 1 or more"),
    (["--warmup_steps", "-1"], r"invalid training options: Got warmup_steps = -1\.0"),
    (["--logging_steps", "0"], r"invalid training options: .*requires non-zero --logging_steps"),
    (["--lora_r", "8"], r"lora_r is set \(8\) but use_lora is false; add --use_lora true, or leave lora_r out"),
    (["--merge_lora", "true"], r"merge_lora is set \(True\) but use_lora is false"),
    (["--lora_target_modules", "all-linear"], r"lora_target_modules is set \(\['all-linear'\]\) but use_lora is false"),
    (["--use_lora", "true", "--lora_alpha", "0"], r"lora_alpha is 0; use a positive scaling"),
    (["--use_lora", "true", "--lora_r", "0"], r"lora_r is 0; use a positive rank"),
    (["--packing_batch_size", "0"], r"packing_batch_size is 0; use 1 or more"),
    (["--preprocessing_num_workers", "0"], r"preprocessing_num_workers is 0; use 1 or more, or leave it unset"),
    (["--validation_split_ratio", "1"], r"validation_split_ratio is 1\.0; use a value in \[0, 1\)"),
])
def test_values_that_cannot_train_name_the_option(tmp_path, argv, message):
    with pytest.raises(ConfigError, match=message):
        parse(tmp_path, *argv)


@pytest.mark.parametrize("yaml, message", [
    ("learning_rate: [1, 2]", r"learning_rate is a list, but it takes float"),
    ("num_train_epochs: {epochs: 3}", r"num_train_epochs is a mapping, but it takes float"),
    ("max_length: null", r"max_length is null, but it takes int"),
    ("data_format: [turns]", r"data_format is a list, but it takes Literal"),
])
def test_yaml_values_of_the_wrong_shape_name_the_file_and_option(tmp_path, yaml, message):
    recipe = write(tmp_path / "r.yaml", yaml + "\n")
    with pytest.raises(ConfigError, match=rf"r\.yaml: {message}"):
        parse(tmp_path, "--config", recipe)


def test_a_lora_recipe_reproduced_from_its_run_config_is_not_refused(tmp_path):
    from recipe.config import save_resolved_config

    *configs, _ = parse(tmp_path, "--config", str(REPO / "recipe/configs/smoke-lora.yaml"))
    save_resolved_config(tmp_path / "run_config.yaml", *configs)
    *again, _ = parse(tmp_path, "--config", str(tmp_path / "run_config.yaml"))
    assert again[2].use_lora and again[2].lora_r == configs[2].lora_r


def test_a_value_of_the_wrong_type_exits_2_naming_the_option(tmp_path, capsys):
    from recipe.common.cli import user_errors

    with pytest.raises(SystemExit) as exit_status, user_errors():
        parse(tmp_path, "--max_length", "long")
    assert exit_status.value.code == 2
    assert capsys.readouterr().err == "error: argument --max_length: invalid int value: 'long'; see --help\n"


def test_max_length_beyond_the_model_positions_names_the_limit(tiny_model):
    from recipe.models.loading import check_max_length

    with pytest.raises(ConfigError, match=r"max_length 1024 is longer than gpt2's 512 positions; set --max_length 512"):
        check_max_length(tiny_model, 1024)


def test_max_length_beyond_the_positions_is_refused_before_the_weights_load_in_a_real_run(tmp_path):
    """A real run: the limit comes from config.json, before the data is tokenized and the weights are read.
    The model folder's weights here are garbage, so reading them would fail with another error."""
    import shutil
    import subprocess
    import sys

    from conftest import OFFLINE_MODEL
    from fault_runs import smoke_args

    model = tmp_path / "model"
    shutil.copytree(OFFLINE_MODEL, model)
    (model / "model.safetensors").write_bytes(b"not a safetensors file")
    args = smoke_args(tmp_path / "run", "--model_name_or_path", str(model), "--random_init", "false",
                      "--max_length", "1024")
    result = subprocess.run([sys.executable, "scripts/train.py", *args], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "error: max_length 1024 is longer than gpt2's 512 positions; set --max_length 512 or less" in result.stderr
    assert "safetensors" not in result.stderr and "Traceback" not in result.stderr
    assert "data:" not in result.stderr  # refused before the data summary: nothing was tokenized
