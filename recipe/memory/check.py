"""The memory plan of a run (recipe/memory/plan.py) from its options: the model's shapes read from its config
without loading weights, the device's free memory, the lines of the start-up summary and `--dry_run`, and
the refusal of a plan that does not fit, with the options that would make it fit."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from ..config import ConfigError, DataArguments, DialogueTrainingArguments, LoraArguments, ModelArguments
from ..config.sharding import get_sharding
from ..models.loading import get_model_config
from ..models.source import ModelSource
from .plan import (
    ATTN_IN,
    ATTN_OUT,
    FIT_SHARE,
    GIB,
    MIB,
    MLP_IN,
    MLP_OUT,
    LayerLinear,
    MemoryPlan,
    ModelShape,
    PlanOptions,
    plan_memory,
)

logger = logging.getLogger(__name__)


def _role(path: str, name: str, d_in: int, intermediate: int) -> str | None:
    """What a decoder layer's linear layer reads: attention input or output, MLP input or output."""
    attention = any(part in path for part in ("attn", "attention"))
    if name in ATTN_IN:
        return "attn_in"
    if name in MLP_IN:
        return "mlp_in"
    if name in MLP_OUT or (name == "c_proj" and not attention):
        return "mlp_out"
    if name in ATTN_OUT or (name == "c_proj" and attention):
        return "attn_out"
    if attention:
        return "attn_in"
    return "mlp_out" if d_in == intermediate else "mlp_in"


