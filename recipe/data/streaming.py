"""--streaming true: the training dialogues read, shuffled, tokenized and packed while training runs, for a corpus
larger than the disk cache. Nothing is written; the first step waits for one shuffle buffer, whatever the corpus.

The order is a function of the seed and the pass alone: records in file order (several sources interleaved by
weight), a shuffle buffer of `shuffle_buffer_size` dialogues (each drawn at random from the buffer, seeded by seed and
pass), tokenized a batch at a time by the map path's own `encode_batch`, then packed best-fit within
`packing_batch_size` examples. The passes follow each other as one sequence: a resumed run (after SIGTERM or
kill -9) regenerates it and the Trainer skips the rows its checkpoint already trained, so no dialogue is
trained twice or skipped.
"""

from __future__ import annotations

import itertools
import os
from typing import Any, Iterator

import numpy as np

from ..common.hub import is_hub_id, require_hub
from ..config import DataArguments
from .dialogues import Dialogue
from .encoding import dialogue_table, encode_batch
from .errors import SHOWN_PROBLEMS, DialogueDataError
from .formats import BadDialogue, is_one_dialogue, parse_dialogue
from .mixture import source_arguments
from .packing import packed_row, packed_rows_of
from .sources import UnreadableLine, as_object, json_records, jsonl_records

TOKENIZE_BATCH = 256  # dialogues per tokenizer call


def _records(path: str, args: DataArguments) -> Iterator[tuple[str, Any]]:
    """(where, value) of every dialogue of one source, read lazily: a file a line or chunk at a time, a Hub
    dataset through `datasets` streaming, a saved folder a batch of rows at a time."""
    if os.path.isfile(path):
        if path.endswith(".jsonl"):
            yield from jsonl_records(path)
        else:
            yield from json_records(path, lambda values: is_one_dialogue(values, args))
        return
    import datasets

    if os.path.isdir(path):
        rows = datasets.load_from_disk(path)
        if isinstance(rows, datasets.DatasetDict):
            rows = rows[args.dataset_train_split]
    elif is_hub_id(path):
        require_hub(path, "dataset")  # offline: fails at once, saying how to run without the Hub
        rows = datasets.load_dataset(path, args.dataset_config_name, split=args.dataset_train_split, streaming=True)
    else:
        raise DialogueDataError(f"--data_path {path}: no such file or directory")
    for index, row in enumerate(rows):
        yield f"{path} row {index}", as_object(row)


def _source_dialogues(source, args: DataArguments) -> Iterator[Dialogue]:
    """One source's valid dialogues in file order, `weight` times over. A bad dialogue stops the run at once,
    naming it, or with `on_bad_dialogue skip` is left out."""
    source_args = source_arguments(args, source)
    for _ in range(round(source.weight)):
        taken = 0
        for where, value in _records(source.path, source_args):
            if args.max_dialogues and taken >= args.max_dialogues:
                break
            try:
                if isinstance(value, UnreadableLine):
                    raise BadDialogue(value.reason)
                dialogue = parse_dialogue(value, where, source_args)
            except BadDialogue as problem:
                if args.on_bad_dialogue == "error":
                    raise DialogueDataError(
                        f"{where}: {problem}. Fix it, or pass --on_bad_dialogue skip to leave such dialogues out"
                    ) from None
                continue
            taken += 1
            yield dialogue


def streamed_dialogues(args: DataArguments, rng: np.random.Generator) -> Iterator[Dialogue]:
    """Every valid training dialogue of every source, each source in file order; several sources interleaved,
    the next dialogue drawn from a source chosen at random in proportion to its weight, until all are read
    (so a pass holds each source's dialogues `weight` times, mixed throughout, not one source after another)."""
    streams = [_source_dialogues(source, args) for source in args.sources]
    weights = [source.weight for source in args.sources]
    while streams:
        choice = int(rng.choice(len(streams), p=np.asarray(weights) / sum(weights))) if len(streams) > 1 else 0
        try:
            yield next(streams[choice])
        except StopIteration:
            del streams[choice], weights[choice]


