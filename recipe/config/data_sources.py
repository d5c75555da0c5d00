"""--data_path entries: one data set each, with its weight and its own way of reading (format, field names).

An entry is `PATH` or `PATH,weight=W,data_format=F,messages_field=X,...` on the command line, a JSON object of
the same keys, or in YAML a mapping `{path: PATH, weight: W, data_format: F, ...}`. How the sources are mixed:
recipe/data/mixture.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

# Options a source may set for itself: how its dialogues are read.
SOURCE_OPTIONS = ("data_format", "speaker_field", "text_field", "turns_field", "messages_field", "role_field",
                  "content_field", "dataset_config_name", "dataset_train_split", "dataset_validation_split")
DATA_FORMATS = ("auto", "speaker_map", "turns", "messages")


@dataclass(frozen=True)
class DataSource:
    """One entry of --data_path: where, how much (`weight`: the share of its dialogues trained on), how to read it."""

    path: str
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        """The compact form, as the command line takes it."""
        parts = [self.path] + ([f"weight={self.weight:g}"] if self.weight != 1 else [])
        return ",".join(parts + [f"{key}={value}" for key, value in self.options.items()])


def parse_source(entry: Any, position: int) -> DataSource:
    """A --data_path entry: a path, `PATH,key=value,...`, a JSON object, or (from YAML) a mapping with a `path`.

    Raises:
        ValueError: naming the entry and the fix.
    """
    where = f"data_path entry {position + 1}"
    if isinstance(entry, str) and entry.lstrip().startswith("{"):
        try:
            entry = json.loads(entry)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where} {entry!r} is not a JSON object ({error.msg})") from None
    if isinstance(entry, dict):
        values = dict(entry)
    elif isinstance(entry, str):
        path, *pairs = entry.split(",")  # a path holding a comma is given as {"path": ...}
        values = {"path": path}
        for pair in pairs:
            key, equals, value = pair.partition("=")
            if not equals:
                raise ValueError(f"{where} {entry!r}: {pair!r} is not key=value; write PATH,weight=0.5,"
                                 'data_format=messages (a path with a comma in it: {"path": "..."})')
            values[key.strip()] = value.strip()
    else:
        raise ValueError(f"{where} is {type(entry).__name__}; give a path or {{path: ..., weight: ...}}")
    path = values.pop("path", None)
    if not path:
        raise ValueError(f"{where} {entry!r} has no path; give one, e.g. {{path: chats.jsonl, weight: 1}}")
    given = values.pop("weight", 1.0)
    try:
        weight = float(given)
    except (TypeError, ValueError):
        weight = math.nan
    if not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"{where} {path}: weight {given!r} must be a number above 0 (0.5: a half of its "
                         "dialogues, 2: each twice)")
    unknown = sorted(set(values) - set(SOURCE_OPTIONS))
    if unknown:
        raise ValueError(f"{where} {path}: unknown key {unknown[0]!r}; a source takes path, weight and "
                         f"{', '.join(SOURCE_OPTIONS)}")
    if values.get("data_format", "auto") not in DATA_FORMATS:
        raise ValueError(f"{where} {path}: data_format {values['data_format']!r} is not one of "
                         f"{', '.join(DATA_FORMATS)}")
    return DataSource(str(path), weight, values)


def data_path_text(value: Any) -> str:
    """--data_path as a user writes it (one path, or the sources in their compact form), from its value in
    DataArguments or in a run_config.yaml (a path, or a list of entries)."""
    entries = [value] if isinstance(value, (str, dict)) else list(value or [])
    try:
        sources = [parse_source(entry, position) for position, entry in enumerate(entries)]
    except ValueError:
        return " ".join(map(str, entries))
    if len(sources) == 1 and sources[0].text() == sources[0].path:
        return sources[0].path
    return " ".join(source.text() for source in sources)


def comparable_option(name: str, value: Any) -> Any:
    """An option's value as two runs' records compare it: data_path in one form (older records hold a string,
    newer ones a list of entries)."""
    return data_path_text(value) if name == "data_path" and value is not None else value
