"""The data report: counts a user can check against their file (read, skipped, split, windowed,
packed), written to data_report.json and summarised at the start of a run."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from ..config import DataArguments
from .encoding import IGNORE_INDEX
from .formats import SHOWN_PROBLEMS, Dialogue

def encoding_options(args: DataArguments) -> dict[str, Any]:
    names = ("max_length", "overflow_strategy", "turn_template", "turn_separator", "train_on_speakers")
    names += ("use_chat_template", "role_to_speaker")
    return {name: getattr(args, name) for name in names}


def _percentiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    array = np.asarray(values)
    return {
        "p50": round(float(np.percentile(array, 50)), 1),
        "p90": round(float(np.percentile(array, 90)), 1),
        "p99": round(float(np.percentile(array, 99)), 1),
        "max": int(array.max()),
        "mean": round(float(array.mean()), 2),
    }


def _split_report(dialogues: list[Dialogue], examples, batches, args: DataArguments) -> dict[str, Any]:
    if examples is None:
        return {"dialogues": 0}
    lengths = [len(ids) for ids in examples["input_ids"]]
    loss_tokens = sum(sum(1 for t in labels if t != IGNORE_INDEX) for labels in examples["labels"])
    dialogue_tokens = [n for n in examples["num_dialogue_tokens"] if n]
    windows = Counter(examples["dialogue_index"])
    tokens = sum(lengths)
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
        "dialogues": len(dialogues),
        "turns": sum(len(d.speakers) for d in dialogues),
        "turns_per_speaker": dict(Counter(s for d in dialogues for s in d.speakers).most_common()),
        "examples": len(lengths),
        "tokens": tokens,
        "loss_tokens": loss_tokens,
        "tokens_per_dialogue": _percentiles(dialogue_tokens),
        "tokens_per_example": _percentiles(lengths),
        "windows": {
            "dialogues_split": sum(1 for n in windows.values() if n > 1),
            "windows_created": sum(n - 1 for n in windows.values()),
            "turns_split_inside": int(sum(examples["turns_split_inside"])),
        },
        "truncation": {
            "dialogues_truncated": sum(1 for n in examples["tokens_dropped"] if n),
            "tokens_dropped": int(sum(examples["tokens_dropped"])),
        },
        "batching": batching,
    }


def data_report(
    args, source, skipped, train, validation, train_examples, validation_examples, train_dataset, validation_dataset
) -> dict[str, Any]:
    """Counts a user can check against their file: what was read, skipped, split, windowed, packed."""
    return {
        "data_path": args.data_path,
        "validation_path": args.validation_path,
        "formats": source.format_counts,
        "dialogues_read": len(source.dialogues),
        "dialogues_used": len(train) + len(validation),
        "skipped": {
            "count": len(skipped),
            "first": [{"where": where, "reason": reason} for where, reason in skipped[:SHOWN_PROBLEMS]],
        },
        "split": {
            "validation_split_ratio": 0 if args.validation_path else args.validation_split_ratio,
            "split_seed": args.split_seed,
        },
        "options": encoding_options(args) | {"padding": args.padding},
        "train": _split_report(train, train_examples, train_dataset, args),
        "validation": _split_report(validation, validation_examples, validation_dataset, args),
    }


def format_report(report: dict[str, Any]) -> str:
    """A short, human summary of `data_report`."""
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
    if report["skipped"]["count"]:
        first = "; ".join(f"{p['where']}: {p['reason']}" for p in report["skipped"]["first"])
        lines.append(f"skipped {report['skipped']['count']}: {first}")
    return "\n".join(lines)

