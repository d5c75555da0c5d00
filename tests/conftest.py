"""Shared fixtures: the offline tokenizer and tiny models; nothing here touches the network."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models run faster on one thread, and test processes side by side do not oversubscribe the cores
# (a 150-step run of a 2-layer model: 24 s with the default threads on a loaded 2-core machine, 2 s on one).
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).parent / "assets"
OFFLINE_MODEL = REPO / "recipe" / "assets" / "tiny-gpt2"
SAMPLE_DATA = REPO / "data" / "sample_dialogues.json"
# The real pretrained base (scripts/get_base_model.py puts it in models/; .ci/run fetches it and names it here).
SMOLLM2 = Path(os.environ.get("DIALOGUE_FINETUNE_SMOLLM2", REPO / "models" / "SmolLM2-135M-Instruct"))


@pytest.fixture(scope="session")
def tokenizer():
    from recipe.config import ModelArguments
    from recipe.models.loading import get_tokenizer

    return get_tokenizer(ModelArguments(model_name_or_path=str(OFFLINE_MODEL)))


@pytest.fixture
def data_args(tmp_path):
    """DataArguments factory whose tokenization cache lives in this test's tmp dir."""
    from recipe.config import DataArguments

    def make(**overrides):
        overrides.setdefault("dataset_cache_dir", str(tmp_path / "cache"))
        return DataArguments(**overrides)

    return make


@pytest.fixture
def tiny_model(tokenizer):
    """A random 2-layer GPT-2 in eval mode (no dropout), built from the offline config."""
    import torch

    from recipe.config import ModelArguments
    from recipe.models.loading import get_model

    torch.manual_seed(0)
    model = get_model(ModelArguments(model_name_or_path=str(OFFLINE_MODEL), random_init=True), tokenizer)
    return model.eval()


@pytest.fixture(scope="session")
def family_dir(tmp_path_factory):
    """`family_dir(name)`: the folder (config + tokenizer) of one family of tests/families.py, built once."""
    from families import FAMILY_BY_NAME, build_family_dir

    root = tmp_path_factory.mktemp("families")
    built = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = build_family_dir(FAMILY_BY_NAME[name], root)
        return built[name]

    return get


def free_port() -> int:
    """A TCP port nobody listens on now: torchrun tests must not collide with a run beside them."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write(path: Path, content: str | bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)
