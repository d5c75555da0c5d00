"""A trained model (or a base) loaded the way its run trained it, for evaluation, chat and the GGUF export: a full
model, a LoRA adapter on its base, or a checkpoint, found from the run directory it belongs to."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..common.files import file_sha256
from ..common.hub import is_hub_id
from ..common.run_dir import (
    ADAPTER_CONFIG,
    BASE_MODEL_DIR,
    CHECKPOINT_PREFIX,
    FSDP_SHARDED_MODEL,
    RunDir,
    read_json_file,
    sharded_weights,
    weights_file,
)
from ..config import ConfigError, ModelArguments, run_model_arguments
from .loading import get_model, get_tokenizer
from .quantization import describe_quantization, full_precision
from .source import resolve_model_source


@dataclass
class LoadedModel:
    """A model ready for evaluation, with what it is and which training run it came from."""

    model: Any
    tokenizer: Any
    kind: str  # "full", "lora", "checkpoint-full", "checkpoint-lora" or "base"
    path: str
    base_model: str | None
    run_dir: RunDir | None  # the training run it came from, if any
    weights_sha256: str | None
    dtype: str  # of the loaded weights (the run's, unless --dtype said otherwise)
    quantization: str | None = None  # "4-bit nf4, ..." for a base loaded in k bits, as it trained


def _lora_base(adapter_dir: Path, base_model: str | None, run: RunDir | None) -> str:
    """Where the base of an adapter is: --base_model; the random base saved in the run (found wherever the
    run directory is now); else the base the adapter config names or the run's model_name_or_path, a
    folder that exists first (the adapter config names it by absolute path), then a Hub id."""
    if base_model:
        return base_model
    if run is not None and run.base_model.is_dir():
        return str(run.base_model)
    recorded = (read_json_file(adapter_dir / ADAPTER_CONFIG) or {}).get("base_model_name_or_path")
    run_config = run.read_config() if run else {}
    configured = None if run_config.get("random_init") else run_config.get("model_name_or_path")
    candidates = [name for name in (recorded, configured) if name]
    local = [name for name in candidates
             if os.path.isdir(name) or name.lower().endswith(".gguf") and os.path.isfile(name)]
    found = local + [name for name in candidates if is_hub_id(name)]
    if found:
        return found[0]
    raise ConfigError(f"cannot find the base model of the adapter in {adapter_dir} (its {ADAPTER_CONFIG} names "
                      f"{recorded!r}); pass --base_model")


def _loading_arguments(trained: ModelArguments, source: str, dtype: str | None) -> ModelArguments:
    """Load `source` as its run loaded its model (trust_remote_code, attn_implementation, dtype, a 4-bit or
    8-bit base, and the revision when it is the run's own base), through the same `get_model`; `dtype`
    overrides the run's, and loads a k-bit base at full precision in that dtype instead."""
    same_source = source == trained.model_name_or_path
    trained = full_precision(trained) if dtype else trained
    return dataclasses.replace(
        trained, model_name_or_path=source, tokenizer_name_or_path=None, random_init=False,
        model_revision=trained.model_revision if same_source else "main", dtype=dtype or trained.dtype,
        gguf_file=trained.gguf_file if same_source else None,
    )


def refuse_sharded_checkpoint(path: Path) -> None:
    """A checkpoint of an FSDP or DeepSpeed run holds one shard per process, which no single loader reads: say how
    to make it whole (the run's final model is whole already)."""
    if not path.is_dir() or weights_file(path) is not None:
        return
    kind = sharded_weights(path)
    if kind == "fsdp":
        merge = f"accelerate merge-weights {path / FSDP_SHARDED_MODEL} OUT_DIR"
    elif kind == "deepspeed":
        merge = f"python {path / 'zero_to_fp32.py'} {path} OUT_DIR --safe_serialization"
    else:
        return
    raise ConfigError(f"{path} holds {kind} shards, one per process, not a model: evaluate the run's final model "
                      f"({path.parent}), or merge the shards with `{merge}` and copy config.json and the tokenizer "
                      "beside them")


def load_model_for_evaluation(model_path: str, base_model: str | None = None, dtype: str | None = None) -> LoadedModel:
    """Load a full model, a LoRA adapter (on its base) or a checkpoint, in eval mode, on the best device.

    The model (or an adapter's base) is loaded the way its run trained it: the run's revision,
    trust_remote_code, attn_implementation and dtype, through `recipe.models.loading.get_model`. Its source is
    resolved once, failing fast (a base that cannot be found names --base_model, a model --model_path).
    """
    path = Path(model_path)
    refuse_sharded_checkpoint(path)
    run_dir = RunDir.containing(model_path)
    trained = run_model_arguments(run_dir)
    checkpoint = path.name.startswith(CHECKPOINT_PREFIX)
    if path.is_dir() and (path / ADAPTER_CONFIG).is_file():
        from peft import PeftModel

        base = _lora_base(path, base_model, run_dir)
        model_args = _loading_arguments(trained, base, dtype)
        source = resolve_model_source(model_args, "base model", option="--base_model",
                                      needs=("config", "weights"))  # its tokenizer is the adapter's
        tokenizer = get_tokenizer(_loading_arguments(trained, str(path), dtype))  # saved with the adapter
        model = PeftModel.from_pretrained(get_model(model_args, tokenizer, source), str(path))
        kind = "checkpoint-lora" if checkpoint else "lora"
    else:
        model_args = _loading_arguments(trained, model_path, dtype)
        source = resolve_model_source(model_args, "model", option="--model_path")
        tokenizer = get_tokenizer(model_args, source)
        model = get_model(model_args, tokenizer, source)
        base = None
        base_model_itself = run_dir is None or path.name == BASE_MODEL_DIR
        kind = "checkpoint-full" if checkpoint else "base" if base_model_itself else "full"
    if model_args.quantized:  # placed on its device as it was quantized; it cannot move
        model.eval()
    else:
        model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu")).eval()
    weights = weights_file(path) if path.is_dir() else path if path.is_file() else None  # a GGUF file is its weights
    quantization = describe_quantization(dataclasses.asdict(model_args))
    return LoadedModel(model, tokenizer, kind, model_path, base, run_dir, file_sha256(weights), model_args.dtype,
                       quantization)
