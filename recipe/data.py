"""Dialogue files -> validated dialogues -> train/validation split -> tokenized (and packed) datasets.

The pipeline, each step a function you can call on its own:

1. `read_dialogues`: parse a file (or a saved/Hub dataset) into dialogues of (speaker, text) turns.
   Every turn is kept in file order: the seed format repeats speaker keys inside one object,
   which `json.load` would silently collapse, so objects are parsed as lists of pairs.
2. `split_dialogues`: a deterministic split at the dialogue level.
3. `encode_dialogue`: render `Speaker: text` lines + EOS, tokenize, build labels, split long
   dialogues into windows at turn boundaries. Run through `datasets.map`, cached by fingerprint.
4. `pack_examples`: best-fit-decreasing packing into rows of `max_length`, positions restarting
   at 0 for each dialogue so that transformers builds a block-diagonal causal mask.
5. `DialogueCollator`: pads batches; padding is never in the loss (labels -100 by mask, not by id,
   so the real EOS, which GPT-2 shares with its pad token, keeps its loss).
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .config import DataArguments
from .files import atomic_write_json, atomic_write_jsonl
from .hub import is_hub_id, require_hub

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
# Bump when encoding logic changes, so that caches written by older code are not reused.
ENCODING_VERSION = 1
SHOWN_PROBLEMS = 5


class DialogueDataError(ValueError):
    """Input data that cannot be used; the message names the file, the entry and the fix."""


class _BadDialogue(Exception):
    """One invalid dialogue; collected, then raised together or skipped with a count."""


class _Object(list):
    """A JSON object as its (key, value) pairs in file order; repeated keys are kept."""

    def keys(self) -> list[str]:
        return [key for key, _ in self]

    def get(self, key: str, default: Any = None) -> Any:
        for k, value in self:
            if k == key:
                return value
        return default


_DECODER = json.JSONDecoder(object_pairs_hook=_Object)


def _as_object(value: Any) -> Any:
    """Rows of a `datasets` table arrive as dicts; give them the same shape as parsed JSON."""
    if isinstance(value, dict):
        return _Object((k, _as_object(v)) for k, v in value.items())
    if isinstance(value, list) and not isinstance(value, _Object):
        return [_as_object(v) for v in value]
    return value


def _kind(value: Any) -> str:
    if isinstance(value, _Object):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


# ----------------------------------------------------------------------------------------------
# 1. Reading


@dataclass
class Dialogue:
    """One dialogue: who said what, in order. `source` says where it came from, for messages."""

    source: str
    speakers: list[str]
    texts: list[str]
    roles: list[str | None]
    format: str


@dataclass
class DialogueFile:
    """The valid dialogues of one input, and what was skipped (never dropped silently)."""

    path: str
    dialogues: list[Dialogue]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    validation_dialogues: list[Dialogue] | None = None  # from a saved/Hub dataset's validation split

    @property
    def format_counts(self) -> dict[str, int]:
        return dict(Counter(d.format for d in self.dialogues))


def read_dialogues(path: str, args: DataArguments, split: str | None = None) -> DialogueFile:
    """Read every dialogue of a .json/.jsonl file, a `save_to_disk` directory or a Hub dataset.

    Raises:
        DialogueDataError: unreadable file, malformed JSON (with line and column), or invalid
            dialogues when `on_bad_dialogue` is "error" (all of them counted, the first few shown).
    """
    validation_rows = None
    if os.path.isdir(path):
        rows, validation_rows = _read_saved_dataset(path, args, split)
        records = ((f"{path} row {i}", _as_object(row)) for i, row in enumerate(rows))
    elif os.path.isfile(path):
        text = _read_text(path)
        if path.endswith(".jsonl"):
            records = _jsonl_records(path, text)
        else:
            records = _json_records(path, text, args)
    elif is_hub_id(path):
        rows, validation_rows = _read_hub_dataset(path, args, split)
        records = ((f"{path} row {i}", _as_object(row)) for i, row in enumerate(rows))
    else:
        raise DialogueDataError(f"{path}: no such file or directory (data_path / validation_path)")

    dialogues, skipped = _parse_records(path, records, args)
    result = DialogueFile(path=path, dialogues=dialogues, skipped=skipped)
    if validation_rows is not None:
        val_records = ((f"{path} validation row {i}", _as_object(row)) for i, row in enumerate(validation_rows))
        result.validation_dialogues, val_skipped = _parse_records(path, val_records, args)
        result.skipped += val_skipped
    return result


def _read_text(path: str) -> str:
    raw = Path(path).read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DialogueDataError(f"{path} is UTF-16 encoded; re-save it as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise DialogueDataError(
            f"{path} is not valid UTF-8: byte 0x{raw[error.start]:02x} at offset {error.start} (line {line}). "
            "Re-save the file as UTF-8, e.g. iconv -f latin1 -t utf-8 in.json > out.json"
        ) from None
    if not text.strip():
        raise DialogueDataError(
            f"{path} is empty; expected a JSON array of dialogues (.json) or one dialogue per line (.jsonl)"
        )
    return text


def _json_error(path: str, error: json.JSONDecodeError, jsonl_line: int | None = None) -> DialogueDataError:
    if jsonl_line is not None:
        where = f"{path} line {jsonl_line} column {error.colno}"
        hint = "each line of a .jsonl file must be one complete JSON value"
    else:
        where = f"{path} line {error.lineno} column {error.colno}"
        hint = "fix the JSON there"
        if error.msg == "Extra data":
            hint = "the file holds more than one JSON value; if it has one dialogue per line, name it .jsonl"
    return DialogueDataError(f"{where}: invalid JSON ({error.msg}); {hint}")


def _json_records(path: str, text: str, args: DataArguments) -> Iterator[tuple[str, Any]]:
    """Yield (where, value) for each dialogue of a .json file.

    A top-level array is walked element by element so that each dialogue's line is known.
    """
    start = len(text) - len(text.lstrip())
    if text[start] != "[":
        try:
            value, end = _DECODER.raw_decode(text, start)
            if text[end:].strip():
                raise json.JSONDecodeError("Extra data", text, end + len(text[end:]) - len(text[end:].lstrip()))
        except json.JSONDecodeError as error:
            raise _json_error(path, error) from None
        yield f"{path}", value  # one dialogue: {"turns": [...]}, {"messages": [...]} or a speaker map
        return
    elements = list(_iter_json_array(path, text, start))
    if not elements:
        raise DialogueDataError(f"{path} holds an empty array; add dialogues to it")
    if _is_turn_list([value for _, value in elements], args):
        yield f"{path}", [value for _, value in elements]  # a bare list of turns is one dialogue
        return
    for index, (line, value) in enumerate(elements):
        yield f"{path} entry [{index}] (line {line})", value


def _iter_json_array(path: str, text: str, start: int) -> Iterator[tuple[int, Any]]:
    position, whitespace = start + 1, " \t\r\n"
    try:
        while True:
            while position < len(text) and text[position] in whitespace:
                position += 1
            if position < len(text) and text[position] == "]":
                position += 1
                break
            line = text.count("\n", 0, position) + 1
            value, position = _DECODER.raw_decode(text, position)
            yield line, value
            while position < len(text) and text[position] in whitespace:
                position += 1
            if position < len(text) and text[position] == ",":
                position += 1
            elif position < len(text) and text[position] == "]":
                position += 1
                break
            else:
                raise json.JSONDecodeError("Expecting ',' delimiter", text, position)
        if text[position:].strip():
            raise json.JSONDecodeError("Extra data", text, position + len(text[position:]) - len(text[position:].lstrip()))
    except json.JSONDecodeError as error:
        raise _json_error(path, error) from None


def _jsonl_records(path: str, text: str) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = _DECODER.decode(line)
        except json.JSONDecodeError as error:
            raise _json_error(path, error, jsonl_line=number) from None
        yield f"{path} line {number}", value


def _is_turn_list(values: list[Any], args: DataArguments) -> bool:
    """A list whose items are all turns/messages (not dialogues) is a single dialogue."""
    turn_keys = ({args.speaker_field, args.text_field}, {args.role_field, args.content_field})
    return bool(values) and all(
        isinstance(v, _Object) and any(keys <= set(v.keys()) for keys in turn_keys) for v in values
    )


def _read_saved_dataset(path: str, args: DataArguments, split: str | None):
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except FileNotFoundError as error:
        raise DialogueDataError(
            f"{path} is a directory but not one written by datasets' save_to_disk ({error}); "
            "pass a .json/.jsonl file or a saved dataset directory"
        ) from None
    return _pick_splits(path, loaded, args, split)


def _read_hub_dataset(path: str, args: DataArguments, split: str | None):
    import datasets

    require_hub(path, "dataset")
    loaded = datasets.load_dataset(path, args.dataset_config_name)
    return _pick_splits(path, loaded, args, split)


def _pick_splits(path: str, loaded, args: DataArguments, split: str | None):
    """Train rows (and validation rows, when the dataset has that split) of a Dataset/DatasetDict."""
    import datasets

    if isinstance(loaded, datasets.Dataset):
        return loaded, None
    wanted = split or args.dataset_train_split
    if wanted not in loaded:
        raise DialogueDataError(
            f"{path} has splits {list(loaded)}, not {wanted!r}; set --dataset_train_split to one of them"
        )
    validation_split = args.dataset_validation_split
    if validation_split is None and split is None and "validation" in loaded:
        validation_split = "validation"
    if validation_split is not None and validation_split not in loaded:
        raise DialogueDataError(
            f"{path} has splits {list(loaded)}, not {validation_split!r}; fix --dataset_validation_split"
        )
    return loaded[wanted], (loaded[validation_split] if validation_split and split is None else None)


def _parse_records(
    path: str, records: Iterable[tuple[str, Any]], args: DataArguments
) -> tuple[list[Dialogue], list[tuple[str, str]]]:
    dialogues, bad = [], []
    for where, value in records:
        try:
            dialogues.append(parse_dialogue(value, where, args))
        except _BadDialogue as problem:
            bad.append((where, str(problem)))
    if bad and args.on_bad_dialogue == "error":
        listed = "\n".join(f"  - {where}: {reason}" for where, reason in bad[:SHOWN_PROBLEMS])
        more = f"\n  ... and {len(bad) - SHOWN_PROBLEMS} more" if len(bad) > SHOWN_PROBLEMS else ""
        total = len(bad) + len(dialogues)
        raise DialogueDataError(
            f"{path}: {len(bad)} of {total} dialogues are invalid:\n{listed}{more}\n"
            "Fix them, or pass --on_bad_dialogue skip to leave them out (they are counted in data_report.json)."
        )
    if bad:
        shown = ", ".join(where for where, _ in bad[:SHOWN_PROBLEMS])
        logger.warning("%s: skipped %d invalid dialogues (first: %s); see data_report.json", path, len(bad), shown)
    if not dialogues:
        raise DialogueDataError(f"{path}: no valid dialogue left to train on")
    return dialogues, bad


def parse_dialogue(value: Any, where: str, args: DataArguments) -> Dialogue:
    """Validate one dialogue in any supported shape and return its turns."""
    value = _as_object(value)
    fmt = args.data_format if args.data_format != "auto" else _detect_format(value, args)
    if fmt == "speaker_map":
        dialogue = _parse_speaker_map(value, args)
    elif fmt == "turns":
        dialogue = _parse_turns(_field_list(value, args.turns_field, "turns_field"), args)
    else:
        dialogue = _parse_messages(_field_list(value, args.messages_field, "messages_field"), args)
    speakers, texts, roles = dialogue
    if not speakers:
        raise _BadDialogue("empty dialogue (no turns); remove it or add its turns")
    return Dialogue(source=where, speakers=speakers, texts=texts, roles=roles, format=fmt)


def _detect_format(value: Any, args: DataArguments) -> str:
    if isinstance(value, _Object):
        keys = value.keys()
        if args.turns_field in keys:
            return "turns"
        if args.messages_field in keys:
            return "messages"
        nested = [k for k, v in value if isinstance(v, (list, _Object))]
        if nested:
            raise _BadDialogue(
                f"cannot tell its format: key {nested[0]!r} holds {_kind(value.get(nested[0]))}. Expected "
                f"{{speaker: text, ...}}, {{{args.turns_field!r}: [...]}} or {{{args.messages_field!r}: [...]}}; "
                f"if {nested[0]!r} holds the turns, pass --turns_field {nested[0]} (or --messages_field)"
            )
        return "speaker_map"
    if isinstance(value, list):
        first = value[0] if value else None
        if isinstance(first, _Object) and args.role_field in first.keys() and args.speaker_field not in first.keys():
            return "messages"
        return "turns"
    raise _BadDialogue(
        f"cannot tell its format: it is {_kind(value)}. Expected an object of speaker: text pairs, "
        f"{{{args.turns_field!r}: [...]}} or {{{args.messages_field!r}: [...]}}"
    )


def _field_list(value: Any, key: str, option: str) -> list:
    if isinstance(value, list) and not isinstance(value, _Object):
        return value  # a bare list of turns/messages
    if not isinstance(value, _Object):
        raise _BadDialogue(f"expected an object with {key!r}, found {_kind(value)}")
    if key not in value.keys():
        raise _BadDialogue(f"has no {key!r} key (keys: {value.keys()}); set --{option} or --data_format")
    items = value.get(key)
    if not isinstance(items, list) or isinstance(items, _Object):
        raise _BadDialogue(f"{key!r} holds {_kind(items)}; expected a list")
    return items


def _check_text(text: Any, turn: int, speaker: str, field_name: str) -> str:
    if not isinstance(text, str):
        raise _BadDialogue(f"turn {turn} ({speaker}) has {field_name} that is {_kind(text)}; it must be a string")
    if not text.strip():
        raise _BadDialogue(f"turn {turn} ({speaker}) is empty; remove the turn or give it text")
    return text.strip()


def _parse_speaker_map(value: Any, args: DataArguments):
    if not isinstance(value, _Object):
        raise _BadDialogue(f"expected an object of speaker: text pairs, found {_kind(value)}")
    speakers, texts = [], []
    for number, (speaker, text) in enumerate(value, start=1):
        if not speaker.strip():
            raise _BadDialogue(f"turn {number} has an empty speaker name; name the speaker")
        texts.append(_check_text(text, number, speaker, "a value"))
        speakers.append(speaker.strip())
    return speakers, texts, [None] * len(speakers)


def _turn_object(turn: Any, number: int) -> _Object:
    if not isinstance(turn, _Object):
        raise _BadDialogue(f"turn {number} is {_kind(turn)}; expected an object")
    repeated = [k for k, n in Counter(turn.keys()).items() if n > 1]
    if repeated:
        raise _BadDialogue(f"turn {number} has the key {repeated[0]!r} twice; keep one")
    return turn


def _parse_turns(turns: list, args: DataArguments):
    speakers, texts = [], []
    for number, turn in enumerate(turns, start=1):
        turn = _turn_object(turn, number)
        speaker = turn.get(args.speaker_field)
        if not isinstance(speaker, str) or not speaker.strip():
            problem = "has no" if speaker is None else "has an empty or non-string"
            raise _BadDialogue(
                f'turn {number} {problem} "{args.speaker_field}" (keys: {turn.keys()}); '
                f"add it, or set --speaker_field to the key your file uses"
            )
        if args.text_field not in turn.keys():
            raise _BadDialogue(
                f'turn {number} ({speaker}) has no "{args.text_field}" (keys: {turn.keys()}); '
                "add it, or set --text_field to the key your file uses"
            )
        texts.append(_check_text(turn.get(args.text_field), number, speaker, f'"{args.text_field}"'))
        speakers.append(speaker.strip())
    return speakers, texts, [None] * len(speakers)


def _parse_messages(messages: list, args: DataArguments):
    role_map = args.role_speaker_map
    speakers, texts, roles = [], [], []
    for number, message in enumerate(messages, start=1):
        message = _turn_object(message, number)
        role = message.get(args.role_field)
        if not isinstance(role, str) or not role.strip():
            raise _BadDialogue(
                f'message {number} has no "{args.role_field}" (keys: {message.keys()}); '
                "add it, or set --role_field to the key your file uses"
            )
        name = message.get("name")
        speaker = name.strip() if isinstance(name, str) and name.strip() else role_map.get(role, role.capitalize())
        if args.content_field not in message.keys():
            raise _BadDialogue(
                f'message {number} ({role}) has no "{args.content_field}"; add it or set --content_field'
            )
        texts.append(_check_text(message.get(args.content_field), number, speaker, f'"{args.content_field}"'))
        speakers.append(speaker)
        roles.append(role)
    return speakers, texts, roles


# ----------------------------------------------------------------------------------------------
# 2. Splitting


def split_dialogues(
    dialogues: list[Dialogue], validation_split_ratio: float, seed: int, path: str = "the data"
) -> tuple[list[Dialogue], list[Dialogue]]:
    """Hold out a share of whole dialogues, chosen by `seed`; each side keeps file order.

    Raises:
        DialogueDataError: when a side would be empty.
    """
    count = len(dialogues)
    if validation_split_ratio == 0:
        logger.warning("validation_split_ratio is 0: training on all %d dialogues, with no evaluation", count)
        return list(dialogues), []
    n_validation = max(1, round(count * validation_split_ratio))
    if count - n_validation < 1:
        raise DialogueDataError(
            f"{path} has {count} valid dialogue{'s' if count != 1 else ''}: too few for a "
            f"{validation_split_ratio:.0%} validation split (each side needs at least one). Add dialogues, "
            "pass --validation_path with separate validation data, or set --validation_split_ratio 0 "
            "to train on all of them without evaluation."
        )
    order = np.random.default_rng(seed).permutation(count)
    held_out = set(order[:n_validation].tolist())
    train = [d for i, d in enumerate(dialogues) if i not in held_out]
    validation = [d for i, d in enumerate(dialogues) if i in held_out]
    return train, validation


# ----------------------------------------------------------------------------------------------
# 3. Rendering and tokenization


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


def _chat_messages(speakers, texts, roles, args: DataArguments) -> list[dict[str, str]]:
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
    messages = _chat_messages(speakers, texts, roles, args)
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


def _encode_batch(batch: dict[str, list], tokenizer, args: DataArguments, with_token_turns: bool) -> dict[str, list]:
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


# ----------------------------------------------------------------------------------------------
# 4. Packing


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Place items (by index) into bins of `capacity`: longest first, each into the fullest bin it fits."""
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free space, bin number), kept sorted
    for item in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        size = lengths[item]
        slot = bisect.bisect_left(free, (size, -1))
        if slot < len(free):
            space, number = free.pop(slot)
        else:
            space, number = capacity, len(bins)
            bins.append([])
        bins[number].append(item)
        if space - size > 0:
            bisect.insort(free, (space - size, number))
    return bins


