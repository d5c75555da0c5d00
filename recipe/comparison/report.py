"""Side-by-side comparison of finished runs (full fine-tuning against LoRA): the Markdown report (the table, the
ranking, the Pareto fronts, the verdict) and the loss plot."""

from __future__ import annotations

import os
from pathlib import Path

from ..common.files import atomic_write_text
from .ranking import decision_markdown, pareto_markdown, plot_pareto, ranking_markdown
from .runs import RunSummary, format_or_na, read_baseline, read_runs

EVALUATE_HINT = "python scripts/evaluate.py --model_path {run_dir}"


def comparison_rows(runs: list[RunSummary]) -> list[tuple[str, list[str]]]:
    def per_run(fn) -> list[str]:
        return [fn(run) for run in runs]

    def parameters(run: RunSummary) -> str:
        if run.is_baseline:
            return "0 (not trained)"
        trainable, total = run.train.get("trainable_parameters"), run.train.get("total_parameters")
        return f"{trainable:,} ({trainable / total:.2%})" if trainable and total else format_or_na(trainable, ",")

    def base(run: RunSummary) -> str:
        name = f"`{run.config.get('model_name_or_path', 'n/a')}`"
        return name + (" (random init)" if run.config.get("random_init") else "")

    def phases(run) -> str:  # older runs did not time them apart
        keys = ("train_steps_runtime", "train_evaluation_runtime", "train_checkpoint_runtime")
        return " / ".join(format_or_na(run.train.get(k), ".1f") for k in keys)

    def quality(key: str):
        return lambda run: format_or_na((run.quality or {}).get(key), ".3f")

    return [
        ("mode", per_run(lambda r: r.mode)),
        ("base model", per_run(base)),
        ("trainable parameters", per_run(parameters)),
        ("epochs / learning rate", per_run(lambda r: f"{r.config.get('num_train_epochs', 'n/a')} / "
                                                      f"{r.config.get('learning_rate', 'n/a')}")),
        ("wall time (s)", per_run(lambda r: format_or_na(r.train.get("train_runtime"), ".1f"))),
        ("of which steps / evaluation / checkpoints (s)", per_run(phases)),
        ("tokens/s (real tokens, in the steps)",
         per_run(lambda r: format_or_na(r.train.get("train_real_tokens_per_second"), ",.0f"))),
        ("peak memory in tensors (MB)", per_run(lambda r: format_or_na(r.train.get("peak_tensor_memory_mb"), ",.0f"))),
        ("memory plan (MB)", per_run(lambda r: format_or_na(r.train.get("memory_plan_mb"), ",.0f"))),
        ("peak RSS (MB)", per_run(lambda r: format_or_na(r.train.get("peak_memory_mb"), ",.0f"))),
        ("final train loss", per_run(lambda r: format_or_na(r.train.get("final_train_loss"), ".4f"))),
        ("eval loss (nats/token, exact)", per_run(lambda r: format_or_na(r.evaluation.get("eval_token_loss"), ".4f"))),
        ("perplexity", per_run(lambda r: format_or_na(r.evaluation.get("eval_perplexity"), ".2f"))),
        ("distinct-1", per_run(quality("distinct_1"))),
        ("distinct-2", per_run(quality("distinct_2"))),
        ("clean ends", per_run(lambda r: format_or_na((r.quality or {}).get("clean_end_share"), ".1%"))),
        ("device", per_run(lambda r: r.device or "n/a")),
    ]


# Beyond this many runs the side-by-side table (one column per run) is too wide to read; the ranking stays.
SIDE_BY_SIDE_MAX_RUNS = 4


