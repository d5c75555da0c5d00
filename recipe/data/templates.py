"""Dialogues rendered with a tokenizer's chat template, with every turn located in the text.

Loss masking needs, per turn, where its header (`<|im_start|>assistant\\n`, role headers, a BOS the
template writes) ends, where its content ends and where its end marker (`<|im_end|>\\n`,
`<|eot_id|>`) ends. Templates differ too much to parse, so the template is rendered a second time
with each message's content replaced by a marker: the text between markers is the template's own,
and a render of the first k messages shows where turn k's end marker stops and the next header
begins (the longest prefix it shares with the whole render).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .errors import DialogueDataError

_MARKER = re.compile("\ue000(\\d+)\ue001")  # private-use characters: no template trims or escapes them


def _marker(index: int) -> str:
    return f"\ue000{index}\ue001"


@dataclass
class RenderedDialogue:
    """Dialogue text plus, per turn, where it starts (its header or speaker label), where its content
    starts and ends, and where the turn ends. A turn's span includes what ends it (a separator, an end marker)."""

    text: str
    turn_starts: list[int]
    content_starts: list[int]
    content_ends: list[int]
    ends: list[int]


def apply_chat_template(tokenizer, messages: list[dict[str, str]], source: str, **options) -> str:
    """The template's text for `messages`; a template error names the dialogue instead of a Jinja traceback."""
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **options)
    except TemplateError as error:
        roles = ", ".join(m["role"] for m in messages)
        raise DialogueDataError(
            f"{source}: the tokenizer's chat template refuses this dialogue (roles in order: {roles}): {error}. "
            "Map speakers to roles the template knows with --role_to_speaker (many templates want user and "
            "assistant, alternating), or unset --use_chat_template to write turns with --turn_template"
        ) from None


def render_with_chat_template(messages: list[dict[str, str]], tokenizer, source: str) -> RenderedDialogue:
    """Render with the chat template and locate each turn's header, content and end.

    When the template closes the conversation with EOS (ChatML's `<|im_end|>\\n`, Phi-3's EOS), the
    whitespace after that EOS is dropped, so the dialogue ends with EOS exactly once.
    """
    text = apply_chat_template(tokenizer, messages, source)
    marked = [{"role": m["role"], "content": _marker(k)} for k, m in enumerate(messages)]
    skeleton = apply_chat_template(tokenizer, marked, source)
    gaps = _template_pieces(skeleton, messages, source)
    eos = tokenizer.eos_token
    if eos and text.rstrip().endswith(eos):
        text = text.rstrip()
    content_starts, content_ends, position = [], [], len(gaps[0])
    if not text.startswith(gaps[0]):
        raise _changed_text(source)
    for k, message in enumerate(messages):
        written = _written_content(text, position, message["content"], gaps[k + 1], last=k == len(messages) - 1)
        if written is None:
            raise _changed_text(source)
        content_starts.append(position)
        content_ends.append(position + len(written))
        position += len(written) + len(gaps[k + 1])
    ends = [
        content_ends[k] + _end_marker_length(tokenizer, marked, k, skeleton, source, len(gaps[k + 1]))
        for k in range(len(messages) - 1)
    ] + [len(text)]
    return RenderedDialogue(text, [0] + ends[:-1], content_starts, content_ends, ends)


def _template_pieces(skeleton: str, messages, source: str) -> list[str]:
    """The template's own text: before the first content, between contents, after the last."""
    pieces = _MARKER.split(skeleton)  # text, index, text, index, ..., text
    found = [int(index) for index in pieces[1::2]]
    if found != list(range(len(messages))):
        missing = sorted(set(range(len(messages))) - set(found))
        if missing:
            k = missing[0]
            raise DialogueDataError(
                f"{source}: the tokenizer's chat template writes nothing for message {k} (role "
                f"{messages[k]['role']!r}): it does not know that role. Map the speaker to a role the template "
                "knows with --role_to_speaker, or unset --use_chat_template"
            )
        raise DialogueDataError(
            f"{source}: the tokenizer's chat template writes message contents more than once or out of order, so "
            "turns cannot be located for loss masking; unset --use_chat_template to use --turn_template"
        )
    return pieces[0::2]


def _written_content(text: str, position: int, content: str, following: str, last: bool) -> str | None:
    """The content as the template wrote it at `position`: as given, or trimmed (Llama-3 trims)."""
    for candidate in dict.fromkeys((content, content.strip())):
        if not text.startswith(candidate, position):
            continue
        rest = text[position + len(candidate):]
        if rest.startswith(following) or (last and following.startswith(rest)):  # the last: maybe rstripped
            return candidate
    return None


def _end_marker_length(tokenizer, marked, k: int, skeleton: str, source: str, gap: int) -> int:
    """How much of the text after turn k's content ends turn k (the rest is the next turn's header):
    what a render of the first k+1 messages shares with the whole render."""
    marker = _marker(k)
    prefix = apply_chat_template(tokenizer, marked[: k + 1], source)
    after_prefix = prefix[prefix.index(marker) + len(marker):]
    after_skeleton = skeleton[skeleton.index(marker) + len(marker):]
    shared = len(os.path.commonprefix([after_prefix, after_skeleton]))
    return min(shared, gap)


def _changed_text(source: str) -> DialogueDataError:
    return DialogueDataError(
        f"{source}: the tokenizer's chat template changes the message text (beyond trimming whitespace), so turns "
        "cannot be located for loss masking; unset --use_chat_template to use --turn_template"
    )