def _pack_batch(batch: dict[str, list], max_length: int) -> dict[str, list]:
    """`datasets.map` function: examples in, rows of at most max_length tokens out.

    Each example keeps its own positions (0, 1, ...), which is how transformers knows where one
    dialogue ends: with no attention mask and no KV cache it builds a block-diagonal causal mask.
    Labels need no change: the first token of each example is already -100.
    """
    rows = best_fit_decreasing([len(ids) for ids in batch["input_ids"]], max_length)
    out: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": []}
    for row in rows:
        row = sorted(row)  # keep data order inside a row
        out["input_ids"].append([t for i in row for t in batch["input_ids"][i]])
        out["labels"].append([t for i in row for t in batch["labels"][i]])
        out["position_ids"].append([p for i in row for p in range(len(batch["input_ids"][i]))])
    return out


# ----------------------------------------------------------------------------------------------
# 5. Batching


@dataclass
class DialogueCollator:
    """Pad a batch on the right; padding gets label -100 whatever its token id.

    packing: rows carry `position_ids`; padding continues as its own segment and no attention
    mask is sent (a 2D mask would stop transformers from reading the segments off the positions).
    longest / max_length: an attention mask marks real tokens.
    """

    pad_token_id: int
    padding: str = "packing"
    max_length: int | None = None
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        length = self.max_length if self.padding == "max_length" and self.max_length else longest
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {"input_ids": [], "labels": []}
        if self.padding == "packing":
            batch["position_ids"] = []
        else:
            batch["attention_mask"] = []
        for f in features:
            ids = list(f["input_ids"])
            pad = length - len(ids)
            if pad < 0:
                raise ValueError(f"an example has {len(ids)} tokens, more than the padded length {length}")
            batch["input_ids"].append(ids + [self.pad_token_id] * pad)
            batch["labels"].append(list(f["labels"]) + [IGNORE_INDEX] * pad)
            if self.padding == "packing":
                positions = list(f["position_ids"]) if "position_ids" in f else list(range(len(ids)))
                batch["position_ids"].append(positions + list(range(pad)))
            else:
                batch["attention_mask"].append([1] * len(ids) + [0] * pad)
        return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}


