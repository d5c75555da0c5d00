"""Packing must keep dialogues apart; this checks it on the actual model before training.

Packed rows carry `position_ids` that restart at 0 for each dialogue and no attention mask;
transformers turns that into a block-diagonal causal mask only when no KV cache is built, and only
in models whose mask code reads the positions (OPT, for one, builds a plain causal mask: its packed
dialogues would attend to each other). Hence two checks: `use_cache` with packing is refused, and,
once at start-up, one packed row of two short dialogues (slices of them when no two fit one row) is run
through the model as the Trainer runs it (`model(**batch)`, the training collator, the config's `use_cache`) and
compared with each dialogue alone. A model that leaks across dialogues is refused with the batching to use instead.
"""

from __future__ import annotations

import contextlib
import copy
import logging

import torch

from ..common.library_messages import quiet_packed_rows
from ..config import ConfigError, DataArguments
from .packing import get_data_collator, packed_row

logger = logging.getLogger(__name__)

CANDIDATES = 64  # the check packs two of the first examples (or slices of them): a cheap forward
USE_INSTEAD = (
    "use --padding longest (add --train_sampling_strategy group_by_length to batch similar lengths together)"
)


def refuse_cache_with_packing(data_args: DataArguments, training_args) -> None:
    """With a KV cache, transformers ignores the packed segments: every dialogue attends to the ones before it."""
    if data_args.padding == "packing" and training_args.use_cache:
        raise ConfigError(
            "use_cache true cannot train with padding packing: with a KV cache built during training, transformers "
            "no longer reads the dialogue boundaries off position_ids, so packed dialogues attend to each other. "
            f"Drop --use_cache (it is off by default), or {USE_INSTEAD}"
        )


def probe_examples(examples, max_length: int) -> list[dict[str, list[int]]]:
    """Two sequences that fit one packed row, from the first examples: the two shortest with a target, in data
    order, or, when they do not fit together (long dialogues), the first max_length // 2 tokens of each (of
    both halves of the only one). Any real token sequence shows whether attention crosses the boundary."""
    head = examples.select(range(min(CANDIDATES, len(examples))))
    lengths = head["num_tokens"]
    order = sorted((n, i) for i, n in enumerate(lengths) if n >= 2)[:2]
    chosen = [head[i] for _, i in sorted(order, key=lambda p: p[1])]
    pieces = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in chosen]
    if len(pieces) == 1:
        middle = len(pieces[0]["input_ids"]) // 2
        pieces = [{k: v[:middle] for k, v in pieces[0].items()}, {k: v[middle:] for k, v in pieces[0].items()}]
    if sum(len(p["input_ids"]) for p in pieces) > max_length:
        pieces = [{k: v[: max_length // 2] for k, v in p.items()} for p in pieces]
    return [p for p in pieces if len(p["input_ids"]) >= 2]


def check_packing_isolation(model, tokenizer, train_examples, data_args: DataArguments,
                            use_cache: bool) -> float | None:
    """Run one packed row and each of its dialogues alone; refuse packing when the model lets them mix.

    Returns the largest difference in log-probabilities seen (None when the check does not apply).
    Raises:
        ConfigError: the model's predictions for a packed dialogue depend on the dialogue before it.
    """
    if data_args.padding != "packing":
        return None
    quiet_packed_rows()  # packed rows carry no attention mask on purpose: transformers' warning about it is for others
    examples = probe_examples(train_examples, data_args.max_length) if train_examples is not None else []
    if len(examples) < 2:
        logger.warning(
            "PACKING ISOLATION NOT VERIFIED: no two sequences of 2 tokens or more fit one packed row (max_length %d, "
            "%d training examples), so nothing checked that this model keeps packed dialogues apart. If it does not, "
            "it trains on cross-talk; to be sure, %s", data_args.max_length, len(train_examples or []), USE_INSTEAD)
        return None
    model = _model_to_check(model)
    collator = get_data_collator(data_args, tokenizer)
    row = packed_row(examples[:2])
    second_start = len(examples[0]["input_ids"])
    packed_logprobs = _log_probs(model, collator([row]), use_cache)[0, second_start:]
    alone_logprobs = _log_probs(model, collator([examples[1]]), use_cache)[0]
    difference = float((packed_logprobs - alone_logprobs).abs().max())
    tolerance = 1e-3 if next(model.parameters()).dtype == torch.float32 else 5e-2
    if difference > tolerance:
        name = f"{model.config.model_type} ({type(model).__name__})"
        raise ConfigError(
            f"{name} does not keep packed dialogues apart: a dialogue's log-probabilities change by up to "
            f"{difference:.3g} when it is packed after another one, so it would train on the other dialogue's "
            f"tokens (this model does not build its attention mask from position_ids). With this model, {USE_INSTEAD}"
        )
    logger.info("packing check: packed dialogues are isolated in this model (largest difference %.2g)", difference)
    return difference


def _model_to_check(model):
    """The model itself; or, where DeepSpeed ZeRO-3 built it partitioned (no process holds its weights before
    training starts), a one-layer random copy of its architecture: whether packed dialogues stay apart is decided by
    the attention code, the same in the copy."""
    if not any(hasattr(p, "ds_id") for p in model.parameters()):
        return model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = copy.deepcopy(base.config)
    config.num_hidden_layers = 1
    logger.info("packing check on a one-layer copy of %s: DeepSpeed ZeRO-3 partitioned its weights",
                type(base).__name__)
    return type(base)(config)  # the class itself, not from_config: outside DeepSpeed's partitioning


@contextlib.contextmanager
def float32_compute(model):
    """4-bit layers dequantize to float32 inside the block (for checks whose tolerance is float32's: a bf16
    matmul moves a pretrained model's log-probabilities by up to ~0.2, which would read as a real difference)."""
    layers = [m for m in model.modules() if hasattr(m, "compute_dtype") and hasattr(m, "compute_type_is_set")]
    saved = [(m.compute_dtype, m.compute_type_is_set) for m in layers]
    for layer in layers:
        layer.compute_dtype, layer.compute_type_is_set = torch.float32, True
    try:
        yield
    finally:
        for layer, (dtype, is_set) in zip(layers, saved):
            layer.compute_dtype, layer.compute_type_is_set = dtype, is_set


def _log_probs(model, batch: dict[str, torch.Tensor], use_cache: bool) -> torch.Tensor:
    """The Trainer's forward, `model(**batch)` with the model config's use_cache as the Trainer sets it;
    in eval mode (no dropout) and without gradients."""
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    config = model.config
    was_training, saved_cache = model.training, config.use_cache
    config.use_cache = use_cache
    model.eval()
    try:
        with torch.no_grad(), float32_compute(model):  # a 4-bit base's matmuls in float32, as the tolerance assumes
            logits = model(**inputs).logits
    except TypeError as error:  # a forward without position_ids
        raise ConfigError(f"{type(model).__name__} cannot take position_ids ({error}); {USE_INSTEAD}") from None
    finally:
        config.use_cache = saved_cache
        model.train(was_training)
    return torch.log_softmax(logits.float(), dim=-1)
