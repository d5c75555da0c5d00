"""Tiny random models of several causal-LM families, built offline for the family matrix.

Each family gets a model folder (config + tokenizer, no weights: `random_init` builds the model)
whose tokenizer behaves like the family's own: BOS added or not, EOS appended by the tokenizer
itself or not, a pad token or none, and the family's chat template where it has one. The
tokenizers reuse the bundled byte-level BPE (recipe/assets/tiny-gpt2/tokenizer.json) with the
family's special tokens and post-processor; `tokenizer_class` is the one the family declares, so
`AutoTokenizer` picks the class a user of that family gets. Nothing is downloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from conftest import OFFLINE_MODEL

# Chat templates in the families' own style (shortened copies of the published ones).
CHATML = (  # Qwen2-Instruct: a default system turn, every turn closed by <|im_end|> (its EOS)
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (  # Llama-3-Instruct: BOS written by the template, role headers, content trimmed, <|eot_id|>
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + "
    "message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
MISTRAL = (  # Mistral-Instruct v0.1: user/assistant only, alternating, EOS after each answer
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
PHI3 = (  # Phi-3-mini: turns closed by <|end|> (not its EOS); EOS once at the end of a conversation
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    name: str
    make_config: Callable[..., object]  # (vocab_size, bos_id, eos_id, pad_id) -> a transformers config
    tokenizer_class: str  # what the family's tokenizer_config.json declares
    eos: str
    bos: str | None = None
    pad: str | None = None
    add_bos: bool = False
    appends_eos: bool = False  # the tokenizer itself appends EOS (a TemplateProcessing post-processor)
    specials: tuple[str, ...] = ()
    chat_template: str | None = None
    lora_targets: str = "all-linear"  # what the recipe's default picks for this model
    turn_end: str | None = None  # the template's end-of-turn marker, when it is not EOS
    packs: bool = True  # builds its attention mask from position_ids, so packed dialogues stay apart


def _gpt2(vocab_size, bos, eos, pad):
    from transformers import GPT2Config

    return GPT2Config(vocab_size=vocab_size, n_positions=512, n_embd=32, n_layer=2, n_head=2, attn_pdrop=0.0,
                      embd_pdrop=0.0, resid_pdrop=0.0, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)


def _llama(vocab_size, bos, eos, pad):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)


def _qwen2(vocab_size, bos, eos, pad):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)


def _mistral(vocab_size, bos, eos, pad):
    from transformers import MistralConfig

    return MistralConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         sliding_window=None, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)


def _gpt_neox(vocab_size, bos, eos, pad):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=512, bos_token_id=bos, eos_token_id=eos,
                         pad_token_id=pad)


def _opt(vocab_size, bos, eos, pad):
    from transformers import OPTConfig

    return OPTConfig(vocab_size=vocab_size, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                     word_embed_proj_dim=32, max_position_embeddings=512, dropout=0.0, attention_dropout=0.0,
                     bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)


def _phi3(vocab_size, bos, eos, pad):
    from transformers import Phi3Config

    return Phi3Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                      original_max_position_embeddings=512, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)


EOT = "<|endoftext|>"  # id 0 of the bundled BPE
FAMILIES = [
    Family("gpt2", _gpt2, "GPT2Tokenizer", eos=EOT, bos=EOT, lora_targets="c_attn c_proj c_fc"),
    Family("llama3", _llama, "PreTrainedTokenizerFast", eos="<|eot_id|>", bos="<|begin_of_text|>", add_bos=True,
           specials=("<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"), chat_template=LLAMA3),
    Family("llama-appends-eos", _llama, "TokenizersBackend", eos="</s>", bos="<s>", add_bos=True, appends_eos=True),
    Family("qwen2", _qwen2, "Qwen2Tokenizer", eos="<|im_end|>", pad=EOT, specials=("<|im_start|>",),
           chat_template=CHATML),
    Family("mistral", _mistral, "TokenizersBackend", eos="</s>", bos="<s>", add_bos=True, chat_template=MISTRAL),
    Family("gpt_neox", _gpt_neox, "GPTNeoXTokenizer", eos=EOT, bos=EOT),
    Family("opt", _opt, "GPT2Tokenizer", eos="</s>", bos="</s>", pad="<pad>", add_bos=True, packs=False),
    Family("phi3", _phi3, "TokenizersBackend", eos=EOT, bos="<s>", pad=EOT, add_bos=True,
           specials=("<|user|>", "<|assistant|>", "<|system|>", "<|end|>"), chat_template=PHI3, turn_end="<|end|>"),
]
FAMILY_BY_NAME = {family.name: family for family in FAMILIES}


def _tokenizer_object(family: Family):
    """The bundled BPE with the family's special tokens and post-processor (BOS, appended EOS)."""
    from tokenizers import AddedToken, Tokenizer, processors

    backend = Tokenizer.from_file(str(OFFLINE_MODEL / "tokenizer.json"))
    names = [family.eos, family.bos, family.pad, *family.specials]
    backend.add_special_tokens([AddedToken(name, special=True, normalized=False)
                                for name in dict.fromkeys(n for n in names if n)])
    single = (f"{family.bos} " if family.add_bos else "") + "$A" + (f" {family.eos}" if family.appends_eos else "")
    ends = {family.bos, family.eos} if family.add_bos and family.appends_eos else (
        {family.bos} if family.add_bos else {family.eos} if family.appends_eos else set())
    if ends:
        template = processors.TemplateProcessing(
            single=single, pair=single.replace("$A", "$A $B"),
            special_tokens=[(t, backend.token_to_id(t)) for t in ends],
        )
        backend.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=False), template])
    return backend


def build_family_dir(family: Family, root: Path) -> Path:
    """Write `root/family.name`: the family's config and tokenizer, loadable with random_init."""
    from transformers import PreTrainedTokenizerFast

    output = root / family.name
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_tokenizer_object(family), eos_token=family.eos, bos_token=family.bos,
        pad_token=family.pad, unk_token=None, model_max_length=512,
    )
    if family.chat_template:
        tokenizer.chat_template = family.chat_template
    tokenizer.save_pretrained(output)
    config_path = output / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config.update(tokenizer_class=family.tokenizer_class, add_bos_token=family.add_bos,
                            add_eos_token=family.appends_eos)
    config_path.write_text(json.dumps(tokenizer_config, indent=2))
    ids = {name: tokenizer.convert_tokens_to_ids(getattr(family, name)) if getattr(family, name) else None
           for name in ("bos", "eos", "pad")}
    family.make_config(len(tokenizer), ids["bos"], ids["eos"], ids["pad"]).save_pretrained(output)
    return output
