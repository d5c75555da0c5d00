"""A model as one GGUF file: tensors named with gguf's own map (`gguf.get_tensor_name_map`) and laid out as llama.cpp's
convert_hf_to_gguf.py writes them (a Llama's q and k rows permuted for llama.cpp's rope, which transformers' GGUF reader
undoes on load; GPT-2's Conv1D weights transposed; 1-D tensors, norms and biases, kept in float32), the tokenizer
(byte-level BPE: tokens, types, merges, pre-tokenizer), the special tokens, and the dialogue format's chat template
and end-of-turn token. Written to a temporary name and renamed when whole.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..config import ConfigError
from ..models.gguf_base import GGUF_EXTRA_HINT
from .dialogue_format import DialogueFormat, adds_bos

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelFamily:
    """How one model family is written: gguf's architecture and the layout llama.cpp expects."""

    arch: str  # gguf.MODEL_ARCH member name
    # llama.cpp's rope wants a Llama's q/k rows interleaved (convert_hf_to_gguf LlamaModel.permute)
    permute_qk: bool = False
    conv1d: bool = False  # GPT-2 stores its projections transposed (Conv1D)


# Mistral is written as llama.cpp writes it: a Llama (its sliding window is not a GGUF field llama.cpp reads for it).
FAMILIES = {"llama": ModelFamily("LLAMA", permute_qk=True), "mistral": ModelFamily("LLAMA", permute_qk=True),
            "qwen2": ModelFamily("QWEN2"), "gpt2": ModelFamily("GPT2", conv1d=True)}
_CONV1D_LAYERS = (".c_attn", ".c_proj", ".c_fc")


def require_gguf():
    try:
        import gguf
    except ImportError:
        raise ConfigError(f"exporting to GGUF needs the gguf package: {GGUF_EXTRA_HINT}") from None
    return gguf


# -- the model

def family_of(model, model_path: str) -> ModelFamily:
    model_type = model.config.model_type
    if model_type not in FAMILIES:
        raise ConfigError(
            f"{model_path}: {model_type} models cannot be exported to GGUF here (supported: "
            f"{', '.join(sorted(FAMILIES))}); save it as a full model (a LoRA run: --merge_lora true) and convert "
            "that folder with llama.cpp's convert_hf_to_gguf.py"
        )
    rope = getattr(model.config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"{model_path}: rope scaling {rope.get('rope_type')!r} is not written by this exporter; "
                          "convert the saved folder with llama.cpp's convert_hf_to_gguf.py")
    return FAMILIES[model_type]


def llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's row order for a Llama's q and k (convert_hf_to_gguf.py LlamaModel.permute), which its rope
    expects; transformers' GGUF reader applies the inverse on load."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def gguf_tensors(model, family: ModelFamily) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) per weight, in llama.cpp's layout; a tied output layer is not written twice."""
    gguf = require_gguf()
    config = model.config
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[family.arch], config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        base, suffix = name.rsplit(".", 1)
        gguf_name = name_map.get_name(base)
        if gguf_name is None:
            raise ConfigError(f"{type(model).__name__} weight {name} has no name in GGUF's {family.arch.lower()} "
                              "layout; convert the saved folder with llama.cpp's convert_hf_to_gguf.py instead")
        data = tensor.detach().to("cpu").float().numpy()
        if family.conv1d and suffix == "weight" and base.endswith(_CONV1D_LAYERS):
            data = data.T
        if family.permute_qk and base.endswith("q_proj"):
            data = llama_cpp_permute(data, config.num_attention_heads)
        elif family.permute_qk and base.endswith("k_proj"):
            data = llama_cpp_permute(data, config.num_key_value_heads)
        yield f"{gguf_name}.{suffix}", np.ascontiguousarray(data)


def _encode(gguf, name: str, data: np.ndarray, outtype: str):
    """(bytes, type): 1-D tensors, norms and GPT-2's position table in float32 as llama.cpp keeps them; a row
    that does not divide into Q8_0's blocks of 32 falls back to F16, as llama.cpp's converter does."""
    types = gguf.GGMLQuantizationType
    if (data.ndim <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight")
            or name.startswith("position_embd")):
        return data.astype(np.float32), types.F32
    qtype = {"f16": types.F16, "bf16": types.BF16, "q8_0": types.Q8_0}[outtype]
    try:
        return gguf.quants.quantize(data, qtype), qtype
    except gguf.QuantError:
        logger.info("%s: rows of %d values do not divide into %s blocks; written as F16", name, data.shape[-1],
                    qtype.name)
        return gguf.quants.quantize(data, types.F16), types.F16


def _write_hyperparameters(writer, model, family: ModelFamily) -> None:
    c = model.config
    if family.arch == "GPT2":
        writer.add_context_length(c.n_positions)
        writer.add_embedding_length(c.n_embd)
        writer.add_feed_forward_length(c.n_inner or 4 * c.n_embd)
        writer.add_head_count(c.n_head)
        writer.add_layer_norm_eps(c.layer_norm_epsilon)
        writer.add_block_count(c.n_layer)
        return
    rope = getattr(c, "rope_parameters", None) or {}
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_vocab_size(c.vocab_size)
    if family.arch == "LLAMA":
        writer.add_rope_dimension_count(head_dim)
    if head_dim != c.hidden_size // c.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


# -- the tokenizer

_SPLIT_PRE_TOKENIZERS = {  # llama.cpp's pre-tokenizer names, by the split regex a tokenizer.json declares
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "qwen2",
}


def _pre_tokenizer_name(backend: dict[str, Any], where: str) -> str:
    """llama.cpp's name (tokenizer.ggml.pre) for the tokenizer's pre-tokenization: how text is split before BPE."""
    pre = backend.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        name = _SPLIT_PRE_TOKENIZERS.get((steps[0].get("pattern") or {}).get("Regex"))
        if name:
            return name
    raise ConfigError(f"{where}: the tokenizer's pre-tokenizer ({' + '.join(map(str, kinds))}) is not one this "
                      "exporter names for llama.cpp (GPT-2, SmolLM, Llama-3 and Qwen2 byte-level BPE); convert the "
                      "saved folder with llama.cpp's convert_hf_to_gguf.py, which knows more")


def _write_tokenizer(writer, gguf, tokenizer, vocab_size: int, where: str) -> None:
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model = backend.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(backend.get("pre_tokenizer")):
        raise ConfigError(f"{where}: only byte-level BPE tokenizers (GPT-2, Llama-3, Qwen2, SmolLM2) are exported; "
                          f"this one is {model.get('type')}; convert the saved folder with llama.cpp's "
                          "convert_hf_to_gguf.py")
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise ConfigError(f"{where}: the tokenizer has ids up to {max(by_id)}, the model {vocab_size} embeddings")
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_size):  # ids without a token (padded embeddings) are unused, as llama.cpp writes them
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            looks_special = token.startswith("<|") and token.endswith("|>")
            special = added[index].special or looks_special
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
            tokens.append(token)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE, whichever family
    writer.add_tokenizer_pre(_pre_tokenizer_name(backend, where))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for add, token_id in ((writer.add_bos_token_id, tokenizer.bos_token_id),
                          (writer.add_eos_token_id, tokenizer.eos_token_id),
                          (writer.add_unk_token_id, tokenizer.unk_token_id),
                          (writer.add_pad_token_id, tokenizer.pad_token_id)):
        if token_id is not None:
            add(token_id)
    writer.add_add_bos_token(adds_bos(tokenizer))
    # Never an EOS after the prompt, even for a tokenizer that appends one (some Llamas): it would end the dialogue
    # before the reply (generation.prompt_ids drops it for the same reason); training's EOS ends a whole dialogue.
    writer.add_add_eos_token(False)


# -- the file

def write_gguf(path: Path, model, tokenizer, family: ModelFamily, dialogue: DialogueFormat, outtype: str,
               name: str) -> Path:
    """Write the GGUF to a temporary file beside `path`, then rename it into place."""
    gguf = require_gguf()
    from tqdm.auto import tqdm

    where = str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    writer = gguf.GGUFWriter(str(temporary), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[family.arch]])
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        file_type = {"f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}[outtype]
        writer.add_file_type(gguf.LlamaFileType[file_type])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _write_hyperparameters(writer, model, family)
        _write_tokenizer(writer, gguf, tokenizer, model.config.vocab_size, where)
        writer.add_chat_template(dialogue.chat_template)
        if dialogue.turn_end_id is not None:
            writer.add_eot_token_id(dialogue.turn_end_id)
        tensors = list(gguf_tensors(model, family))
        for tensor_name, data in tqdm(tensors, desc=f"Converting to {outtype}", unit="tensor"):
            encoded, qtype = _encode(gguf, tensor_name, data, outtype)
            writer.add_tensor(tensor_name, encoded, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=True)
        writer.close()
        os.replace(temporary, path)
    except BaseException:
        writer.close()
        temporary.unlink(missing_ok=True)
        raise
    return path
