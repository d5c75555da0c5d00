"""Where dialogue records come from: JSON and JSON Lines text (with line numbers, repeated keys kept,
every parse problem an error naming the line), a `save_to_disk` folder or a Hub dataset.

Every record is `(where, value)`: `where` names the file and the entry (index and line, or row) for
messages; `value` is the parsed JSON, objects as `JsonObject` (their pairs in file order).
"""

from __future__ import annotations

import json
import re
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


CHUNK_BYTES = 1 << 24  # text read at a time: a file is never held whole


def _check_start(path: str, first: bytes) -> None:
    if first.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DialogueDataError(f"{path} is UTF-16 encoded; re-save it as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)")


def _not_utf8(path: str, raw: bytes, error: UnicodeDecodeError, offset: int, line: int) -> DialogueDataError:
    """`raw` holds the undecodable byte at `error.start`; `offset` and `line`: where `raw` starts in the file."""
    line += raw.count(b"\n", 0, error.start)
    return DialogueDataError(
        f"{path} is not valid UTF-8: byte 0x{raw[error.start]:02x} at offset {offset + error.start} (line {line}). "
        "Re-save the file as UTF-8, e.g. iconv -f latin1 -t utf-8 in.json > out.json"
    )


def _empty(path: str) -> DialogueDataError:
    return DialogueDataError(
        f"{path} is empty; expected a JSON array of dialogues (.json) or one dialogue per line (.jsonl)"
    )


def text_chunks(path: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[str, int]]:
    """The file's text in pieces of about `chunk_bytes`, each with the line it starts on; a BOM is dropped,
    UTF-16 and bytes that are not UTF-8 are errors naming the offset and the line, an empty file too."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    offset, line, seen_text = 0, 1, False
    with open(path, "rb") as file:
        while True:
            raw = file.read(chunk_bytes)
            if offset == 0:
                _check_start(path, raw)
            pending = decoder.getstate()[0]  # a character's first bytes, cut by the previous chunk's end
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as error:
                raise _not_utf8(path, pending + raw, error, offset - len(pending), line) from None
            seen_text = seen_text or bool(text.strip())
            if text:
                yield text, line
            if not raw:
                break
            offset += len(raw)
            line += raw.count(b"\n")
    if not seen_text:
        raise _empty(path)


def json_error(path: str, message: str, line: int, column: int, at_end: bool) -> DialogueDataError:
    """Invalid JSON at `line` and `column` of `path`, with the likely fix; `at_end`: at the file's end."""
    hint = "fix the JSON there"
    if message == "Extra data":
        hint = "the file holds more than one JSON value; if it has one dialogue per line, name it .jsonl"
    elif message.startswith("Invalid control character"):
        hint = ("a string holds a raw control character (NUL, tab, line break); escape it (\\u0000, \\t, \\n) or "
                "remove it")
    elif message.startswith("Unterminated") or at_end:
        hint = "the file ends in the middle of a value: it was cut short; restore its end"
    return DialogueDataError(f"{path} line {line} column {column}: invalid JSON ({message}); {hint}")


_WHITESPACE = re.compile(r"[ \t\r\n]*")


class _Text:
    """A window on a file's text that grows as a value needs more: `text[position:]` is what is left to
    parse. Parsed text is dropped as the walk goes, so memory holds about one chunk, never the file; lines
    are counted as the walk goes (counting from the start for every entry would be quadratic)."""

    def __init__(self, path: str, chunk_bytes: int):
        self.path = path
        self.chunks = text_chunks(path, chunk_bytes)
        self.text, self.position, self.done = "", 0, False
        self.counted_to, self.counted_line = 0, 1  # the line at text[counted_to]
        self.column_base = 0  # the column of text[0] on its line (the window may start mid-line)

    def more(self) -> bool:
        """Append the next chunk (first dropping what was parsed); False at the end of the file."""
        try:
            chunk, _ = next(self.chunks)
        except StopIteration:
            self.done = True
            return False
        self.counted_line, self.counted_to = self.line_at(self.position), 0
        self.column_base = self.column_at(self.position)
        self.text, self.position = self.text[self.position:] + chunk, 0
        return True

    def skip_whitespace(self) -> str:
        """The next non-blank character ("" at the end of the file), `position` on it."""
        while True:
            self.position = _WHITESPACE.match(self.text, self.position).end()
            if self.position < len(self.text):
                return self.text[self.position]
            if not self.more():
                return ""

    def line_at(self, position: int) -> int:
        """The line of `text[position]`, for positions that only move forward."""
        if position >= self.counted_to:
            self.counted_line += self.text.count("\n", self.counted_to, position)
        else:
            self.counted_line -= self.text.count("\n", position, self.counted_to)
        self.counted_to = position
        return self.counted_line

    def column_at(self, position: int) -> int:
        """The 0-based column of `text[position]` in the file."""
        newline = self.text.rfind("\n", 0, position)
        return position - newline - 1 if newline >= 0 else self.column_base + position

    def decode(self) -> Any:
        """The JSON value at `position`, reading more text while it is cut by the window's end."""
        while True:
            try:
                value, end = DECODER.raw_decode(self.text, self.position)
            except json.JSONDecodeError as error:
                if not self.done and self._may_continue(error) and self.more():
                    continue
                raise self.error(error) from None
            if end == len(self.text) and not self.done and isinstance(value, (int, float)) and self.more():
                continue  # a number at the window's end may go on in the next chunk
            self.position = end
            return value

    def _may_continue(self, error: json.JSONDecodeError) -> bool:
        """An error at (or cut by) the window's end may be a value the next chunk completes."""
        return error.msg.startswith("Unterminated") or len(self.text) - error.pos < 64

    def error(self, error: json.JSONDecodeError) -> DialogueDataError:
        at_end = self.done and error.pos >= len(self.text.rstrip())
        return json_error(self.path, error.msg, self.line_at(error.pos), self.column_at(error.pos) + 1, at_end)


