"""The whole data path used by training, evaluation and scripts/prepare_data.py: read, split,
tokenize (through `datasets.map`, cached by fingerprint), pack, and report."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..common.files import atomic_write_json, atomic_write_jsonl
from ..common.run_dir import DATA_REPORT
from ..config import DataArguments
from .audit import check_label_audit, column_array, drop_masked_examples, label_audit
from .dialogues import Dialogue, DialogueTable, data_cache_dir
from .encoding import ENCODING_VERSION, encode_batch, require_fast_tokenizer
from .errors import DialogueDataError
from .formats import SKIPPED_KEPT, DialogueFile, check_data_path, read_dialogues
from .mixture import concatenate, source_arguments, weighted
from .packing import PackedRows, pack_layout
from .report import data_report, encoding_options
from .streaming import StreamedRows

logger = logging.getLogger(__name__)


def split_dialogues(
    dialogues: DialogueTable | list[Dialogue], validation_split_ratio: float, seed: int, path: str = "the data"
) -> tuple[DialogueTable | list[Dialogue], DialogueTable | list[Dialogue]]:
    """Hold out a share of whole dialogues, chosen by `seed`; each side keeps file order (a table is split
    by index, without reading its dialogues).

    Raises:
        DialogueDataError: when a side would be empty.
    """
    count = len(dialogues)
    if validation_split_ratio == 0:
        logger.warning("validation_split_ratio is 0: training on all %d dialogues, with no evaluation", count)
        return dialogues, dialogues[:0]
    n_validation = max(1, round(count * validation_split_ratio))
    if count - n_validation < 1:
        raise DialogueDataError(
            f"{path} has {count} valid dialogue{'s' if count != 1 else ''}: too few for a "
            f"{validation_split_ratio:.0%} validation split (each side needs at least one). Add dialogues, "
            "pass --validation_path with separate validation data, or set --validation_split_ratio 0 "
            "to train on all of them without evaluation."
        )
    order = np.random.default_rng(seed).permutation(count)
    held_out = np.zeros(count, bool)
    held_out[order[:n_validation]] = True
    if isinstance(dialogues, DialogueTable):
        return dialogues.select(np.flatnonzero(~held_out)), dialogues.select(np.flatnonzero(held_out))
    train = [d for d, out in zip(dialogues, held_out) if not out]
    validation = [d for d, out in zip(dialogues, held_out) if out]
    return train, validation




def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of everything about a tokenizer that changes its output."""
    require_fast_tokenizer(tokenizer)
    digest = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode())
    extra = [tokenizer.eos_token_id, tokenizer.bos_token_id, getattr(tokenizer, "chat_template", None)]
    digest.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def tokenize_dialogues(
    dialogues: DialogueTable | list[Dialogue],
    tokenizer,
    args: DataArguments,
    split_name: str,
    with_token_turns: bool = False,
):
    """Tokenize dialogues with `datasets.map`, a batch at a time from their Arrow table, cached on disk under a
    fingerprint of the dialogues, the tokenizer and every option that changes the result: a second run with
    the same inputs loads the cached table instead of tokenizing again."""
    table = DialogueTable.from_dialogues(dialogues)
    fingerprint = hashlib.sha256(
        json.dumps(
            [ENCODING_VERSION, table.fingerprint, tokenizer_fingerprint(tokenizer), encoding_options(args),
             with_token_turns],
            sort_keys=True,
        ).encode()
    ).hexdigest()[:24]
    cache_dir = data_cache_dir(args)
    cache_dir.mkdir(parents=True, exist_ok=True)
    rows = table.dataset.with_format("arrow")  # encode_batch reads arrow batches
    num_proc = args.preprocessing_num_workers if args.preprocessing_num_workers and len(rows) > 1 else None
    return rows.map(
        encode_batch,
        batched=True,
        with_indices=True,
        num_proc=num_proc,
        remove_columns=rows.column_names,
        fn_kwargs={"tokenizer": tokenizer, "args": args, "with_token_turns": with_token_turns},
        cache_file_name=str(cache_dir / f"{split_name}-tokenized-{fingerprint}.arrow"),
        new_fingerprint=fingerprint,
        desc=f"Tokenizing {split_name} dialogues",
    ).with_format(None)


