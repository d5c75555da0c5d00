"""What a run leaves for stock clients and other tools: adapters that AutoPeftModelForCausalLM loads on
every kind of base, full and merged models that pipeline() runs, the model card's loading code, the
evaluation loading a base as training did, and the replay command of run_config.yaml."""

import contextlib
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, SAMPLE_DATA
from recipe.common.run_dir import RunDir
from recipe.models.trained import load_model_for_evaluation
from recipe.tracking import build_model_card
from recipe.tracking.hub_push import PUSH_IGNORE_PATTERNS
from recipe.training.run import run_training
from test_training import losses, parse, smoke_args

SMOKE_LORA = REPO / "recipe" / "configs" / "smoke-lora.yaml"
PROMPT = "Alex: hi\nBob: hello there friend\nAlex:"
INPUTS = torch.tensor([[5, 17, 300, 42, 9, 1000]])


def train(root, *extra, output):
    return run_training(*parse(*smoke_args(root, *extra, output=output))).output_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A full run and a LoRA run (random base, merged) that learned one dialogue by heart, so their
    replies are known; trained once for this module."""
    root = tmp_path_factory.mktemp("outputs")
    data = root / "one.json"
    data.write_text('[{"Alex": "hi", "Bob": "hello there friend", "Alex": "bye now"}]')  # keys repeat: not json.dumps
    overfit = ["--data_path", str(data), "--validation_split_ratio", "0", "--num_train_epochs", "80",
               "--learning_rate", "1e-2", "--warmup_steps", "0", "--save_strategy", "no",
               "--load_best_model_at_end", "false"]
    full = train(root, *overfit, output="full")
    lora = train(root, "--config", str(SMOKE_LORA), "--merge_lora", "true", *overfit, output="lora")
    return {"root": root, "full": full, "lora": lora}


@pytest.fixture(scope="module")
def local_base_run(runs):
    """A LoRA run on a local base with weights, named by a path relative to the directory training ran in."""
    root = runs["root"]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        return train(root, "--config", str(SMOKE_LORA), "--model_name_or_path", "lora/base_model", "--random_init",
                     "false", "--data_path", str(SAMPLE_DATA), "--num_train_epochs", "1", "--max_dialogues", "30",
                     output="local-base")


def fake_hub_cache(cache: Path, repo_id: str, revisions: dict[str, Path]) -> None:
    """The Hugging Face cache as loading from the Hub leaves it, holding `repo_id` at several revisions, each
    the files a push of that folder uploads."""
    from huggingface_hub.utils import filter_repo_objects

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    for number, (revision, folder) in enumerate(revisions.items()):
        commit = f"{number + 1:040x}"
        files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        for name in filter_repo_objects(files, ignore_patterns=PUSH_IGNORE_PATTERNS):
            (repo / "snapshots" / commit / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(folder / name, repo / "snapshots" / commit / name)
        (repo / "refs" / revision).write_text(commit)
        if not (folder / "config.json").is_file():  # an adapter repo: the Hub answers 404, the cache records it
            (repo / ".no_exist" / commit).mkdir(parents=True)
            (repo / ".no_exist" / commit / "config.json").touch()


@pytest.fixture(scope="module")
def hub_base_run(runs):
    """A LoRA run on a Hub model at revision v1 (from the local cache: no network), loaded with eager
    attention, bf16 weights and trust_remote_code. The cache's main revision holds other weights."""
    from huggingface_hub import constants

    cache = runs["root"] / "hub-cache"
    fake_hub_cache(cache, "tiny-org/tiny-gpt2", {"v1": runs["lora"] / "base_model", "main": runs["full"]})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "HF_HUB_CACHE", str(cache))
        yield train(runs["root"], "--config", str(SMOKE_LORA), "--model_name_or_path", "tiny-org/tiny-gpt2",
                    "--model_revision", "v1", "--random_init", "false", "--attn_implementation", "eager", "--dtype",
                    "bfloat16", "--trust_remote_code", "true", "--num_train_epochs", "1", "--max_dialogues", "30",
                    output="hub-base")


def logits(model):
    with torch.no_grad():
        return model(INPUTS).logits.float()


