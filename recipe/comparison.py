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

    @property
    def mode(self) -> str:
        mode = self.train.get("mode") or ("lora" if self.config.get("use_lora") else "full")
        if mode != "lora":
            return "full"
        return "QLoRA" if self.config.get("load_in_4bit") else "LoRA, 8-bit base" if self.config.get("load_in_8bit") \
            else "LoRA"


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
    return RunSummary(
        run_dir=run.path,
        label=label or run.path.name,
        config=run.read_config(),
        train=read_json_file(run.train_results) or {},
        evaluation=read_json_file(run.eval_results) or {},
        quality=(read_json_file(run.evaluation) or {}).get("quality"),
        device=" ".join(str(v) for v in (device.get("type"), device.get("name")) if v) or None,
        train_curve=train_curve,
        eval_curve=eval_curve,
    )


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
        trainable, total = run.train.get("trainable_parameters"), run.train.get("total_parameters")
        return f"{trainable:,} ({trainable / total:.2%})" if trainable and total else _fmt(trainable, ",")

    def base(run: RunSummary) -> str:
        name = f"`{run.config.get('model_name_or_path', 'n/a')}`"
        return name + (" (random init)" if run.config.get("random_init") else "")

    def quality(key: str):
        return lambda run: _fmt((run.quality or {}).get(key), ".3f")

    return [
        ("mode", per_run(lambda r: r.mode)),
        ("base model", per_run(base)),
        ("trainable parameters", per_run(parameters)),
        ("epochs / learning rate", per_run(lambda r: f"{r.config.get('num_train_epochs', 'n/a')} / "
                                                      f"{r.config.get('learning_rate', 'n/a')}")),
        ("wall time (s)", per_run(lambda r: _fmt(r.train.get("train_runtime"), ".1f"))),
        ("tokens/s (real tokens)", per_run(lambda r: _fmt(r.train.get("train_real_tokens_per_second"), ",.0f"))),
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


def comparison_markdown(runs: list[RunSummary], plot_name: str | None) -> str:
    header = "| | " + " | ".join(run.label for run in runs) + " |"
    title = "# Run comparison: " + " vs ".join(run.label for run in runs)
    lines = [title, "", header, "|---" * (len(runs) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(values) + " |" for name, values in comparison_rows(runs)]
    lines.append("")
    if plot_name:
        lines += [f"![Train and eval loss per epoch]({plot_name})", ""]
    lines += [
        "- Runs: " + ", ".join(f"{run.label} = `{run.run_dir}`" for run in runs) + ".",
        "- Eval loss is `eval_token_loss`: the validation set's total negative log-likelihood over its predicted "
        "tokens (nats per token, every token counted once); perplexity is its exponential. The train loss is the "
        "Trainer's mean over its last logging window.",
        "- Tokens/s counts real tokens (padding excluded). Peak memory in tensors is what the run's tensors held at "
        "most (counted over its first optimizer steps on a CPU, the allocator's peak on CUDA); the memory plan is "
        "its estimate before the model loaded; peak RSS is the process's resident memory, which on a CPU measures "
        "the allocator (freed blocks kept), not the tensors: compare runs by the tensor figure, on one device.",
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
    return "\n".join(lines) + "\n"


def plot_loss_curves(runs: list[RunSummary], path: str | os.PathLike) -> Path:
    """Train and eval loss of every run on shared axes (x: epoch); one colour per run."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, run in enumerate(runs):
        color = colors[index % len(colors)]
        if run.train_curve:
            axes.plot(*zip(*run.train_curve), color=color, linewidth=1.2, marker=".", label=f"{run.label} train")
        if run.eval_curve:
            axes.plot(*zip(*run.eval_curve), color=color, linestyle="--", marker="o", label=f"{run.label} eval")
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss (nats per token)")
    axes.set_title("Train and eval loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def compare_runs(run_dirs: list[str | os.PathLike], output: str | os.PathLike) -> tuple[Path, Path]:
    """Write the Markdown report to `output` and its plot next to it (same name, .png); return both paths."""
    from .files import atomic_write_text

    runs = read_runs(run_dirs)
    output = Path(output)
    plot = plot_loss_curves(runs, output.with_suffix(".png"))
    atomic_write_text(output, comparison_markdown(runs, plot.name))
    return output, plot
