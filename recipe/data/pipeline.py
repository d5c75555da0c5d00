"""The whole data path used by training, evaluation and scripts/prepare_data.py: read, split,
tokenize (through `datasets.map`, cached by fingerprint), pack, and report."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..common.files import atomic_write_json, atomic_write_jsonl, file_sha256
from ..common.run_dir import DATA_REPORT
from ..config import DataArguments
from .audit import check_label_audit, column_array, drop_masked_examples, label_audit
from .encoding import ENCODING_VERSION, dialogue_table, encode_batch, require_fast_tokenizer
from .errors import DialogueDataError
from .formats import Dialogue, DialogueFile, check_data_path, read_dialogues
from .packing import pack_batch
from .report import data_report, encoding_options

logger = logging.getLogger(__name__)


def split_dialogues(
    dialogues: list[Dialogue], validation_split_ratio: float, seed: int, path: str = "the data"
) -> tuple[list[Dialogue], list[Dialogue]]:
    """Hold out a share of whole dialogues, chosen by `seed`; each side keeps file order.

    Raises:
        DialogueDataError: when a side would be empty.
    """
    count = len(dialogues)
    if validation_split_ratio == 0:
        logger.warning("validation_split_ratio is 0: training on all %d dialogues, with no evaluation", count)
        return list(dialogues), []
    n_validation = max(1, round(count * validation_split_ratio))
    if count - n_validation < 1:
        raise DialogueDataError(
            f"{path} has {count} valid dialogue{'s' if count != 1 else ''}: too few for a "
            f"{validation_split_ratio:.0%} validation split (each side needs at least one). Add dialogues, "
            "pass --validation_path with separate validation data, or set --validation_split_ratio 0 "
            "to train on all of them without evaluation."
        )
    order = np.random.default_rng(seed).permutation(count)
    held_out = set(order[:n_validation].tolist())
    train = [d for i, d in enumerate(dialogues) if i not in held_out]
    validation = [d for i, d in enumerate(dialogues) if i in held_out]
    return train, validation




def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of everything about a tokenizer that changes its output."""
    require_fast_tokenizer(tokenizer)
    digest = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode())
    extra = [tokenizer.eos_token_id, tokenizer.bos_token_id, getattr(tokenizer, "chat_template", None)]
    digest.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _dialogues_fingerprint(dialogues: list[Dialogue]) -> str:
    digest = hashlib.sha256()
    for d in dialogues:
        digest.update(json.dumps([d.speakers, d.texts, d.roles], ensure_ascii=False).encode())
    return digest.hexdigest()


def _cache_dir(args: DataArguments) -> Path:
    return Path(args.dataset_cache_dir) if args.dataset_cache_dir else default_cache_dir()


def default_cache_dir() -> Path:
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / "dialogue_finetune"


def tokenize_dialogues(
    dialogues: list[Dialogue],
    tokenizer,
    args: DataArguments,
    split_name: str,
    with_token_turns: bool = False,
    main_process_first=contextlib.nullcontext,
):
    """Tokenize dialogues with `datasets.map`, cached on disk under a fingerprint of the dialogues,
    the tokenizer and every option that changes the result: a second run with the same inputs
    loads the cached table instead of tokenizing again."""
    import datasets

    fingerprint = hashlib.sha256(
        json.dumps(
            [ENCODING_VERSION, _dialogues_fingerprint(dialogues), tokenizer_fingerprint(tokenizer),
             encoding_options(args), with_token_turns],
            sort_keys=True,
        ).encode()
    ).hexdigest()[:24]
    cache_dir = _cache_dir(args)
    cache_dir.mkdir(parents=True, exist_ok=True)
    table = datasets.Dataset(dialogue_table(dialogues)).with_format("arrow")  # encode_batch reads arrow batches
    num_proc = args.preprocessing_num_workers if args.preprocessing_num_workers and len(dialogues) > 1 else None
    with main_process_first():
        return table.map(
            encode_batch,
            batched=True,
            num_proc=num_proc,
            remove_columns=table.column_names,
            fn_kwargs={"tokenizer": tokenizer, "args": args, "with_token_turns": with_token_turns},
            cache_file_name=str(cache_dir / f"{split_name}-tokenized-{fingerprint}.arrow"),
            new_fingerprint=fingerprint,
            desc=f"Tokenizing {split_name} dialogues",
        ).with_format(None)


