"""The dialogue format a run trained on, written for clients of its GGUF export: a Jinja chat template (the file's
own), the same as an Ollama Modelfile's Go template, the stop strings, and the token that ends a reply's turn.

A run that trained with its tokenizer's chat template keeps it as is, its pieces found by rendering it; one that
trained on `Speaker: text` turns gets a template that writes them as training did.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..common.run_dir import MODELFILE_SUFFIX, RunDir
from ..config import ConfigError, DataArguments
from ..data import DialogueDataError, render_with_chat_template
from ..models.generation import chat_speakers, chat_template_turn_end_ids, turn_cue


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


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer starts encoded text with BOS (training saw it; llama.cpp must add it too)."""
    bos = tokenizer.bos_token_id
    return (bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
            and bos not in tokenizer("a", add_special_tokens=False)["input_ids"])


def _quoted(text: str) -> str:
    """A double-quoted string literal that Jinja (Python's and llama.cpp's) and Go templates read the same way."""
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
               .replace("\t", "\\t"))
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
    pieces = TurnPieces(lead="", headers={r: h for r, (h, _) in turns.items()},
                        ends={r: e for r, (_, e) in turns.items()}, generation=turn_cue(speaker, data_args))
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
