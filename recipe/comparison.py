"""Side-by-side comparison of finished runs (full fine-tuning against LoRA): a Markdown table and a loss plot.

Reads only what each run wrote to its output directory (train_results.json, eval_results.json,
trainer_state.json, run_config.yaml, environment.json, and evaluation.json once scripts/evaluate.py
has run), so it works offline and without W&B.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ConfigError
from .run_dir import RunDir, read_json_file

EVALUATE_HINT = "python scripts/evaluate.py --model_path {run_dir}"


class ComparisonError(ConfigError):
    """A run directory that cannot be compared; the message names it and says what to do."""


@dataclass
class RunSummary:
    run_dir: Path
    label: str
    config: dict[str, Any]
    train: dict[str, Any]
    evaluation: dict[str, Any]
    quality: dict[str, Any] | None
    device: str | None
    train_curve: list[tuple[float, float]] = field(default_factory=list)
    eval_curve: list[tuple[float, float]] = field(default_factory=list)
    per_speaker: dict[str, float] = field(default_factory=dict)  # perplexity per speaker, from evaluation.json
    is_baseline: bool = False  # the base model before training, from scripts/evaluate.py (read_baseline)

    @property
    def mode(self) -> str:
        if self.is_baseline:
            return "base"
        mode = self.train.get("mode") or ("lora" if self.config.get("use_lora") else "full")
        if mode != "lora":
            return "full"
        return "QLoRA" if self.config.get("load_in_4bit") else "LoRA, 8-bit base" if self.config.get("load_in_8bit") \
            else "LoRA"

    @property
    def lora_rank(self) -> int | None:
        return self.config.get("lora_r") if self.mode not in ("full", "base") else None  # every LoRA mode

    @property
    def perplexity(self) -> float | None:
        return self.evaluation.get("eval_perplexity")

    @property
    def training_seconds(self) -> float | None:
        """The training steps' time (evaluation and checkpoints apart); the whole train() for older runs."""
        return self.train.get("train_steps_runtime", self.train.get("train_runtime"))


def _problem(run_dir: Path) -> str | None:
    run = RunDir(run_dir)
    if not run_dir.is_dir():
        return f"run directory {run_dir} does not exist; pass the output_dir of a training run (e.g. outputs/smoke-full)"
    if not run.is_finished():
        hint = (f"finish it (python scripts/train.py --config {run.run_config} resumes it) or leave it out"
                if run.is_recipe_run() else "it is not a training output directory")
        return f"{run_dir} holds no finished run (no {run.train_results.name}): {hint}"
    return None


def read_run(run_dir: str | os.PathLike, label: str | None = None) -> RunSummary:
    """Everything the comparison shows about one finished run."""
    run = RunDir(run_dir)
    problem = _problem(run.path)
    if problem:
        raise ComparisonError(problem)
    state = read_json_file(run.trainer_state) or {}
    train_curve, eval_curve, eval_epochs = [], [], set()
    for entry in state.get("log_history", []):
        if "loss" in entry and "epoch" in entry:
            train_curve.append((float(entry["epoch"]), float(entry["loss"])))
        # The evaluation after training (of the best checkpoint) repeats the last epoch: keep each epoch's own.
        if "eval_token_loss" in entry and "epoch" in entry and entry["epoch"] not in eval_epochs:
            eval_epochs.add(entry["epoch"])
            eval_curve.append((float(entry["epoch"]), float(entry["eval_token_loss"])))
    device = ((read_json_file(run.environment) or {}).get("device")) or {}
    posthoc = read_json_file(run.evaluation) or {}
    per_speaker = ((posthoc.get("perplexity") or {}).get("per_speaker")) or {}
    return RunSummary(
        run_dir=run.path,
        label=label or run.path.name,
        config=run.read_config(),
        train=read_json_file(run.train_results) or {},
        evaluation=read_json_file(run.eval_results) or {},
        quality=posthoc.get("quality"),
        device=" ".join(str(v) for v in (device.get("type"), device.get("name")) if v) or None,
        train_curve=train_curve,
        eval_curve=eval_curve,
        per_speaker={name: figures["perplexity"] for name, figures in per_speaker.items()},
    )


def read_baseline(evaluation_file: str | os.PathLike, runs: list[RunSummary]) -> tuple[RunSummary, list[str]]:
    """The base model before training, as a row: the evaluation.json scripts/evaluate.py wrote for it (e.g.
    `--model_path BASE --data_config RUN/run_config.yaml`); and notes where it measured something else."""
    path = Path(evaluation_file)
    results = read_json_file(path)
    if not results or "perplexity" not in results:
        raise ComparisonError(f"baseline {path} is not an evaluation.json of scripts/evaluate.py; write one with "
                              "python scripts/evaluate.py --model_path BASE --data_config RUN_DIR/run_config.yaml "
                              f"--output_file {path}")
    figures, data = results["perplexity"], results.get("data") or {}
    model = results.get("model") or {}
    baseline = RunSummary(
        run_dir=path, label="base", config={"model_name_or_path": model.get("path")}, train={},
        evaluation={"eval_token_loss": figures["token_loss"], "eval_perplexity": figures["perplexity"]},
        quality=results.get("quality"), device=None, is_baseline=True,
        per_speaker={name: f["perplexity"] for name, f in (figures.get("per_speaker") or {}).items()},
    )
    notes = [f"base: `{model.get('path')}` before training, evaluated by scripts/evaluate.py (`{path}`) on "
             f"{data.get('source', 'its data')}: every token, {model.get('dtype', 'float32')} weights."]
    for run in runs:
        config = run.config
        same = (data.get("data_path") == config.get("data_path") and data.get("split") == "validation"
                and data.get("data_sha256") == ((read_json_file(RunDir(run.run_dir).environment) or {})
                                                .get("data") or {}).get("data_sha256"))
        if not same:
            notes.append(f"the base was evaluated on other data than {run.label}'s validation split "
                         f"({data.get('source')}): its row does not compare with that run")
    return baseline, notes