def pack_examples(examples, args: DataArguments, split_name: str, main_process_first=contextlib.nullcontext):
    """Pack tokenized examples into rows of max_length tokens (cached like tokenization)."""
    fingerprint = hashlib.sha256(
        f"{examples._fingerprint}-{args.max_length}-{args.packing_batch_size}-{ENCODING_VERSION}".encode()
    ).hexdigest()[:24]
    cache_dir = _cache_dir(args)
    with main_process_first():
        return examples.select_columns(["input_ids", "labels"]).with_format("arrow").map(
            pack_batch,
            batched=True,
            batch_size=args.packing_batch_size,
            remove_columns=["input_ids", "labels"],
            fn_kwargs={"max_length": args.max_length},
            cache_file_name=str(cache_dir / f"{split_name}-packed-{fingerprint}.arrow"),
            new_fingerprint=fingerprint,
            desc=f"Packing {split_name} examples",
        ).with_format(None)


def _training_form(examples, args: DataArguments, split_name: str, main_process_first):
    if args.padding == "packing":
        return pack_examples(examples, args, split_name, main_process_first)
    return examples.select_columns(["input_ids", "labels"])


@dataclass
class DialogueSplits:
    source: DialogueFile
    skipped: list[tuple[str, str]]
    train: list[Dialogue]
    validation: list[Dialogue]


@dataclass
class PreparedData:
    """Tokenized splits (windows), their training form (packed or not), and the data report.

    The dialogues themselves are read again only when asked for (`train_dialogues`): a run whose
    preparation comes from the cache never parses the data file.
    """

    train_examples: Any  # datasets.Dataset, one row per window, with bookkeeping columns
    validation_examples: Any | None
    train_dataset: Any  # what the Trainer gets: packed rows or examples, model inputs only
    validation_dataset: Any | None
    report: dict[str, Any]
    args: DataArguments
    splits: DialogueSplits | None = None

    def dialogue_splits(self) -> DialogueSplits:
        if self.splits is None:
            self.splits = load_dialogue_splits(self.args)
        return self.splits

    @property
    def train_dialogues(self) -> list[Dialogue]:
        return self.dialogue_splits().train

    @property
    def validation_dialogues(self) -> list[Dialogue]:
        return self.dialogue_splits().validation


def check_data_paths(args: DataArguments, options_from: str | None = None) -> None:
    """data_path and validation_path name something that exists (or a Hub dataset): checked before a run writes
    anything. `options_from`: where the options came from, when not the command line (a run's run_config.yaml)."""
    for name in ("data_path", "validation_path"):
        if getattr(args, name):
            check_data_path(getattr(args, name), _option(name, options_from))


def _option(name: str, options_from: str | None) -> str:
    return f"{name} of {options_from}" if options_from else f"--{name}"


def load_dialogue_splits(args: DataArguments, options_from: str | None = None) -> DialogueSplits:
    """Read the data and split it as training does: a validation file, a dataset's validation split,
    or a deterministic share of the dialogues. The evaluation script calls this to get the same split
    (`options_from`: the run_config.yaml or recipe the options came from, named in an error)."""
    source = read_dialogues(args.data_path, args, option=_option("data_path", options_from))
    dialogues = source.dialogues[: args.max_dialogues] if args.max_dialogues else source.dialogues
    skipped = list(source.skipped)
    if args.validation_path:
        # A dataset folder validates on its "validation" split (or --dataset_validation_split), never its train split.
        validation_split = args.dataset_validation_split or "validation"
        validation_file = read_dialogues(args.validation_path, args, split=validation_split,
                                         option=_option("validation_path", options_from))
        train, validation = dialogues, validation_file.dialogues
        skipped += validation_file.skipped
    elif source.validation_dialogues is not None:
        train, validation = dialogues, source.validation_dialogues
    else:
        train, validation = split_dialogues(dialogues, args.validation_split_ratio, args.split_seed, args.data_path)
    return DialogueSplits(source, skipped, train, validation)


