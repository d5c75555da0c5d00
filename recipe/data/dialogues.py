"""Dialogues as Python objects (`Dialogue`), and a corpus of them as an Arrow table on disk (`DialogueTable`).

A corpus is never held as Python objects: reading writes each batch of parsed dialogues to an Arrow file
in the data cache (`DialogueTableWriter`), and everything after reads that file memory-mapped, a batch at
a time. Memory stays flat in the corpus size; a second read of the same input loads the file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from ..config import DataArguments

BATCH_ROWS = 1000  # dialogues per Arrow record batch, written and read


@dataclass
class Dialogue:
    """One dialogue: who said what, in order. `source` says where it came from, for messages."""

    source: str
    speakers: list[str]
    texts: list[str]
    roles: list[str | None]
    format: str


def dialogue_schema():
    import pyarrow as pa

    return pa.schema([("source", pa.string()), ("speakers", pa.list_(pa.string())), ("texts", pa.list_(pa.string())),
                      ("roles", pa.list_(pa.string())), ("format", pa.string())])


def dialogue_columns(dialogues: Iterable[Dialogue]) -> dict[str, list]:
    """Columns of `dialogue_schema` (a missing role is "")."""
    columns: dict[str, list] = {"source": [], "speakers": [], "texts": [], "roles": [], "format": []}
    for d in dialogues:
        columns["source"].append(d.source)
        columns["speakers"].append(d.speakers)
        columns["texts"].append(d.texts)
        columns["roles"].append([r or "" for r in d.roles])
        columns["format"].append(d.format)
    return columns


class DialogueTable(Sequence):
    """Dialogues in an Arrow table (a `datasets.Dataset`, memory-mapped when read from the cache): indexing,
    slicing and iteration give `Dialogue`s, a batch at a time. `fingerprint` identifies the content (the
    input it was read from and how, and any selection), for the caches of later steps."""

    def __init__(self, dataset, fingerprint: str):
        self.dataset = dataset
        self.fingerprint = fingerprint

    @classmethod
    def from_dialogues(cls, dialogues: Sequence[Dialogue]) -> "DialogueTable":
        """A small table held in memory (tests, evaluation of a given list), fingerprinted by its content."""
        import datasets

        if isinstance(dialogues, DialogueTable):
            return dialogues
        columns = dialogue_columns(dialogues)
        digest = hashlib.sha256(repr([columns[name] for name in ("speakers", "texts", "roles")]).encode())
        return cls(datasets.Dataset.from_dict(columns, features=_features()), digest.hexdigest())

    @classmethod
    def from_file(cls, path: str | os.PathLike, fingerprint: str) -> "DialogueTable":
        import datasets

        return cls(datasets.Dataset.from_file(str(path)), fingerprint)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.select(range(*index.indices(len(self))))
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"dialogue {index} of {len(self)}")
        row = self.dataset[int(index)]
        return Dialogue(row["source"], row["speakers"], row["texts"], [r or None for r in row["roles"]], row["format"])

    def __iter__(self) -> Iterator[Dialogue]:
        for batch in self.dataset.with_format("arrow").iter(batch_size=BATCH_ROWS):
            columns = [batch.column(name).to_pylist() for name in ("source", "speakers", "texts", "roles", "format")]
            for source, speakers, texts, roles, fmt in zip(*columns):
                yield Dialogue(source, speakers, texts, [r or None for r in roles], fmt)

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, (DialogueTable, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # a sequence compared by content

    def __repr__(self) -> str:
        return f"DialogueTable({len(self)} dialogues)"

    def select(self, indices) -> "DialogueTable":
        """The dialogues at `indices`, in that order (no copy: an index mapping over the same file)."""
        indices = np.asarray(indices, dtype=np.int64)
        digest = hashlib.sha256(self.fingerprint.encode() + indices.tobytes()).hexdigest()
        return DialogueTable(self.dataset.select(indices, keep_in_memory=True), digest)  # 8 bytes a dialogue


def _features():
    import datasets

    return datasets.Features({"source": datasets.Value("string"), "speakers": [datasets.Value("string")],
                              "texts": [datasets.Value("string")], "roles": [datasets.Value("string")],
                              "format": datasets.Value("string")})


class DialogueTableWriter:
    """Writes dialogues to an Arrow file a batch at a time: to a temporary name, renamed into place by
    `finish` (an interrupted or refused read leaves no table that a later run would take as complete)."""

    def __init__(self, path: Path):
        import pyarrow as pa

        self.path = path
        self.partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.sink = pa.OSFile(str(self.partial), "wb")
        self.writer = pa.ipc.new_stream(self.sink, dialogue_schema())
        self.pending: list[Dialogue] = []
        self.count = 0

    def add(self, dialogue: Dialogue) -> None:
        self.pending.append(dialogue)
        self.count += 1
        if len(self.pending) >= BATCH_ROWS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.pending:
            self.writer.write_batch(pa.record_batch(dialogue_columns(self.pending), schema=dialogue_schema()))
            self.pending = []

    def finish(self) -> Path:
        self._flush()
        self.writer.close()
        self.sink.close()
        os.replace(self.partial, self.path)
        return self.path

    def abandon(self) -> None:
        try:
            self.writer.close()
            self.sink.close()
        finally:
            self.partial.unlink(missing_ok=True)


def data_cache_dir(args: DataArguments) -> Path:
    """Where read dialogues, tokenized and packed splits are cached: --dataset_cache_dir, else the datasets
    cache's dialogue_finetune/."""
    import datasets

    if args.dataset_cache_dir:
        return Path(args.dataset_cache_dir)
    return Path(datasets.config.HF_DATASETS_CACHE) / "dialogue_finetune"
