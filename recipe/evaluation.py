"""Exact perplexity: total negative log-likelihood over all predicted tokens, not a mean of batch means.

The Trainer's `eval_loss` averages per-batch mean losses weighted by sequences, which over-weights
tokens in short batches. Here every predicted token counts once: padding never, EOS always.
"""

from __future__ import annotations

import math

import datasets
import evaluate
import numpy as np
import torch

from .data import IGNORE_INDEX

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
