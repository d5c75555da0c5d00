"""Dialogues -> token ids and labels, in separable steps: render the turns (`Speaker: text` lines or a
chat template), tokenize, assign each token to a turn (header or content), end with EOS exactly once,
build the labels, and split dialogues longer than `max_length` into windows at turn boundaries."""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass

from ..config import DataArguments
from .formats import Dialogue, DialogueDataError
from .templates import RenderedDialogue, render_with_chat_template

IGNORE_INDEX = -100
# Bump when encoding logic changes, so that caches written by older code are not reused.
ENCODING_VERSION = 2


def render_dialogue(
    speakers: list[str], texts: list[str], roles: list[str | None], args: DataArguments, tokenizer=None,
    source: str = "a dialogue",
) -> RenderedDialogue:
    """The dialogue's text, with where each turn, its content and its end are (`Speaker: text` lines
    joined by `turn_separator`, or the tokenizer's chat template with `use_chat_template`)."""
    if args.use_chat_template:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise DialogueDataError(
                "use_chat_template is set but the tokenizer has no chat template; unset it to use turn_template"
            )
        return render_with_chat_template(chat_messages(speakers, texts, roles, args, source), tokenizer, source)
    label_format, content_format = args.turn_template.split("{text}")
    pieces, turn_starts, content_starts, content_ends, ends, position = [], [], [], [], [], 0
    for i, (speaker, text) in enumerate(zip(speakers, texts)):
        label = label_format.format(speaker=speaker)
        rest = text + content_format.format(speaker=speaker) + (args.turn_separator if i < len(texts) - 1 else "")
        turn_starts.append(position)
        content_starts.append(position + len(label))
        content_ends.append(position + len(label) + len(text))
        position += len(label) + len(rest)
        ends.append(position)
        pieces += [label, rest]
    return RenderedDialogue("".join(pieces), turn_starts, content_starts, content_ends, ends)


def chat_messages(speakers, texts, roles, args: DataArguments, source: str = "a dialogue") -> list[dict[str, str]]:
    speaker_roles = {speaker: role for role, speaker in args.role_speaker_map.items()}
    messages = []
    for speaker, text, role in zip(speakers, texts, roles):
        role = role or speaker_roles.get(speaker)
        if role is None:
            raise DialogueDataError(
                f"{source}: use_chat_template needs a role for speaker {speaker!r}; map speakers to roles, e.g. "
                "--role_to_speaker user=Alex assistant=Bob"
            )
        messages.append({"role": role, "content": text})
    return messages


@dataclass
class TokenizedDialogue:
    """Token ids, and for each token its turn (-1: a special token the tokenizer added, such as BOS)
    and whether it is part of the turn's header or speaker label."""

    ids: list[int]
    turns: list[int]
    is_header: list[bool]


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


def tokenize_rendered(rendered: RenderedDialogue, tokenizer, templated: bool) -> TokenizedDialogue:
    """Tokenize the text and place every token in a turn.

    Turn-template text gets the tokenizer's own special tokens (BOS, an appended EOS), and any
    special-token string inside the dialogue stays text. A chat template writes its own special
    tokens, so nothing is added and they are read as special tokens.
    """
    encoding = tokenizer(
        rendered.text,
        add_special_tokens=not templated,
        split_special_tokens=not templated,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    turns, is_header = assign_tokens_to_turns(encoding["offset_mapping"], encoding["special_tokens_mask"], rendered,
                                              templated)
    ids = list(encoding["input_ids"])
    if templated and ids and ids[0] == tokenizer.bos_token_id:
        turns[0] = -1  # a BOS the template writes starts every window, like one the tokenizer adds
    return TokenizedDialogue(ids, turns, is_header)


def assign_tokens_to_turns(offsets, special_mask, rendered: RenderedDialogue, templated: bool):
    """(turn, is_header) of each token, from its character offsets."""
    turns, is_header = [], []
    for token_special, (start, end) in zip(special_mask, offsets):
        if token_special and not templated:  # added by the tokenizer, not part of the text
            turns.append(-1)
            is_header.append(False)
            continue
        # A token belongs where its last character is: byte-level BPE glues a word to the space before
        # it, so " Hi" in "Bob: Hi" starts inside the label but is the first word of the turn.
        last = max(start, end - 1)
        turn = max(0, bisect.bisect_right(rendered.turn_starts, last) - 1)
        turns.append(turn)
        is_header.append(last < rendered.content_starts[turn])
    return turns, is_header


def end_with_eos(tokens: TokenizedDialogue, eos: int | None, n_turns: int, tokenizer_name: str) -> None:
    """Make the last token the dialogue's EOS, exactly once, owned by the last turn (so it carries
    loss). An EOS the tokenizer appended itself, or a chat template wrote, is that EOS; else it is
    added as an id (dialogue text that happens to contain the EOS string stays text)."""
    if eos is None:
        raise DialogueDataError(f"tokenizer {tokenizer_name!r} has no EOS token; set eos_token on it")
    if tokens.ids and tokens.ids[-1] == eos and tokens.turns[-1] in (-1, n_turns - 1):
        tokens.turns[-1], tokens.is_header[-1] = n_turns - 1, False
        return
    tokens.ids.append(eos)
    tokens.turns.append(n_turns - 1)
    tokens.is_header.append(False)


def build_labels(tokens: TokenizedDialogue, speakers: list[str], args: DataArguments) -> list[int]:
    """Labels equal the ids except for tokens the tokenizer added (BOS), tokens of speakers not in
    `train_on_speakers`, and turn headers: speaker labels when `train_on_speakers` is set (the label
    is the cue), chat-template headers always (the template writes them; the model is prompted with them)."""
    wanted = set(args.train_on_speakers) if args.train_on_speakers else None
    headers_are_context = wanted is not None or args.use_chat_template
    return [
        token
        if turn >= 0 and not (header and headers_are_context) and (wanted is None or speakers[turn] in wanted)
        else IGNORE_INDEX
        for token, turn, header in zip(tokens.ids, tokens.turns, tokens.is_header)
    ]


def encode_dialogue(dialogue: Dialogue, tokenizer, args: DataArguments) -> EncodedDialogue:
    """Tokenize one dialogue into training examples: render, tokenize, end with EOS, label, window.

    The first token of every window is never predicted (this also keeps the Trainer's token count exact).
    """
    rendered = render_dialogue(dialogue.speakers, dialogue.texts, dialogue.roles, args, tokenizer, dialogue.source)
    tokens = tokenize_rendered(rendered, tokenizer, args.use_chat_template)
    end_with_eos(tokens, tokenizer.eos_token_id, len(dialogue.speakers), tokenizer.name_or_path)
    labels = build_labels(tokens, dialogue.speakers, args)
    return _fit_to_max_length(tokens.ids, labels, tokens.turns, tokens.is_header, len(dialogue.speakers), args)


def _fit_to_max_length(ids, labels, turns, is_header, n_turns, args: DataArguments) -> EncodedDialogue:
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
            ids, labels, turns, is_header, leading, n_turns, args.max_length
        )
    return result


