"""Where dialogue records come from: JSON and JSON Lines text (with line numbers, repeated keys kept,
every parse problem an error naming the line), a `save_to_disk` folder or a Hub dataset.

Every record is `(where, value)`: `where` names the file and the entry (index and line, or row) for
messages; `value` is the parsed JSON, objects as `JsonObject` (their pairs in file order).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

from ..common.hub import require_hub
from ..config import DataArguments
from .errors import DialogueDataError


class UnreadableLine:
    """A .jsonl line that is not one JSON value: a bad dialogue like any other (listed, or skipped and counted)."""

    def __init__(self, reason: str):
        self.reason = reason


class JsonObject(list):
    """A JSON object as its (key, value) pairs in file order; repeated keys are kept."""

    def keys(self) -> list[str]:
        return [key for key, _ in self]

    def get(self, key: str, default: Any = None) -> Any:
        for k, value in self:
            if k == key:
                return value
        return default


DECODER = json.JSONDecoder(object_pairs_hook=JsonObject)

# Python's JSON parser recurses once per nesting level; past the recursion limit it raises RecursionError.
TOO_DEEP = ("JSON nested too deeply (hundreds of levels of [ or {{); a dialogue needs at most 4 levels "
            "(file, dialogue, turns, turn): {fix}")


def as_object(value: Any) -> Any:
    """Rows of a `datasets` table arrive as dicts; give them the same shape as parsed JSON."""
    if isinstance(value, dict):
        return JsonObject((k, as_object(v)) for k, v in value.items())
    if isinstance(value, list) and not isinstance(value, JsonObject):
        return [as_object(v) for v in value]
    return value


def read_text(path: str) -> str:
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


def json_error(path: str, error: json.JSONDecodeError) -> DialogueDataError:
    hint = "fix the JSON there"
    if error.msg == "Extra data":
        hint = "the file holds more than one JSON value; if it has one dialogue per line, name it .jsonl"
    elif error.msg.startswith("Invalid control character"):
        hint = ("a string holds a raw control character (NUL, tab, line break); escape it (\\u0000, \\t, \\n) or "
                "remove it")
    elif error.msg.startswith("Unterminated") or error.pos >= len(error.doc.rstrip()):
        hint = "the file ends in the middle of a value: it was cut short; restore its end"
    return DialogueDataError(f"{path} line {error.lineno} column {error.colno}: invalid JSON ({error.msg}); {hint}")


def json_records(path: str, text: str, is_one_dialogue: Callable[[list[Any]], bool]) -> Iterator[tuple[str, Any]]:
    """Yield (where, value) for each dialogue of a .json file.

    A top-level array is walked element by element so that each dialogue's line is known.
    """
    start = len(text) - len(text.lstrip())
    if text[start] != "[":
        try:
            value, end = DECODER.raw_decode(text, start)
            if text[end:].strip():
                raise json.JSONDecodeError("Extra data", text, end + len(text[end:]) - len(text[end:].lstrip()))
        except json.JSONDecodeError as error:
            raise json_error(path, error) from None
        except RecursionError:
            raise DialogueDataError(f"{path}: " + TOO_DEEP.format(fix="fix the file's structure")) from None
        yield f"{path}", value  # one dialogue: {"turns": [...]}, {"messages": [...]} or a speaker map
        return
    elements = list(_iter_json_array(path, text, start))
    if not elements:
        raise DialogueDataError(f"{path} holds an empty array; add dialogues to it")
    if is_one_dialogue([value for _, value in elements]):
        yield f"{path} (a bare list of turns, read as one dialogue)", [value for _, value in elements]
        return
    for index, (line, value) in enumerate(elements):
        yield f"{path} entry [{index}] (line {line})", value


def _iter_json_array(path: str, text: str, start: int) -> Iterator[tuple[int, Any]]:
    position, whitespace, index = start + 1, " \t\r\n", 0
    # Lines are counted as the walk goes (counting from the start for every entry is quadratic).
    line, counted_to = 1 + text.count("\n", 0, position), position
    try:
        while True:
            while position < len(text) and text[position] in whitespace:
                position += 1
            if position < len(text) and text[position] == "]":
                position += 1
                break
            line += text.count("\n", counted_to, position)
            counted_to = position
            try:
                value, position = DECODER.raw_decode(text, position)
            except RecursionError:
                raise DialogueDataError(
                    f"{path} entry [{index}] (line {line}): " + TOO_DEEP.format(fix="fix that entry")
                ) from None
            index += 1
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
            extra = position + len(text[position:]) - len(text[position:].lstrip())  # where the extra value starts
            raise json.JSONDecodeError("Extra data", text, extra)
    except json.JSONDecodeError as error:
        raise json_error(path, error) from None


def jsonl_records(path: str, text: str) -> Iterator[tuple[str, Any]]:
    """Yield (where, value) per non-blank line; a line that is not one JSON value is yielded as
    `UnreadableLine`, so that it is listed with the other bad dialogues (or skipped and counted)."""
    hint = "each line of a .jsonl file must be one complete JSON value"
    # Lines end at "\n" only: str.splitlines would also cut at U+2028, U+0085 and other characters that
    # JSON writers leave unescaped inside strings, splitting one dialogue into two invalid lines.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = DECODER.decode(line)
        except json.JSONDecodeError as error:
            value = UnreadableLine(f"column {error.colno}: invalid JSON ({error.msg}); {hint}")
        except RecursionError:
            value = UnreadableLine(TOO_DEEP.format(fix=hint))
        yield f"{path} line {number}", value


def read_saved_dataset(path: str, args: DataArguments, split: str | None):
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except FileNotFoundError as error:
        raise DialogueDataError(
            f"{path} is a directory but not one written by datasets' save_to_disk ({error}); "
            "pass a .json/.jsonl file or a saved dataset directory"
        ) from None
    return pick_splits(path, loaded, args, split)


def read_hub_dataset(path: str, args: DataArguments, split: str | None):
    import datasets

    require_hub(path, "dataset")
    loaded = datasets.load_dataset(path, args.dataset_config_name)
    return pick_splits(path, loaded, args, split)


def pick_splits(path: str, loaded, args: DataArguments, split: str | None):
    """(rows, validation rows or None) of a saved or Hub Dataset / DatasetDict.

    `split` None reads data_path: its --dataset_train_split trains, and its validation split (the one
    --dataset_validation_split names, else one called "validation") validates unless --validation_path is
    set. `split` given reads validation_path: only that split, never the train split in its place. A
    single Dataset has no splits: all its rows are the data.
    """
    import datasets

    if isinstance(loaded, datasets.Dataset):
        return loaded, None
    if split is not None:
        if split not in loaded:
            raise DialogueDataError(
                f"validation_path {path} has splits {list(loaded)}, none named {split!r}: set "
                "--dataset_validation_split to the split to validate on (its train split is never used for that)"
            )
        return loaded[split], None
    wanted = args.dataset_train_split
    if wanted not in loaded:
        raise DialogueDataError(
            f"{path} has splits {list(loaded)}, not {wanted!r}; set --dataset_train_split to one of them"
        )
    if args.validation_path:
        return loaded[wanted], None  # validation_path validates; --dataset_validation_split names its split
    validation_split = args.dataset_validation_split
    if validation_split is None and "validation" in loaded:
        validation_split = "validation"
    if validation_split is not None and validation_split not in loaded:
        raise DialogueDataError(
            f"{path} has splits {list(loaded)}, not {validation_split!r}; fix --dataset_validation_split"
        )
    return loaded[wanted], (loaded[validation_split] if validation_split else None)


