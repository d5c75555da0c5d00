"""QLoRA and 8-bit LoRA through bitsandbytes on the tiny offline models: the base loads in k bits, only the
adapters train, checkpoints resume, merging uses the full-precision base, evaluation, chat and stock PEFT load
the base as it trained, and a machine or recipe that cannot do it is told so before any model loads."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open

from conftest import REPO
from recipe.config import ConfigError, LoraArguments, ModelArguments
from recipe.models.quantization import is_quantized
from recipe.models.trained import load_model_for_evaluation
from recipe.training.run import run_training
from test_outputs import card_code, logits, run_code
from test_training import losses, parse, smoke_args

pytest.importorskip("bitsandbytes")

SMOKE_LORA = REPO / "recipe" / "configs" / "smoke-lora.yaml"
QLORA = ["--config", str(SMOKE_LORA), "--load_in_4bit", "true", "--max_dialogues", "40", "--num_train_epochs", "2",
         "--logging_steps", "1"]  # every step logged: a resumed run's losses compare step for step


def train(root, *extra, output):
    return run_training(*parse(*smoke_args(root, *extra, output=output)))


@pytest.fixture(scope="module")
def qlora(tmp_path_factory):
    """A QLoRA run on the tiny random GPT-2 (its base built, saved at full precision, loaded in 4 bits), merged."""
    root = tmp_path_factory.mktemp("qlora")
    return train(root, *QLORA, "--merge_lora", "true", output="qlora")


def base_model(run_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(run_dir / "base_model")).eval()


def test_a_qlora_run_trains_only_adapters_on_a_4bit_base(qlora):
    out = qlora.output_dir
    with safe_open(out / "base_model" / "model.safetensors", "pt") as weights:  # the base, at full precision
        assert {weights.get_tensor(name).dtype for name in weights.keys()} == {torch.float32}
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert len(checkpoints) == 2
    for folder in [out, *checkpoints]:
        assert (folder / "adapter_model.safetensors").is_file() and not (folder / "model.safetensors").exists()
    with safe_open(out / "adapter_model.safetensors", "pt") as adapter:
        assert any(adapter.get_tensor(name).abs().sum() > 0 for name in adapter.keys() if "lora_B" in name)
    metrics = qlora.train_metrics
    base_parameters = sum(p.numel() for p in base_model(out).parameters())
    assert metrics["trainable_parameters"] == 16_384
    assert metrics["total_parameters"] == base_parameters + 16_384  # 4-bit weights counted as weights, not bytes
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(out / "base_model")


def test_a_resumed_qlora_run_matches_the_uninterrupted_one(qlora, tmp_path):
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    first = sorted(qlora.output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[0]
    shutil.copy(qlora.output_dir / "run_config.yaml", interrupted)
    shutil.copytree(first, interrupted / first.name)
    resumed = train(tmp_path, *QLORA, "--merge_lora", "true", output="interrupted")
    assert resumed.train_metrics["resumed_from"] == str(interrupted / first.name)
    assert losses(interrupted)[-1] == pytest.approx(losses(qlora.output_dir)[-1], rel=1e-5)
    assert resumed.eval_metrics["eval_token_loss"] == pytest.approx(qlora.eval_metrics["eval_token_loss"], rel=1e-5)


def test_merging_uses_the_full_precision_base_not_the_dequantized_one(qlora):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = qlora.output_dir
    merged = AutoModelForCausalLM.from_pretrained(str(out / "merged")).eval()
    on_full_precision = PeftModel.from_pretrained(base_model(out), str(out)).eval()
    torch.testing.assert_close(logits(merged), logits(on_full_precision), atol=1e-5, rtol=1e-5)
    as_trained = load_model_for_evaluation(str(out)).model  # the adapter on the 4-bit base
    assert not torch.allclose(logits(merged), logits(as_trained), atol=1e-3)


def test_evaluation_loads_the_base_in_4_bits_as_trained_and_dtype_loads_it_at_full_precision(qlora, tmp_path,
                                                                                              monkeypatch):
    from peft import AutoPeftModelForCausalLM

    out = qlora.output_dir
    loaded = load_model_for_evaluation(str(out))
    assert is_quantized(loaded.model.get_base_model()) and loaded.quantization.startswith("4-bit nf4")
    full = load_model_for_evaluation(str(out), dtype="float32")
    assert not is_quantized(full.model.get_base_model()) and full.quantization is None
    monkeypatch.chdir(tmp_path)
    stock = AutoPeftModelForCausalLM.from_pretrained(str(out)).eval()  # no quantization config: full precision
    torch.testing.assert_close(logits(stock), logits(full.model), atol=1e-5, rtol=1e-5)

    # The model card's code passes the run's BitsAndBytesConfig: the base loads in 4 bits, as evaluation loads it.
    code = card_code(out)
    assert "BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=\"nf4\"" in code
    namespace, _ = run_code(code)
    assert is_quantized(namespace["model"].get_base_model())
    torch.testing.assert_close(logits(namespace["model"].eval()), logits(loaded.model), atol=1e-5, rtol=1e-5)
    card = (out / "README.md").read_text()
    assert "4-bit nf4, double quantization" in card
    assert "merged onto the base's full-precision weights" in (out / "merged" / "README.md").read_text()


def test_8bit_lora_trains_adapters_and_evaluates_in_8_bits(tmp_path):
    result = train(tmp_path, "--config", str(SMOKE_LORA), "--load_in_8bit", "true", "--max_dialogues", "30",
                   "--num_train_epochs", "1", output="int8")
    assert result.train_metrics["trainable_parameters"] == 16_384 and result.eval_metrics["eval_token_loss"] > 0
    loaded = load_model_for_evaluation(str(result.output_dir))
    assert loaded.model.get_base_model().is_loaded_in_8bit and loaded.quantization.startswith("8-bit")


def test_qlora_on_a_llama_base_with_bf16_matmuls_and_gradient_checkpointing(family_dir, tmp_path):
    """bf16 4-bit matmuls (the compute dtype follows --bf16) pass the packing check, which runs them in float32."""
    result = train(tmp_path, "--config", str(SMOKE_LORA), "--model_name_or_path", str(family_dir("llama3")),
                   "--load_in_4bit", "true", "--gradient_checkpointing", "true", "--bf16", "true",
                   "--max_dialogues", "30", "--num_train_epochs", "1", output="llama")
    assert result.train_metrics["trainable_parameters"] > 0
    assert json.loads((result.output_dir / "adapter_config.json").read_text())["target_modules"]


# ----------------------------------------------------------------------------------------------
# Gradients through the 4-bit base


def qlora_model(family_dir, family="llama3", dropout=0.0, bf16=False, quantized=True):
    """A 4-bit (or float) tiny base with LoRA adapters whose B matrices are not zero (so every adapter gets a
    gradient)."""
    from recipe.config import DialogueTrainingArguments
    from recipe.models.loading import get_model, get_tokenizer
    from recipe.models.lora import apply_lora, get_quantized_base

    folder = family_dir(family)
    model_args = ModelArguments(model_name_or_path=str(folder), random_init=True, load_in_4bit=quantized)
    tokenizer = get_tokenizer(model_args)
    torch.manual_seed(0)
    training_args = DialogueTrainingArguments(output_dir=str(folder / "unused"), bf16=bf16, report_to="none")
    base_dir = folder.parent / f"{family}-base"
    if quantized:
        model = get_quantized_base(model_args, training_args, tokenizer, base_dir, is_main=True)
    else:
        model = get_model(model_args, tokenizer)
    model = apply_lora(model, LoraArguments(use_lora=True, lora_r=4, lora_alpha=8, lora_dropout=dropout))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)
    return model


def adapter_gradients(model, inputs):
    model.train()
    model.zero_grad()
    model(input_ids=inputs, labels=inputs).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


INPUTS = torch.tensor([[5, 17, 300, 42, 9, 1000, 7, 81]] * 2)


def test_an_evaluation_pass_leaves_the_4bit_layers_differentiable(family_dir):
    """bitsandbytes repacks a 4-bit layer for a kernel without backward when it runs in eval mode without
    gradients on a CPU with AVX512-BF16; the recipe keeps it out, so training after an evaluation gets
    the same gradients as before it (on other machines the repacking never happens)."""
    model = qlora_model(family_dir)
    before = adapter_gradients(model, INPUTS)
    model.eval()
    with torch.no_grad():
        model(input_ids=INPUTS)
    after = adapter_gradients(model, INPUTS)
    assert before.keys() == after.keys() and len(before) == 2 * 2 * 7  # A and B, 2 layers, 7 linear layers each
    for name in before:
        torch.testing.assert_close(after[name], before[name], msg=name)


@pytest.mark.parametrize("quantized", [False, True], ids=["lora", "qlora"])
def test_gradient_checkpointing_on_a_frozen_base_is_non_reentrant_and_gives_the_same_gradients(family_dir, quantized):
    model = qlora_model(family_dir, dropout=0.1, quantized=quantized)  # checkpointing replays the dropout masks
    assert not model.is_gradient_checkpointing  # only --gradient_checkpointing turns it on, not the k-bit set-up
    torch.manual_seed(1)
    plain = adapter_gradients(model, INPUTS)
    model.gradient_checkpointing_enable()  # as the Trainer calls it
    layer = next(m for m in model.modules() if getattr(m, "gradient_checkpointing", False))
    assert layer._gradient_checkpointing_func.keywords["use_reentrant"] is False
    torch.manual_seed(1)
    checkpointed = adapter_gradients(model, INPUTS)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)


def test_float32_compute_runs_the_4bit_matmuls_of_a_bf16_run_in_float32(family_dir):
    """What the packing check runs under: its float32 tolerance would read bf16 rounding (up to 0.24 in
    SmolLM2-135M's log-probabilities, measured) as dialogues leaking into each other."""
    import bitsandbytes

    from recipe.data.packing_check import float32_compute

    model = qlora_model(family_dir, bf16=True)
    layer = next(m for m in model.modules() if isinstance(m, bitsandbytes.nn.Linear4bit))
    x = torch.randn(16, layer.in_features)
    weight = bitsandbytes.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    expected = x @ weight.T + (layer.bias if layer.bias is not None else 0)
    with torch.no_grad():
        assert not torch.allclose(layer(x), expected, atol=1e-5)  # bf16 matmul
        with float32_compute(model):
            torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
        assert layer.compute_dtype == torch.bfloat16  # restored


def test_the_disk_estimate_counts_the_merged_model_at_full_precision(family_dir, tmp_path):
    from recipe.common.run_dir import RunDir
    from recipe.config import DialogueTrainingArguments
    from recipe.models.loading import count_parameters
    from recipe.training.output_dir import estimated_bytes

    model = qlora_model(family_dir)
    args = DialogueTrainingArguments(output_dir=str(tmp_path / "run"), save_strategy="no", eval_strategy="no",
                                     load_best_model_at_end=False, report_to="none")
    run = RunDir(args.output_dir)
    merged = estimated_bytes(run, model, args, LoraArguments(use_lora=True, merge_lora=True), 10, None)["final"]
    adapter = estimated_bytes(run, model, args, LoraArguments(use_lora=True), 10, None)["final"]
    assert merged - adapter == count_parameters(model)[1] * 4  # every weight in float32, not its packed bytes


# ----------------------------------------------------------------------------------------------
# Refusals, before any model loads


@pytest.fixture
def no_model_loads(monkeypatch):
    import recipe.training.run

    def refuse(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded")

    for name in ("get_model", "get_tokenizer", "get_quantized_base"):
        monkeypatch.setattr(recipe.training.run, name, refuse)


def test_a_kbit_base_without_lora_is_refused(tmp_path, no_model_loads):
    with pytest.raises(ConfigError, match=r"--load_in_4bit true needs --use_lora true"):
        train(tmp_path, "--load_in_4bit", "true", output="full")
    with pytest.raises(ConfigError, match=r"--load_in_8bit true needs --use_lora true"):
        train(tmp_path, "--load_in_8bit", "true", output="full")
    assert not (tmp_path / "full").exists()


def test_a_machine_without_bitsandbytes_is_told_the_package_and_the_platforms(tmp_path, no_model_loads, monkeypatch):
    import importlib.util

    import recipe.models.quantization

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(recipe.models.quantization.importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"needs the bitsandbytes package.*pip install -e '\.\[qlora\]'.*NVIDIA GPUs"):
        train(tmp_path, *QLORA, output="run")
    assert not (tmp_path / "run").exists()


def test_a_device_bitsandbytes_has_no_backend_for_is_refused(tmp_path, no_model_loads, monkeypatch):
    import bitsandbytes

    monkeypatch.setattr(bitsandbytes, "supported_torch_devices", {"cuda"})
    with pytest.raises(ConfigError, match=r"no backend for this run's device \(cpu.*drop --load_in_4bit"):
        train(tmp_path, *QLORA, output="run")


def test_quantization_option_mistakes_are_named():
    with pytest.raises(ConfigError, match="load_in_4bit and load_in_8bit are both true"):
        ModelArguments(load_in_4bit=True, load_in_8bit=True)
    with pytest.raises(ConfigError, match="bnb_4bit_quant_type is set .* but load_in_4bit is false"):
        ModelArguments(bnb_4bit_quant_type="fp4")
