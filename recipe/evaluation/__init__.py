"""Evaluation: exact perplexity overall and per speaker, sampled replies and their quality.

- `metrics`: perplexity from summed log-likelihoods (an offline `evaluate.Metric`), the Trainer's hooks that compute
  it during training, and the quality measures of sampled replies.
- `perplexity`: a model's perplexity on dialogues, overall and per speaker.
- `run`: `evaluate_model`, what scripts/evaluate.py writes (evaluation.json), prints and logs to W&B.
"""

from .perplexity import perplexity_by_speaker
from .run import (
    default_output_file,
    describe_output_file,
    evaluate_model,
    evaluation_dialogues,
    format_results,
    log_results_to_wandb,
    refresh_run_card,
)

__all__ = [
    "default_output_file",
    "describe_output_file",
    "evaluate_model",
    "evaluation_dialogues",
    "format_results",
    "log_results_to_wandb",
    "perplexity_by_speaker",
    "refresh_run_card",
]
