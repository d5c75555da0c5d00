"""Batching: best-fit-decreasing packing of examples into rows, and the collator that pads them.

Packed examples keep their own positions (0, 1, ...): with no attention mask and no KV cache,
transformers reads the segments off the positions and builds a block-diagonal causal mask, so each
dialogue attends only to itself. Padding never carries loss (labels -100 by position, not by token
id, so the real EOS, which GPT-2 shares with its pad token, keeps its loss).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import DataArguments
from .encoding import IGNORE_INDEX
from .tokens import offsets_from_lengths


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


def packed_rows_of(lengths: list[int], max_length: int) -> list[list[int]]:
    """Which examples (by position) make each row: best fit, longest first; data order inside a row."""
    return [sorted(row) for row in best_fit_decreasing(lengths, max_length)]


def pack_layout(batch, indices, max_length: int):
    """`datasets.map` function on arrow batches of examples (`with_indices`): which examples make each row of at
    most max_length tokens, by their positions in the examples table, in data order inside a row.

    Rows hold references, not tokens: the tokens stay in the examples table (one copy in the cache), and
    `PackedRows` puts a row together when the Trainer reads it.
    """
    import pyarrow as pa

    lengths = batch.column("num_tokens").to_numpy(zero_copy_only=False).astype(np.int64)
    rows = packed_rows_of(lengths.tolist(), max_length)
    members = np.asarray(indices, np.int64)[[i for row in rows for i in row]]
    offsets = offsets_from_lengths([len(row) for row in rows], np.int32)
    return pa.table({"examples": pa.ListArray.from_arrays(pa.array(offsets), pa.array(members, pa.int64()))})


def packed_row(examples: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Examples one after the other in one row, each keeping its own positions (0, 1, ...): that is how
    transformers knows where one dialogue ends (with no attention mask and no KV cache it builds a
    block-diagonal causal mask). Labels need no change: the first token of each example is already -100."""
    row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for example in examples:
        row["input_ids"] += example["input_ids"]
        row["labels"] += example["labels"]
        row["position_ids"] += range(len(example["input_ids"]))
    return row


class PackedRows:
    """The Trainer's dataset under packing: row i is the examples `layout[i]` names, put together when read
    (`packed_row`). Indexing by position, slice or column name answers as a `datasets.Dataset` does."""

    column_names = ["input_ids", "labels", "position_ids"]

    def __init__(self, examples, layout):
        self.examples = examples.select_columns(["input_ids", "labels"])
        self.layout = layout

    @property
    def cache_files(self):
        return self.layout.cache_files

    def __len__(self) -> int:
        return len(self.layout)

    def __getitem__(self, key):
        if isinstance(key, str):
            return [row[key] for row in self]
        if isinstance(key, slice):
            rows = [self.row(i) for i in range(*key.indices(len(self)))]
            return {name: [row[name] for row in rows] for name in self.column_names}
        return self.row(key)

    def __iter__(self):
        return (self.row(i) for i in range(len(self)))

    def row(self, index: int) -> dict[str, list[int]]:
        members = self.examples[self.layout[int(index)]["examples"]]
        return packed_row([{"input_ids": ids, "labels": labels}
                           for ids, labels in zip(members["input_ids"], members["labels"])])


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