def _window(ids: list[int], labels: list[int], turns: list[int]) -> EncodedWindow:
    labels = list(labels)
    labels[0] = IGNORE_INDEX  # the first token of a sequence is never predicted
    return EncodedWindow(list(ids), labels, list(turns))


def _split_into_windows(ids, labels, turns, is_header, leading, n_turns, max_length):
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
        header_positions = [p for p in positions if is_header[p]]
        chunk_budget = budget - len(header_positions)
        if chunk_budget < 1:
            raise DialogueDataError(f"max_length {max_length} cannot hold even one speaker label; raise it")
        body = [p for p in positions if not is_header[p]]
        first = header_positions + body[:chunk_budget]
        windows.append(_window(*_gather(ids, labels, turns, prefix + first)))
        for start in range(chunk_budget, len(body), chunk_budget):
            chunk = body[start : start + chunk_budget]
            window_ids, window_labels, window_turns = _gather(ids, labels, turns, prefix + header_positions + chunk)
            for k in range(leading, leading + len(header_positions)):  # the repeated label is context only
                window_labels[k] = IGNORE_INDEX
                window_turns[k] = -1
            windows.append(_window(window_ids, window_labels, window_turns))
    flush()
    return windows, turns_split_inside


def _gather(ids, labels, turns, positions):
    return [ids[p] for p in positions], [labels[p] for p in positions], [turns[p] for p in positions]


def encode_batch(batch: dict[str, list], tokenizer, args: DataArguments, with_token_turns: bool) -> dict[str, list]:
    """`datasets.map` function: dialogues in, one row per window out, with the per-row counts that
    the data report and the label audit sum by column."""
    out: dict[str, list] = {k: [] for k in ("input_ids", "labels", "dialogue_index", "window_index", "source")}
    out.update({k: [] for k in ("num_dialogue_tokens", "tokens_dropped", "turns_split_inside")})
    out.update({k: [] for k in COUNT_COLUMNS})
    if with_token_turns:
        out.update(token_turns=[], speakers=[])
    for index, source, speakers, texts, roles in zip(
        batch["dialogue_index"], batch["source"], batch["speakers"], batch["texts"], batch["roles"]
    ):
        dialogue = Dialogue(source, speakers, texts, roles, format="")
        encoded = encode_dialogue(dialogue, tokenizer, args)
        turns_per_speaker = Counter(speakers)
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
            ends_dialogue = number == len(encoded.windows) - 1 and not encoded.tokens_dropped
            counts = window_counts(window, speakers, tokenizer.eos_token_id, ends_dialogue)
            counts["speaker_names"] = list(turns_per_speaker) if first else []
            counts["speaker_turns"] = list(turns_per_speaker.values()) if first else []
            for name, value in counts.items():
                out[name].append(value)
            if with_token_turns:
                out["token_turns"].append(window.token_turns)
                out["speakers"].append(speakers)
    return out


# Per-row counts emitted with the tokens; the label audit and the data report sum these columns.
COUNT_COLUMNS = ("num_tokens", "num_loss_tokens", "eos_in_loss", "loss_speakers", "loss_speaker_tokens",
                 "speaker_names", "speaker_turns")


def window_counts(window: EncodedWindow, speakers: list[str], eos: int, ends_dialogue: bool) -> dict:
    """Tokens, tokens in the loss (in all and per speaker), and whether the dialogue's final EOS is a target."""
    per_speaker = Counter(
        speakers[turn] for turn, label in zip(window.token_turns, window.labels) if label != IGNORE_INDEX and turn >= 0
    )
    return {
        "num_tokens": len(window.input_ids),
        "num_loss_tokens": sum(1 for label in window.labels if label != IGNORE_INDEX),
        "eos_in_loss": int(ends_dialogue and window.labels[-1] == eos),
        "loss_speakers": list(per_speaker),
        "loss_speaker_tokens": list(per_speaker.values()),
    }
