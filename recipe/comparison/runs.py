"""What the comparison knows of each finished run (`RunSummary`), read only from what the run wrote to its output
directory (train_results.json, eval_results.json, trainer_state.json, run_config.yaml, environment.json, and
evaluation.json once scripts/evaluate.py has run), so it works offline and without W&B.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.run_dir import RunDir, read_json_file
from ..config import ConfigError
from ..config.data_sources import data_path_text


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
    data_sha256: str | None = None  # of the data file it trained on (environment.json)

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


def _problem(run: RunDir) -> str | None:
    if not run.path.is_dir():
        return (f"run directory {run} does not exist; pass the output_dir of a training run "
                "(e.g. outputs/smoke-full)")
    if not run.is_finished():
        hint = (f"finish it (python scripts/train.py --config {run.run_config} resumes it) or leave it out"
                if run.is_recipe_run() else "it is not a training output directory")
        return f"{run} holds no finished run (no {run.train_results.name}): {hint}"
    return None


def read_run(run: RunDir, label: str | None = None) -> RunSummary:
    """Everything the comparison shows about one finished run."""
    problem = _problem(run)
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
    environment = read_json_file(run.environment) or {}
    device = environment.get("device") or {}
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
        data_sha256=(environment.get("data") or {}).get("data_sha256"),
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
        same = (data.get("data_path") == data_path_text(config.get("data_path")) and data.get("split") == "validation"
                and data.get("data_sha256") == run.data_sha256)
        if not same:
            notes.append(f"the base was evaluated on other data than {run.label}'s validation split "
                         f"({data.get('source')}): its row does not compare with that run")
    return baseline, notes


def read_runs(run_dirs: list[str | os.PathLike]) -> list[RunSummary]:
    """Every run, or one error listing every directory that is missing or unfinished."""
    if not run_dirs:
        raise ComparisonError("no run directories given; pass at least one, e.g. outputs/smoke-full outputs/smoke-lora")
    runs = [RunDir(run_dir) for run_dir in run_dirs]
    problems = [p for p in map(_problem, runs) if p]
    if len(problems) == 1:
        raise ComparisonError(f"cannot compare: {problems[0]}")
    if problems:
        raise ComparisonError("cannot compare:\n  - " + "\n  - ".join(problems))
    names = [run.path.name for run in runs]
    labels = [run.path.name if names.count(run.path.name) == 1 else str(d) for run, d in zip(runs, run_dirs)]
    return [read_run(run, label) for run, label in zip(runs, labels)]


def format_or_na(value: Any, spec: str) -> str:
    """A figure as the report shows it: formatted with `spec`, or n/a where the run did not record it."""
    return "n/a" if value is None else format(value, spec)
