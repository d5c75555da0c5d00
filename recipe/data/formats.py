"""Reading dialogue files: every supported shape parsed into (speaker, text) turns, every problem named.

Every turn is kept in file order: the seed format repeats speaker keys inside one object, which
`json.load` would silently collapse, so objects are parsed as lists of (key, value) pairs. A bad
dialogue is reported with its file, entry (index and line) and the fix; with `on_bad_dialogue skip`
it is left out and counted, never dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..common.files import atomic_write_json, file_sha256
from ..common.hub import is_hub_id
from ..config import DataArguments
from .dialogues import Dialogue, DialogueTable, DialogueTableWriter, data_cache_dir
from .errors import SHOWN_PROBLEMS, DialogueDataError
from .sources import (
    TOO_DEEP,
    JsonObject,
    UnreadableLine,
    as_object,
    json_records,
    jsonl_records,
    read_hub_dataset,
    read_saved_dataset,
)

logger = logging.getLogger(__name__)

class BadDialogue(Exception):
    """One invalid dialogue; collected, then raised together or skipped with a count."""


def _kind(value: Any) -> str:
    if isinstance(value, JsonObject):
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


SKIPPED_KEPT = 100  # skipped dialogues listed by name (all are counted)

# Bump when reading or parsing changes, so that tables read by older code are not reused.
READ_VERSION = 1


@dataclass
class DialogueFile:
    """The valid dialogues of one input (an Arrow table on disk), and what was skipped (never dropped silently:
    all counted, the first `SKIPPED_KEPT` named)."""

    path: str
    dialogues: DialogueTable
    skipped: list[tuple[str, str]] = field(default_factory=list)
    skipped_count: int = 0
    format_counts: dict[str, int] = field(default_factory=dict)
    validation_dialogues: DialogueTable | None = None  # from a saved/Hub dataset's validation split


DATA_PATH_HINT = ("give a .json or .jsonl file of dialogues, a folder datasets' save_to_disk wrote, or a Hub dataset "
                  "name")


def check_data_path(path: str, option: str = "--data_path") -> None:
    """A path that is neither a file, a folder nor a Hub dataset name fails here, naming the option that gave it
    (a run checks its data paths before it writes anything)."""
    if not os.path.exists(path) and not is_hub_id(path):
        raise DialogueDataError(f"{option} {path}: no such file or directory; {DATA_PATH_HINT}")


def read_dialogues(path: str, args: DataArguments, split: str | None = None, option: str = "--data_path"
                   ) -> DialogueFile:
    """Read every dialogue of a .json/.jsonl file, a `save_to_disk` directory or a Hub dataset into an Arrow
    table in the data cache, a batch at a time (memory stays flat in the corpus size); `option` names where the
    path came from in the error when there is nothing there. The same input read the same way again loads
    the table.

    Raises:
        DialogueDataError: unreadable file, malformed JSON (with line and column), or invalid
            dialogues when `on_bad_dialogue` is "error" (all of them counted, the first few shown).
    """
    validation_rows = None
    if os.path.isfile(path):
        identity = ["file", file_sha256(path)]
        if path.endswith(".jsonl"):
            def records():
                return jsonl_records(path)
        else:
            def records():
                return json_records(path, lambda values: is_one_dialogue(values, args))
    elif os.path.isdir(path) or is_hub_id(path):
        reader = read_saved_dataset if os.path.isdir(path) else read_hub_dataset
        rows, validation_rows = reader(path, args, split)
        identity = ["dataset", rows._fingerprint, validation_rows._fingerprint if validation_rows else None]

        def records():
            return _dataset_records(f"{path} row", rows)
    else:
        check_data_path(path, option)
        raise DialogueDataError(f"{option} {path}: not a file, a folder or a Hub dataset name; {DATA_PATH_HINT}")

    key = hashlib.sha256(json.dumps([READ_VERSION, path, identity, split, reading_options(args)],
                                    sort_keys=True).encode()).hexdigest()[:24]
    cached = _load_read(path, key, args)
    if cached is not None:
        return cached
    result = _read_into_table(path, records, _table_path(key, args, "train"), key, args)
    if validation_rows is not None:
        validation = _read_into_table(path, lambda: _dataset_records(f"{path} validation row", validation_rows),
                                      _table_path(key, args, "validation"), key + "-validation", args)
        result.validation_dialogues = validation.dialogues
        result.skipped = (result.skipped + validation.skipped)[:SKIPPED_KEPT]
        result.skipped_count += validation.skipped_count
    _save_read(key, args, result)
    return result


def reading_options(args: DataArguments) -> dict[str, Any]:
    """The options that change what reading gives (the dialogues, their speakers, what is skipped)."""
    names = ("data_format", "speaker_field", "text_field", "turns_field", "messages_field", "role_field",
             "content_field", "role_to_speaker", "on_bad_dialogue", "dataset_config_name", "dataset_train_split",
             "dataset_validation_split", "validation_path")
    return {name: getattr(args, name) for name in names}


def _dataset_records(where: str, rows) -> Iterable[tuple[str, Any]]:
    """(where, value) per row of a `datasets.Dataset`, read a batch at a time."""
    index = 0
    for batch in rows.iter(batch_size=1000):
        columns = list(batch)
        for values in zip(*(batch[name] for name in columns)):
            yield f"{where} {index}", as_object(dict(zip(columns, values)))
            index += 1


def _table_path(key: str, args: DataArguments, split: str) -> Path:
    return data_cache_dir(args) / f"dialogues-{key}-{split}.arrow"


def _record_path(key: str, args: DataArguments) -> Path:
    return data_cache_dir(args) / f"dialogues-{key}.json"


def _read_into_table(path: str, records: Callable[[], Iterable[tuple[str, Any]]], table_path: Path, fingerprint: str,
                     args: DataArguments) -> DialogueFile:
    writer = DialogueTableWriter(table_path)
    try:
        skipped, skipped_count, formats = _parse_records(path, records(), args, writer)
    except BaseException:
        writer.abandon()
        raise
    writer.finish()
    return DialogueFile(path, DialogueTable.from_file(table_path, fingerprint), skipped, skipped_count, formats)


def _save_read(key: str, args: DataArguments, read: DialogueFile) -> None:
    record = {name: getattr(read, name) for name in ("path", "skipped", "skipped_count", "format_counts")}
    record["validation"] = read.validation_dialogues is not None
    atomic_write_json(_record_path(key, args), record)


def _load_read(path: str, key: str, args: DataArguments) -> DialogueFile | None:
    """The table read before under `key`, or None (none yet, a cleaned cache, a record of another version)."""
    try:
        record = json.loads(_record_path(key, args).read_text(encoding="utf-8"))
        dialogues = DialogueTable.from_file(_table_path(key, args, "train"), key)
        validation = (DialogueTable.from_file(_table_path(key, args, "validation"), key + "-validation")
                      if record["validation"] else None)
        skipped = [tuple(pair) for pair in record["skipped"]]
        return DialogueFile(path, dialogues, skipped, record["skipped_count"], record["format_counts"], validation)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _turn_keys(args: DataArguments) -> set[str]:
    """The keys of a turn or a message: an object holding one of them is a turn, never a speaker map."""
    return {args.speaker_field, args.text_field, args.role_field, args.content_field}


def is_one_dialogue(values: list[Any], args: DataArguments) -> bool:
    """A .json file's top-level array is one dialogue when it is a bare list of turns."""
    return args.data_format != "speaker_map" and _is_turn_list(values, args)


