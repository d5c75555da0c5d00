"""The tokenizer, config and weights of a base, read from where its `ModelSource` says (recipe/models/source.py)."""

from __future__ import annotations

import logging

import torch

from ..common.errors import UserError
from ..common.hub import HubUnavailableError
from ..config import ConfigError, ModelArguments
from .deepspeed_import import import_deepspeed_only_when_used
from .quantization import quantized_loading
from .source import ModelSource, resolve_model_source, resolve_pretrained

logger = logging.getLogger(__name__)


def get_tokenizer(model_args: ModelArguments, source: ModelSource | None = None):
    """Load the tokenizer; give it a pad token (its EOS) when it has none.

    It is the base's own, read from `source` (resolved here when not given), unless tokenizer_name_or_path names
    another. Padding is masked out of the loss by the attention mask, never by token id, so a pad token equal to
    EOS does not take the real EOS out of the loss.
    """
    from transformers import AutoTokenizer

    name = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    option = "--tokenizer_name_or_path" if model_args.tokenizer_name_or_path else "--model_name_or_path"
    if model_args.tokenizer_name_or_path:  # a tokenizer of its own
        path, local_files_only = resolve_pretrained(name, "tokenizer", model_args.model_revision, option,
                                                    needs=("tokenizer",))
        source = ModelSource(path, model_args.model_revision, local_files_only)
    elif source is None:
        source = resolve_model_source(model_args, "tokenizer", needs=("tokenizer",))
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source.path, **source.pretrained_options(), trust_remote_code=model_args.trust_remote_code
        )
    except (UserError, HubUnavailableError, KeyboardInterrupt):
        raise
    except Exception as error:  # a damaged or unsupported tokenizer file: what transformers says, in one line
        raise ConfigError(f"the tokenizer of {name} cannot be loaded ({_last_line(error)}): fetch its tokenizer "
                          f"files again, or name another tokenizer with --tokenizer_name_or_path") from error
    if len(tokenizer("Hello, how are you?")["input_ids"]) == 0:
        raise ConfigError(f"the tokenizer of {name} turns text into no tokens (it has no vocabulary): fetch its "
                          "tokenizer files again, or name another tokenizer with --tokenizer_name_or_path")
    if tokenizer.eos_token is None:
        raise ConfigError(f"tokenizer {name!r} has no EOS token; the recipe needs one to end dialogues")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def _last_line(error: Exception) -> str:
    """The last line of an error's message (transformers ends a long one with its hint), with its kind."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}".rstrip(": ")


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def get_model_config(model_args: ModelArguments, source: ModelSource | None = None):
    """The model's config alone (a small JSON file): what can be checked before the weights load."""
    from transformers import AutoConfig

    source = source or resolve_model_source(model_args)
    return AutoConfig.from_pretrained(source.path, **source.pretrained_options(),
                                      trust_remote_code=model_args.trust_remote_code)


def get_model(model_args: ModelArguments, tokenizer, source: ModelSource | None = None):
    """Load (or, with random_init, build from its config) the causal LM from `source` (resolved here when not
    given), matched to the tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    import_deepspeed_only_when_used()
    source = source or resolve_model_source(model_args)
    if model_args.random_init and model_args.quantized:
        raise ConfigError("a random_init base has no weights to quantize: build it, save it, and load that folder "
                          "(recipe.models.lora.get_quantized_base does)")
    common = {**source.pretrained_options(), "trust_remote_code": model_args.trust_remote_code}
    if model_args.attn_implementation:
        common["attn_implementation"] = model_args.attn_implementation
    if model_args.random_init:
        config = AutoConfig.from_pretrained(source.path, **common)
        model = AutoModelForCausalLM.from_config(
            config, dtype=_DTYPES[model_args.dtype] if model_args.dtype != "auto" else None,
            **{k: v for k, v in common.items() if k == "attn_implementation"},
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(  # a k-bit base is quantized here, as it loads
            source.path, dtype=_DTYPES[model_args.dtype], **common, **quantized_loading(model_args),
        )
    rows = embedding_rows(model)
    if len(tokenizer) > rows:
        logger.warning("tokenizer has %d tokens, model %d embeddings: resizing", len(tokenizer), rows)
        model.resize_token_embeddings(len(tokenizer))
    align_generation_config(model, tokenizer)
    return model


def embedding_rows(model) -> int:
    """The rows of the model's input embedding, whole: under ZeRO-3 each process holds an empty partition of the
    weight (its shape is (0,)), and DeepSpeed keeps the whole shape as `ds_shape`; reading `shape` there would resize
    embeddings that already cover the tokenizer."""
    weight = model.get_input_embeddings().weight
    return int(getattr(weight, "ds_shape", weight.shape)[0])


def check_max_length(model_or_config, max_length: int, fix: str = "set --max_length {limit} or less") -> None:
    """A row longer than the model's position table fails deep inside the forward pass; say it up front
    (from the config, before the data is tokenized and the weights load). `fix`: what to change, where the
    length comes from elsewhere than --max_length."""
    config = getattr(model_or_config, "config", model_or_config)
    limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if limit is not None and max_length > limit:
        raise ConfigError(
            f"max_length {max_length} is longer than {config.model_type}'s {limit} positions; "
            + fix.format(limit=limit)
        )


def align_generation_config(model, tokenizer, stop_token_ids: list[int] | tuple[int, ...] = ()) -> None:
    """EOS and pad in the model and generation configs, so that generation stops at the end of a dialogue.

    The generation config's stop list is a union, never a replacement: the tokenizer's EOS, `stop_token_ids`
    (a chat template's end-of-turn token), and every id the base already stopped at (Llama-3 instruct
    models list several), so stock `pipeline` stops where training taught the model to and where the base did.
    """
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        before = generation.eos_token_id
        before = [] if before is None else [before] if isinstance(before, int) else list(before)
        stops = list(dict.fromkeys([tokenizer.eos_token_id, *stop_token_ids, *before]))
        generation.eos_token_id = stops[0] if len(stops) == 1 else stops
        generation.pad_token_id = tokenizer.pad_token_id


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; a 4-bit weight counts its weights, not the bytes that pack them."""
    trainable = sum(weights_in(p) for p in model.parameters() if p.requires_grad)
    total = sum(weights_in(p) for p in model.parameters())
    return trainable, total


def weights_in(parameter) -> int:
    """The weights a parameter stands for: a 4-bit one's unpacked count, a ZeRO-3 partitioned one's whole count
    (DeepSpeed leaves an empty tensor in its place)."""
    shape = getattr(getattr(parameter, "quant_state", None), "shape", None)  # bitsandbytes' Params4bit
    if shape is not None:
        return int(torch.Size(shape).numel())
    return int(getattr(parameter, "ds_numel", None) or parameter.numel())