def json_records(path: str, is_one_dialogue: Callable[[list[Any]], bool],
                 chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[str, Any]]:
    """Yield (where, value) for each dialogue of a .json file, reading it a chunk at a time.

    A top-level array is walked element by element so that each dialogue's line is known. An array whose
    elements are all turns is one dialogue (`is_one_dialogue`, asked of the turns seen so far while they
    all are: a file of dialogues is never held whole).
    """
    text = _Text(path, chunk_bytes)
    first = text.skip_whitespace()
    if first != "[":
        try:
            value = text.decode()
        except RecursionError:
            raise DialogueDataError(f"{path}: " + TOO_DEEP.format(fix="fix the file's structure")) from None
        if text.skip_whitespace():
            extra = json.JSONDecodeError("Extra data", text.text, text.position)
            raise text.error(extra)
        yield f"{path}", value  # one dialogue: {"turns": [...]}, {"messages": [...]} or a speaker map
        return
    turns: list[tuple[int, Any]] | None = []  # while every element so far is a turn: maybe one dialogue
    count = 0
    for line, value in _iter_json_array(path, text):
        if turns is not None:
            turns.append((line, value))
            if is_one_dialogue([value]):
                continue
            held, turns = turns, None
            for index, (held_line, held_value) in enumerate(held):
                yield f"{path} entry [{index}] (line {held_line})", held_value
            count = len(held)
            continue
        yield f"{path} entry [{count}] (line {line})", value
        count += 1
    if turns:
        values = [value for _, value in turns]
        if is_one_dialogue(values):
            yield f"{path} (a bare list of turns, read as one dialogue)", values
            return
        for index, (line, value) in enumerate(turns):
            yield f"{path} entry [{index}] (line {line})", value
    elif turns is not None:
        raise DialogueDataError(f"{path} holds an empty array; add dialogues to it")


def _iter_json_array(path: str, text: _Text) -> Iterator[tuple[int, Any]]:
    text.position += 1  # past "["
    index = 0
    while True:
        character = text.skip_whitespace()
        if character == "]":
            text.position += 1
            break
        line = text.line_at(text.position)
        try:
            value = text.decode()
        except RecursionError:
            raise DialogueDataError(
                f"{path} entry [{index}] (line {line}): " + TOO_DEEP.format(fix="fix that entry")
            ) from None
        index += 1
        yield line, value
        character = text.skip_whitespace()
        if character == ",":
            text.position += 1
        elif character == "]":
            text.position += 1
            break
        else:
            raise text.error(json.JSONDecodeError("Expecting ',' delimiter", text.text, text.position))
    if text.skip_whitespace():
        raise text.error(json.JSONDecodeError("Extra data", text.text, text.position))


def jsonl_records(path: str) -> Iterator[tuple[str, Any]]:
    """Yield (where, value) per non-blank line, reading the file a line at a time; a line that is not one
    JSON value is yielded as `UnreadableLine`, so that it is listed with the other bad dialogues (or
    skipped and counted)."""
    hint = "each line of a .jsonl file must be one complete JSON value"
    seen_text, offset = False, 0
    # Lines end at "\n" only (binary lines): str.splitlines would also cut at U+2028, U+0085 and other
    # characters that JSON writers leave unescaped inside strings, splitting one dialogue into two invalid lines.
    with open(path, "rb") as file:
        for number, raw in enumerate(file, start=1):
            if number == 1:
                _check_start(path, raw)
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise _not_utf8(path, raw, error, offset, number) from None
            offset += len(raw)
            if not line.strip():
                continue
            seen_text = True
            try:
                value = DECODER.decode(line)
            except json.JSONDecodeError as error:
                value = UnreadableLine(f"column {error.colno}: invalid JSON ({error.msg}); {hint}")
            except RecursionError:
                value = UnreadableLine(TOO_DEEP.format(fix=hint))
            yield f"{path} line {number}", value
    if not seen_text:
        raise _empty(path)


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