def pack_examples(examples, args: DataArguments, split_name: str) -> PackedRows:
    """Pack tokenized examples into rows of max_length tokens (the layout cached like tokenization)."""
    fingerprint = hashlib.sha256(
        f"{examples._fingerprint}-{args.max_length}-{args.packing_batch_size}-{ENCODING_VERSION}".encode()
    ).hexdigest()[:24]
    layout = examples.select_columns(["num_tokens"]).with_format("arrow").map(
        pack_layout,
        batched=True,
        with_indices=True,
        batch_size=args.packing_batch_size,
        remove_columns=["num_tokens"],
        fn_kwargs={"max_length": args.max_length},
        cache_file_name=str(data_cache_dir(args) / f"{split_name}-packed-{fingerprint}.arrow"),
        new_fingerprint=fingerprint,
        desc=f"Packing {split_name} examples",
    ).with_format(None)
    return PackedRows(examples, layout)


def _training_form(examples, args: DataArguments, split_name: str):
    if args.padding == "packing":
        return pack_examples(examples, args, split_name)
    return examples.select_columns(["input_ids", "labels"])


@dataclass
class DialogueSplits:
    sources: list[DialogueFile]  # one per --data_path entry
    skipped: list[tuple[str, str]]  # the first SKIPPED_KEPT
    skipped_count: int
    train: DialogueTable
    validation: DialogueTable


@dataclass
class PreparedData:
    """Tokenized splits (windows), their training form (packed or not), the data report, and the dialogues
    of each split (Arrow tables on disk: reading them costs nothing until they are iterated)."""

    train_examples: Any  # datasets.Dataset, one row per window, with bookkeeping columns
    validation_examples: Any | None
    train_dataset: Any  # what the Trainer gets: packed rows or examples, model inputs only
    validation_dataset: Any | None
    report: dict[str, Any]
    args: DataArguments
    splits: DialogueSplits
    key: str  # of the whole preparation (`prepared_key`): names what is cached of it

    @property
    def train_dialogues(self) -> DialogueTable:
        return self.splits.train

    @property
    def validation_dialogues(self) -> DialogueTable:
        return self.splits.validation


def check_data_paths(args: DataArguments, options_from: str | None = None) -> None:
    """data_path and validation_path name something that exists (or a Hub dataset): checked before a run writes
    anything. `options_from`: where the options came from, when not the command line (a run's run_config.yaml)."""
    for source in args.sources:
        check_data_path(source.path, _option("data_path", options_from))
    if args.validation_path:
        check_data_path(args.validation_path, _option("validation_path", options_from))


def _option(name: str, options_from: str | None) -> str:
    return f"{name} of {options_from}" if options_from else f"--{name}"


def load_dialogue_splits(args: DataArguments, options_from: str | None = None) -> DialogueSplits:
    """Read the data and split it as training does: a validation file, a dataset's validation split,
    or a deterministic share of the dialogues. The evaluation script calls this to get the same split
    (`options_from`: the run_config.yaml or recipe the options came from, named in an error).

    Several sources (recipe/data/mixture.py): each is read with its own options and split on its own, its
    training dialogues weighted; then the sources are joined."""
    files, trains, validations = [], [], []
    for position, source in enumerate(args.sources):
        source_args = source_arguments(args, source)
        read = read_dialogues(source.path, source_args, option=_option("data_path", options_from))
        files.append(read)
        dialogues = read.dialogues[: args.max_dialogues] if args.max_dialogues else read.dialogues
        if args.validation_path:
            train, validation = dialogues, dialogues[:0]
        elif read.validation_dialogues is not None:
            train, validation = dialogues, read.validation_dialogues
        else:
            train, validation = split_dialogues(dialogues, args.validation_split_ratio, args.split_seed, source.path)
        trains.append(weighted(train, source.weight, args.split_seed + position))
        validations.append(validation)
    if args.validation_path:
        # A dataset folder validates on its "validation" split (or --dataset_validation_split), never its train split.
        validation_split = args.dataset_validation_split or "validation"
        validation_file = read_dialogues(args.validation_path, args, split=validation_split,
                                         option=_option("validation_path", options_from))
        files.append(validation_file)
        validations = [validation_file.dialogues]
    skipped = [pair for read in files for pair in read.skipped][:SKIPPED_KEPT]
    return DialogueSplits(files[: len(args.sources)], skipped, sum(read.skipped_count for read in files),
                          concatenate(trains), concatenate([v for v in validations if len(v)] or validations[:1]))