def _is_turn_list(values: list[Any], args: DataArguments) -> bool:
    """A list whose items are all turn/message objects (not dialogues) is a single dialogue. An item
    counts as a turn as soon as it has one turn key, so that an incomplete turn is reported as such
    ("turn 2 has no "text"") instead of the list being misread as dialogues."""
    turn_keys, dialogue_keys = _turn_keys(args), {args.turns_field, args.messages_field}
    return bool(values) and all(
        isinstance(v, JsonObject) and turn_keys & set(v.keys()) and not dialogue_keys & set(v.keys()) for v in values
    )


def _parse_records(
    path: str, records: Iterable[tuple[str, Any]], args: DataArguments, writer: DialogueTableWriter
) -> tuple[list[tuple[str, str]], int, dict[str, int]]:
    """Parse each record into `writer`; return the skipped dialogues (the first `SKIPPED_KEPT`), how many were
    skipped, and how many dialogues of each format were read."""
    from datasets.utils import tqdm

    bad, bad_count, formats = [], 0, Counter()
    progress = tqdm(records, desc=f"Reading {os.path.basename(path)}", unit=" dialogues", delay=2)
    for where, value in progress:
        if isinstance(value, UnreadableLine):
            problem = value.reason
        else:
            try:
                dialogue = parse_dialogue(value, where, args)
            except BadDialogue as error:
                problem = str(error)
            else:
                writer.add(dialogue)
                formats[dialogue.format] += 1
                continue
        bad_count += 1
        if len(bad) < SKIPPED_KEPT:
            bad.append((where, problem))
    if bad and args.on_bad_dialogue == "error":
        listed = "\n".join(f"  - {where}: {reason}" for where, reason in bad[:SHOWN_PROBLEMS])
        more = f"\n  ... and {bad_count - SHOWN_PROBLEMS} more" if bad_count > SHOWN_PROBLEMS else ""
        total = bad_count + writer.count
        raise DialogueDataError(
            f"{path}: {bad_count} of {total} dialogues are invalid:\n{listed}{more}\n"
            "Fix them, or pass --on_bad_dialogue skip to leave them out (they are counted in data_report.json)."
        )
    if bad:
        shown = ", ".join(where for where, _ in bad[:SHOWN_PROBLEMS])
        logger.warning("%s: skipped %d invalid dialogues (first: %s); see data_report.json", path, bad_count, shown)
    if not writer.count:
        raise DialogueDataError(f"{path}: no valid dialogue left to train on")
    return bad, bad_count, dict(formats)


