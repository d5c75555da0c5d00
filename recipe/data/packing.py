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


def pack_batch(batch, max_length: int):
    """`datasets.map` function on arrow batches: examples in, rows of at most max_length tokens out.

    Each example keeps its own positions (0, 1, ...), which is how transformers knows where one
    dialogue ends: with no attention mask and no KV cache it builds a block-diagonal causal mask.
    Labels need no change: the first token of each example is already -100. Only the bin choice is
    Python (per example); the tokens are moved by arrow and numpy.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    lengths = pc.list_value_length(batch.column("input_ids")).to_numpy(zero_copy_only=False).astype(np.int64)
    rows = [sorted(row) for row in best_fit_decreasing(lengths.tolist(), max_length)]  # data order inside a row
    order = pa.array([i for row in rows for i in row], pa.int64())
    ordered = lengths[order.to_numpy()]
    example_starts = offsets_from_lengths(ordered)[:-1]
    positions = np.arange(int(ordered.sum()), dtype=np.int64) - np.repeat(example_starts, ordered)
    positions = positions.astype(np.uint16 if max_length <= np.iinfo(np.uint16).max + 1 else np.int32)  # cache size
    row_sizes = np.fromiter((lengths[row].sum() for row in rows), np.int64, len(rows))
    offsets = pa.array(offsets_from_lengths(row_sizes, np.int32))

    def packed(column: str):
        values = pc.list_flatten(batch.column(column).combine_chunks().take(order))
        return pa.ListArray.from_arrays(offsets, values)

    return pa.table({
        "input_ids": packed("input_ids"),
        "labels": packed("labels"),
        "position_ids": pa.ListArray.from_arrays(offsets, pa.array(positions)),
    })


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


