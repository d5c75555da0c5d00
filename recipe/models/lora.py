"""LoRA adapters through PEFT: which layers they wrap, the base an adapter's config names, the k-bit base they
train on (QLoRA) and merging them onto the base at full precision."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import torch

from ..config import ConfigError, LoraArguments, ModelArguments
from .loading import get_model
from .quantization import bits, full_precision, keep_cpu_kernels_differentiable, with_run_precision
from .source import ModelSource, resolve_model_source

logger = logging.getLogger(__name__)

GPT2_LORA_TARGETS = ["c_attn", "c_proj", "c_fc"]


def default_lora_targets(model) -> list[str] | str:
    """GPT-2's attention and MLP projections where the model has them all (GPT-2, distilgpt2), else
    every linear layer: the right names differ per family (q_proj, query_key_value, qkv_proj, ...)."""
    names = {name.split(".")[-1] for name, _ in model.named_modules()}
    return list(GPT2_LORA_TARGETS) if names.issuperset(GPT2_LORA_TARGETS) else "all-linear"


def apply_lora(model, lora_args: LoraArguments):
    """Wrap the model with LoRA adapters through PEFT; base weights are frozen."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    targets = lora_args.lora_target_modules
    if targets is None:
        target_modules = default_lora_targets(model)
        logger.info("LoRA adapters on %s (the default for %s)", target_modules, type(model).__name__)
    elif targets == ["all-linear"]:
        target_modules = "all-linear"
    else:
        target_modules = list(targets)
        names = {name.split(".")[-1] for name, _ in model.named_modules()}
        missing = [t for t in target_modules if t not in names]
        if missing:
            layers = sorted(n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D)))
            kinds = sorted({n.split(".")[-1] for n in layers})
            raise ConfigError(
                f"lora_target_modules {missing} are not modules of {type(model).__name__}; "
                f"its linear layers are named {kinds} (or use all-linear, or leave the option unset)"
            )
    # GPT-2 stores its projections as Conv1D (weights transposed); PEFT must know.
    fan_in_fan_out = any(isinstance(m, Conv1D) for m in model.modules())
    config = LoraConfig(
        r=lora_args.lora_r,
        lora_alpha=lora_args.lora_alpha,
        lora_dropout=lora_args.lora_dropout,
        target_modules=target_modules,
        fan_in_fan_out=fan_in_fan_out,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def adapter_base_reference(model_args: ModelArguments, saved_base_dir: str | os.PathLike,
                           source: ModelSource | None = None) -> tuple[str, str | None]:
    """(base_model_name_or_path, revision) that an adapter's adapter_config.json names as its base.

    Stock `AutoPeftModelForCausalLM.from_pretrained(ADAPTER_DIR)` (peft 0.21) passes this string unchanged
    to `from_pretrained`, with no subfolder: a relative folder would resolve against the reader's current
    directory, not the adapter's. So a folder (the random base saved with the run, or a local base) is named
    by its absolute path, and a Hub base by its id and revision.
    """
    if model_args.random_init:
        return str(Path(saved_base_dir).resolve()), None
    source = source or resolve_model_source(model_args)  # a GGUF base: the float folder made from it
    if os.path.isdir(source.path):
        return str(Path(source.path).resolve()), None
    return source.path, source.revision


def record_adapter_base(peft_model, model_args: ModelArguments, saved_base_dir: str | os.PathLike,
                        source: ModelSource | None = None) -> None:
    """Name the base in the adapter's config (saved with every checkpoint and the final adapter) so that
    stock PEFT finds it; PEFT would record a random base's config folder, which holds no weights."""
    config = peft_model.active_peft_config
    config.base_model_name_or_path, config.revision = adapter_base_reference(model_args, saved_base_dir, source)


def get_quantized_base(model_args: ModelArguments, training_args, tokenizer, base_dir: str | os.PathLike,
                       is_main: bool, source: ModelSource | None = None):
    """The base in k bits, ready for adapters: frozen, norms and head in fp32 (PEFT's
    prepare_model_for_kbit_training; gradient checkpointing is left to the Trainer, non-reentrant).

    A random_init base is built at full precision, saved to `base_dir` by the main process and loaded
    from there, so that the adapter's base exists at full precision for merging and loading.
    """
    from accelerate import PartialState
    from peft import prepare_model_for_kbit_training

    model_args = with_run_precision(model_args, training_args)
    if model_args.random_init:
        if is_main:
            built = get_model(full_precision(model_args), tokenizer, source)
            built.save_pretrained(base_dir)
            tokenizer.save_pretrained(base_dir)
            del built
        PartialState().wait_for_everyone()
        model_args = dataclasses.replace(model_args, model_name_or_path=str(base_dir), random_init=False,
                                         model_revision="main")
        source = None  # the folder just saved, not the config it was built from
    model = get_model(model_args, tokenizer, source)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    keep_cpu_kernels_differentiable(model)
    return model


def merge_on_full_precision_base(model_args: ModelArguments, adapter_dir: str | os.PathLike, merged_dir: Path,
                                 tokenizer) -> None:
    """Write adapter + base merged into `merged_dir`, the base loaded at full precision from where the adapter
    says it is (the weights the 4-bit or 8-bit base was quantized from), not dequantized from k bits."""
    from peft import PeftConfig, PeftModel

    recorded = PeftConfig.from_pretrained(str(adapter_dir))
    base_args = dataclasses.replace(full_precision(model_args), model_name_or_path=recorded.base_model_name_or_path,
                                    model_revision=recorded.revision or "main", random_init=False,
                                    tokenizer_name_or_path=None)
    base = get_model(base_args, tokenizer)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)
    trained_on = f"the dequantized {bits(model_args)}-bit weights" if model_args.quantized else "sharded weights"
    logger.info("merged LoRA model written to %s: the adapter merged onto %s loaded at full precision (%s), "
                "not onto the %s it trained on", merged_dir, recorded.base_model_name_or_path, base_args.dtype,
                trained_on)
