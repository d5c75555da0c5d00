"""Dialogues -> token ids and labels: `Speaker: text` lines (or a chat template) + EOS, loss masks per
speaker, and windows for dialogues longer than `max_length`, split at turn boundaries."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from ..config import DataArguments
from .formats import Dialogue, DialogueDataError

IGNORE_INDEX = -100
# Bump when encoding logic changes, so that caches written by older code are not reused.
ENCODING_VERSION = 1

@dataclass
class RenderedDialogue:
    """Dialogue text plus, per turn, where its speaker label and its content start and where it ends.

    A turn's span includes the separator after it: ending a turn is part of saying it.
    """

    text: str
    label_starts: list[int]
    content_starts: list[int]
    ends: list[int]


def render_dialogue(
    speakers: list[str], texts: list[str], roles: list[str | None], args: DataArguments, tokenizer=None
) -> RenderedDialogue:
    if args.use_chat_template:
        return _render_with_chat_template(speakers, texts, roles, args, tokenizer)
    label_format, content_format = args.turn_template.split("{text}")
    pieces, label_starts, content_starts, ends, position = [], [], [], [], 0
    for i, (speaker, text) in enumerate(zip(speakers, texts)):
        label = label_format.format(speaker=speaker)
        rest = text + content_format.format(speaker=speaker) + (args.turn_separator if i < len(texts) - 1 else "")
        label_starts.append(position)
        content_starts.append(position + len(label))
        position += len(label) + len(rest)
        ends.append(position)
        pieces += [label, rest]
    return RenderedDialogue("".join(pieces), label_starts, content_starts, ends)


def chat_messages(speakers, texts, roles, args: DataArguments) -> list[dict[str, str]]:
    speaker_roles = {speaker: role for role, speaker in args.role_speaker_map.items()}
    messages = []
    for speaker, text, role in zip(speakers, texts, roles):
        role = role or speaker_roles.get(speaker)
        if role is None:
            raise DialogueDataError(
                f"use_chat_template needs a role for speaker {speaker!r}; map speakers to roles, e.g. "
                "--role_to_speaker user=Alex assistant=Bob"
            )
        messages.append({"role": role, "content": text})
    return messages


def _render_with_chat_template(speakers, texts, roles, args: DataArguments, tokenizer) -> RenderedDialogue:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise DialogueDataError(
            "use_chat_template is set but the tokenizer has no chat template; unset it to use turn_template"
        )
    messages = chat_messages(speakers, texts, roles, args)
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    starts, ends, previous = [], [], ""
    for k in range(1, len(messages) + 1):
        prefix = tokenizer.apply_chat_template(messages[:k], tokenize=False) if k < len(messages) else text
        if not text.startswith(prefix) or not prefix.startswith(previous):
            raise DialogueDataError(
                "the tokenizer's chat template renders a conversation differently from its beginning, so turns "
                "cannot be located for loss masking or windows; use turn_template (unset use_chat_template)"
            )
        starts.append(len(previous))
        ends.append(len(prefix))
        previous = prefix
    return RenderedDialogue(text, starts, starts, ends)


@dataclass
class EncodedWindow:
    input_ids: list[int]
    labels: list[int]
    token_turns: list[int]  # turn index of each token; -1 for special or repeated tokens


@dataclass
class EncodedDialogue:
    windows: list[EncodedWindow]
    num_tokens: int  # tokens of the whole dialogue, before windowing or truncation
    tokens_dropped: int = 0
    turns_split_inside: int = 0


def require_fast_tokenizer(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise DialogueDataError(
            f"{type(tokenizer).__name__} is not a fast (Rust) tokenizer; token offsets are needed to find turns. "
            "Load the tokenizer with use_fast=True or convert it to tokenizer.json"
        )


def encode_dialogue(dialogue: Dialogue, tokenizer, args: DataArguments) -> EncodedDialogue:
    """Tokenize one dialogue into training examples.

    Text is `Speaker: text` lines followed by the EOS id (added as an id, so dialogue text that
    happens to contain the EOS string stays text). Labels equal the ids except: the first token
    (never predicted: this also keeps the Trainer's token count exact), tokens of speakers not in
    `train_on_speakers`, and speaker labels when `train_on_speakers` is set (the label is the cue).
    A dialogue longer than `max_length` is split at turn boundaries, or truncated.
    """
    rendered = render_dialogue(dialogue.speakers, dialogue.texts, dialogue.roles, args, tokenizer)
    templated = args.use_chat_template
    encoding = tokenizer(
        rendered.text,
        add_special_tokens=not templated,  # a chat template writes its own special tokens
        split_special_tokens=not templated,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    ids = list(encoding["input_ids"])
    special = list(encoding["special_tokens_mask"])
    offsets = list(encoding["offset_mapping"])
    n_turns = len(dialogue.speakers)
    turns, is_label = [], []
    for token_special, (start, end) in zip(special, offsets):
        if token_special and not templated:
            turns.append(-1)
            is_label.append(False)
            continue
        # A token belongs where its last character is: byte-level BPE glues a word to the space before
        # it, so " Hi" in "Bob: Hi" starts inside the label but is the first word of the turn.
        last = max(start, end - 1)
        turn = max(0, bisect.bisect_right(rendered.label_starts, last) - 1)
        turns.append(turn)
        is_label.append(last < rendered.content_starts[turn])
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DialogueDataError(f"tokenizer {tokenizer.name_or_path!r} has no EOS token; set eos_token on it")
    if not ids or ids[-1] != eos:
        ids.append(eos)
        turns.append(n_turns - 1)  # EOS ends the last turn, and belongs to its speaker
        is_label.append(False)

    wanted = set(args.train_on_speakers) if args.train_on_speakers else None
    carries_loss = [
        turn >= 0 and (wanted is None or (dialogue.speakers[turn] in wanted and not label))
        for turn, label in zip(turns, is_label)
    ]
    labels = [token if keep else IGNORE_INDEX for token, keep in zip(ids, carries_loss)]
    return _fit_to_max_length(ids, labels, turns, is_label, n_turns, args)


def _fit_to_max_length(ids, labels, turns, is_label, n_turns, args: DataArguments) -> EncodedDialogue:
    """One window when the dialogue fits; else windows split at turn boundaries, or a truncated one."""
    leading = 0
    while leading < len(turns) and turns[leading] == -1:
        leading += 1
    result = EncodedDialogue(windows=[], num_tokens=len(ids))
    if len(ids) <= args.max_length:
        result.windows.append(_window(ids, labels, turns))
    elif args.overflow_strategy == "truncate":
        result.windows.append(_window(ids[: args.max_length], labels[: args.max_length], turns[: args.max_length]))
        result.tokens_dropped = len(ids) - args.max_length
    else:
        result.windows, result.turns_split_inside = _split_into_windows(
            ids, labels, turns, is_label, leading, n_turns, args.max_length
        )
    return result


def _window(ids: list[int], labels: list[int], turns: list[int]) -> EncodedWindow:
    labels = list(labels)
    labels[0] = IGNORE_INDEX  # the first token of a sequence is never predicted
    return EncodedWindow(list(ids), labels, list(turns))


def _split_into_windows(ids, labels, turns, is_label, leading, n_turns, max_length):
    """Group whole turns into windows of at most max_length tokens; every token lands in exactly one.

    A turn too long for a window on its own is cut into chunks; each continuation repeats the
    turn's speaker label (without loss) so the model still knows who is speaking.
    """
    prefix = list(range(leading))  # special tokens (BOS) that start every window
    turn_ranges: list[list[int]] = [[] for _ in range(n_turns)]
    for position in range(leading, len(ids)):
        turn_ranges[turns[position]].append(position)
    windows, current, turns_split_inside = [], [], 0

    def flush():
        if current:
            positions = prefix + current
            windows.append(
                _window([ids[p] for p in positions], [labels[p] for p in positions], [turns[p] for p in positions])
            )
            current.clear()

    budget = max_length - leading
    for positions in turn_ranges:
        if len(current) + len(positions) <= budget:
            current += positions
            continue
        flush()
        if len(positions) <= budget:
            current += positions
            continue
        turns_split_inside += 1
        label_positions = [p for p in positions if is_label[p]]
        chunk_budget = budget - len(label_positions)
        if chunk_budget < 1:
            raise DialogueDataError(f"max_length {max_length} cannot hold even one speaker label; raise it")
        body = [p for p in positions if not is_label[p]]
        first = label_positions + body[:chunk_budget]
        windows.append(_window(*_gather(ids, labels, turns, prefix + first)))
        for start in range(chunk_budget, len(body), chunk_budget):
            chunk = body[start : start + chunk_budget]
            window_ids, window_labels, window_turns = _gather(ids, labels, turns, prefix + label_positions + chunk)
            for k in range(leading, leading + len(label_positions)):  # the repeated label is context only
                window_labels[k] = IGNORE_INDEX
                window_turns[k] = -1
            windows.append(_window(window_ids, window_labels, window_turns))
    flush()
    return windows, turns_split_inside


def _gather(ids, labels, turns, positions):
    return [ids[p] for p in positions], [labels[p] for p in positions], [turns[p] for p in positions]


def encode_batch(batch: dict[str, list], tokenizer, args: DataArguments, with_token_turns: bool) -> dict[str, list]:
    """`datasets.map` function: dialogues in, one row per window out."""
    out: dict[str, list] = {k: [] for k in ("input_ids", "labels", "dialogue_index", "window_index", "source")}
    out.update({k: [] for k in ("num_dialogue_tokens", "tokens_dropped", "turns_split_inside")})
    if with_token_turns:
        out.update(token_turns=[], speakers=[])
    for index, source, speakers, texts, roles in zip(
        batch["dialogue_index"], batch["source"], batch["speakers"], batch["texts"], batch["roles"]
    ):
        dialogue = Dialogue(source, speakers, texts, roles, format="")
        encoded = encode_dialogue(dialogue, tokenizer, args)
        for number, window in enumerate(encoded.windows):
            out["input_ids"].append(window.input_ids)
            out["labels"].append(window.labels)
            out["dialogue_index"].append(index)
            out["window_index"].append(number)
            out["source"].append(source)
            first = number == 0  # per-dialogue figures go on its first window only, so sums stay right
            out["num_dialogue_tokens"].append(encoded.num_tokens if first else 0)
            out["tokens_dropped"].append(encoded.tokens_dropped if first else 0)
            out["turns_split_inside"].append(encoded.turns_split_inside if first else 0)
            if with_token_turns:
                out["token_turns"].append(window.token_turns)
                out["speakers"].append(speakers)
    return out