def assert_loads_like_the_recipe(adapter_dir):
    """Stock AutoPeftModelForCausalLM gives the logits of the recipe's own loader (same base, same adapter)."""
    from peft import AutoPeftModelForCausalLM

    stock = AutoPeftModelForCausalLM.from_pretrained(str(adapter_dir)).eval()
    ours = load_model_for_evaluation(str(adapter_dir), dtype="float32").model
    torch.testing.assert_close(logits(stock), logits(ours), atol=1e-5, rtol=1e-5)
    return stock


def adapter_base(adapter_dir):
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    return config["base_model_name_or_path"], config["revision"]


# ----------------------------------------------------------------------------------------------
# Adapters that stock PEFT loads


def test_auto_peft_loads_an_adapter_on_a_random_base_from_any_directory(runs, tmp_path, monkeypatch):
    lora = runs["lora"]
    assert adapter_base(lora) == (str(lora / "base_model"), None)  # the saved random base, by absolute path
    monkeypatch.chdir(tmp_path)  # not where training ran
    stock = assert_loads_like_the_recipe(lora)
    adapted = logits(stock)
    with stock.disable_adapter():
        assert not torch.allclose(adapted, logits(stock), atol=1e-3)  # the trained adapter is on


def test_auto_peft_loads_an_adapter_on_a_local_base_given_by_a_relative_path(local_base_run, runs, tmp_path,
                                                                             monkeypatch):
    assert yaml.safe_load((local_base_run / "run_config.yaml").read_text())["model_name_or_path"] == "lora/base_model"
    assert adapter_base(local_base_run) == (str(runs["lora"] / "base_model"), None)
    monkeypatch.chdir(tmp_path)
    assert_loads_like_the_recipe(local_base_run)


