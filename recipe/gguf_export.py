"""A run's model as one GGUF file, for llama.cpp, Ollama and LM Studio, with its tokenizer and dialogue format.

    python scripts/export_gguf.py --model_path outputs/smollm2-lora --outtype q8_0

The model loads as `scripts/evaluate.py` loads it, in float32: a full run as saved; a LoRA adapter on its base,
merged in memory; a QLoRA adapter on its base loaded at full precision (the weights the 4-bit base was quantized
from, as `--merge_lora` merges), not on dequantized 4-bit weights. Tensors are named with gguf's own map
(`gguf.get_tensor_name_map`) and laid out as llama.cpp's convert_hf_to_gguf.py writes them: a Llama's q and k rows
permuted for llama.cpp's rope (transformers' GGUF reader undoes it on load), GPT-2's Conv1D weights transposed,
1-D tensors (norms, biases) kept in float32. The file carries the tokenizer (byte-level BPE: tokens, types,
merges, pre-tokenizer), the special tokens, and the run's dialogue format: its chat template when it trained with
one, else a Jinja template that writes `Speaker: text` turns as training did; the token that ends a turn is the
file's end-of-turn token, so llama.cpp stops a reply there. An Ollama Modelfile beside the file carries the same
format as a Go template with its stop strings.

The file is written to a temporary name and renamed when whole: an interrupted export leaves no `.gguf` behind.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np

from .config import ConfigError, DataArguments
from .data import DialogueDataError, render_with_chat_template
from .files import atomic_write_text
from .gguf import GGUF_EXTRA_HINT
from .run_dir import RunDir

logger = logging.getLogger(__name__)

GGUF_SUFFIX = ".gguf"
MODELFILE_SUFFIX = ".Modelfile"  # the Ollama Modelfile beside FILE.gguf is FILE.Modelfile
# Exports of a run go to RUN/gguf/ (and to gguf/ in its Hub repo), not beside the run's own files: transformers'
# `from_pretrained(folder, gguf_file=...)` would find a LoRA run's adapter_config.json there and load its base instead.
GGUF_DIR = "gguf"
OUTTYPES = ("f16", "bf16", "q8_0")


@dataclass
class GGUFExportArguments:
    """Options of scripts/export_gguf.py (kept beside the exporter: no other script reads them)."""

    model_path: str = field(metadata={"help": "A training output dir, checkpoint, LoRA/QLoRA adapter or model folder."})
    outtype: Literal["f16", "bf16", "q8_0"] = field(
        default="f16",
        metadata={"help": "Type of the 2-D weights: f16 (half the float32 size), bf16, or q8_0 (8-bit blocks, about "
                          "a quarter). Norms and biases stay float32."},
    )
    output: str | None = field(
        default=None, metadata={"help": "The .gguf file to write (default: MODEL_PATH/gguf/NAME.OUTTYPE.gguf)."}
    )
    base_model: str | None = field(
        default=None, metadata={"help": "Base model of a LoRA adapter (default: the run's base_model/ or the adapter config)."}
    )
    speaker: str | None = field(
        default=None,
        metadata={"help": "Who the model plays in the chat template (assistant): default the run's train_on_speakers, "
                          "else its second speaker."},
    )
    user: str | None = field(default=None, metadata={"help": "Who the user is in the chat template (default: the "
                                                             "run's first speaker)."})


@dataclass(frozen=True)
class _Family:
    """How one model family is written: gguf's architecture and the layout llama.cpp expects."""

    arch: str  # gguf.MODEL_ARCH member name
    permute_qk: bool = False  # llama.cpp's rope wants a Llama's q/k rows interleaved (convert_hf_to_gguf LlamaModel.permute)
    conv1d: bool = False  # GPT-2 stores its projections transposed (Conv1D)


# Mistral is written as llama.cpp writes it: a Llama (its sliding window is not a GGUF field llama.cpp reads for it).
FAMILIES = {"llama": _Family("LLAMA", permute_qk=True), "mistral": _Family("LLAMA", permute_qk=True),
            "qwen2": _Family("QWEN2"), "gpt2": _Family("GPT2", conv1d=True)}
_CONV1D_LAYERS = (".c_attn", ".c_proj", ".c_fc")


