"""A GGUF file as the base: dequantized once into a float folder (recipe/models/gguf_base.py) that trains, checkpoints,
resumes, merges and loads in stock clients like any other base. The GGUFs are tiny Llamas written offline
(tests/gguf_fixture.py), F32 where logits must match exactly, Q8_0 where a real quantisation is recorded."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO, assert_no_library_warnings
from gguf_fixture import write_tiny_llama_gguf
from recipe.common.files import file_sha256
from recipe.config import ConfigError, ModelArguments
from recipe.models.loading import get_model, get_tokenizer
from recipe.training.run import run_training
from test_training import parse, smoke_args

SMOKE_LORA = REPO / "recipe" / "configs" / "smoke-lora.yaml"
INPUTS = torch.tensor([[265, 26, 1371, 12, 553, 338, 284, 31, 199, 266, 26]])


def logits(model):
    with torch.no_grad():
        return model(INPUTS).logits.float()


def load(path, cache, **options):
    model_args = ModelArguments(model_name_or_path=str(path), gguf_cache_dir=str(cache), **options)
    return get_model(model_args, get_tokenizer(model_args)).eval()


@pytest.fixture(scope="module")
def q8_base(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.Q8_0.gguf"
    write_tiny_llama_gguf(path, "Q8_0")
    return path


def gguf_train(root, base, *extra, output):
    """The smoke recipe (or its LoRA twin, by --config in `extra`) on a GGUF base, fp32, 40 dialogues."""
    args = smoke_args(root, "--model_name_or_path", str(base), "--random_init", "false", "--gguf_cache_dir",
                      str(root / "gguf-cache"), "--max_dialogues", "40", "--learning_rate", "3e-3", *extra,
                      output=output)
    return run_training(*parse(*args))


def test_a_gguf_base_gives_its_models_logits_and_is_dequantized_once_per_file(tmp_path, monkeypatch):
    path = tmp_path / "tiny.gguf"
    held = write_tiny_llama_gguf(path, "F32")
    loaded = load(path, tmp_path / "cache")
    torch.testing.assert_close(logits(loaded), logits(held), atol=1e-6, rtol=1e-6)
    (folder,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["gguf_sha256"] == file_sha256(path) and provenance["source"] == "gguf"
    assert provenance["architecture"] == "llama" and provenance["dequantized_to"] == "float32"

    import recipe.models.gguf_base

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(recipe.models.gguf_base, "write_dequantized", no_second_conversion)
    torch.testing.assert_close(logits(load(path, tmp_path / "cache")), logits(held))
    monkeypatch.undo()
    edited = write_tiny_llama_gguf(path, "F32", seed=1)  # another file under the same name: converted anew
    torch.testing.assert_close(logits(load(path, tmp_path / "cache")), logits(edited), atol=1e-6, rtol=1e-6)
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 2


def test_a_folder_with_gguf_file_and_the_errors_that_name_the_file(q8_base, tmp_path):
    by_option = load(q8_base.parent, tmp_path / "cache", gguf_file=q8_base.name)
    torch.testing.assert_close(logits(by_option), logits(load(q8_base, tmp_path / "cache")))
    with pytest.raises(ConfigError, match=r"'other.gguf' is not in .*tiny.Q8_0.gguf"):
        load(q8_base.parent, tmp_path / "cache", gguf_file="other.gguf")
    with pytest.raises(ConfigError, match="no such GGUF file"):
        load(tmp_path / "missing.gguf", tmp_path / "cache")


def test_without_the_gguf_package_the_error_names_the_extra(q8_base, tmp_path, monkeypatch):
    import recipe.models.gguf_base

    recipe.models.gguf_base._describe.cache_clear()
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf raises ImportError
    with pytest.raises(ConfigError, match=r"needs the gguf package: pip install"):
        load(q8_base, tmp_path / "cache")


def test_lora_on_a_gguf_base_checkpoints_merges_and_loads_in_stock_clients(q8_base, tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    from recipe.models.trained import load_model_for_evaluation

    result = gguf_train(tmp_path, q8_base, "--config", str(SMOKE_LORA), "--merge_lora", "true",
                        "--num_train_epochs", "1", output="lora")
    out = result.output_dir
    assert [c.name for c in out.glob("checkpoint-*/adapter_model.safetensors")]  # the epoch's checkpoint
    environment = json.loads((out / "environment.json").read_text())
    base = environment["base_model"]
    assert base["source"] == "gguf" and base["quantization"] == "Q8_0" and base["gguf_sha256"] == file_sha256(q8_base)
    assert base["tensor_types"]["Q8_0"] > 0
    recorded = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert (tmp_path / "gguf-cache") in __import__("pathlib").Path(recorded).parents  # the float folder, absolute
    stock = AutoPeftModelForCausalLM.from_pretrained(str(out)).eval()
    ours = load_model_for_evaluation(str(out), dtype="float32").model
    torch.testing.assert_close(logits(stock), logits(ours), atol=1e-5, rtol=1e-5)
    merged = AutoModelForCausalLM.from_pretrained(str(out / "merged")).eval()
    torch.testing.assert_close(logits(merged), logits(stock), atol=1e-4, rtol=1e-4)
    card = (out / "README.md").read_text()
    assert f"(GGUF, Q8_0, SHA-256 `{file_sha256(q8_base)}`), dequantized to float32" in card


def test_full_fine_tuning_on_a_gguf_base_resumes_to_the_same_loss_and_runs_in_pipeline(q8_base, tmp_path):
    import shutil

    from transformers import pipeline

    whole = gguf_train(tmp_path, q8_base, output="whole")
    first_epoch = min(whole.output_dir.glob("checkpoint-*"), key=lambda c: int(c.name.split("-")[1]))
    interrupted = tmp_path / "interrupted"  # what the run had on disk after its first epoch
    interrupted.mkdir()
    shutil.copy(whole.output_dir / "run_config.yaml", interrupted)
    shutil.copytree(first_epoch, interrupted / first_epoch.name)
    resumed = gguf_train(tmp_path, q8_base, output="interrupted")
    assert resumed.train_metrics["resumed_from"] == str(interrupted / first_epoch.name)
    assert resumed.eval_metrics["eval_token_loss"] == pytest.approx(whole.eval_metrics["eval_token_loss"], rel=1e-5)
    generate = pipeline("text-generation", model=str(whole.output_dir))
    assert generate("Alex: hi\nBob:", max_new_tokens=5)[0]["generated_text"].startswith("Alex: hi\nBob:")


def test_prepare_data_and_evaluation_scripts_take_a_gguf_base(q8_base, tmp_path):
    cache = ["--gguf_cache_dir", str(tmp_path / "cache")]
    prepared = subprocess.run(
        [sys.executable, "scripts/prepare_data.py", "--model_name_or_path", str(q8_base), *cache, "--max_dialogues",
         "20", "--dataset_cache_dir", str(tmp_path / "data-cache"), "--output_dir", str(tmp_path / "prepared")],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert prepared.returncode == 0, prepared.stderr
    assert "train:" in prepared.stdout and (tmp_path / "prepared" / "train.jsonl").is_file()
    # Each dequantizes the GGUF and saves it, which imports DeepSpeed (prepare_data.py) or once did (evaluate.py),
    # with its "Setting accelerator to CPU"
    assert_no_library_warnings(prepared.stderr, prepared.stdout)
    run_config = tmp_path / "data.yaml"
    run_config.write_text(f"data_path: {REPO / 'data' / 'sample_dialogues.json'}\nmax_dialogues: 20\n")
    # From another working directory, without --output_file: a base's results go to ./evaluation-NAME.json, NAME the
    # GGUF file's stem (never its path, whose folders once made ./evaluation--tmp--...--tiny.Q8_0.gguf.json).
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    evaluated = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "evaluate.py"), "--model_path", str(q8_base), "--data_config",
         str(run_config), "--num_samples", "2", "--max_new_tokens", "4", "--wandb", "off"],
        cwd=workdir, capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                       "HF_HOME": str(tmp_path / "hf")})
    assert evaluated.returncode == 0, evaluated.stderr
    assert [p.name for p in workdir.iterdir()] == ["evaluation-tiny.Q8_0.json"]
    assert "results: evaluation-tiny.Q8_0.json (in the current directory" in evaluated.stdout
    results = json.loads((workdir / "evaluation-tiny.Q8_0.json").read_text())
    assert results["model"]["kind"] == "base" and results["model"]["weights_sha256"] == file_sha256(q8_base)
    assert results["perplexity"]["perplexity"] > 1
    assert_no_library_warnings(evaluated.stderr, evaluated.stdout)
