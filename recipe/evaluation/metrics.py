"""Metrics: exact perplexity (an offline `evaluate.Metric`), the Trainer hooks that compute it, and
the quality measures of sampled replies (distinct-n, repeats, token F1).

Perplexity is the total negative log-likelihood over all predicted tokens divided by their number,
not a mean of batch means: the Trainer's `eval_loss` averages per-batch mean losses weighted by
sequences, which over-weights tokens in short batches. Every predicted token counts once: padding
never, EOS always.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

import datasets
import numpy as np
import torch

from ..data import IGNORE_INDEX


def _import_evaluate_library():
    """Import the `evaluate` library, never scripts/evaluate.py.

    Python puts the folder of the script it runs first on sys.path, so when a script of scripts/ runs,
    `import evaluate` would find scripts/evaluate.py (whose name is part of the recipe's interface)
    instead of the library. Every folder on sys.path that holds a plain `evaluate.py` is set aside for
    this one import, here, where the clash is. The folder is found by what it holds, not by where it sits
    beside the package: after `pip install .` (not editable) the package lives in site-packages, far
    from the repository's scripts/.
    """
    import importlib
    import os
    import sys

    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if not os.path.isfile(os.path.join(p or os.curdir, "evaluate.py"))]
    try:
        return importlib.import_module("evaluate")
    finally:
        sys.path[:] = saved


evaluate = _import_evaluate_library()

_DESCRIPTION = """Perplexity from summed negative log-likelihoods and token counts.

perplexity = exp(sum(nll_sum) / sum(num_tokens)), over any number of sequences or batches; also
reports the loss in nats per token and in bits per token. Works offline (no script download)."""

_INPUTS = """
Args:
    nll_sum: negative log-likelihood (natural log) summed over the predicted tokens of each sequence.
    num_tokens: number of predicted tokens of each sequence.
Returns:
    perplexity, token_loss (nats per token), bits_per_token, num_tokens.
Example:
    >>> metric = DialoguePerplexity()
    >>> metric.compute(nll_sum=[2.0, 4.0], num_tokens=[2, 4])["perplexity"]  # exp(6 / 6)
    2.718281828459045
"""


class DialoguePerplexity(evaluate.Metric):
    """Perplexity as an `evaluate` metric, shipped in the package (evaluate.load("perplexity") needs the Hub)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("keep_in_memory", True)
        super().__init__(**kwargs)

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"nll_sum": datasets.Value("float64"), "num_tokens": datasets.Value("int64")}
            ),
        )

    def _compute(self, nll_sum, num_tokens):
        return perplexity_from_sums(float(np.sum(nll_sum)), int(np.sum(num_tokens)))


def perplexity_from_sums(total_nll: float, total_tokens: int) -> dict[str, float]:
    if total_tokens <= 0:
        raise ValueError("no predicted tokens: every label is -100, so perplexity is undefined")
    token_loss = total_nll / total_tokens
    return {
        "perplexity": math.exp(token_loss),
        "token_loss": token_loss,
        "bits_per_token": token_loss / math.log(2),
        "num_tokens": total_tokens,
    }


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sequence [nll_sum, num_tokens] (shape batch x 2) for causal-LM logits and labels.

    Token t's logits predict label t+1, as in the models' own loss. Computed in float32 whatever
    the logits' dtype, so bf16 evaluation does not blur the figure.
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:].to(shift_logits.device)
    mask = shift_labels != IGNORE_INDEX
    token_nll = torch.nn.functional.cross_entropy(
        shift_logits.transpose(1, 2), shift_labels.masked_fill(~mask, 0), reduction="none"
    )
    token_nll = token_nll.masked_fill(~mask, 0.0)
    return torch.stack([token_nll.sum(dim=1), mask.sum(dim=1).to(token_nll.dtype)], dim=1)


def preprocess_logits_for_perplexity(logits, labels):
    """Trainer hook: shrink each eval batch's logits to per-sequence sums before they are gathered."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return sequence_nll(logits, labels)


def compute_perplexity_metrics(eval_prediction) -> dict[str, float]:
    """Trainer `compute_metrics`: exact perplexity over the whole eval set (reported as eval_*)."""
    sums = np.asarray(eval_prediction.predictions, dtype=np.float64).reshape(-1, 2)
    return DialoguePerplexity().compute(nll_sum=sums[:, 0].tolist(), num_tokens=sums[:, 1].astype(np.int64).tolist())



_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams of all texts (Li et al., 2016); 0 when there are none."""
    grams = [tuple(w[i : i + n]) for w in map(words, texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repeat_share(texts: list[str]) -> float:
    """Share of texts that repeat an earlier one exactly."""
    seen, repeats = set(), 0
    for text in texts:
        repeats += text in seen
        seen.add(text)
    return repeats / len(texts) if texts else 0.0


def token_f1(prediction: str, reference: str) -> float:
    """Bag-of-words F1 between a reply and its reference (SQuAD-style, lower-cased words)."""
    predicted, expected = Counter(words(prediction)), Counter(words(reference))
    overlap = sum((predicted & expected).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / sum(predicted.values()), overlap / sum(expected.values())
    return 2 * precision * recall / (precision + recall)


def quality_measures(samples: list[dict[str, Any]]) -> dict[str, Any]:
    replies = [s["reply"] for s in samples]
    ended = Counter(s["ended_by"] for s in samples)
    with_reference = [s for s in samples if s.get("reference")]
    return {
        "num_replies": len(replies),
        "distinct_1": distinct_n(replies, 1),
        "distinct_2": distinct_n(replies, 2),
        "repeat_share": repeat_share(replies),
        "empty_share": sum(1 for r in replies if not r) / len(replies) if replies else 0.0,
        "clean_end_share": (ended["eos"] + ended["turn_end"]) / len(samples) if samples else 0.0,
        "ended_by": dict(ended),
        "mean_reply_words": sum(len(words(r)) for r in replies) / len(replies) if replies else 0.0,
        "token_f1": (sum(token_f1(s["reply"], s["reference"]) for s in with_reference) / len(with_reference)
                     if with_reference else None),
        "num_with_reference": len(with_reference),
    }