@dataclass(frozen=True)
class TurnPieces:
    """A conversation as a client writes it: `lead`, then per message `headers[role] + content + ends[role]` (the
    last message, when the model's, without its end), then `generation` when the last message is the user's.
    A first system message takes `first_system_header` instead of `lead + headers["system"]` (templates that write
    a default system turn do so only without one). Roles outside `headers` are written as the user's."""

    lead: str
    headers: dict[str, str]
    ends: dict[str, str]
    generation: str
    first_system_header: str | None = None

    def render(self, messages: list[dict[str, str]]) -> str:
        """The text a client sends for `messages`, ready for the model's reply (what the Go template writes)."""
        text = []
        for index, message in enumerate(messages):
            role = message["role"] if message["role"] in self.headers else "user"
            last = index == len(messages) - 1
            if index == 0 and role == "system" and self.first_system_header is not None:
                text.append(self.first_system_header)
            else:
                text.append((self.lead if index == 0 else "") + self.headers[role])
            text.append(message["content"])
            if not (last and role == "assistant"):
                text.append(self.ends[role])
            if last and role != "assistant":
                text.append(self.generation)
        return "".join(text)


@dataclass(frozen=True)
class DialogueFormat:
    """The run's dialogue format for clients: a Jinja chat template (the GGUF's), the same as `TurnPieces` (the
    Modelfile's Go template), stop strings, and the token that ends a reply's turn besides EOS (or None)."""

    chat_template: str
    pieces: TurnPieces
    stops: list[str]
    turn_end_id: int | None
    description: str


@dataclass
class ExportResult:
    path: Path
    modelfile: Path
    outtype: str
    size_bytes: int
    architecture: str
    kind: str  # what was exported: full, lora (merged), checkpoint-..., base
    dialogue_format: str
    cards: list[Path] = field(default_factory=list)


def _require_gguf():
    try:
        import gguf
    except ImportError:
        raise ConfigError(f"exporting to GGUF needs the gguf package: {GGUF_EXTRA_HINT}") from None
    return gguf


# -- the model

def load_model_for_export(model_path: str, base_model: str | None = None):
    """(model, tokenizer, loaded) in float32 on the CPU, a LoRA or QLoRA adapter merged into its full-precision base."""
    from .evaluation import load_model_for_evaluation

    loaded = load_model_for_evaluation(model_path, base_model, dtype="float32")  # a k-bit base at full precision
    model = loaded.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model.to("cpu").eval(), loaded.tokenizer, loaded


def family_of(model, model_path: str) -> _Family:
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


def gguf_tensors(model, family: _Family) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) per weight, in llama.cpp's layout; a tied output layer is not written twice."""
    gguf = _require_gguf()
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
    if data.ndim <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight") or name.startswith("position_embd"):
        return data.astype(np.float32), types.F32
    qtype = {"f16": types.F16, "bf16": types.BF16, "q8_0": types.Q8_0}[outtype]
    try:
        return gguf.quants.quantize(data, qtype), qtype
    except gguf.QuantError:
        logger.info("%s: rows of %d values do not divide into %s blocks; written as F16", name, data.shape[-1], qtype.name)
        return gguf.quants.quantize(data, types.F16), types.F16


def _write_hyperparameters(writer, model, family: _Family) -> None:
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
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
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
    raise ConfigError(f"{where}: the tokenizer's pre-tokenizer ({' + '.join(map(str, kinds))}) is not one this exporter "
                      "names for llama.cpp (GPT-2, SmolLM, Llama-3 and Qwen2 byte-level BPE); convert the saved "
                      "folder with llama.cpp's convert_hf_to_gguf.py, which knows more")


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer starts encoded text with BOS (training saw it; llama.cpp must add it too)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos] and bos not in tokenizer("a", add_special_tokens=False)["input_ids"]


def _write_tokenizer(writer, gguf, tokenizer, vocab_size: int, where: str) -> None:
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model = backend.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(backend.get("pre_tokenizer")):
        raise ConfigError(f"{where}: only byte-level BPE tokenizers (GPT-2, Llama-3, Qwen2, SmolLM2) are exported; this "
                          f"one is {model.get('type')}; convert the saved folder with llama.cpp's convert_hf_to_gguf.py")
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
            types.append(gguf.TokenType.CONTROL if added[index].special or looks_special else gguf.TokenType.USER_DEFINED)
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
    for add, token_id in ((writer.add_bos_token_id, tokenizer.bos_token_id), (writer.add_eos_token_id, tokenizer.eos_token_id),
                          (writer.add_unk_token_id, tokenizer.unk_token_id), (writer.add_pad_token_id, tokenizer.pad_token_id)):
        if token_id is not None:
            add(token_id)
    writer.add_add_bos_token(adds_bos(tokenizer))
    # Never an EOS after the prompt, even for a tokenizer that appends one (some Llamas): it would end the dialogue
    # before the reply (generation.prompt_ids drops it for the same reason); training's EOS ends a whole dialogue.
    writer.add_add_eos_token(False)


