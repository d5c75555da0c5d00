"""Where a run's training time goes: the training steps, evaluation, and checkpoints, each timed on its own.

`trainer.train()` also evaluates after every epoch and saves checkpoints, so tokens/s over its whole
time would fall with every evaluation added, and runs with other eval or save settings would not compare.
Throughput is therefore real tokens over the time of the training steps alone: fetching and collating a
step's batches, forward and backward of every micro-batch, clipping and the optimizer step.
Evaluation (with its callbacks, such as the W&B log) and checkpoints (saving them, reloading the best
one at the end) are reported beside it; the rest of `train()` (setting up, resuming state) is in the
whole time only.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from transformers import TrainerCallback


@dataclass
class PhaseSeconds:
    steps: float = 0.0
    evaluation: float = 0.0
    checkpoints: float = 0.0


class _StepClock(TrainerCallback):
    """Times each optimizer step, from its first micro-batch to the optimizer's update."""

    def __init__(self, seconds: PhaseSeconds):
        self.seconds = seconds
        self.started: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.started is not None:
            self.seconds.steps += time.perf_counter() - self.started
            self.started = None


class TimesPhases:
    """Trainer mixin: `phase_seconds` adds up the time of training steps, evaluation and checkpoints."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.phase_seconds = PhaseSeconds()
        self.add_callback(_StepClock(self.phase_seconds))

    @contextmanager
    def _timed(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            setattr(self.phase_seconds, phase, getattr(self.phase_seconds, phase) + time.perf_counter() - start)

    def get_batch_samples(self, *args, **kwargs):  # the step's batches are fetched before on_step_begin
        with self._timed("steps"):
            return super().get_batch_samples(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        with self._timed("evaluation"):
            return super().evaluate(*args, **kwargs)

    def _save_checkpoint(self, *args, **kwargs):
        with self._timed("checkpoints"):
            return super()._save_checkpoint(*args, **kwargs)

    def _load_best_model(self, *args, **kwargs):
        with self._timed("checkpoints"):
            return super()._load_best_model(*args, **kwargs)


def train_timing(trainer: TimesPhases, trainer_metrics: dict[str, Any], runtime: float,
                 real_tokens: int) -> dict[str, Any]:
    """The train_results.json figures of time: the whole train() call, each phase inside it, and throughput
    over the steps alone; the Trainer's own samples/s and steps/s are restated over the steps too, so that no
    figure in the file divides by evaluation and saving time."""
    seconds = asdict(trainer.phase_seconds)
    steps = seconds["steps"]
    timing = {
        "train_runtime": round(runtime, 2),
        "train_steps_runtime": round(steps, 3),
        "train_evaluation_runtime": round(seconds["evaluation"], 3),
        "train_checkpoint_runtime": round(seconds["checkpoints"], 3),
        "train_real_tokens_per_second": round(real_tokens / steps, 1) if steps > 0 else None,
    }
    whole = trainer_metrics.get("train_runtime")  # the Trainer's rates divide by this
    for key in ("train_samples_per_second", "train_steps_per_second"):
        if trainer_metrics.get(key) is not None and whole and steps > 0:
            timing[key] = round(trainer_metrics[key] * whole / steps, 3)
    return timing