def comparison_markdown(runs: list[RunSummary], plot_name: str | None, pareto_plot_name: str | None = None,
                        title: str | None = None, notes: list[str] = (), baseline: RunSummary | None = None) -> str:
    """The report: the side-by-side table (up to SIDE_BY_SIDE_MAX_RUNS runs), the runs ranked by eval perplexity,
    the Pareto fronts, the best full and LoRA runs, the plots, then what each figure is."""
    lines = [title or "# Run comparison: " + " vs ".join(run.label for run in runs), ""]
    shown = ([baseline] if baseline else []) + runs  # the base first, as the row every run started from
    if len(runs) <= SIDE_BY_SIDE_MAX_RUNS:
        lines += ["| | " + " | ".join(run.label for run in shown) + " |", "|---" * (len(shown) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(values) + " |" for name, values in comparison_rows(shown)]
        lines.append("")
    lines += ["## Ranked by eval perplexity", "", *ranking_markdown(runs, baseline), "", "## Pareto fronts", "",
              *pareto_markdown(runs), "", "## Full fine-tuning against LoRA", "", *decision_markdown(runs), ""]
    if plot_name:
        lines += [f"![Train and eval loss per epoch]({plot_name})", ""]
    if pareto_plot_name:
        lines += [f"![Eval perplexity against wall time and trainable parameters]({pareto_plot_name})", ""]
    lines += [
        "- Runs: " + ", ".join(f"{run.label} = `{run.run_dir}`" for run in runs) + ".",
        "- Eval loss is `eval_token_loss`: the validation set's total negative log-likelihood over its predicted "
        "tokens (nats per token, every token counted once); perplexity is its exponential. The train loss is the "
        "Trainer's mean over its last logging window.",
        "- Tokens/s counts real tokens (padding excluded). Peak memory in tensors is what the run's tensors held at "
        "most (counted over its first optimizer steps on a CPU, the allocator's peak on CUDA); the memory plan is "
        "its estimate before the model loaded; peak RSS is the process's resident memory, which on a CPU measures "
        "the allocator (freed blocks kept), not the tensors: compare runs by the tensor figure, on one device.",
        "- A run is on a Pareto front when no other run has both a lower (or equal) perplexity and a lower (or "
        "equal) cost. Per-speaker perplexity, clean ends and distinct-2 come from scripts/evaluate.py "
        "(evaluation.json: every speaker's tokens, float32 weights).",
    ]
    missing = [run for run in runs if run.quality is None]
    if missing:
        commands = "; ".join(f"`{EVALUATE_HINT.format(run_dir=run.run_dir)}`" for run in missing)
        lines.append(f"- Distinct-1/2 (share of distinct words / word pairs in sampled replies) and clean ends "
                     f"(replies that end at EOS or the end of the turn) come from evaluation.json, written by the "
                     f"evaluation script; n/a means it has not run: {commands}.")
    else:
        lines.append("- Distinct-1/2: share of distinct words / word pairs in the replies sampled by "
                     "scripts/evaluate.py (evaluation.json); clean ends: replies that end at EOS or the end of the "
                     "turn within max_new_tokens.")
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def plot_loss_curves(runs: list[RunSummary], path: str | os.PathLike, baseline: RunSummary | None = None) -> Path:
    """Train loss (left) and eval loss (right) of every run per epoch, one colour per run, in one figure; the
    base model's eval loss (before training) as a grey line on both."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, (train_axes, eval_axes) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    palette = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")
    for index, run in enumerate(runs):
        color = palette(index % palette.N)
        if run.train_curve:
            train_axes.plot(*zip(*run.train_curve), color=color, linewidth=1.2, marker=".", label=run.label)
        if run.eval_curve:
            eval_axes.plot(*zip(*run.eval_curve), color=color, linestyle="--", marker="o", label=run.label)
    if baseline is not None:
        for axes in (train_axes, eval_axes):
            axes.axhline(baseline.evaluation["eval_token_loss"], color="grey", linestyle=":", linewidth=1.5,
                         label=f"base before training (eval {baseline.evaluation['eval_token_loss']:.3f})")
    for axes, title in ((train_axes, "Train loss"), (eval_axes, "Eval loss (exact, per token)")):
        axes.set_xlabel("epoch")
        axes.set_title(title)
        axes.grid(alpha=0.3)
    train_axes.set_ylabel("loss (nats per token)")
    eval_axes.legend(fontsize=8 if len(runs) > 4 else 10, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def compare_runs(run_dirs: list[str | os.PathLike], output: str | os.PathLike, title: str | None = None,
                 notes: list[str] = (), baseline: str | os.PathLike | None = None) -> tuple[Path, Path, Path]:
    """Write the Markdown report to `output`, the loss plot next to it (same name, .png) and the Pareto plot
    (NAME-pareto.png); return the three paths. `baseline`: the base model's evaluation.json, shown as a row."""
    runs = read_runs(run_dirs)
    base, base_notes = read_baseline(baseline, runs) if baseline else (None, [])
    output = Path(output)
    plot = plot_loss_curves(runs, output.with_suffix(".png"), base)
    pareto = plot_pareto(runs, output.with_name(f"{output.stem}-pareto.png"))
    atomic_write_text(output, comparison_markdown(runs, plot.name, pareto.name, title, [*notes, *base_notes], base))
    return output, plot, pareto