def shuffled(items: Iterator[Any], buffer_size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Items in a random order drawn from a buffer of `buffer_size` (1: the input order)."""
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        slot = int(rng.integers(buffer_size))
        yield buffer[slot]
        buffer[slot] = item
    order = rng.permutation(len(buffer))
    yield from (buffer[i] for i in order)


def batched(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def streamed_examples(dialogues: Iterator[Dialogue], tokenizer, args: DataArguments) -> Iterator[dict[str, Any]]:
    """Training examples (windows with a target) of the dialogues, tokenized a batch at a time by the map
    path's `encode_batch`: the same rows, labels and windows."""
    for batch in batched(dialogues, TOKENIZE_BATCH):
        rows = encode_batch(dialogue_table(batch), tokenizer=tokenizer, args=args)
        columns = rows.select(["input_ids", "labels", "num_loss_tokens", "source"]).to_pydict()
        for ids, labels, loss_tokens, source in zip(*columns.values()):
            if loss_tokens:  # every label masked: the map path leaves these out too
                yield {"input_ids": ids, "labels": labels, "source": source}


class StreamedRows:
    """The Trainer's training data under --streaming: an endless iterable (no length) of passes over the stream,
    pass p shuffled by (seed, p). The Trainer sees one sequence until max_steps, so a resumed run skips exactly
    the rows its checkpoint trained, across passes. `rows(p, with_sources=True)` is one pass, naming the
    dialogue (window) each row holds, for checks. (Training hands it to the Trainer as a torch IterableDataset.)"""

    def __init__(self, args: DataArguments, tokenizer, seed: int):
        self.args, self.tokenizer, self.seed = args, tokenizer, seed

    def rows(self, pass_number: int = 0, with_sources: bool = False) -> Iterator[dict[str, Any]]:
        rng = np.random.default_rng([self.seed, pass_number])
        dialogues = shuffled(streamed_dialogues(self.args, rng), self.args.shuffle_buffer_size, rng)
        examples = streamed_examples(dialogues, self.tokenizer, self.args)
        if self.args.padding != "packing":
            for example in examples:
                yield example if with_sources else {k: example[k] for k in ("input_ids", "labels")}
            return
        for batch in batched(examples, self.args.packing_batch_size):
            for row in packed_rows_of([len(e["input_ids"]) for e in batch], self.args.max_length):
                members = [batch[i] for i in row]
                packed = packed_row(members)
                if with_sources:
                    packed["sources"] = [e["source"] for e in members]
                yield packed

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for pass_number in itertools.count():
            empty = True
            for row in self.rows(pass_number):
                empty = False
                yield row
            if empty:
                raise DialogueDataError(f"--data_path {self.args.data_paths_text}: no training example in the stream")


def check_streaming(args: DataArguments, training_args) -> None:
    """What streaming cannot do, refused in one line before any work."""
    problems = []
    if training_args.max_steps <= 0:
        problems.append("--streaming true needs --max_steps N: a stream's length is not known before it is read")
    strategies = [f"--{name} epoch" for name in ("eval_strategy", "save_strategy")
                  if str(getattr(getattr(training_args, name), "value", getattr(training_args, name))) == "epoch"]
    if strategies:
        problems.append(f"{' and '.join(strategies)} never comes under --streaming true (a stream is one sequence of "
                        "passes); use --eval_strategy steps --eval_steps N --save_strategy steps --save_steps N")
    if args.validation_path is None and args.validation_split_ratio > 0:
        problems.append("--streaming true cannot hold out a share of a stream for validation: give --validation_path "
                        "FILE (prepared as usual), or --validation_split_ratio 0")
    if any(source.weight != round(source.weight) or source.weight < 1 for source in args.sources):
        problems.append("--streaming true takes whole weights only (1, 2, ...: each source read that many times)")
    if problems:
        raise DialogueDataError("; ".join(problems[:SHOWN_PROBLEMS]))