def get_data_collator(args: DataArguments, tokenizer) -> DialogueCollator:
    return DialogueCollator(
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        padding=args.padding,
        max_length=args.max_length,
        pad_to_multiple_of=args.pad_to_multiple_of,
    )


# ----------------------------------------------------------------------------------------------
# The whole pipeline


TRAINING_COLUMNS = ("input_ids", "labels", "position_ids")


@dataclass
class PreparedData:
    """Tokenized splits (windows), their training form (packed or not), and the data report."""

    train_examples: Any  # datasets.Dataset, one row per window, with bookkeeping columns
    validation_examples: Any | None
    train_dataset: Any  # what the Trainer gets: packed rows or examples, model inputs only
    validation_dataset: Any | None
    train_dialogues: list[Dialogue]
    validation_dialogues: list[Dialogue]
    report: dict[str, Any]


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of everything about a tokenizer that changes its output."""
    require_fast_tokenizer(tokenizer)
    digest = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode())
    extra = [tokenizer.eos_token_id, tokenizer.bos_token_id, getattr(tokenizer, "chat_template", None)]
    digest.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _encoding_options(args: DataArguments) -> dict[str, Any]:
    names = ("max_length", "overflow_strategy", "turn_template", "turn_separator", "train_on_speakers")
    names += ("use_chat_template", "role_to_speaker")
    return {name: getattr(args, name) for name in names}


def _dialogues_fingerprint(dialogues: list[Dialogue]) -> str:
    digest = hashlib.sha256()
    for d in dialogues:
        digest.update(json.dumps([d.speakers, d.texts, d.roles], ensure_ascii=False).encode())
    return digest.hexdigest()


def default_cache_dir() -> Path:
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / "dialogue_finetune"


def tokenize_dialogues(
    dialogues: list[Dialogue],
    tokenizer,
    args: DataArguments,
    split_name: str,
    with_token_turns: bool = False,
    main_process_first=contextlib.nullcontext,
):
    """Tokenize dialogues with `datasets.map`, cached on disk under a fingerprint of the dialogues,
    the tokenizer and every option that changes the result: a second run with the same inputs
    loads the cached table instead of tokenizing again."""
    import datasets

    fingerprint = hashlib.sha256(
        json.dumps(
            [ENCODING_VERSION, _dialogues_fingerprint(dialogues), tokenizer_fingerprint(tokenizer),
             _encoding_options(args), with_token_turns],
            sort_keys=True,
        ).encode()
    ).hexdigest()[:24]
    cache_dir = Path(args.dataset_cache_dir) if args.dataset_cache_dir else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    table = datasets.Dataset.from_dict(
        {
            "dialogue_index": list(range(len(dialogues))),
            "source": [d.source for d in dialogues],
            "speakers": [d.speakers for d in dialogues],
            "texts": [d.texts for d in dialogues],
            "roles": [[r or "" for r in d.roles] for d in dialogues],
        }
    )
    num_proc = args.preprocessing_num_workers if args.preprocessing_num_workers and len(dialogues) > 1 else None
    with main_process_first():
        return table.map(
            _encode_batch,
            batched=True,
            num_proc=num_proc,
            remove_columns=table.column_names,
            fn_kwargs={"tokenizer": tokenizer, "args": args, "with_token_turns": with_token_turns},
            cache_file_name=str(cache_dir / f"{split_name}-tokenized-{fingerprint}.arrow"),
            new_fingerprint=fingerprint,
            desc=f"Tokenizing {split_name} dialogues",
        )


def pack_examples(examples, args: DataArguments, split_name: str, main_process_first=contextlib.nullcontext):
    """Pack tokenized examples into rows of max_length tokens (cached like tokenization)."""
    fingerprint = hashlib.sha256(
        f"{examples._fingerprint}-{args.max_length}-{args.packing_batch_size}-{ENCODING_VERSION}".encode()
    ).hexdigest()[:24]
    cache_dir = Path(args.dataset_cache_dir) if args.dataset_cache_dir else default_cache_dir()
    with main_process_first():
        return examples.select_columns(["input_ids", "labels"]).map(
            _pack_batch,
            batched=True,
            batch_size=args.packing_batch_size,
            remove_columns=["input_ids", "labels"],
            fn_kwargs={"max_length": args.max_length},
            cache_file_name=str(cache_dir / f"{split_name}-packed-{fingerprint}.arrow"),
            new_fingerprint=fingerprint,
            desc=f"Packing {split_name} examples",
        )


def _training_form(examples, args: DataArguments, split_name: str, main_process_first):
    if examples is None:
        return None
    if args.padding == "packing":
        return pack_examples(examples, args, split_name, main_process_first)
    return examples.select_columns(["input_ids", "labels"])


@dataclass
class DialogueSplits:
    source: DialogueFile
    skipped: list[tuple[str, str]]
    train: list[Dialogue]
    validation: list[Dialogue]


def load_dialogue_splits(args: DataArguments) -> DialogueSplits:
    """Read the data and split it as training does: a validation file, a dataset's validation split,
    or a deterministic share of the dialogues. The evaluation script calls this to get the same split."""
    source = read_dialogues(args.data_path, args)
    dialogues = source.dialogues[: args.max_dialogues] if args.max_dialogues else source.dialogues
    skipped = list(source.skipped)
    if args.validation_path:
        validation_file = read_dialogues(args.validation_path, args, split=args.dataset_validation_split)
        train, validation = dialogues, validation_file.dialogues
        skipped += validation_file.skipped
    elif source.validation_dialogues is not None:
        train, validation = dialogues, source.validation_dialogues
    else:
        train, validation = split_dialogues(dialogues, args.validation_split_ratio, args.split_seed, args.data_path)
    return DialogueSplits(source, skipped, train, validation)


def build_datasets(
    args: DataArguments, tokenizer, main_process_first=contextlib.nullcontext
) -> PreparedData:
    """The whole data path used by training and by scripts/prepare_data.py: read, split, tokenize, pack."""
    require_fast_tokenizer(tokenizer)
    splits = load_dialogue_splits(args)
    source, skipped, train, validation = splits.source, splits.skipped, splits.train, splits.validation

    train_examples = tokenize_dialogues(train, tokenizer, args, "train", main_process_first=main_process_first)
    validation_examples = (
        tokenize_dialogues(validation, tokenizer, args, "validation", main_process_first=main_process_first)
        if validation
        else None
    )
    train_dataset = _training_form(train_examples, args, "train", main_process_first)
    validation_dataset = _training_form(validation_examples, args, "validation", main_process_first)
    report = data_report(
        args, source, skipped, train, validation, train_examples, validation_examples, train_dataset, validation_dataset
    )
    return PreparedData(
        train_examples, validation_examples, train_dataset, validation_dataset, train, validation, report
    )


def _percentiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    array = np.asarray(values)
    return {
        "p50": round(float(np.percentile(array, 50)), 1),
        "p90": round(float(np.percentile(array, 90)), 1),
        "p99": round(float(np.percentile(array, 99)), 1),
        "max": int(array.max()),
        "mean": round(float(array.mean()), 2),
    }


def _split_report(dialogues: list[Dialogue], examples, batches, args: DataArguments) -> dict[str, Any]:
    if examples is None:
        return {"dialogues": 0}
    lengths = [len(ids) for ids in examples["input_ids"]]
    loss_tokens = sum(sum(1 for t in labels if t != IGNORE_INDEX) for labels in examples["labels"])
    dialogue_tokens = [n for n in examples["num_dialogue_tokens"] if n]
    windows = Counter(examples["dialogue_index"])
    tokens = sum(lengths)
    if args.padding == "packing":
        rows, row_length = len(batches), args.max_length
    elif args.padding == "max_length":
        rows, row_length = len(lengths), args.max_length
    else:
        rows, row_length = len(lengths), None
    batching = {"mode": args.padding, "rows": rows}
    if row_length:
        batching["padding_share_of_row_tokens"] = round(1 - tokens / (rows * row_length), 4)
    return {
        "dialogues": len(dialogues),
        "turns": sum(len(d.speakers) for d in dialogues),
        "turns_per_speaker": dict(Counter(s for d in dialogues for s in d.speakers).most_common()),
        "examples": len(lengths),
        "tokens": tokens,
        "loss_tokens": loss_tokens,
        "tokens_per_dialogue": _percentiles(dialogue_tokens),
        "tokens_per_example": _percentiles(lengths),
        "windows": {
            "dialogues_split": sum(1 for n in windows.values() if n > 1),
            "windows_created": sum(n - 1 for n in windows.values()),
            "turns_split_inside": int(sum(examples["turns_split_inside"])),
        },
        "truncation": {
            "dialogues_truncated": sum(1 for n in examples["tokens_dropped"] if n),
            "tokens_dropped": int(sum(examples["tokens_dropped"])),
        },
        "batching": batching,
    }


def data_report(
    args, source, skipped, train, validation, train_examples, validation_examples, train_dataset, validation_dataset
) -> dict[str, Any]:
    """Counts a user can check against their file: what was read, skipped, split, windowed, packed."""
    return {
        "data_path": args.data_path,
        "validation_path": args.validation_path,
        "formats": source.format_counts,
        "dialogues_read": len(source.dialogues),
        "dialogues_used": len(train) + len(validation),
        "skipped": {
            "count": len(skipped),
            "first": [{"where": where, "reason": reason} for where, reason in skipped[:SHOWN_PROBLEMS]],
        },
        "split": {
            "validation_split_ratio": 0 if args.validation_path else args.validation_split_ratio,
            "split_seed": args.split_seed,
        },
        "options": _encoding_options(args) | {"padding": args.padding},
        "train": _split_report(train, train_examples, train_dataset, args),
        "validation": _split_report(validation, validation_examples, validation_dataset, args),
    }


def format_report(report: dict[str, Any]) -> str:
    """A short, human summary of `data_report`."""
    lines = [f"data: {report['data_path']} ({', '.join(f'{k}: {v}' for k, v in report['formats'].items())})"]
    lines.append(
        f"dialogues: {report['dialogues_read']} read, {report['skipped']['count']} skipped, "
        f"{report['train']['dialogues']} train / {report['validation']['dialogues']} validation"
    )
    for name in ("train", "validation"):
        split = report[name]
        if not split.get("examples"):
            continue
        per_dialogue = split["tokens_per_dialogue"]
        batching = split["batching"]
        padding = batching.get("padding_share_of_row_tokens")
        lines.append(
            f"{name}: {split['turns']} turns, {split['examples']} examples, {split['tokens']} tokens "
            f"({split['loss_tokens']} in the loss); tokens per dialogue p50 {per_dialogue['p50']:.0f}, "
            f"p90 {per_dialogue['p90']:.0f}, max {per_dialogue['max']}; "
            f"{split['windows']['windows_created']} extra windows, "
            f"{split['truncation']['tokens_dropped']} tokens truncated; "
            f"{batching['mode']}: {batching['rows']} rows"
            + (f", {padding:.1%} padding" if padding is not None else "")
        )
    if report["skipped"]["count"]:
        first = "; ".join(f"{p['where']}: {p['reason']}" for p in report["skipped"]["first"])
        lines.append(f"skipped {report['skipped']['count']}: {first}")
    return "\n".join(lines)


def example_texts(examples, tokenizer) -> Iterator[dict[str, Any]]:
    """Rows for the inspection files: the decoded text exactly as the model reads it."""
    for ids, labels, source, window in zip(
        examples["input_ids"], examples["labels"], examples["source"], examples["window_index"]
    ):
        yield {
            "text": tokenizer.decode(ids),
            "source": source,
            "window_index": window,
            "num_tokens": len(ids),
            "num_loss_tokens": sum(1 for t in labels if t != IGNORE_INDEX),
        }


def write_prepared_data(prepared: PreparedData, tokenizer, output_dir: str | os.PathLike) -> list[Path]:
    """Write train.jsonl, validation.jsonl and data_report.json for inspection."""
    output_dir = Path(output_dir)
    paths = [atomic_write_jsonl(output_dir / "train.jsonl", example_texts(prepared.train_examples, tokenizer))]
    if prepared.validation_examples is not None:
        paths.append(
            atomic_write_jsonl(output_dir / "validation.jsonl", example_texts(prepared.validation_examples, tokenizer))
        )
    paths.append(atomic_write_json(output_dir / "data_report.json", prepared.report))
    return paths