def build_datasets(
    args: DataArguments, tokenizer, main_process_first=contextlib.nullcontext
) -> PreparedData:
    """The whole data path used by training and by scripts/prepare_data.py: read, split, tokenize, audit the
    labels (refusing a loss mask that cannot train, leaving out examples with no target), pack.

    A preparation done before from the same inputs, options and tokenizer is loaded from the cache without
    reading the data again (see `prepared_key`). Under several processes, `main_process_first` lets the main
    process prepare while the others wait, then load what it wrote.
    """
    require_fast_tokenizer(tokenizer)
    if args.streaming:
        with main_process_first():
            return _prepare_streamed(args, tokenizer)
    with main_process_first():
        splits = load_dialogue_splits(args)  # read once into Arrow tables; loaded from them after
        key = prepared_key(args, tokenizer, splits)
        prepared = load_prepared(key, args, splits)
        if prepared is None:
            prepared = _prepare(splits, args, tokenizer, key)
            save_prepared(key, prepared)
        return prepared


def _prepare(splits: DialogueSplits, args: DataArguments, tokenizer, key: str) -> PreparedData:
    examples = {"train": tokenize_dialogues(splits.train, tokenizer, args, "train")}
    if len(splits.validation):
        examples["validation"] = tokenize_dialogues(splits.validation, tokenizer, args, "validation")
    audits = {name: label_audit(split) for name, split in examples.items()}
    check_label_audit(audits["train"], audits.get("validation"), args)  # before any training
    kept = {name: drop_masked_examples(split, audits[name], name) for name, split in examples.items()}
    rows = {name: _training_form(split, args, name) for name, split in kept.items()}
    report = data_report(
        args, splits.sources, splits.skipped_count, splits.skipped,
        {name: (examples[name], kept[name], rows[name], audits[name]) for name in examples},
    )
    return PreparedData(kept["train"], kept.get("validation"), rows["train"], rows.get("validation"), report,
                        args, splits, key)


def _prepare_streamed(args: DataArguments, tokenizer) -> PreparedData:
    """--streaming: the training rows as an iterable read while training; the validation file prepared as usual
    (it is audited and reported; the training stream cannot be before it is read)."""
    validation = {}
    splits = DialogueSplits([], [], 0, DialogueTable.from_dialogues([]), DialogueTable.from_dialogues([]))
    if args.validation_path:
        read = read_dialogues(args.validation_path, args, split=args.dataset_validation_split or "validation",
                              option="--validation_path")
        splits = DialogueSplits([read], read.skipped, read.skipped_count, splits.train, read.dialogues)
        examples = tokenize_dialogues(read.dialogues, tokenizer, args, "validation")
        audit = label_audit(examples)
        check_label_audit(audit, None, args)
        kept = drop_masked_examples(examples, audit, "validation")
        validation = {"validation": (examples, kept, _training_form(kept, args, "validation"), audit)}
    report = data_report(args, splits.sources, splits.skipped_count, splits.skipped, validation) | {
        "streaming": True, "train": {"dialogues": 0, "streamed": True}}
    rows = validation.get("validation", (None,) * 4)
    return PreparedData(None, rows[1], StreamedRows(args, tokenizer, args.split_seed), rows[2], report, args, splits,
                        key="")


