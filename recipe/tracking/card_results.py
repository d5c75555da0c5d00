"""The figures a model card carries: `model-index` entries (huggingface_hub's `EvalResult`) and the per-epoch
table of its body, from the run's own files.

The Trainer's own model card keeps only a fixed list of metrics in `model-index` (perplexity is not among
them); here the exact validation perplexity and loss go in as measured, with the data named by its file's
name and SHA-256 (the `dataset_revision`) and the split stated. Once scripts/evaluate.py has evaluated the
run's final model (its evaluation.json), what it measured goes in too, under names that say so: it may be
another quantity (every speaker's tokens, float32 weights; see `differs_from_training_eval`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..common.hub import is_hub_id
from ..config.data_sources import data_path_text

TASK = {"task_type": "text-generation", "task_name": "Dialogue modelling"}


def _dataset(path: str | None, sha256: str | None, split: str, args: dict[str, Any]) -> dict[str, Any]:
    """EvalResult's dataset fields: a Hub dataset by its id, a file by its name and SHA-256."""
    path = path or "unknown"
    name = path if is_hub_id(path) else Path(path).name
    return {"dataset_type": name, "dataset_name": name, "dataset_split": split, "dataset_revision": sha256,
            "dataset_args": {k: v for k, v in args.items() if v is not None} or None}


def training_eval_dataset(config: dict[str, Any], environment: dict[str, Any]) -> dict[str, Any]:
    """The validation data of the Trainer's evaluation: a validation file, or a share of the data file."""
    data = environment.get("data") or {}
    if config.get("validation_path"):
        return _dataset(config["validation_path"], data.get("validation_sha256"), "validation",
                        {"validation_path": config["validation_path"]})
    args = {"validation_split_ratio": config.get("validation_split_ratio"), "split_seed": config.get("split_seed"),
            "max_dialogues": config.get("max_dialogues"), "data_path": data_path_text(config.get("data_path"))}
    return _dataset(data_path_text(config.get("data_path")), data.get("data_sha256"), "validation", args)


def card_eval_results(config: dict[str, Any], environment: dict[str, Any], eval_results: dict[str, Any],
                      evaluation: dict[str, Any] | None) -> list:
    """EvalResults for model-index: the training run's exact validation perplexity and loss, then what
    scripts/evaluate.py measured on the final model, when it has."""
    from huggingface_hub import EvalResult

    results = []
    if eval_results.get("eval_perplexity") is not None:
        dataset = training_eval_dataset(config, environment)
        trained = ", ".join(config.get("train_on_speakers") or []) or "every speaker"
        metric_args = {"tokens": eval_results.get("eval_num_tokens"), "loss_on": trained}
        results += [
            EvalResult(**TASK, **dataset, metric_type="perplexity", metric_value=eval_results["eval_perplexity"],
                       metric_name="Validation perplexity (exact)", metric_args=metric_args),
            EvalResult(**TASK, **dataset, metric_type="loss", metric_value=eval_results["eval_token_loss"],
                       metric_name="Validation loss (nats per token, exact)", metric_args=metric_args),
        ]
    if evaluation and (evaluation.get("model") or {}).get("kind") in ("full", "lora"):
        results += _posthoc_results(evaluation, EvalResult)
    return results


def _posthoc_results(evaluation: dict[str, Any], EvalResult) -> list:
    data, perplexity, quality = evaluation.get("data") or {}, evaluation["perplexity"], evaluation.get("quality") or {}
    dataset = _dataset(data.get("data_path"), data.get("data_sha256"), data.get("split") or "validation",
                       {"dialogues": data.get("num_dialogues")})
    source = "scripts/evaluate.py, every speaker's tokens"
    metrics = [("perplexity", perplexity["perplexity"], f"Perplexity ({source})"),
               ("loss", perplexity["token_loss"], f"Loss, nats per token ({source})")]
    metrics += [("perplexity", figures["perplexity"], f"Perplexity of {speaker}'s turns (scripts/evaluate.py)")
                for speaker, figures in (perplexity.get("per_speaker") or {}).items()]
    if quality:
        metrics += [("distinct-2", quality["distinct_2"], "Distinct-2 of sampled replies (scripts/evaluate.py)"),
                    ("clean_end_share", quality["clean_end_share"],
                     "Replies that end cleanly, by EOS or at the end of the turn (scripts/evaluate.py)")]
    return [EvalResult(**TASK, **dataset, metric_type=kind, metric_value=value, metric_name=name)
            for kind, value, name in metrics]


def epoch_rows(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per evaluation during training: epoch, step, the last train loss logged by then, eval loss and
    perplexity. The evaluation after training (of the best checkpoint) repeats an epoch and is left out."""
    rows, seen, train_loss = [], set(), None
    for entry in log_history:
        if "loss" in entry:
            train_loss = entry["loss"]
        if "eval_token_loss" in entry and entry.get("step") not in seen:
            seen.add(entry.get("step"))
            rows.append({"epoch": entry.get("epoch"), "step": entry.get("step"), "train_loss": train_loss,
                         "eval_token_loss": entry["eval_token_loss"], "eval_perplexity": entry.get("eval_perplexity")})
    return rows


def epoch_table(log_history: list[dict[str, Any]], best_checkpoint: str | None, final_is_best: bool) -> list[str]:
    """The card's per-epoch table (Markdown lines); empty without evaluations."""
    rows = epoch_rows(log_history)
    if not rows:
        return []
    best_step = int(best_checkpoint.rsplit("-", 1)[-1]) if best_checkpoint and best_checkpoint[-1].isdigit() else None
    lines = ["### Per epoch", "",
             "| epoch | step | train loss (last logged) | eval loss (nats/token) | eval perplexity | |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        train = "n/a" if row["train_loss"] is None else f"{row['train_loss']:.4f}"
        perplexity = "n/a" if row["eval_perplexity"] is None else f"{row['eval_perplexity']:.2f}"
        mark = "best" if row["step"] == best_step else ""
        lines.append(f"| {row['epoch']:g} | {row['step']} | {train} | {row['eval_token_loss']:.4f} | {perplexity} | "
                     f"{mark} |")
    final = ("the best checkpoint's (lowest eval loss, reloaded at the end)" if final_is_best and best_step
             else "those of the last step")
    return lines + ["", f"The weights here are {final}.", ""]