# -- the dialogue format

def _quoted(text: str) -> str:
    """A double-quoted string literal that Jinja (Python's and llama.cpp's) and Go templates read the same way."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


def _turn_parts(data_args: DataArguments) -> list[str]:
    """turn_template cut at its placeholders: literal, "{speaker}" or "{text}", in order."""
    return [part for part in re.split(r"(\{speaker\}|\{text\})", data_args.turn_template) if part]


def _speaker_turn(data_args: DataArguments, speaker: str) -> tuple[str, str]:
    """(header, end) of one `speaker`'s turn as training wrote it: the label, then after the text the rest of
    turn_template and the separator."""
    header, end = data_args.turn_template.format(speaker=speaker, text="\0").split("\0")
    return header, end + data_args.turn_separator


def speaker_label_format(data_args: DataArguments, tokenizer, user: str, speaker: str) -> DialogueFormat:
    """`Speaker: text` turns joined by turn_separator, as `render_dialogue` writes them, user and assistant played
    by `user` and `speaker`; a message's `name` names its speaker, other roles are capitalised (as data is read)."""
    from .generation import turn_cue

    roles = {"system": "System", **data_args.role_speaker_map, "user": user, "assistant": speaker}
    branches = "".join(f"{{%- {'if' if i == 0 else 'elif'} message['role'] == {_quoted(role)} -%}}"
                       f"{{%- set speaker = {_quoted(name)} -%}}" for i, (role, name) in enumerate(roles.items()))
    turn = " + ".join("message['content']" if p == "{text}" else "speaker" if p == "{speaker}" else _quoted(p)
                      for p in _turn_parts(data_args))
    separator = _quoted(data_args.turn_separator)
    jinja = (
        ("{{- bos_token -}}" if adds_bos(tokenizer) else "")
        + "{%- for message in messages -%}"
        + branches + "{%- else -%}{%- set speaker = message['role'] | capitalize -%}{%- endif -%}"
        + "{%- if message['name'] is defined and message['name'] -%}{%- set speaker = message['name'] -%}{%- endif -%}"
        + "{%- if not loop.first -%}{{- " + separator + " -}}{%- endif -%}"
        + "{{- " + turn + " -}}"
        + "{%- endfor -%}"
        + "{%- if add_generation_prompt -%}{%- if messages -%}{{- " + separator + " -}}{%- endif -%}"
        + "{{- " + _quoted(turn_cue(speaker, data_args)) + " -}}{%- endif -%}"
    )
    turns = {role: _speaker_turn(data_args, roles[role]) for role in ("user", "assistant", "system")}
    pieces = TurnPieces(lead="", headers={r: h for r, (h, _) in turns.items()}, ends={r: e for r, (_, e) in turns.items()},
                        generation=turn_cue(speaker, data_args))
    stops = [data_args.turn_separator or turn_cue(user, data_args)]  # where the reply's turn ends
    return DialogueFormat(jinja, pieces, stops, _separator_token(data_args, tokenizer),
                          f"{data_args.turn_template!r} turns joined by {data_args.turn_separator!r}; the model plays "
                          f"{speaker}, the user {user}")