def prepared_key(args: DataArguments, tokenizer, splits: DialogueSplits) -> str:
    """A key for a whole preparation: the dialogues of each split (their tables' fingerprints: the inputs'
    SHA-256 or dataset fingerprints, how they were read and split), every option that changes the result
    and the tokenizer."""
    options = {name: value for name, value in dataclasses.asdict(args).items()
               if name not in ("dataset_cache_dir", "preprocessing_num_workers")}
    identity = [ENCODING_VERSION, splits.train.fingerprint, DialogueTable.from_dialogues(splits.validation).fingerprint,
                options, tokenizer_fingerprint(tokenizer)]
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _manifest_path(key: str, args: DataArguments) -> Path:
    return data_cache_dir(args) / f"prepared-{key}.json"


def save_prepared(key: str, prepared: PreparedData) -> None:
    """Record where the prepared splits are (the arrow files `datasets.map` wrote) and the report, so
    that the next run with the same key loads them."""
    splits = {}
    for name, examples, rows in (("train", prepared.train_examples, prepared.train_dataset),
                                 ("validation", prepared.validation_examples, prepared.validation_dataset)):
        if examples is None:
            continue
        files = {"examples": _single_file(examples), "rows": _single_file(rows) if prepared.args.padding == "packing"
                 else None}
        if files["examples"] is None or (prepared.args.padding == "packing" and files["rows"] is None):
            return  # held in memory, not in one file: nothing to record
        splits[name] = files
    atomic_write_json(_manifest_path(key, prepared.args), {"report": prepared.report, "splits": splits})


def _single_file(dataset) -> str | None:
    files = dataset.cache_files
    return files[0]["filename"] if len(files) == 1 else None


def load_prepared(key: str, args: DataArguments, splits: DialogueSplits) -> PreparedData | None:
    """The preparation recorded under `key`, or None when there is none (or a file of it is gone)."""
    import datasets

    manifest = _manifest_path(key, args)
    try:
        record = json.loads(manifest.read_text(encoding="utf-8"))
        loaded = {}
        for name, split in record["splits"].items():
            examples = datasets.Dataset.from_file(split["examples"])
            with_target = column_array(examples, "num_loss_tokens") > 0
            if not with_target.all():  # the examples the audit left out (every label masked)
                examples = examples.select(np.flatnonzero(with_target))
            rows = (PackedRows(examples, datasets.Dataset.from_file(split["rows"])) if args.padding == "packing"
                    else examples.select_columns(["input_ids", "labels"]))
            loaded[name] = (examples, rows)
    except (OSError, ValueError, KeyError):  # no record yet, a cleaned cache, a record of another version
        return None
    logger.info("data preparation loaded from the cache (%s)", manifest)
    train, validation = loaded["train"], loaded.get("validation", (None, None))
    return PreparedData(train[0], validation[0], train[1], validation[1], record["report"], args, splits, key)


def example_texts(examples, tokenizer) -> Iterator[dict[str, Any]]:
    """Rows for the inspection files: the decoded text exactly as the model reads it (a batch at a time)."""
    columns = ("input_ids", "source", "window_index", "num_tokens", "num_loss_tokens")
    for batch in examples.select_columns(list(columns)).iter(batch_size=1000):
        texts = tokenizer.batch_decode(batch["input_ids"])
        for text, source, window, num_tokens, num_loss_tokens in zip(texts, *(batch[name] for name in columns[1:])):
            yield {
                "text": text,
                "source": source,
                "window_index": window,
                "num_tokens": num_tokens,
                "num_loss_tokens": num_loss_tokens,
            }


def write_prepared_data(prepared: PreparedData, tokenizer, output_dir: str | os.PathLike) -> list[Path]:
    """Write train.jsonl, validation.jsonl and data_report.json for inspection. The decoded files are kept in
    the data cache beside the preparation: a second call with the same preparation copies them."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, examples in (("train", prepared.train_examples), ("validation", prepared.validation_examples)):
        if examples is None:
            continue
        kept = data_cache_dir(prepared.args) / f"inspection-{prepared.key}-{name}.jsonl"
        if not kept.is_file():
            atomic_write_jsonl(kept, example_texts(examples, tokenizer))
        partial, path = output_dir / f".{name}.jsonl.partial", output_dir / f"{name}.jsonl"
        shutil.copyfile(kept, partial)
        os.replace(partial, path)
        paths.append(path)
    paths.append(atomic_write_json(output_dir / DATA_REPORT, prepared.report))
    return paths
