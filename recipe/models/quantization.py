"""k-bit bases through bitsandbytes: QLoRA (a 4-bit base with LoRA adapters) and LoRA on an 8-bit base.

The base is quantized as `loading.get_model` loads it (`from_pretrained` with a `BitsAndBytesConfig`), from
a local folder or a Hub id, so any base the recipe loads as a float folder can be loaded in k bits. A
`random_init` base has no weights to quantize: it is built at full precision, saved as the run's
base_model/ (the base its adapter names) and loaded from there. Only the adapters train; checkpoints and
the final output hold the adapter, whose `adapter_config.json` names the full-precision base. Merging
(`--merge_lora`) loads that base at full precision and merges onto it, not onto the dequantized weights.
Preparing the k-bit base for its adapters and merging them are `lora.py`'s; this module only configures
bitsandbytes, so the loader can use it without importing the adapters.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any

import torch

from ..config import ConfigError, LoraArguments, ModelArguments
from ..config.sharding import fsdp_requested, get_sharding

# The oldest release checked to load, train and save 4-bit and 8-bit bases on a CPU (this project's machine).
BITSANDBYTES_MIN_VERSION = "0.50.2"
INSTALL_HINT = "pip install -e '.[qlora]' (bitsandbytes>=%s)" % BITSANDBYTES_MIN_VERSION
PLATFORMS = ("NVIDIA GPUs (CUDA, compute capability 6.0 or newer), AMD ROCm and Intel XPU GPUs, Intel Gaudi, Apple "
             "Silicon, and x86-64 CPUs with AVX2 on Linux and Windows (bitsandbytes' installation guide has the "
             "details)")
_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_QUANTIZATION_FIELDS = ("load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant",
                        "bnb_4bit_compute_dtype", "bnb_4bit_quant_storage")


def bits(model_args: ModelArguments) -> int | None:
    return 4 if model_args.load_in_4bit else 8 if model_args.load_in_8bit else None


def check_quantization(model_args: ModelArguments, lora_args: LoraArguments, device: torch.device | str,
                       sharding=None) -> None:
    """Refuse, before any model loads, a k-bit base without LoRA, on a machine bitsandbytes cannot serve, or (8-bit)
    under FSDP or DeepSpeed, whose wrapping bitsandbytes' 8-bit weights do not survive."""
    if not model_args.quantized:
        return
    flag = f"--load_in_{bits(model_args)}bit"
    if not lora_args.use_lora:
        raise ConfigError(f"{flag} true needs --use_lora true: a quantized base cannot be trained itself, only LoRA "
                          f"adapters on it (QLoRA); add --use_lora true, or drop {flag}")
    if model_args.load_in_8bit and sharding is not None and (sharding.kind == "fsdp" or sharding.is_deepspeed):
        raise ConfigError(f"--load_in_8bit does not train under {sharding.label}: bitsandbytes' 8-bit weights do not "
                          "survive its wrapping; use --load_in_4bit true (accelerate_configs/fsdp_qlora.yaml shards "
                          "it), or 8 bits under DDP (accelerate_configs/multi_gpu.yaml)")
    require_bitsandbytes(torch.device(device).type, flag)


def require_bitsandbytes(device_type: str, flag: str = "--load_in_4bit") -> None:
    """bitsandbytes is installed, recent enough, and has a backend for this device; else an error naming the
    package, how to install it and where it runs."""
    from importlib.metadata import version

    from packaging.version import Version

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"{flag} needs the bitsandbytes package, which is not installed: {INSTALL_HINT}. "
                          f"It runs on {PLATFORMS}.")
    installed = version("bitsandbytes")
    if Version(installed) < Version(BITSANDBYTES_MIN_VERSION):
        raise ConfigError(f"{flag} needs bitsandbytes {BITSANDBYTES_MIN_VERSION} or newer, {installed} is installed: "
                          f"{INSTALL_HINT}")
    import bitsandbytes

    supported = set(getattr(bitsandbytes, "supported_torch_devices", ()))
    if device_type not in supported:
        raise ConfigError(f"{flag}: bitsandbytes {installed} has no backend for this run's device ({device_type}; it "
                          f"supports {sorted(supported) or 'none here'}). It runs on {PLATFORMS}; without it, train "
                          f"LoRA on the full-precision base (drop {flag})")


def compute_dtype(model_args: ModelArguments) -> torch.dtype:
    """What 4-bit weights are dequantized to: as asked; for auto, the dtype of the loaded weights (training first
    resolves auto to its precision with `with_run_precision`)."""
    if model_args.bnb_4bit_compute_dtype != "auto":
        return _TORCH_DTYPES[model_args.bnb_4bit_compute_dtype]
    return _TORCH_DTYPES.get(model_args.dtype, torch.float32)


