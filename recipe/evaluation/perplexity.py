"""Exact perplexity of a model on dialogues, overall and per speaker: every predicted token counted once, in the
training windows or in sliding windows."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..config import ConfigError, DataArguments
from ..data import IGNORE_INDEX, DialogueCollator, tokenize_dialogues
from ..data.mixture import source_of
from ..models.loss import label_nll
from .metrics import DialoguePerplexity, perplexity_from_sums


@dataclass
class _Sums:
    nll: float = 0.0
    tokens: int = 0

    def add(self, nll: float, tokens: int) -> None:
        self.nll += nll
        self.tokens += tokens


def evaluation_sequences(dialogues, tokenizer, data_args: DataArguments, stride: int | None):
    """(input_ids, labels, target speakers, where the dialogue came from) per sequence; every token of every turn
    carries a label.

    Without stride: the training windows. With stride: one sliding window of max_length tokens per
    `stride`, labels only on tokens not predicted by an earlier window.
    """
    all_tokens = dataclasses.replace(data_args, train_on_speakers=None)
    if stride is None:
        examples = tokenize_dialogues(dialogues, tokenizer, all_tokens, "evaluation", with_token_turns=True)
        for ids, labels, turns, speakers, where in zip(
            examples["input_ids"], examples["labels"], examples["token_turns"], examples["speakers"],
            examples["source"],
        ):
            yield ids, labels, [speakers[t] if t >= 0 else None for t in turns], where
        return
    if stride >= data_args.max_length:
        raise ConfigError(f"stride {stride} must be smaller than max_length {data_args.max_length} (windows overlap)")
    whole = dataclasses.replace(all_tokens, max_length=10**9, overflow_strategy="truncate")
    examples = tokenize_dialogues(dialogues, tokenizer, whole, "evaluation-whole", with_token_turns=True)
    for ids, labels, turns, speakers, where in zip(
        examples["input_ids"], examples["labels"], examples["token_turns"], examples["speakers"], examples["source"]
    ):
        owners = [speakers[t] if t >= 0 else None for t in turns]
        predicted_up_to = 1  # position 0 is never predicted
        for begin in range(0, len(ids), stride):
            end = min(begin + data_args.max_length, len(ids))
            window_labels = [
                label if position >= predicted_up_to else IGNORE_INDEX
                for position, label in zip(range(begin, end), labels[begin:end])
            ]
            yield ids[begin:end], window_labels, owners[begin:end], where
            predicted_up_to = end
            if end == len(ids):
                break


def perplexity_by_speaker(model, tokenizer, dialogues, data_args: DataArguments, batch_size: int = 8,
                          stride: int | None = None) -> dict[str, Any]:
    """Exact perplexity over every predicted token, per speaker (tokens of that speaker's turns) and, with several
    --data_path sources, per source (tokens of its dialogues)."""
    from tqdm.auto import tqdm

    collator = DialogueCollator(tokenizer.pad_token_id, padding="longest")
    device = next(model.parameters()).device
    metric = DialoguePerplexity()
    per_speaker: dict[str, _Sums] = {}
    paths = [source.path for source in data_args.sources] if len(data_args.sources) > 1 else []
    per_source: dict[str, _Sums] = {path: _Sums() for path in paths}
    sequences = list(evaluation_sequences(dialogues, tokenizer, data_args, stride))
    for start in tqdm(range(0, len(sequences), batch_size), desc="Perplexity", unit="batch"):
        chunk = sequences[start : start + batch_size]
        batch = collator([{"input_ids": ids, "labels": labels} for ids, labels, _, _ in chunk])
        labels = batch["labels"].to(device)
        token_nll = label_nll(model, batch["input_ids"].to(device), batch["attention_mask"].to(device), labels)
        counts = (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)
        metric.add_batch(nll_sum=token_nll.sum(dim=1).tolist(), num_tokens=counts.tolist())
        for row, (_, row_labels, owners, where) in enumerate(chunk):
            row_nll = token_nll[row].tolist()
            source = source_of(where, paths) if paths else None
            if source is not None:
                per_source[source].add(token_nll[row].sum().item(), int(counts[row]))
            for position in range(1, len(row_labels)):
                if row_labels[position] == IGNORE_INDEX or owners[position] is None:
                    continue
                per_speaker.setdefault(owners[position], _Sums()).add(row_nll[position - 1], 1)
    overall = metric.compute()
    result = overall | {
        "per_speaker": {name: perplexity_from_sums(s.nll, s.tokens) for name, s in sorted(per_speaker.items())}
    }
    if paths:
        result["per_source"] = {path: perplexity_from_sums(s.nll, s.tokens) for path, s in per_source.items()
                                if s.tokens}
    return result
