"""Dialogues -> training rows, in separable steps: render the turns (`Speaker: text` lines or a chat
template); tokenize a whole batch, place each token in its turn (header or content), end with EOS exactly
once and build the labels (`tokens.py`, numpy over the batch); split dialogues longer than `max_length`
into windows at turn boundaries; and emit each row with the counts the report and the audit sum."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import DataArguments
from .dialogues import Dialogue, dialogue_columns, dialogue_schema
from .errors import DialogueDataError
from .templates import RenderedDialogue, render_with_chat_template
from .tokens import IGNORE_INDEX, TokenBatch, add_labels, end_with_eos, offsets_from_lengths, tokenize_batch

# Bump when encoding logic changes, so that caches written by older code are not reused.
ENCODING_VERSION = 6


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
    """Tokenize one dialogue into training examples: render, tokenize, end with EOS, label, window
    (`encode_batch` on a batch of one: the same code as the data pipeline).

    The first token of every window is never predicted (this also keeps the Trainer's token count exact).
    """
    rows = encode_batch(dialogue_table([dialogue]), tokenizer=tokenizer, args=args, with_token_turns=True).to_pydict()
    windows = [EncodedWindow(ids, labels, turns)
               for ids, labels, turns in zip(rows["input_ids"], rows["labels"], rows["token_turns"])]
    return EncodedDialogue(windows, rows["num_dialogue_tokens"][0], rows["tokens_dropped"][0],
                           rows["turns_split_inside"][0])


Window = tuple[np.ndarray, np.ndarray, np.ndarray]  # a training row's ids, labels and token turns


def _fit_to_max_length(ids: np.ndarray, labels: np.ndarray, turns: np.ndarray, is_header: np.ndarray, n_turns: int,
                       args: DataArguments) -> tuple[list[Window], int, int]:
    """(windows, tokens dropped, turns split inside): one window when the dialogue fits; else windows split at
    turn boundaries, or a truncated one."""
    leading = int(np.argmax(turns != -1)) if (turns != -1).any() else len(turns)  # special tokens (BOS) first
    if len(ids) <= args.max_length:
        return [_window(ids, labels, turns)], 0, 0
    if args.overflow_strategy == "truncate":
        cut = slice(0, args.max_length)
        return [_window(ids[cut], labels[cut], turns[cut])], len(ids) - args.max_length, 0
    windows, split_inside = _split_into_windows(ids, labels, turns, is_header, leading, n_turns, args.max_length)
    return windows, 0, split_inside


def _window(ids: np.ndarray, labels: np.ndarray, turns: np.ndarray) -> Window:
    labels = labels.copy()
    labels[0] = IGNORE_INDEX  # the first token of a sequence is never predicted
    return ids, labels, turns


def _split_into_windows(ids, labels, turns, is_header, leading, n_turns, max_length) -> tuple[list[Window], int]:
    """Group whole turns into windows of at most max_length tokens; every token lands in exactly one.

    A turn too long for a window on its own is cut into chunks; each continuation repeats the
    turn's speaker label (without loss) so the model still knows who is speaking. Positions move as numpy
    arrays: a dialogue is split without a Python step per token.
    """
    prefix = np.arange(leading)  # special tokens (BOS) that start every window
    owner = turns[leading:].copy()
    owner[owner < 0] = n_turns - 1  # a special token after the start goes with the last turn
    by_turn = leading + np.argsort(owner, kind="stable")
    turn_positions = np.split(by_turn, np.cumsum(np.bincount(owner, minlength=n_turns))[:-1])
    windows: list[Window] = []
    current: list[np.ndarray] = []
    current_size, turns_split_inside = 0, 0

    def gather(positions: np.ndarray) -> Window:
        return ids[positions], labels[positions], turns[positions]

    def flush():
        nonlocal current_size
        if current:
            windows.append(_window(*gather(np.concatenate([prefix, *current]))))
            current.clear()
            current_size = 0

    budget = max_length - leading
    for positions in turn_positions:
        if current_size + len(positions) <= budget:
            current.append(positions)
            current_size += len(positions)
            continue
        flush()
        if len(positions) <= budget:
            current.append(positions)
            current_size = len(positions)
            continue
        turns_split_inside += 1
        headers, body = positions[is_header[positions]], positions[~is_header[positions]]
        chunk_budget = budget - len(headers)
        if chunk_budget < 1:
            raise DialogueDataError(f"max_length {max_length} cannot hold even one speaker label; raise it")
        windows.append(_window(*gather(np.concatenate([prefix, headers, body[:chunk_budget]]))))
        repeated = slice(leading, leading + len(headers))
        for start in range(chunk_budget, len(body), chunk_budget):
            window_ids, window_labels, window_turns = gather(
                np.concatenate([prefix, headers, body[start : start + chunk_budget]]))
            window_labels, window_turns = window_labels.copy(), window_turns.copy()
            window_labels[repeated] = IGNORE_INDEX  # the repeated label is context only
            window_turns[repeated] = -1
            windows.append(_window(window_ids, window_labels, window_turns))
    flush()
    return windows, turns_split_inside


def dialogue_table(dialogues: list[Dialogue]):
    """The arrow table `encode_batch` reads (the columns of `dialogue_schema`) for dialogues in memory."""
    import pyarrow as pa

    return pa.table(dialogue_columns(dialogues), schema=dialogue_schema())


def encode_batch(batch, indices=None, *, tokenizer, args: DataArguments, with_token_turns: bool = False):
    """`datasets.map` function on arrow batches of dialogues (`dialogue_schema`; `indices`: their positions in
    the split, from `with_indices`, else 0, 1, ...): one row per window out, with the per-row counts that the
    data report and the label audit sum by column.

    `with_token_turns` adds each token's turn and the dialogue's speakers (per-speaker perplexity).
    """
    speakers = batch.column("speakers").to_pylist()
    sources = batch.column("source").to_pylist()
    rendered = [
        render_dialogue(s, t, [r or None for r in roles], args, tokenizer, source)
        for s, t, roles, source in zip(speakers, batch.column("texts").to_pylist(),
                                       batch.column("roles").to_pylist(), sources)
    ]
    turn_counts = np.fromiter(map(len, speakers), np.int64, len(speakers))
    tokens = tokenize_batch(rendered, tokenizer, args.use_chat_template, sources)
    tokens = add_labels(end_with_eos(tokens, tokenizer.eos_token_id, turn_counts, tokenizer.name_or_path),
                        speakers, args)
    rows = window_rows(tokens, turn_counts, args)
    positions = np.arange(len(speakers)) if indices is None else np.asarray(indices, np.int64)
    return rows_table(rows, batch, positions, speakers, tokenizer.eos_token_id, with_token_turns)


@dataclass
class WindowRows:
    """Training rows (windows) of a batch of dialogues, end to end: row r owns `starts[r]:starts[r + 1]`
    and is window `window[r]` of dialogue `dialogue[r]`; per-dialogue figures are indexed by dialogue."""

    ids: np.ndarray
    labels: np.ndarray
    turns: np.ndarray
    starts: np.ndarray
    dialogue: np.ndarray
    window: np.ndarray
    dialogue_tokens: np.ndarray
    tokens_dropped: np.ndarray
    turns_split_inside: np.ndarray


def window_rows(tokens: TokenBatch, turn_counts: np.ndarray, args: DataArguments) -> WindowRows:
    """A dialogue that fits is one row; a longer one is split at turn boundaries (or truncated), a dialogue at a
    time over numpy arrays. The first token of every row is never predicted."""
    count, lengths = len(turn_counts), tokens.lengths()
    dropped, split_inside = np.zeros(count, np.int64), np.zeros(count, np.int64)
    parts: dict[str, list] = {"ids": [], "labels": [], "turns": [], "lengths": [], "dialogue": [], "window": []}

    def add_dialogues(first: int, end: int) -> None:
        span = slice(tokens.starts[first], tokens.starts[end])
        for name, values in (("ids", tokens.ids), ("labels", tokens.labels), ("turns", tokens.turns)):
            parts[name].append(values[span])
        parts["lengths"].append(lengths[first:end])
        parts["dialogue"].append(np.arange(first, end))
        parts["window"].append(np.zeros(end - first, np.int64))

    done = 0
    for d in np.flatnonzero(lengths > args.max_length):
        add_dialogues(done, d)
        windows, dropped[d], split_inside[d] = _fit_to_max_length(*tokens.arrays(d), int(turn_counts[d]), args)
        for name, values in zip(("ids", "labels", "turns"), zip(*windows)):
            parts[name] += values
        parts["lengths"].append(np.asarray([len(window[0]) for window in windows]))
        parts["dialogue"].append(np.full(len(windows), d))
        parts["window"].append(np.arange(len(windows)))
        done = d + 1
    add_dialogues(done, count)
    joined = {name: np.concatenate(values) for name, values in parts.items()}
    starts = offsets_from_lengths(joined["lengths"])
    joined["labels"][starts[:-1]] = IGNORE_INDEX
    return WindowRows(joined["ids"], joined["labels"], joined["turns"], starts, joined["dialogue"],
                      joined["window"], lengths, dropped, split_inside)


# Per-row counts emitted with the tokens; the label audit and the data report sum these columns.
COUNT_COLUMNS = ("num_tokens", "num_loss_tokens", "eos_in_loss", "loss_speakers", "loss_speaker_tokens",
                 "speaker_names", "speaker_turns")


def rows_table(rows: WindowRows, batch, positions: np.ndarray, speakers: list[list[str]], eos: int,
               with_token_turns: bool):
    """The rows as an arrow table: tokens, labels, where each row came from, and its counts."""
    import pyarrow as pa

    def lists(values: np.ndarray, starts: np.ndarray):  # token ids, labels and turns fit 32 bits: half the cache
        return pa.ListArray.from_arrays(pa.array(starts, pa.int32()), pa.array(values.astype(np.int32)))

    first = rows.window == 0  # per-dialogue figures go on a dialogue's first row only, so sums stay right
    last = np.append(rows.dialogue[1:] != rows.dialogue[:-1], True)
    row_lengths = np.diff(rows.starts)
    in_loss = rows.labels != IGNORE_INDEX
    ends_with_eos = rows.labels[rows.starts[1:] - 1] == eos
    table = {
        "input_ids": lists(rows.ids, rows.starts),
        "labels": lists(rows.labels, rows.starts),
        "dialogue_index": pa.array(positions[rows.dialogue]),
        "window_index": pa.array(rows.window),
        "source": batch.column("source").take(pa.array(rows.dialogue)),
        "num_dialogue_tokens": pa.array(np.where(first, rows.dialogue_tokens[rows.dialogue], 0)),
        "tokens_dropped": pa.array(np.where(first, rows.tokens_dropped[rows.dialogue], 0)),
        "turns_split_inside": pa.array(np.where(first, rows.turns_split_inside[rows.dialogue], 0)),
        "num_tokens": pa.array(row_lengths),
        "num_loss_tokens": pa.array(np.add.reduceat(in_loss, rows.starts[:-1]).astype(np.int64)),
        "eos_in_loss": pa.array((last & ends_with_eos & (rows.tokens_dropped[rows.dialogue] == 0)).astype(np.int64)),
    }
    table.update(speaker_columns(rows, speakers, in_loss, first))
    if with_token_turns:
        table["token_turns"] = lists(rows.turns, rows.starts)
        table["speakers"] = batch.column("speakers").take(pa.array(rows.dialogue))
    return pa.table(table)


def speaker_columns(rows: WindowRows, speakers: list[list[str]], in_loss: np.ndarray, first: np.ndarray) -> dict:
    """Per row: the speakers with tokens in its loss and how many (`loss_speakers`, `loss_speaker_tokens`);
    on a dialogue's first row, its speakers and their turn counts (`speaker_names`, `speaker_turns`).

    Counted on a grid with one slot per speaker of a dialogue (in order of appearance), rows x slots.
    """
    import pyarrow as pa

    names = [list(dict.fromkeys(s)) for s in speakers]
    width = max(map(len, names))
    grid = np.full((len(names), width), None, dtype=object)  # dialogue x slot -> speaker name
    for d, n in enumerate(names):
        grid[d, : len(n)] = n
    turn_slot = [[n.index(name) for name in s] for s, n in zip(speakers, names)]
    turn_start = offsets_from_lengths(list(map(len, speakers)))
    slot_of_turn = np.fromiter((k for slots in turn_slot for k in slots), np.int64, int(turn_start[-1]))
    dialogue_of_turn = np.repeat(np.arange(len(names)), np.diff(turn_start))
    turns = np.bincount(dialogue_of_turn * width + slot_of_turn, minlength=len(names) * width).reshape(-1, width)

    token_row = np.repeat(np.arange(len(rows.dialogue)), np.diff(rows.starts))
    counted = in_loss & (rows.turns >= 0)
    row, dialogue = token_row[counted], rows.dialogue[token_row[counted]]
    slot = slot_of_turn[turn_start[dialogue] + rows.turns[counted]]
    loss = np.bincount(row * width + slot, minlength=len(rows.dialogue) * width).reshape(-1, width)

    def lists(grid_values: np.ndarray, keep: np.ndarray):
        offsets = offsets_from_lengths(keep.sum(axis=1), np.int32)
        values = grid_values[keep]
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.tolist() if values.dtype == object
                                                                       else values.astype(np.int64)))

    has_loss = loss > 0
    is_speaker = (grid[rows.dialogue] != None) & first[:, None]  # noqa: E711 - elementwise test for empty slots
    return {
        "loss_speakers": lists(grid[rows.dialogue], has_loss),
        "loss_speaker_tokens": lists(loss, has_loss),
        "speaker_names": lists(grid[rows.dialogue], is_speaker),
        "speaker_turns": lists(turns[rows.dialogue], is_speaker),
    }