def with_run_precision(model_args: ModelArguments, training_args) -> ModelArguments:
    """Model options whose automatic compute dtype follows the run's mixed precision (bf16, fp16 or fp32)."""
    if not model_args.load_in_4bit or model_args.bnb_4bit_compute_dtype != "auto":
        return model_args
    precision = "bfloat16" if training_args.bf16 else "float16" if training_args.fp16 else "float32"
    return dataclasses.replace(model_args, bnb_4bit_compute_dtype=precision)


def full_precision(model_args: ModelArguments) -> ModelArguments:
    """The same model options without quantization."""
    defaults = {f.name: f.default for f in dataclasses.fields(ModelArguments) if f.name in _QUANTIZATION_FIELDS}
    return dataclasses.replace(model_args, **defaults)


def bnb_config(model_args: ModelArguments):
    """The `BitsAndBytesConfig` of a k-bit base, or None."""
    if not model_args.quantized:
        return None
    from transformers import BitsAndBytesConfig

    if model_args.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=model_args.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=model_args.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=compute_dtype(model_args),
        bnb_4bit_quant_storage=quant_storage(model_args),
    )


def zero3_requested() -> bool:
    return get_sharding(None).kind == "zero3"


def quant_storage(model_args: ModelArguments) -> torch.dtype:
    """The dtype the packed 4-bit weights are stored in. Under FSDP and ZeRO-3, the compute dtype: they shard only
    floating weights (accelerate leaves uint8-stored 4-bit weights whole in every process)."""
    asked = model_args.bnb_4bit_quant_storage
    if asked == "auto":
        return compute_dtype(model_args) if fsdp_requested(None) or zero3_requested() else torch.uint8
    return torch.uint8 if asked == "uint8" else _TORCH_DTYPES[asked]


def quantized_loading(model_args: ModelArguments) -> dict[str, Any]:
    """Extra `from_pretrained` arguments that load the base in k bits on this process's device (none for a float
    base). bitsandbytes places the weights as it quantizes them: the model cannot be moved afterwards."""
    if not model_args.quantized:
        return {}
    from accelerate import PartialState

    require_bitsandbytes(PartialState().device.type, f"--load_in_{bits(model_args)}bit")
    if zero3_requested():  # DeepSpeed places and partitions the weights itself
        return {"quantization_config": bnb_config(model_args)}
    return {"quantization_config": bnb_config(model_args), "device_map": {"": PartialState().device}}


def is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def keep_cpu_kernels_differentiable(model) -> None:
    """Keep bitsandbytes' CPU inference kernel out of training. On a CPU with AVX512-BF16, a 4-bit layer run
    in eval mode without gradients (an evaluation, the packing check) repacks its weights for a kernel that
    has no backward; every later training step then gets no gradient through the frozen base, so the
    adapters below it train on wrong gradients (or, with a bias, the step fails)."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def describe_quantization(config: dict[str, Any]) -> str | None:
    """How a run's base was quantized (from its run_config.yaml or options), for summaries, cards and reports."""
    if config.get("load_in_8bit"):
        return "8-bit (LLM.int8())"
    if not config.get("load_in_4bit"):
        return None
    double = ", double quantization" if config.get("bnb_4bit_use_double_quant", True) else ""
    compute = config.get("bnb_4bit_compute_dtype", "auto")
    return f"4-bit {config.get('bnb_4bit_quant_type', 'nf4')}{double}, compute {compute}"


def bnb_config_code(config: dict[str, Any], environment: dict[str, Any] | None = None) -> list[str]:
    """Python lines that build the BitsAndBytesConfig a run trained with (for the model card), or none."""
    if config.get("load_in_8bit"):
        return ["quantization = BitsAndBytesConfig(load_in_8bit=True)"]
    if not config.get("load_in_4bit"):
        return []
    dtype = config.get("bnb_4bit_compute_dtype", "auto")
    if dtype == "auto":
        used = (environment or {}).get("resolved_options") or {}
        dtype = "bfloat16" if used.get("bf16") else "float16" if used.get("fp16") else "float32"
    return [f"quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="
            f"\"{config.get('bnb_4bit_quant_type', 'nf4')}\", bnb_4bit_use_double_quant="
            f"{bool(config.get('bnb_4bit_use_double_quant', True))}, bnb_4bit_compute_dtype=torch.{dtype})"]