def test_an_adapter_on_a_hub_base_loads_on_the_revision_it_was_trained_on(hub_base_run, runs, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    assert adapter_base(hub_base_run) == ("tiny-org/tiny-gpt2", "v1")
    monkeypatch.chdir(tmp_path)
    stock = assert_loads_like_the_recipe(hub_base_run)
    main = AutoModelForCausalLM.from_pretrained("tiny-org/tiny-gpt2").eval()  # another revision, other weights
    assert not torch.allclose(logits(stock.get_base_model()), logits(main), atol=1e-3)


def test_evaluation_loads_the_base_as_training_did(hub_base_run, monkeypatch):
    import recipe.models.trained

    seen = []
    real_get_model = recipe.models.trained.get_model
    monkeypatch.setattr(recipe.models.trained, "get_model",
                        lambda args, tok, *source: seen.append(args) or real_get_model(args, tok, *source))
    loaded = load_model_for_evaluation(str(hub_base_run))
    (args,) = seen  # the base, through the same loader as training
    assert (args.model_name_or_path, args.model_revision, args.trust_remote_code, args.attn_implementation,
            args.dtype) == ("tiny-org/tiny-gpt2", "v1", True, "eager", "bfloat16")
    base = loaded.model.get_base_model()
    assert base.config._attn_implementation == "eager" and base.get_input_embeddings().weight.dtype == torch.bfloat16
    assert loaded.kind == "lora" and loaded.dtype == "bfloat16"


# ----------------------------------------------------------------------------------------------
# The model card's code, executed


def card_code(run_dir, section="How to use"):
    text = (Path(run_dir) / "README.md").read_text()
    return re.search(rf"## {section}.*?```python\n(.*?)```", text, re.S).group(1)


def run_code(code):
    out = io.StringIO()
    namespace = {}
    with contextlib.redirect_stdout(out):
        exec(compile(code, "model card", "exec"), namespace)  # noqa: S102 - the card's own snippet
    return namespace, out.getvalue()


def test_the_model_cards_loading_code_runs(runs, hub_base_run, tmp_path, monkeypatch):
    from peft import PeftModel

    monkeypatch.chdir(tmp_path)
    for run_dir in (runs["lora"], hub_base_run, runs["full"]):
        code = card_code(run_dir)
        namespace, _ = run_code(code)
        assert namespace["reply"].shape[1] > namespace["inputs"].input_ids.shape[1]  # it generated
        if run_dir != runs["full"]:
            assert f'AutoPeftModelForCausalLM.from_pretrained("{run_dir}"' in code
            assert isinstance(namespace["model"], PeftModel)

    # A copy of a random-base adapter elsewhere loads on its own copy of the base, as the card says.
    moved = tmp_path / "moved"
    shutil.copytree(runs["lora"], moved, ignore=shutil.ignore_patterns("merged"))
    note = re.search(r"A copy of this folder elsewhere.*?: `(PeftModel\.from_pretrained\(.*?\))`",
                     (runs["lora"] / "README.md").read_text(), re.S).group(1)
    copy, _ = run_code("from peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n"
                       f"model = {note.replace('MODEL_DIR', str(moved))}")
    torch.testing.assert_close(logits(copy["model"].eval()), logits(load_model_for_evaluation(str(runs["lora"])).model))


def test_the_pushed_cards_code_loads_a_random_base_from_the_adapter_repo(runs, tmp_path, monkeypatch):
    """On the Hub, PEFT cannot follow a base kept in the adapter repo's base_model/ folder by itself (it passes
    base_model_name_or_path to from_pretrained as is, without a subfolder): the card loads the base first."""
    from huggingface_hub import constants
    from peft import PeftModel

    fake_hub_cache(tmp_path / "hub", "me/smoke-lora", {"main": runs["lora"]})  # what a push of the run uploads
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    code = re.search(r"```python\n(.*?)```", build_model_card(RunDir(runs["lora"]), hub_model_id="me/smoke-lora").text,
                     re.S).group(1)
    assert 'GPT2LMHeadModel.from_pretrained("me/smoke-lora", subfolder="base_model")' in code
    monkeypatch.chdir(tmp_path)
    namespace, _ = run_code(code)
    assert isinstance(namespace["model"], PeftModel)
    torch.testing.assert_close(logits(namespace["model"].eval()),
                               logits(load_model_for_evaluation(str(runs["lora"])).model))


# ----------------------------------------------------------------------------------------------
# pipeline() on full and merged models


@pytest.mark.parametrize("output", ["full", "merged"])
def test_pipeline_generates_the_learned_reply_and_stops_at_eos(runs, output):
    from transformers import pipeline

    folder = runs["full"] if output == "full" else runs["lora"] / "merged"
    generator = pipeline("text-generation", model=str(folder))
    (text,) = generator(PROMPT, max_new_tokens=30, do_sample=False, return_full_text=False)
    assert text["generated_text"] == " bye now"
    (ids,) = generator(PROMPT, max_new_tokens=30, do_sample=False, return_tensors=True)
    prompt_length = len(generator.tokenizer(PROMPT)["input_ids"])
    new_tokens = ids["generated_token_ids"][prompt_length:]
    assert new_tokens[-1] == generator.tokenizer.eos_token_id and len(new_tokens) < 30  # stopped at EOS


# ----------------------------------------------------------------------------------------------
# run_config.yaml: the replay command of its header


def test_the_replay_command_in_run_config_trains_the_same_run(tmp_path):
    original = train(tmp_path, "--num_train_epochs", "1", "--max_dialogues", "30", "--logging_steps", "1",
                     output="original")
    header = [line for line in (original / "run_config.yaml").read_text().splitlines() if line.startswith("#")]
    (command,) = [line.split(": ", 1)[1] for line in header if "scripts/train.py" in line]
    argv = shlex.split(command)
    assert argv[:2] == ["python", "scripts/train.py"] and argv[-2:] == ["--output_dir", "NEW"]
    replay = tmp_path / "replay"
    result = subprocess.run([sys.executable, *argv[1:-1], str(replay)], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert losses(replay) == losses(original) and len(losses(original)) >= 3
    recorded, replayed = (yaml.safe_load((d / "run_config.yaml").read_text()) for d in (original, replay))
    assert {k: v for k, v in replayed.items() if recorded[k] != v} == {"output_dir": str(replay)}
    environment = json.loads((original / "environment.json").read_text())
    assert environment["resolved_options"]["use_cpu"] is True and recorded["use_cpu"] is False  # this CPU machine
