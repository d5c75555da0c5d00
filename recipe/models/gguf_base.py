"""A GGUF file as a base model: dequantized once into a normal float folder, which every script then loads.

`--model_name_or_path path/to/model.gguf`, or a folder (or Hub repo) with `--gguf_file NAME`. Why a folder,
not the GGUF itself at each load: transformers loads a GGUF through a quantizer that refuses to save
(`save_pretrained`: "quantized with gguf and is not serializable"), so checkpoints, LoRA merges and stock
`AutoPeftModelForCausalLM` (which `from_pretrained`s the base an adapter names) would all fail; and a GGUF
load, tokenizer conversion included, takes ~40 s for a 135M model where the folder takes ~3 s.

The folder lives in the GGUF cache (`--gguf_cache_dir`, default `$HF_HOME/dialogue_finetune/gguf`) under the
file's SHA-256, so an edited file is converted again and an unchanged one never is; it is built in a temporary
folder, renamed into place when whole, under a file lock (several processes or runs convert once). Its
`provenance.json` records where the weights came from: file, SHA-256, quantisation types, dequantized dtype.
"""

from __future__ import annotations

import datetime
import functools
import logging
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from ..common.files import atomic_write_json, file_sha256
from ..common.hub import require_hub
from ..config import ConfigError, ModelArguments
from .deepspeed_import import import_deepspeed_only_when_used

logger = logging.getLogger(__name__)

PROVENANCE_FILE = "provenance.json"  # beside a base model's weights: where they came from
GGUF_EXTRA_HINT = 'pip install "gguf>=0.10"  (or: pip install -e ".[gguf]")'


def default_gguf_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "dialogue_finetune" / "gguf"


def gguf_file_of(model_args: ModelArguments) -> Path | None:
    """The GGUF file the base is read from, or None when the base is not a GGUF. A Hub repo with
    --gguf_file is downloaded (failing fast offline); a missing file is an error naming it."""
    name, gguf_file = model_args.model_name_or_path, model_args.gguf_file
    if gguf_file is None:
        if not name.lower().endswith(".gguf"):
            return None
        if not os.path.isfile(name):
            raise ConfigError(f"model_name_or_path {name!r}: no such GGUF file")
        return Path(name)
    if os.path.isfile(gguf_file) and not os.path.isdir(name):
        return Path(gguf_file)
    if os.path.isdir(name):
        path = Path(name) / gguf_file
        if not path.is_file():
            found = sorted(p.name for p in Path(name).glob("*.gguf"))
            raise ConfigError(f"gguf_file {gguf_file!r} is not in {name} (its GGUF files: {found or 'none'}); "
                              "check --gguf_file")
        return path
    from huggingface_hub import hf_hub_download

    require_hub(name, "GGUF model")
    return Path(hf_hub_download(name, gguf_file, revision=model_args.model_revision))


def _require_gguf_package():
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ConfigError(f"reading a GGUF base needs the gguf package: {GGUF_EXTRA_HINT}") from None


@functools.lru_cache(maxsize=8)
def _describe(path: str, size: int, mtime_ns: int) -> dict[str, Any]:
    """SHA-256 and header of a GGUF file (cached per path, size and mtime: train, evaluate and the
    adapter's base record all ask, and hashing a multi-GB file takes seconds)."""
    _require_gguf_package()
    import gguf

    reader = gguf.GGUFReader(path)

    def field(key):
        value = reader.fields.get(key)
        return value.contents() if value is not None else None

    file_type = field("general.file_type")
    try:
        file_type_name = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_") if file_type is not None else None
    except ValueError:
        file_type_name = str(file_type)
    return {
        "gguf_file": str(Path(path).resolve()),
        "gguf_sha256": file_sha256(path),
        "gguf_size_bytes": size,
        "architecture": field("general.architecture"),
        "name": field("general.name"),
        "license": field("general.license"),
        "quantization": file_type_name,  # the file's declared type, e.g. Q4_1
        "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors).most_common()),
    }


def describe_gguf(path: str | os.PathLike) -> dict[str, Any]:
    stat = os.stat(path)
    return dict(_describe(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns))


def dequantized_dir(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """The float folder made from the GGUF at `path`, converting it first if the cache lacks it."""
    from filelock import FileLock

    description = describe_gguf(path)
    root = Path(cache_dir) if cache_dir else default_gguf_cache_dir()
    target = root / f"{Path(path).stem}-{description['gguf_sha256'][:16]}"
    if (target / PROVENANCE_FILE).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / PROVENANCE_FILE).is_file():  # another process may have converted it meanwhile
            write_dequantized(path, target, description)
    return target


def write_dequantized(path: str | os.PathLike, target: Path, description: dict[str, Any] | None = None,
                      extra_provenance: dict[str, Any] | None = None) -> Path:
    """Dequantize the GGUF at `path` to float32 and save model, tokenizer and generation config to `target`,
    with provenance.json last (a folder without it is not finished). Built beside `target`, renamed when whole."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    import_deepspeed_only_when_used()  # save_pretrained unwraps the model through accelerate
    description = description or describe_gguf(path)
    path = Path(path)
    logger.info("dequantizing %s (%s, %s) to float32 into %s; done once per file", path.name,
                description["quantization"], description["architecture"], target)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),  # plain float layers: trainable, savable
    )
    # Every weight is now a float tensor; what is left of the quantizer only forbids saving them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = str(target)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    provenance = {
        "source": "gguf",
        **description,
        "dequantized_to": "float32",
        "parameters": sum(p.numel() for p in model.parameters()),
        "model_class": type(model).__name__,
        "converted_with": _versions(),
        "converted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **(extra_provenance or {}),
    }
    atomic_write_json(partial / PROVENANCE_FILE, provenance)
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)
    return target


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("transformers", "gguf", "torch"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found
