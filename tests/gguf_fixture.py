"""A tiny Llama written as a GGUF file, offline: what llama.cpp's converter would write for a 2-layer model.

Tests need a GGUF base that builds in a second, without the Hub or a registry. The tokenizer is the
offline byte-level BPE (recipe/assets/tiny-gpt2) plus ChatML's two markers; the weights are a random
LlamaForCausalLM's, named and laid out as llama.cpp does (its q/k rows permuted for its rope), stored as
F32 (exact) or quantized (Q8_0), with the metadata keys transformers reads back.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from conftest import OFFLINE_MODEL

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's row order for q and k (convert_hf_to_gguf.py LlamaModel.permute); transformers undoes it."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _tokenizer_vocab() -> tuple[list[str], list[str]]:
    backend = json.loads((OFFLINE_MODEL / "tokenizer.json").read_text())
    vocab = backend["model"]["vocab"]
    tokens = [None] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]]
    return tokens + ["<|im_start|>", "<|im_end|>"], merges


def tiny_llama(vocab_size: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                         rope_parameters={"rope_theta": 10000.0, "rope_type": "default"}, rms_norm_eps=1e-5,
                         tie_word_embeddings=True,
                         bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def write_tiny_llama_gguf(path: Path, quantization: str = "F32", seed: int = 0):
    """Write the GGUF to `path`; return the model it holds (float32, before any quantisation)."""
    import gguf

    tokens, merges = _tokenizer_vocab()
    model = tiny_llama(len(tokens), seed)
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama for tests")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_vocab_size(len(tokens))
    qtype = gguf.GGMLQuantizationType[quantization]
    file_type = gguf.LlamaFileType.ALL_F32 if quantization == "F32" else gguf.LlamaFileType[f"MOSTLY_{quantization}"]
    writer.add_file_type(file_type)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t.startswith("<|") else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_pad_token_id(config.pad_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)
    for name, tensor in _llama_cpp_tensors(model):
        if tensor.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, gguf.quants.quantize(tensor, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


def _llama_cpp_tensors(model):
    config = model.config
    weights = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    yield "token_embd.weight", weights["model.embed_tokens.weight"]
    for i in range(config.num_hidden_layers):
        layer = f"model.layers.{i}."
        yield f"blk.{i}.attn_norm.weight", weights[layer + "input_layernorm.weight"]
        yield f"blk.{i}.attn_q.weight", _llama_cpp_permute(weights[layer + "self_attn.q_proj.weight"],
                                                           config.num_attention_heads)
        yield f"blk.{i}.attn_k.weight", _llama_cpp_permute(weights[layer + "self_attn.k_proj.weight"],
                                                           config.num_key_value_heads)
        yield f"blk.{i}.attn_v.weight", weights[layer + "self_attn.v_proj.weight"]
        yield f"blk.{i}.attn_output.weight", weights[layer + "self_attn.o_proj.weight"]
        yield f"blk.{i}.ffn_norm.weight", weights[layer + "post_attention_layernorm.weight"]
        yield f"blk.{i}.ffn_gate.weight", weights[layer + "mlp.gate_proj.weight"]
        yield f"blk.{i}.ffn_up.weight", weights[layer + "mlp.up_proj.weight"]
        yield f"blk.{i}.ffn_down.weight", weights[layer + "mlp.down_proj.weight"]
    yield "output_norm.weight", weights["model.norm.weight"]