def parse_dialogue(value: Any, where: str, args: DataArguments) -> Dialogue:
    """Validate one dialogue in any supported shape and return its turns."""
    try:
        value = as_object(value)
    except RecursionError:
        raise BadDialogue(TOO_DEEP.format(fix="fix that dialogue")) from None
    fmt = args.data_format if args.data_format != "auto" else _detect_format(value, args)
    if fmt == "speaker_map":
        dialogue = _parse_speaker_map(value, args)
    elif fmt == "turns":
        dialogue = _parse_turns(_field_list(value, args.turns_field, "turns_field"), args)
    else:
        dialogue = _parse_messages(_field_list(value, args.messages_field, "messages_field"), args)
    speakers, texts, roles = dialogue
    if not speakers:
        raise BadDialogue("empty dialogue (no turns); remove it or add its turns")
    return Dialogue(source=where, speakers=speakers, texts=texts, roles=roles, format=fmt)


def _detect_format(value: Any, args: DataArguments) -> str:
    if isinstance(value, JsonObject):
        keys = value.keys()
        if args.turns_field in keys:
            return "turns"
        if args.messages_field in keys:
            return "messages"
        turn_keys = sorted(_turn_keys(args) & set(keys))
        if turn_keys:
            raise BadDialogue(
                f"holds one turn (keys: {keys}), not a dialogue; a dialogue is {{{json.dumps(args.turns_field)}: "
                f"[turn, turn, ...]}}, {{{json.dumps(args.messages_field)}: [...]}} or a speaker map "
                '{"Alex": "...", "Bob": "..."}, one per line in a .jsonl file (if a speaker is really named '
                f"{json.dumps(turn_keys[0])}, pass --data_format speaker_map)"
            )
        nested = [k for k, v in value if isinstance(v, (list, JsonObject))]
        if nested:
            raise BadDialogue(
                f"cannot tell its format: key {nested[0]!r} holds {_kind(value.get(nested[0]))}. Expected "
                f"{{speaker: text, ...}}, {{{args.turns_field!r}: [...]}} or {{{args.messages_field!r}: [...]}}; "
                f"if {nested[0]!r} holds the turns, pass --turns_field {nested[0]} (or --messages_field)"
            )
        return "speaker_map"
    if isinstance(value, list):
        first = value[0] if value else None
        if isinstance(first, JsonObject) and args.role_field in first.keys() and args.speaker_field not in first.keys():
            return "messages"
        return "turns"
    raise BadDialogue(
        f"cannot tell its format: it is {_kind(value)}. Expected an object of speaker: text pairs, "
        f"{{{args.turns_field!r}: [...]}} or {{{args.messages_field!r}: [...]}}"
    )