def _separator_token(data_args: DataArguments, tokenizer) -> int | None:
    """The turn separator's token, when it is one token and stays one after any turn's last word or punctuation
    (Llama-3's split glues `.\\n` into one token: there no single token ends a turn, and the stop strings do)."""
    ids = tokenizer(data_args.turn_separator, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 or ids[0] in tokenizer.all_special_ids:
        return None
    for ending in ("Hi", "Hi.", "Hi!", "Hi?", "Hi :)", "1", "Hi...", "«Hi»"):
        text = f"A: {ending}{data_args.turn_separator}B: ok"
        if ids[0] not in tokenizer(text, add_special_tokens=False)["input_ids"]:
            return None
    return ids[0]


def _turn_texts(rendered, tokenizer) -> list[tuple[str, str]]:
    """(header, end) of each turn of a chat-template render; a turn ends where the next header begins, never
    inside a special token."""
    text = rendered.text
    bounds = [0] + [_outside_special_tokens(text, e, tokenizer) for e in rendered.ends[:-1]] + [len(text)]
    return [(text[bounds[k]:rendered.content_starts[k]], text[rendered.content_ends[k]:bounds[k + 1]])
            for k in range(len(rendered.ends))]


def chat_template_format(tokenizer, where: str) -> DialogueFormat:
    """The run's chat template as is, and its pieces found by rendering it (the markers of data/templates.py)."""
    from .generation import chat_template_turn_end_ids

    def turns(*roles):
        messages = [{"role": role, "content": f"MSG{index}MSG"} for index, role in enumerate(roles)]
        return _turn_texts(render_with_chat_template(messages, tokenizer, f"{where}'s chat template"), tokenizer)

    try:
        (first, user_end), (assistant, assistant_end), (user, _), _ = turns("user", "assistant", "user", "assistant")
    except DialogueDataError as error:
        raise ConfigError(f"{where}: the chat template cannot be written as an Ollama template ({error})") from None
    if not first.endswith(user):
        raise ConfigError(f"{where}: the chat template's first user turn is not written like the others; "
                          "an Ollama template cannot be made from it")
    headers, ends = {"user": user, "assistant": assistant}, {"user": user_end, "assistant": assistant_end}
    lead = first[: len(first) - len(user)]
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "MSG0MSG"}], tokenize=False,
                                           add_generation_prompt=True)
    after = prompt.split("MSG0MSG", 1)[1]
    generation = after[len(user_end):] if after.startswith(user_end) else ""
    first_system = None
    try:
        (first_system, ends["system"]), (user_after_system, _), *_ = turns("system", "user", "assistant", "user")
        if user_after_system != user:
            raise DialogueDataError("the user turn after a system turn is written otherwise")
        headers["system"] = first_system.removeprefix(lead)
    except DialogueDataError:  # a template without a system role: system messages are written as the user's
        first_system = None
        ends.pop("system", None)
    if adds_bos(tokenizer) and tokenizer.bos_token:  # the client adds BOS itself (tokenizer.ggml.add_bos_token)
        lead = lead.removeprefix(tokenizer.bos_token)
        first_system = first_system.removeprefix(tokenizer.bos_token) if first_system is not None else None
    pieces = TurnPieces(lead, headers, ends, generation, first_system)
    turn_end = chat_template_turn_end_ids(tokenizer)
    stops = list(dict.fromkeys(s for s in (assistant_end.strip(), tokenizer.eos_token) if s))
    return DialogueFormat(tokenizer.chat_template, pieces, stops, turn_end[0] if turn_end else None,
                          "the run's chat template")


def _outside_special_tokens(text: str, position: int, tokenizer) -> int:
    """`position`, moved back to the start of a special token it would cut (a turn's end found as the text two
    renders share can stop inside the next marker: `<|end|>\\n<|` when one continues `<|user|>`, the other EOS)."""
    for token in (added.content for added in tokenizer.added_tokens_decoder.values()):
        start = text.find(token, max(0, position - len(token) + 1), position + len(token) - 1)
        if start != -1 and start < position:
            return start
    return position


def dialogue_format(data_args: DataArguments, tokenizer, run: RunDir | None, user: str | None = None,
                    speaker: str | None = None, where: str = "the model") -> DialogueFormat:
    """The format the run trained on: its chat template (use_chat_template), else its speaker-labelled turns."""
    if data_args.use_chat_template:
        return chat_template_format(tokenizer, where)
    from .generation import chat_speakers

    role_map = data_args.role_speaker_map
    user, speaker = chat_speakers(run, user or role_map.get("user"), speaker or role_map.get("assistant"))
    return speaker_label_format(data_args, tokenizer, user, speaker)


def go_template(pieces: TurnPieces) -> str:
    """Ollama's TEMPLATE (Go text/template) writing `pieces` as `TurnPieces.render` does: header, content, end per
    message. Every literal is a quoted string, so the `{{-` that lay the template out never trim the format's own
    whitespace."""

    def lit(text: str) -> str:
        return "{{ " + _quoted(text) + " }}" if text else ""

    system = "system" in pieces.headers
    generation = "{{ if $last }}" + lit(pieces.generation) + "{{ end }}" if pieces.generation else ""
    lines = ["{{- range $i, $_ := .Messages }}", "{{- $last := eq (len (slice $.Messages $i)) 1 }}"]
    first_system = pieces.first_system_header is not None
    if first_system:
        lines += ['{{- if and (eq $i 0) (eq .Role "system") }}' + lit(pieces.first_system_header), "{{- else }}"]
    lines += ["{{- if eq $i 0 }}" + lit(pieces.lead) + "{{ end }}" if pieces.lead else "",
              '{{- if eq .Role "assistant" }}' + lit(pieces.headers["assistant"]),
              '{{- else if eq .Role "system" }}' + lit(pieces.headers["system"]) if system else "",
              "{{- else }}" + lit(pieces.headers["user"]) + "{{ end }}",
              "{{- end }}" if first_system else "",
              "{{- .Content }}",
              '{{- if eq .Role "assistant" }}' + ("{{ if not $last }}" + lit(pieces.ends["assistant"]) + "{{ end }}"
                                                  if pieces.ends["assistant"] else ""),
              '{{- else if eq .Role "system" }}' + lit(pieces.ends["system"]) + generation if system else "",
              "{{- else }}" + lit(pieces.ends["user"]) + generation + "{{ end }}",
              "{{- end }}"]
    return "\n".join(line for line in lines if line)


