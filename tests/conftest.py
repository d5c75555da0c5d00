"""Shared fixtures: the offline tokenizer and tiny models; nothing here touches the network."""

import os
import re
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


# How the libraries speak in a script's output: the scripts' log format (recipe/common/cli.py), transformers' own
# handler, DeepSpeed's (on stdout), and Python's warnings (`FILE:LINE: CATEGORY: MESSAGE`, then the source line).
SCRIPT_LOG_LINE = re.compile(r"\d\d:\d\d:\d\d (?P<level>[A-Z]+) (?P<logger>\S+): (?P<message>.*)")
TRANSFORMERS_LINE = re.compile(r"\[transformers\] (?P<message>.*)")
DEEPSPEED_LINE = re.compile(r"\[\d{4}-\d\d-\d\d [\d:,]+\] \[(?P<level>[A-Z]+)\] \[(?P<where>[^\]]+)\] (?P<message>.*)")
PYTHON_WARNING_LINE = re.compile(r"(?P<path>\S+\.py):\d+: (?P<category>\w+): (?P<message>.*)")
WARNING_LEVELS = ("WARNING", "ERROR", "CRITICAL")


def module_of(path: str) -> str:
    """The dotted name of a module's file: below site-packages for a library, below the repository for ours."""
    parts = Path(path).with_suffix("").parts
    if "site-packages" in parts:
        return ".".join(parts[len(parts) - parts[::-1].index("site-packages"):])
    if Path(path).is_relative_to(REPO):
        return ".".join(Path(path).with_suffix("").relative_to(REPO).parts)
    return ".".join(parts)


def library_warnings(*outputs: str) -> list[str]:
    """What the libraries warned of in a script's output (its stderr, and its stdout, where DeepSpeed logs), one
    `LIBRARY (SOURCE): MESSAGE` each, SOURCE its logger or its warning's category and module: what a filter of
    recipe/common/library_messages.py would match. The recipe's own WARNING lines are left out, each of which says
    what to do (docs/reliability.md#warnings); a line that speaks of a warning in no format known here is kept whole."""
    found = []
    for output in outputs:
        source_line_next = False  # Python prints the line that warned below the warning
        for line in output.splitlines():
            if source_line_next and line.startswith("  "):
                source_line_next = False
                continue
            source_line_next = False
            if match := SCRIPT_LOG_LINE.match(line):
                logger = match["logger"]
                if match["level"] in WARNING_LEVELS and logger.split(".")[0] not in ("recipe", "__main__"):
                    found.append(f"{logger.split('.')[0]} (logger {logger}, {match['level']}): {match['message']}")
            elif match := TRANSFORMERS_LINE.match(line):
                found.append(f"transformers (a transformers.* logger, through transformers' own handler): "
                             f"{match['message']}")
            elif match := DEEPSPEED_LINE.match(line):
                if match["level"] in WARNING_LEVELS:
                    found.append(f"deepspeed (logger DeepSpeed, {match['level']} in {match['where']}): "
                                 f"{match['message']}")
            elif match := PYTHON_WARNING_LINE.match(line):
                module = module_of(match["path"])
                found.append(f"{module.split('.')[0]} ({match['category']} raised in {module}): {match['message']}")
                source_line_next = True
            elif re.search(r"(?i)\bwarn", line):
                found.append(f"(no library named) {line}")
    return found


def assert_no_library_warnings(*outputs: str) -> None:
    """Fails naming each library message, where it came from, and what it said."""
    found = library_warnings(*outputs)
    assert not found, "library messages a user cannot act on (recipe/common/library_messages.py drops those with " \
                      "a reason):\n" + "\n".join(found)