def read_runs(run_dirs: list[str | os.PathLike]) -> list[RunSummary]:
    """Every run, or one error listing every directory that is missing or unfinished."""
    if not run_dirs:
        raise ComparisonError("no run directories given; pass at least one, e.g. outputs/smoke-full outputs/smoke-lora")
    problems = [p for p in (_problem(Path(d)) for d in run_dirs) if p]
    if problems:
        raise ComparisonError("cannot compare:\n  - " + "\n  - ".join(problems))
    names = [Path(d).name for d in run_dirs]
    labels = [Path(d).name if names.count(Path(d).name) == 1 else str(d) for d in run_dirs]
    return [read_run(d, label) for d, label in zip(run_dirs, labels)]


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def comparison_rows(runs: list[RunSummary]) -> list[tuple[str, list[str]]]:
    def per_run(fn) -> list[str]:
        return [fn(run) for run in runs]

    def parameters(run: RunSummary) -> str:
        if run.is_baseline:
            return "0 (not trained)"
        trainable, total = run.train.get("trainable_parameters"), run.train.get("total_parameters")
        return f"{trainable:,} ({trainable / total:.2%})" if trainable and total else _fmt(trainable, ",")

    def base(run: RunSummary) -> str:
        name = f"`{run.config.get('model_name_or_path', 'n/a')}`"
        return name + (" (random init)" if run.config.get("random_init") else "")

    def phases(run) -> str:  # older runs did not time them apart
        keys = ("train_steps_runtime", "train_evaluation_runtime", "train_checkpoint_runtime")
        return " / ".join(_fmt(run.train.get(k), ".1f") for k in keys)

    def quality(key: str):
        return lambda run: _fmt((run.quality or {}).get(key), ".3f")

    return [
        ("mode", per_run(lambda r: r.mode)),
        ("base model", per_run(base)),
        ("trainable parameters", per_run(parameters)),
        ("epochs / learning rate", per_run(lambda r: f"{r.config.get('num_train_epochs', 'n/a')} / "
                                                      f"{r.config.get('learning_rate', 'n/a')}")),
        ("wall time (s)", per_run(lambda r: _fmt(r.train.get("train_runtime"), ".1f"))),
        ("of which steps / evaluation / checkpoints (s)", per_run(phases)),
        ("tokens/s (real tokens, in the steps)",
         per_run(lambda r: _fmt(r.train.get("train_real_tokens_per_second"), ",.0f"))),
        ("peak memory in tensors (MB)", per_run(lambda r: _fmt(r.train.get("peak_tensor_memory_mb"), ",.0f"))),
        ("memory plan (MB)", per_run(lambda r: _fmt(r.train.get("memory_plan_mb"), ",.0f"))),
        ("peak RSS (MB)", per_run(lambda r: _fmt(r.train.get("peak_memory_mb"), ",.0f"))),
        ("final train loss", per_run(lambda r: _fmt(r.train.get("final_train_loss"), ".4f"))),
        ("eval loss (nats/token, exact)", per_run(lambda r: _fmt(r.evaluation.get("eval_token_loss"), ".4f"))),
        ("perplexity", per_run(lambda r: _fmt(r.evaluation.get("eval_perplexity"), ".2f"))),
        ("distinct-1", per_run(quality("distinct_1"))),
        ("distinct-2", per_run(quality("distinct_2"))),
        ("clean ends", per_run(lambda r: _fmt((r.quality or {}).get("clean_end_share"), ".1%"))),
        ("device", per_run(lambda r: r.device or "n/a")),
    ]


# Beyond this many runs the side-by-side table (one column per run) is too wide to read; the ranking stays.
SIDE_BY_SIDE_MAX_RUNS = 4


def comparison_markdown(runs: list[RunSummary], plot_name: str | None, pareto_plot_name: str | None = None,
                        title: str | None = None, notes: list[str] = (), baseline: RunSummary | None = None) -> str:
    """The report: the side-by-side table (up to SIDE_BY_SIDE_MAX_RUNS runs), the runs ranked by eval perplexity,
    the Pareto fronts, the best full and LoRA runs, the plots, then what each figure is."""
    from .ranking import decision_markdown, pareto_markdown, ranking_markdown

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
    from .files import atomic_write_text
    from .ranking import plot_pareto

    runs = read_runs(run_dirs)
    base, base_notes = read_baseline(baseline, runs) if baseline else (None, [])
    output = Path(output)
    plot = plot_loss_curves(runs, output.with_suffix(".png"), base)
    pareto = plot_pareto(runs, output.with_name(f"{output.stem}-pareto.png"))
    atomic_write_text(output, comparison_markdown(runs, plot.name, pareto.name, title, [*notes, *base_notes], base))
    return output, plot, pareto
