"""The label audit: what the loss will see, and the refusals that stop a run before its first step.

Summed from the per-row count columns that tokenization emits (`encoding.COUNT_COLUMNS`), never by
walking rows in Python: tokens in the loss, per speaker; dialogues whose final EOS is a target;
examples whose every label is masked; turns per speaker. A loss mask that selects nothing, a
`train_on_speakers` name the data does not have, or an EOS that is never learned stops the run with
a message that names the speakers the data has and the closest match.
"""

from __future__ import annotations

import difflib
import logging
from typing import Any

from ..config import DataArguments
from .errors import DialogueDataError

logger = logging.getLogger(__name__)

SHOWN_SPEAKERS = 10


def column_array(dataset, name: str):
    """One column of a datasets.Dataset as numpy, read from its arrow table (never row by row)."""
    return dataset.with_format("arrow")[name].to_numpy()


def label_audit(examples) -> dict[str, Any]:
    """Sums of the count columns of one tokenized split (one row per window)."""
    import pyarrow.compute as pc

    columns = examples.with_format("arrow")

    def total(values) -> int:
        return int(pc.sum(values).as_py() or 0)

    loss_tokens = columns["num_loss_tokens"]
    return {
        "dialogues": total(pc.equal(columns["window_index"], 0)),
        "examples": len(examples),
        "loss_tokens": total(loss_tokens),
        "loss_tokens_per_speaker": _sum_by_name(columns["loss_speakers"], columns["loss_speaker_tokens"]),
        "eos_in_loss": total(columns["eos_in_loss"]),
        "masked_examples": total(pc.equal(loss_tokens, 0)),
        "turns_per_speaker": _sum_by_name(columns["speaker_names"], columns["speaker_turns"]),
    }


def _sum_by_name(names, counts) -> dict[str, int]:
    """Two list columns (names, counts) summed per name, largest first."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = pa.table({"name": pc.list_flatten(names), "count": pc.list_flatten(counts)})
    rows = table.group_by("name").aggregate([("count", "sum")]).to_pylist()
    return {row["name"]: int(row["count_sum"]) for row in sorted(rows, key=lambda r: (-r["count_sum"], r["name"]))}


def check_label_audit(train: dict[str, Any], validation: dict[str, Any] | None, args: DataArguments) -> None:
    """Refuse, before any training, data whose loss mask cannot train.

    Raises:
        DialogueDataError: a train_on_speakers name that never speaks in the training data; no token in
            the loss; no dialogue's EOS in the loss; a validation split with no token in the loss.
    """
    speakers = train["turns_per_speaker"]
    wanted = list(args.train_on_speakers or [])
    unknown = [name for name in wanted if name not in speakers]
    if unknown:
        raise DialogueDataError(
            f"train_on_speakers names {_names(unknown)}, who never speak{'s' if len(unknown) == 1 else ''} in the "
            f"training data ({train['dialogues']:,} dialogues). "
            f"{_speaker_list(speakers)}{_suggestion(wanted, speakers)}"
        )
    if train["loss_tokens"] == 0:
        selection = f"train_on_speakers {wanted}" if wanted else "the loss mask"
        raise DialogueDataError(
            f"no token of the training data carries loss: {selection} selects nothing, so every step would "
            f"train on nothing. {_speaker_list(speakers)}"
        )
    if train["eos_in_loss"] == 0:
        causes = []
        if wanted:
            causes.append(f"no dialogue ends with a turn of {_names(wanted)} (the EOS belongs to the last turn)")
        if args.overflow_strategy == "truncate":
            causes.append("--overflow_strategy truncate cut every dialogue's ending (use split)")
        raise DialogueDataError(
            "no dialogue's final EOS carries loss, so the model would never learn to end a dialogue"
            + (f": {'; or '.join(causes)}" if causes else "")
            + ". Train on the speakers who end the dialogues, or check the tokenizer's EOS token"
        )
    if validation is not None and validation["examples"] and validation["loss_tokens"] == 0:
        raise DialogueDataError(
            f"no token of the validation data carries loss ({_names(wanted) if wanted else 'the mask'} never speaks "
            f"there), so evaluation would measure nothing. {_speaker_list(validation['turns_per_speaker'])}"
        )


def _names(names: list[str]) -> str:
    return ", ".join(repr(name) for name in names)


def _speaker_list(speakers: dict[str, int]) -> str:
    shown = ", ".join(f"{name} ({turns:,} turns)" for name, turns in list(speakers.items())[:SHOWN_SPEAKERS])
    more = f", and {len(speakers) - SHOWN_SPEAKERS} more" if len(speakers) > SHOWN_SPEAKERS else ""
    return f"Its speakers: {shown}{more}." if speakers else "It has no speakers."


def closest_speaker(name: str, speakers: list[str]) -> str | None:
    """The same name in another case, else the most similar one (difflib), else None."""
    same_case = [s for s in speakers if s.casefold() == name.casefold()]
    if same_case:
        return same_case[0]
    by_folded = {s.casefold(): s for s in speakers}
    match = difflib.get_close_matches(name.casefold(), list(by_folded), n=1, cutoff=0.6)
    return by_folded[match[0]] if match else None


def _suggestion(wanted: list[str], speakers: dict[str, int]) -> str:
    fixed = [name if name in speakers else closest_speaker(name, list(speakers)) for name in wanted]
    if any(name is None for name in fixed):
        return " Name speakers exactly as the data writes them (case matters)."
    return f" Did you mean --train_on_speakers {' '.join(fixed)}? (case matters)"


def drop_masked_examples(examples, audit: dict[str, Any], split_name: str):
    """Leave out examples whose every label is masked: they teach nothing and change no loss value
    (no target), but cost a forward and backward pass. Logged, and counted in the data report."""
    if not audit["masked_examples"]:
        return examples
    import numpy as np

    keep = np.flatnonzero(column_array(examples, "num_loss_tokens") > 0)
    logger.warning(
        "%s: %d of %d examples have every label masked (no turn of a trained speaker in them): left out",
        split_name, audit["masked_examples"], len(examples),
    )
    return examples.select(keep)