def _field_list(value: Any, key: str, option: str) -> list:
    if isinstance(value, list) and not isinstance(value, JsonObject):
        return value  # a bare list of turns/messages
    if not isinstance(value, JsonObject):
        raise BadDialogue(f"expected an object with {key!r}, found {_kind(value)}")
    if key not in value.keys():
        raise BadDialogue(f"has no {key!r} key (keys: {value.keys()}); set --{option} or --data_format")
    items = value.get(key)
    if not isinstance(items, list) or isinstance(items, JsonObject):
        raise BadDialogue(f"{key!r} holds {_kind(items)}; expected a list")
    return items


def _check_text(text: Any, turn: int, speaker: str, field_name: str) -> str:
    if not isinstance(text, str):
        raise BadDialogue(f"turn {turn} ({speaker}) has {field_name} that is {_kind(text)}; it must be a string")
    if not text.strip():
        raise BadDialogue(f"turn {turn} ({speaker}) is empty; remove the turn or give it text")
    return text.strip()


def _parse_speaker_map(value: Any, args: DataArguments):
    if not isinstance(value, JsonObject):
        raise BadDialogue(f"expected an object of speaker: text pairs, found {_kind(value)}")
    speakers, texts = [], []
    for number, (speaker, text) in enumerate(value, start=1):
        if not speaker.strip():
            raise BadDialogue(f"turn {number} has an empty speaker name; name the speaker")
        texts.append(_check_text(text, number, speaker, "a value"))
        speakers.append(speaker.strip())
    return speakers, texts, [None] * len(speakers)


def _turn_object(turn: Any, number: int) -> JsonObject:
    if not isinstance(turn, JsonObject):
        raise BadDialogue(f"turn {number} is {_kind(turn)}; expected an object")
    repeated = [k for k, n in Counter(turn.keys()).items() if n > 1]
    if repeated:
        raise BadDialogue(f"turn {number} has the key {repeated[0]!r} twice; keep one")
    return turn


def _required_name(item: JsonObject, key: str, what: str, option: str) -> str:
    """The speaker or role of a turn or message: a non-empty string under `key`, else an error naming it."""
    value = item.get(key)
    if not isinstance(value, str) or not value.strip():
        problem = "has no" if value is None else "has an empty or non-string"
        raise BadDialogue(
            f'{what} {problem} "{key}" (keys: {item.keys()}); add it, or set --{option} to the key your file uses'
        )
    return value


def _parse_turns(turns: list, args: DataArguments):
    speakers, texts = [], []
    for number, turn in enumerate(turns, start=1):
        turn = _turn_object(turn, number)
        speaker = _required_name(turn, args.speaker_field, f"turn {number}", "speaker_field")
        if args.text_field not in turn.keys():
            raise BadDialogue(
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
        role = _required_name(message, args.role_field, f"message {number}", "role_field")
        name = message.get("name")
        speaker = name.strip() if isinstance(name, str) and name.strip() else role_map.get(role, role.capitalize())
        if args.content_field not in message.keys():
            raise BadDialogue(
                f'message {number} ({role}) has no "{args.content_field}"; add it or set --content_field'
            )
        texts.append(_check_text(message.get(args.content_field), number, speaker, f'"{args.content_field}"'))
        speakers.append(speaker)
        roles.append(role)
    return speakers, texts, roles