def shape_from_config(config, name: str = "") -> ModelShape:
    """The plan's shapes of a transformers config, from a weightless model built on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    model_class = AutoModelForCausalLM._model_mapping.get(type(config), None)
    with torch.device("meta"):
        # The class itself where transformers maps the config to one: from_config would build it inside
        # DeepSpeed's ZeRO-3 partitioning when a ZeRO-3 launch is on, which cannot partition meta tensors.
        model = model_class(config) if model_class is not None else AutoModelForCausalLM.from_config(config)

    def get(*names, default=None):
        """The first of the config's attributes `names` that is set (families name the same shape differently)."""
        return next((getattr(config, n) for n in names if getattr(config, n, None)), default)

    hidden = get("hidden_size", "n_embd", "d_model")
    heads = get("num_attention_heads", "n_head")
    layers = get("num_hidden_layers", "n_layer")
    intermediate = get("intermediate_size", "n_inner", "ffn_dim", default=4 * hidden)
    head_dim = get("head_dim", default=hidden // heads)
    linears: list[LayerLinear] = []
    names = set()
    for path, module in model.named_modules():
        if not isinstance(module, (torch.nn.Linear, Conv1D)) or not _in_first_layer(path):
            continue
        d_in, d_out = (module.weight.shape[0], module.nf) if isinstance(module, Conv1D) else \
            (module.in_features, module.out_features)
        leaf = path.split(".")[-1]
        names.add(leaf)
        linears.append(LayerLinear(leaf, _role(path, leaf, d_in, intermediate), d_in, d_out,
                                   getattr(module, "bias", None) is not None))
    activation = str(get("hidden_act", "activation_function", default="gelu"))
    gated = bool(names & {"gate_proj", "gate_up_proj", "w3"})
    norm_weights = any("RMSNorm" in type(m).__name__ for m in model.modules())
    return ModelShape(
        parameters=sum(p.numel() for p in model.parameters()),
        layers=layers, hidden=hidden, heads=heads, kv_heads=get("num_key_value_heads", default=heads),
        head_dim=head_dim, intermediate=intermediate, vocab=config.vocab_size,
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", True)), layer_linears=tuple(linears),
        mlp="gated" if gated else "gelu_tanh" if activation in ("gelu_new", "gelu_pytorch_tanh") else "plain",
        norm_weights_saved=norm_weights,
        attention_dropout=float(get("attn_pdrop", "attention_dropout", default=0.0) or 0.0),
        residual_dropout=float(get("resid_pdrop", "hidden_dropout", default=0.0) or 0.0),
        name=name or getattr(config, "name_or_path", "") or config.model_type,
    )


def _in_first_layer(path: str) -> bool:
    parts = path.split(".")
    return any(part == "0" and index > 0 and parts[index - 1] in ("layers", "h", "layer", "blocks")
               for index, part in enumerate(parts))


def options_for_run(model_args: ModelArguments, data_args: DataArguments, lora_args: LoraArguments,
                    training_args: DialogueTrainingArguments) -> PlanOptions:
    targets = lora_args.lora_target_modules
    sharding = get_sharding(training_args)
    # The trainer keeps the chunked loss off where the LM head's weight is not whole outside its forward pass
    chunked = training_args.chunked_lm_loss and not (
        sharding.kind == "zero3" or (sharding.kind == "fsdp" and sharding.fsdp_version == 1))
    return PlanOptions(
        batch=training_args.per_device_train_batch_size,
        row_length=data_args.max_length,
        gradient_accumulation=training_args.gradient_accumulation_steps,
        gradient_checkpointing=bool(training_args.gradient_checkpointing),
        use_lora=lora_args.use_lora,
        lora_r=lora_args.lora_r,
        lora_dropout=lora_args.lora_dropout,
        lora_targets=None if targets is None else "all-linear" if targets == ["all-linear"] else tuple(targets),
        bits=4 if model_args.load_in_4bit else 8 if model_args.load_in_8bit else None,
        double_quant=model_args.bnb_4bit_use_double_quant,
        weight_bytes=2 if model_args.dtype in ("bfloat16", "float16") else 4,
        autocast="bf16" if training_args.bf16 else "fp16" if training_args.fp16 else None,
        optimizer=str(getattr(training_args.optim, "value", training_args.optim)),
        chunked_loss=chunked,
        attention_mask=True,  # every padding mode gives the attention a mask (packing: block-diagonal, per layer)
        eager_attention=model_args.attn_implementation == "eager",
        random_init=model_args.random_init,
        sharding=sharding.kind,
        processes=sharding.processes,
    )


def free_memory(device) -> tuple[int | None, str]:
    """(free bytes, where the figure comes from) on the run's device: CUDA's free memory, or on a CPU the
    memory available to this process (MemAvailable, within a cgroup limit), shared by its local processes."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return free, f"free on {torch.cuda.get_device_name(device)} ({total / GIB:.1f} GB)"
    if device.type != "cpu":
        return None, f"{device.type}: free memory unknown"
    available = _meminfo_available()
    limit = _cgroup_room()
    if available is None and limit is None:
        return None, "free memory unknown"
    free = min(x for x in (available, limit) if x is not None)
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    where = "available RAM" + (" (cgroup limit)" if limit is not None and limit == free else "")
    if processes > 1:
        return free // processes, f"{where}, shared by {processes} processes"
    return free, where


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _cgroup_room() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - used)


def alternatives(shape: ModelShape, options: PlanOptions, free: int) -> list[tuple[str, int]]:
    """Changes of options whose plans fit in `free`, fewest changes first: (flags, peak bytes)."""
    from itertools import combinations

    candidates: list[tuple[int, str, PlanOptions]] = []
    batch, accumulation = options.batch, options.gradient_accumulation
    while batch > 1:  # the same rows per step, fewer at once
        batch, accumulation = batch // 2, accumulation * 2
        candidates.append((1, f"--per_device_train_batch_size {batch} --gradient_accumulation_steps {accumulation}",
                           dataclasses.replace(options, batch=batch, gradient_accumulation=accumulation)))
    steps = []
    if not options.gradient_checkpointing:
        steps.append(("--gradient_checkpointing true", {"gradient_checkpointing": True}))
    if not options.use_lora:
        steps.append(("--use_lora true", {"use_lora": True}))
    if options.weight_bytes == 4 and not options.bits:  # LoRA on a bf16 copy of the base: half its weight memory
        steps.append(("--use_lora true --dtype bfloat16", {"use_lora": True, "weight_bytes": 2}))
    if options.bits != 4:
        steps.append(("--use_lora true --load_in_4bit true", {"use_lora": True, "bits": 4, "weight_bytes": 4}))
    for count in range(1, len(steps) + 1):
        for chosen in combinations(steps, count):
            if sum("bfloat16" in flag or "4bit" in flag for flag, _ in chosen) > 1:
                continue  # one storage for the base
            changes = {k: v for _, change in chosen for k, v in change.items()}
            flags = _dedupe_flags(" ".join(flag for flag, _ in chosen))
            candidates.append((len(flags.split()) // 2, flags, dataclasses.replace(options, **changes)))
    fitting: dict[str, tuple[int, int]] = {}
    for changes, flags, candidate in candidates:
        peak = plan_memory(shape, candidate).peak
        if peak <= FIT_SHARE * free and flags not in fitting:
            fitting[flags] = (changes, peak)
    ranked = sorted(fitting.items(), key=lambda item: item[1])
    return [(flags, peak) for flags, (_, peak) in ranked[:5]]


def _dedupe_flags(flags: str) -> str:
    tokens = flags.split()
    pairs = dict(zip(tokens[0::2], tokens[1::2]))
    return " ".join(f"{k} {v}" for k, v in pairs.items())


def plan_for_run(model_args: ModelArguments, data_args: DataArguments, lora_args: LoraArguments,
                 training_args: DialogueTrainingArguments, source: ModelSource | None = None) -> MemoryPlan | None:
    """The run's plan against its device's free memory; None (with a warning) when its config cannot be read
    without loading the model. `source`: where the base is read from (resolved here when not given)."""
    try:
        config = get_model_config(model_args, source)  # a GGUF base: the config of the float folder made from it
        shape = shape_from_config(config, name=model_args.model_name_or_path)
    except ConfigError:
        raise
    except Exception as error:  # an exotic config: the run goes on without a plan
        logger.warning("no memory plan for %s: %s", model_args.model_name_or_path, error)
        return None
    plan = plan_memory(shape, options_for_run(model_args, data_args, lora_args, training_args))
    plan.free, plan.free_source = free_memory(training_args.device)
    if not plan.fits:
        plan.alternatives = alternatives(shape, plan.options, plan.free)
    return plan


def _mb(count: float) -> str:
    return f"{count / MIB:,.0f} MB"


_SHARDING_NAMES = {"ddp": "DDP", "fsdp": "FSDP", "zero1": "ZeRO-1", "zero2": "ZeRO-2", "zero3": "ZeRO-3"}


def format_plan(plan: MemoryPlan) -> str:
    """The plan as the start-up summary and --dry_run print it."""
    o = plan.options
    parts = ", ".join(f"{name} {_mb(count)}" for name, count in plan.parts.items() if count)
    other = "without" if o.gradient_checkpointing else "with"
    precision = f"{o.bits}-bit base" if o.bits else ("fp32" if o.weight_bytes == 4 else "16-bit") + " weights"
    who = "" if o.sharding == "single" else f" per process ({_SHARDING_NAMES.get(o.sharding, o.sharding)} over " \
        f"{o.processes} processes)"
    lines = [
        f"memory plan{who}: peak {_mb(plan.peak)} in the {plan.phase} ({parts}; {precision}, "
        f"{o.autocast + ' autocast' if o.autocast else 'no autocast'}, {o.batch} rows of {o.row_length} tokens)",
        f"  activations {_mb(plan.parts['activations'])} {'with' if o.gradient_checkpointing else 'without'} "
        f"gradient checkpointing, {_mb(plan.activations_other)} {other}"
        + (f"; LoRA's share {_mb(plan.lora_bytes)}" if o.use_lora else ""),
    ]
    if plan.free is not None:
        verdict = "fits" if plan.fits else "does NOT fit"
        lines.append(f"  device: {_mb(plan.free)} {plan.free_source}; the plan {verdict} in {FIT_SHARE:.0%} of it")
    else:
        lines.append(f"  device: {plan.free_source}")
    return "\n".join(lines)


def refusal(plan: MemoryPlan) -> str:
    fixes = "; ".join(f"{flags} (peak {_mb(peak)})" for flags, peak in plan.alternatives)
    advice = (f"options that fit: {fixes}" if fixes else
              "no combination of smaller batches, gradient checkpointing, LoRA and a 4-bit base fits; use a "
              "device with more memory or a smaller model")
    return (f"the run needs about {_mb(plan.peak)} at its peak but {_mb(plan.free)} is {plan.free_source} "
            f"(the plan must fit in {FIT_SHARE:.0%} of it):\n{format_plan(plan)}\n{advice}; or pass --check_memory "
            "false to start anyway")


def check_memory_plan(plan: MemoryPlan | None, training_args: DialogueTrainingArguments) -> None:
    """Stop a run whose plan does not fit (before the model loads), unless --check_memory false."""
    if plan is None or plan.fits:
        return
    offload = get_sharding(training_args).offload  # what is offloaded to CPU memory is not in the plan
    if training_args.check_memory and not offload:
        raise ConfigError(refusal(plan))
    if offload:
        logger.warning("the memory plan does not count CPU offload (weights or optimizer states kept in CPU "
                       "memory), so it is not enforced")
    logger.warning("%s", refusal(plan).replace("; or pass --check_memory false to start anyway", ""))


def plan_and_check_memory(model_args: ModelArguments, data_args: DataArguments, lora_args: LoraArguments,
                          training_args: DialogueTrainingArguments, is_main: bool,
                          source: ModelSource | None = None) -> MemoryPlan | None:
    """The run's plan, from its config (no weights loaded): printed for a dry run, else a plan that does not
    fit stops the run here, naming options that fit."""
    plan = plan_for_run(model_args, data_args, lora_args, training_args, source)
    if training_args.dry_run:
        if is_main:
            print(format_plan(plan) if plan else "no memory plan for this model (see the warning above)")
        return plan
    check_memory_plan(plan, training_args)
    return plan
