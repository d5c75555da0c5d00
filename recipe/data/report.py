"""The data report: counts a user can check against their file (read, skipped, split, windowed,
packed), written to data_report.json and summarised at the start of a run."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import DataArguments
from .audit import SHOWN_SPEAKERS, column_array
from .errors import SHOWN_PROBLEMS


def encoding_options(args: DataArguments) -> dict[str, Any]:
    names = ("max_length", "overflow_strategy", "turn_template", "turn_separator", "train_on_speakers")
    names += ("use_chat_template", "role_to_speaker")
    return {name: getattr(args, name) for name in names}


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    array = np.asarray(values)
    return {
        "p50": round(float(np.percentile(array, 50)), 1),
        "p90": round(float(np.percentile(array, 90)), 1),
        "p99": round(float(np.percentile(array, 99)), 1),
        "max": int(array.max()),
        "mean": round(float(array.mean()), 2),
    }


def _split_report(examples, kept, batches, audit: dict[str, Any] | None, args: DataArguments) -> dict[str, Any]:
    """Counts of one split, from the columns tokenization wrote: dialogues and windows from all its
    `examples`, tokens from those `kept` for training (the ones with a target)."""
    if examples is None or audit is None:
        return {"dialogues": 0}
    lengths = column_array(kept, "num_tokens")
    dialogue_tokens = column_array(examples, "num_dialogue_tokens")
    windows = np.bincount(column_array(examples, "dialogue_index"))
    tokens_dropped = column_array(examples, "tokens_dropped")
    tokens = int(lengths.sum())
    if args.padding == "packing":
        rows, row_length = len(batches), args.max_length
    elif args.padding == "max_length":
        rows, row_length = len(lengths), args.max_length
    else:
        rows, row_length = len(lengths), None
    batching = {"mode": args.padding, "rows": rows}
    if row_length:
        batching["padding_share_of_row_tokens"] = round(1 - tokens / (rows * row_length), 4)
    return {
        "dialogues": audit["dialogues"],
        "turns": sum(audit["turns_per_speaker"].values()),
        "turns_per_speaker": audit["turns_per_speaker"],
        "examples": len(lengths),
        "tokens": tokens,
        "loss_tokens": audit["loss_tokens"],
        "labels": {
            "loss_tokens_per_speaker": audit["loss_tokens_per_speaker"],
            "dialogues_with_eos_in_loss": audit["eos_in_loss"],
            "masked_examples_left_out": audit["masked_examples"],
        },
        "tokens_per_dialogue": _percentiles(dialogue_tokens[dialogue_tokens > 0]),
        "tokens_per_example": _percentiles(lengths),
        "windows": {
            "dialogues_split": int((windows > 1).sum()),
            "windows_created": int(np.maximum(windows - 1, 0).sum()),
            "turns_split_inside": int(column_array(examples, "turns_split_inside").sum()),
        },
        "truncation": {
            "dialogues_truncated": int((tokens_dropped > 0).sum()),
            "tokens_dropped": int(tokens_dropped.sum()),
        },
        "batching": batching,
    }


def data_report(args, sources, skipped_count: int, skipped, splits: dict[str, tuple]) -> dict[str, Any]:
    """Counts a user can check against their file: what was read, skipped, split, windowed, packed, and
    what the loss sees. `sources`: what each --data_path entry read; `splits` maps train / validation to
    (examples, examples kept, training rows, label audit)."""
    formats: dict[str, int] = {}
    for read in sources:
        for name, count in read.format_counts.items():
            formats[name] = formats.get(name, 0) + count
    report = {
        "data_path": args.data_paths_text,
        "validation_path": args.validation_path,
        "formats": formats,
        "dialogues_read": sum(len(read.dialogues) for read in sources),
        "dialogues_used": sum(split[-1]["dialogues"] for split in splits.values()),
        "skipped": {
            "count": skipped_count,
            "first": [{"where": where, "reason": reason} for where, reason in skipped[:SHOWN_PROBLEMS]],
        },
        "split": {
            "validation_split_ratio": 0 if args.validation_path else args.validation_split_ratio,
            "split_seed": args.split_seed,
        },
        "options": encoding_options(args) | {"padding": args.padding},
        **{name: _split_report(*splits.get(name, (None,) * 4), args) for name in ("train", "validation")},
    }
    if len(sources) > 1:
        report["sources"] = source_reports(args, sources, {name: split[:2] for name, split in splits.items()})
    return report


def source_reports(args, sources, splits: dict[str, tuple]) -> list[dict[str, Any]]:
    """Per --data_path entry: dialogues read, and per split (`splits`: its examples and those kept for training)
    its dialogues (a weighted source's repeats counted), tokens and loss tokens, with its share of the split's
    loss tokens (counted on Arrow columns)."""
    import pyarrow.compute as pc

    def columns(examples, names):
        return examples.select_columns(names).with_format("arrow")[:]

    def of_source(where, path):
        return pc.or_(pc.equal(where, path), pc.starts_with(where, path + " "))

    reports = []
    for source, read in zip(args.sources, sources):
        entry = {"path": source.path, "weight": source.weight, "options": source.options,
                 "dialogues_read": len(read.dialogues), "skipped": read.skipped_count}
        for name, (examples, kept) in splits.items():
            starts = columns(examples, ["source", "window_index"])
            dialogues = pc.and_(of_source(starts.column("source"), source.path),
                                pc.equal(starts.column("window_index"), 0))
            table = columns(kept, ["source", "num_tokens", "num_loss_tokens"])
            mine = of_source(table.column("source"), source.path)
            loss = table.column("num_loss_tokens")
            total_loss = pc.sum(loss).as_py() or 0
            loss_tokens = pc.sum(pc.filter(loss, mine)).as_py() or 0
            entry[name] = {
                "dialogues": pc.sum(pc.cast(dialogues, "int64")).as_py() or 0,
                "tokens": pc.sum(pc.filter(table.column("num_tokens"), mine)).as_py() or 0,
                "loss_tokens": loss_tokens,
                "share_of_loss_tokens": round(loss_tokens / total_loss, 4) if total_loss else 0.0,
            }
        reports.append(entry)
    return reports


def format_labels(split: dict[str, Any]) -> str:
    """What the loss sees in one split: tokens per speaker, EOS targets, examples left out."""
    labels = split["labels"]
    speakers = list(labels["loss_tokens_per_speaker"].items())
    per_speaker = ", ".join(f"{name} {count:,}" for name, count in speakers[:SHOWN_SPEAKERS])
    per_speaker += f", {len(speakers) - SHOWN_SPEAKERS} more" if len(speakers) > SHOWN_SPEAKERS else ""
    return (
        f"loss: {split['loss_tokens']:,} tokens ({per_speaker or 'none'}); EOS in the loss for "
        f"{labels['dialogues_with_eos_in_loss']:,} of {split['dialogues']:,} dialogues; "
        f"{labels['masked_examples_left_out']:,} examples with every label masked, left out"
    )


def format_report(report: dict[str, Any]) -> str:
    """A short, human summary of `data_report`."""
    if report.get("streaming"):
        lines = [f"data: {report['data_path']}, streamed (read, shuffled, tokenized and packed while training: "
                 "not counted before)",
                 f"validation: {report['validation_path'] or 'none'}, {report['validation']['dialogues']} dialogues"]
    else:
        lines = [f"data: {report['data_path']} ({', '.join(f'{k}: {v}' for k, v in report['formats'].items())})"]
        lines.append(
            f"dialogues: {report['dialogues_read']} read, {report['skipped']['count']} skipped, "
            f"{report['train']['dialogues']} train / {report['validation']['dialogues']} validation"
        )
    for name in ("train", "validation"):
        split = report[name]
        if not split.get("examples"):
            continue
        per_dialogue = split["tokens_per_dialogue"]
        batching = split["batching"]
        padding = batching.get("padding_share_of_row_tokens")
        lines.append(
            f"{name}: {split['turns']} turns, {split['examples']} examples, {split['tokens']} tokens "
            f"({split['loss_tokens']} in the loss); tokens per dialogue p50 {per_dialogue['p50']:.0f}, "
            f"p90 {per_dialogue['p90']:.0f}, max {per_dialogue['max']}; "
            f"{split['windows']['windows_created']} extra windows, "
            f"{split['truncation']['tokens_dropped']} tokens truncated; "
            f"{batching['mode']}: {batching['rows']} rows"
            + (f", {padding:.1%} padding" if padding is not None else "")
        )
        lines.append(f"{name} {format_labels(split)}")
    for entry in report.get("sources") or []:
        train = entry.get("train") or {}
        lines.append(
            f"source {entry['path']} (weight {entry['weight']:g}): {entry['dialogues_read']:,} dialogues read; "
            f"train {train.get('dialogues', 0):,} dialogues, {train.get('tokens', 0):,} tokens, "
            f"{train.get('share_of_loss_tokens', 0):.1%} of the loss tokens"
        )
    if report["skipped"]["count"]:
        first = "; ".join(f"{p['where']}: {p['reason']}" for p in report["skipped"]["first"])
        lines.append(f"skipped {report['skipped']['count']}: {first}")
    return "\n".join(lines)