def modelfile_text(gguf_name: str, dialogue: DialogueFormat) -> str:
    """The Ollama Modelfile: FROM the file beside it, the format as TEMPLATE, a PARAMETER stop per turn end.

    Ollama's parser takes quoted values literally (no escapes): a newline stop is a real newline between quotes."""
    lines = [f"# Ollama: ollama create NAME -f {Path(gguf_name).stem}{MODELFILE_SUFFIX} && ollama run NAME",
             f"# Dialogue format: {dialogue.description}.",
             f"FROM ./{gguf_name}", f'TEMPLATE """{go_template(dialogue.pieces)}"""']
    lines += [f'PARAMETER stop "{stop}"' for stop in dialogue.stops]
    return "\n".join(lines) + "\n"


# -- the file

def write_gguf(path: Path, model, tokenizer, family: _Family, dialogue: DialogueFormat, outtype: str, name: str) -> Path:
    """Write the GGUF to a temporary file beside `path`, then rename it into place."""
    gguf = _require_gguf()
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


def model_name(model_path: str | os.PathLike) -> str:
    """The exported model's name: the run's (a checkpoint's: RUN-checkpoint-N), else the folder's."""
    path = Path(model_path).resolve()
    run = RunDir.containing(path)
    return path.name if run is None or run.path == path else f"{run.path.name}-{path.name}"


def default_output(model_path: str | os.PathLike, outtype: str) -> Path:
    """MODEL_PATH/gguf/NAME.OUTTYPE.gguf."""
    return Path(model_path) / GGUF_DIR / f"{model_name(model_path)}.{outtype.upper()}{GGUF_SUFFIX}"


def gguf_files(run_dir: str | os.PathLike) -> list[Path]:
    """The GGUF exports of a run (in RUN/gguf/), by name."""
    return sorted(p for p in (Path(run_dir) / GGUF_DIR).glob(f"*{GGUF_SUFFIX}") if p.is_file())


def modelfile_of(gguf_file: str | os.PathLike) -> Path:
    return Path(gguf_file).with_suffix(MODELFILE_SUFFIX)


def export_gguf(args: GGUFExportArguments) -> ExportResult:
    """Export the model at args.model_path to one GGUF file and its Modelfile; refresh the run's model card when
    the file lands in the run directory (the card lists it)."""
    _require_gguf()
    from .evaluation import evaluation_data_args

    if not Path(args.model_path).is_dir():
        raise ConfigError(f"model_path {args.model_path} is not a folder; pass a training output dir, checkpoint, "
                          "adapter or model folder")
    output = Path(args.output) if args.output else default_output(args.model_path, args.outtype)
    if output.suffix != GGUF_SUFFIX:
        raise ConfigError(f"output {output} must end with {GGUF_SUFFIX}")
    model, tokenizer, loaded = load_model_for_export(args.model_path, args.base_model)
    family = family_of(model, args.model_path)
    run = loaded.run_dir
    data_args = evaluation_data_args(run.read_config() if run else None, None)
    dialogue = dialogue_format(data_args, tokenizer, run, args.user, args.speaker, args.model_path)
    write_gguf(output, model, tokenizer, family, dialogue, args.outtype, model_name(args.model_path))
    modelfile = atomic_write_text(modelfile_of(output), modelfile_text(output.name, dialogue))
    cards = []
    if run is not None and run.is_finished() and output.parent.resolve() == (run.path / GGUF_DIR).resolve():
        from .tracking import refresh_model_cards

        cards = refresh_model_cards(run.path)
    return ExportResult(output, modelfile, args.outtype, output.stat().st_size, family.arch.lower(), loaded.kind,
                        dialogue.description, cards)


def format_export(result: ExportResult) -> str:
    return "\n".join([
        f"gguf: {result.path} ({result.size_bytes / 1e6:,.1f} MB, {result.outtype}, {result.architecture}, "
        f"from the {result.kind} model)",
        f"dialogue format: {result.dialogue_format}",
        f"ollama: ollama create NAME -f {result.modelfile} && ollama run NAME",
        f"llama.cpp: llama-cli -m {result.path} --jinja -cnv",
        *(f"model card: {card}" for card in result.cards),
    ])

