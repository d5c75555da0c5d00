"""N runs ranked, for the choice between full fine-tuning and LoRA: one row per run sorted by eval perplexity,
the Pareto fronts of perplexity against training time, trainable parameters and peak memory (and their plot), and
what the best full and the best LoRA run say side by side.

It reads `RunSummary`s (recipe/comparison/runs.py), so it works on the files of the run directories alone.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

from .runs import RunSummary, format_or_na

# The costs a front is drawn against: (title with its unit, value of a run, its format); lower is better, as
# for perplexity.
COSTS: dict[str, tuple[str, Callable[[RunSummary], float | None], str]] = {
    "time": ("training time (s)", lambda run: run.training_seconds, ",.1f"),
    "parameters": ("trainable parameters", lambda run: run.train.get("trainable_parameters"), ","),
    # what QLoRA is for: the tensors' peak, not the process RSS (on a CPU that measures the allocator)
    "memory": ("peak memory in tensors (MB)", lambda run: run.train.get("peak_tensor_memory_mb"), ",.0f"),
}
# A LoRA run whose perplexity is within this share of full fine-tuning's counts as matching it.
MATCH_TOLERANCE = 0.02


def ranked(runs: list[RunSummary]) -> list[RunSummary]:
    """Lowest eval perplexity first; runs without one last, in their given order."""
    return sorted(runs, key=lambda run: (run.perplexity is None, run.perplexity or 0.0))


def pareto_front(runs: list[RunSummary], cost: Callable[[RunSummary], float | None]) -> list[RunSummary]:
    """The runs no other run beats on both perplexity and cost (each at least as good, one strictly better),
    cheapest first."""
    candidates = [run for run in runs if run.perplexity is not None and cost(run) is not None]
    front, best = [], math.inf
    for run in sorted(candidates, key=lambda run: (cost(run), run.perplexity)):
        if run.perplexity < best:
            front.append(run)
            best = run.perplexity
    return front


def ranking_markdown(runs: list[RunSummary], baseline: RunSummary | None = None) -> list[str]:
    """The table: one row per run, by eval perplexity, with each speaker's perplexity from evaluation.json; the
    base model before training, if given, as a last row outside the ranking."""
    speakers = sorted({name for run in [*runs, *([baseline] if baseline else [])] for name in run.per_speaker})
    fronts = {name: {id(run) for run in pareto_front(runs, cost)} for name, (_, cost, _) in COSTS.items()}
    header = ["rank", "run", "mode", "LoRA rank", "learning rate", "trainable parameters", "eval perplexity",
              *[f"perplexity {name}" for name in speakers], "clean ends", "distinct-2", "training time (s)",
              "peak memory in tensors (MB)", "Pareto front"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for position, run in enumerate(ranked(runs), start=1):
        quality = run.quality or {}
        on_fronts = [name for name in COSTS if id(run) in fronts[name]]
        cells = [str(position), run.label, run.mode, format_or_na(run.lora_rank, "d"),
                 format_or_na(run.config.get("learning_rate"), "g"),
                 format_or_na(run.train.get("trainable_parameters"), ","), format_or_na(run.perplexity, ".2f"),
                 *[format_or_na(run.per_speaker.get(name), ".2f") for name in speakers],
                 format_or_na(quality.get("clean_end_share"), ".0%"), format_or_na(quality.get("distinct_2"), ".3f"),
                 format_or_na(run.training_seconds, ".1f"),
                 format_or_na(run.train.get("peak_tensor_memory_mb"), ",.0f"), ", ".join(on_fronts) or ""]
        lines.append("| " + " | ".join(cells) + " |")
    if baseline is not None:
        quality = baseline.quality or {}
        lines.append("| " + " | ".join([
            "-", "base (before training)", "base", "n/a", "n/a", "0", format_or_na(baseline.perplexity, ".2f"),
            *[format_or_na(baseline.per_speaker.get(name), ".2f") for name in speakers],
            format_or_na(quality.get("clean_end_share"), ".0%"), format_or_na(quality.get("distinct_2"), ".3f"), "0",
            "n/a", ""]) + " |")
    return lines


def pareto_markdown(runs: list[RunSummary]) -> list[str]:
    lines = []
    for title, cost, spec in COSTS.values():
        front = pareto_front(runs, cost)
        steps = " -> ".join(f"{run.label} ({run.perplexity:.2f} at {cost(run):{spec}})" for run in front)
        lines.append(f"- Perplexity against {title}: {steps or 'n/a'}.")
    return lines


def decision_markdown(runs: list[RunSummary]) -> list[str]:
    """The best full and the best LoRA run, side by side in one sentence each, and what they say."""
    def best(mode: str) -> RunSummary | None:
        return next((run for run in ranked(runs) if run.mode == mode and run.perplexity is not None), None)

    full, lora = best("full"), best("LoRA")
    lines = []
    for run in (full, lora):
        if run is not None:
            lines.append(f"- Best {run.mode}: {run.label}, perplexity {run.perplexity:.2f}, "
                         f"{format_or_na(run.train.get('trainable_parameters'), ',')} trainable parameters, "
                         f"{format_or_na(run.training_seconds, '.1f')} s of training, peak memory in tensors "
                         f"{format_or_na(run.train.get('peak_tensor_memory_mb'), ',.0f')} MB.")
    if full is None or lora is None:
        return lines + ["- Only one mode finished: no full-against-LoRA conclusion."]
    gap = lora.perplexity / full.perplexity - 1
    share = (lora.train.get("trainable_parameters") or 0) / (full.train.get("trainable_parameters") or 1)
    time_ratio = (lora.training_seconds or math.nan) / (full.training_seconds or math.nan)
    cost = (f"it trains {share:.2%} as many parameters as full fine-tuning, in {time_ratio:.2f}x its training time")
    if gap <= MATCH_TOLERANCE:
        verdict = (f"LoRA matches full fine-tuning: its best perplexity is {gap:+.1%} from full's (within "
                   f"{MATCH_TOLERANCE:.0%}), and {cost}.")
    else:
        verdict = f"Full fine-tuning wins: the best LoRA's perplexity is {gap:.1%} higher; {cost}."
    return lines + [f"- {verdict}"]


def plot_pareto(runs: list[RunSummary], path: str | os.PathLike) -> Path:
    """Eval perplexity against each cost (training time, trainable parameters, peak memory), one point per run
    (labelled), the Pareto front of each drawn as a line."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(COSTS), figsize=(6 * len(COSTS), 4.8))
    colours = {"full": "tab:blue", "LoRA": "tab:orange", "QLoRA": "tab:green", "LoRA, 8-bit base": "tab:red"}
    for axis, (name, (title, cost, _)) in zip(axes, COSTS.items()):
        shown = [run for run in runs if run.perplexity is not None and cost(run) is not None]
        for mode, colour in colours.items():
            points = [(cost(run), run.perplexity) for run in shown if run.mode == mode]
            if points:
                axis.scatter(*zip(*points), color=colour, label=mode, zorder=3)
        for run in shown:
            axis.annotate(run.label, (cost(run), run.perplexity), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = pareto_front(runs, cost)
        if front:
            axis.step([cost(run) for run in front], [run.perplexity for run in front], where="post", color="grey",
                      linestyle="--", label="Pareto front", zorder=2)
        if name == "parameters":
            axis.set_xscale("log")
        axis.set_xlabel(title)
        axis.set_ylabel("eval perplexity")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle("Eval perplexity against cost (lower left is better)")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
