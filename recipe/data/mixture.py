"""Several data sets in one run (--data_path entries: recipe/config/data_sources.py): each read with its own
format and field names, weighted, then joined. The rule, by dialogues:

- each source is split on its own (its dataset's validation split, else `validation_split_ratio` of its
  dialogues), so validation holds every source and perplexity can be reported per source;
- `weight` scales the source's training dialogues: 0.5 takes a seeded half of them, 1 all, 2.5 every dialogue
  twice and a seeded half once more (oversampling repeats whole dialogues); validation is never weighted;
- the weighted sources are concatenated; the Trainer shuffles the whole each epoch.

This is TRL's `dataset_mixture` and alignment-handbook's `dataset_mixer` (a share of each data set's dialogues,
concatenated, then shuffled) with oversampling added; LLaMA-Factory's `interleave_under` / `interleave_over`
instead draw from the sources with probabilities until the first (or last) one is exhausted.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from ..config import DataArguments
from ..config.data_sources import DataSource
from .dialogues import DialogueTable


def source_arguments(args: DataArguments, source: DataSource) -> DataArguments:
    """The run's data options with this source's path and its own reading options in place."""
    return dataclasses.replace(args, data_path=[source.path], **source.options)


def weighted_indices(count: int, weight: float, seed: int) -> np.ndarray:
    """Indices of a source's dialogues taken `weight` times: whole copies, then a seeded share, in file order."""
    copies, share = int(weight), weight - int(weight)
    extra = np.sort(np.random.default_rng(seed).permutation(count)[: round(count * share)])
    return np.concatenate([np.tile(np.arange(count), copies), extra]).astype(np.int64)


def weighted(table: DialogueTable, weight: float, seed: int) -> DialogueTable:
    return table if weight == 1 else table.select(weighted_indices(len(table), weight, seed))


def concatenate(tables: list[DialogueTable]) -> DialogueTable:
    """The tables one after the other (a table alone stays itself)."""
    import datasets

    if len(tables) == 1:
        return tables[0]
    digest = hashlib.sha256("+".join(table.fingerprint for table in tables).encode()).hexdigest()
    return DialogueTable(datasets.concatenate_datasets([table.dataset for table in tables]), digest)


def source_of(where: str, paths: list[str]) -> str | None:
    """The source a dialogue came from, by its `where` (which starts with its path)."""
    for path in sorted(paths, key=len, reverse=True):
        if where == path or where.startswith(path + " "):
            return path
    return None