def build_datasets(
    args: DataArguments, tokenizer, main_process_first=contextlib.nullcontext
) -> PreparedData:
    """The whole data path used by training and by scripts/prepare_data.py: read, split, tokenize, audit the
    labels (refusing a loss mask that cannot train, leaving out examples with no target), pack.

    A preparation done before from the same files, options and tokenizer is loaded from the cache
    without reading the data again (see `prepared_key`).
    """
    require_fast_tokenizer(tokenizer)
    key = prepared_key(args, tokenizer)
    cached = load_prepared(key, args) if key else None
    if cached is not None:
        return cached
    splits = load_dialogue_splits(args)
    examples = {"train": tokenize_dialogues(splits.train, tokenizer, args, "train",
                                            main_process_first=main_process_first)}
    if splits.validation:
        examples["validation"] = tokenize_dialogues(
            splits.validation, tokenizer, args, "validation", main_process_first=main_process_first
        )
    audits = {name: label_audit(split) for name, split in examples.items()}
    check_label_audit(audits["train"], audits.get("validation"), args)  # before any training
    kept = {name: drop_masked_examples(split, audits[name], name) for name, split in examples.items()}
    rows = {name: _training_form(split, args, name, main_process_first) for name, split in kept.items()}
    report = data_report(
        args, splits.source, splits.skipped,
        {name: (examples[name], kept[name], rows[name], audits[name]) for name in examples},
    )
    prepared = PreparedData(kept["train"], kept.get("validation"), rows["train"], rows.get("validation"), report,
                            args, splits)
    if key:
        save_prepared(key, prepared)
    return prepared


def prepared_key(args: DataArguments, tokenizer) -> str | None:
    """A key for a whole preparation, when its inputs are files whose bytes identify them (not for a
    saved or Hub dataset, which are read through their own caches): every option that changes the
    result, the files' SHA-256 and the tokenizer."""
    paths = [args.data_path] + ([args.validation_path] if args.validation_path else [])
    if not all(os.path.isfile(path) for path in paths):
        return None
    options = {name: value for name, value in dataclasses.asdict(args).items()
               if name not in ("dataset_cache_dir", "preprocessing_num_workers")}
    identity = [ENCODING_VERSION, [file_sha256(path) for path in paths], options, tokenizer_fingerprint(tokenizer)]
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _manifest_path(key: str, args: DataArguments) -> Path:
    return _cache_dir(args) / f"prepared-{key}.json"


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


def load_prepared(key: str, args: DataArguments) -> PreparedData | None:
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
            rows = (datasets.Dataset.from_file(split["rows"]) if args.padding == "packing"
                    else examples.select_columns(["input_ids", "labels"]))
            loaded[name] = (examples, rows)
    except (OSError, ValueError, KeyError):  # no record yet, a cleaned cache, a record of another version
        return None
    logger.info("data preparation loaded from the cache (%s)", manifest)
    train, validation = loaded["train"], loaded.get("validation", (None, None))
    return PreparedData(train[0], validation[0], train[1], validation[1], record["report"], args)


def example_texts(examples, tokenizer) -> Iterator[dict[str, Any]]:
    """Rows for the inspection files: the decoded text exactly as the model reads it."""
    columns = ("input_ids", "source", "window_index", "num_tokens", "num_loss_tokens")
    for ids, source, window, num_tokens, num_loss_tokens in zip(*(examples[name] for name in columns)):
        yield {
            "text": tokenizer.decode(ids),
            "source": source,
            "window_index": window,
            "num_tokens": num_tokens,
            "num_loss_tokens": num_loss_tokens,
        }


def write_prepared_data(prepared: PreparedData, tokenizer, output_dir: str | os.PathLike) -> list[Path]:
    """Write train.jsonl, validation.jsonl and data_report.json for inspection."""
    output_dir = Path(output_dir)
    paths = [atomic_write_jsonl(output_dir / "train.jsonl", example_texts(prepared.train_examples, tokenizer))]
    if prepared.validation_examples is not None:
        paths.append(
            atomic_write_jsonl(output_dir / "validation.jsonl", example_texts(prepared.validation_examples, tokenizer))
        )
    paths.append(atomic_write_json(output_dir / DATA_REPORT, prepared.report))
    return paths
