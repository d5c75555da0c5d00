"""Training that stops cleanly: on SIGTERM or Ctrl-C, and when the loss is no longer finite.

- **SIGTERM / first Ctrl-C** (a cluster preempting the job, a user stopping it): the current step
  finishes, a complete checkpoint is saved (resume picks it up), the command that resumes is printed
  and the run exits with 128 + the signal number. A second Ctrl-C exits at once. Under a launcher
  (torchrun, accelerate launch) the signal may reach one process first: every process agrees on the
  step to stop at through one tiny all-reduce per optimizer step.
- **A non-finite loss** (NaN or inf, which the Trainer's NaN filter would hide from the logs): the
  update of that step is skipped; after `max_nonfinite_loss_steps` such steps (0: the first) training
  stops without saving, naming the step and the last good checkpoint, and the run exits with 1 before
  anything final (model, results, model card, Hub push) is written.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import signal
import threading

import torch
from transformers import TrainerCallback

from ..common.errors import RunStopped
from ..common.run_dir import RunDir
from ..config.sharding import launcher_command

logger = logging.getLogger(__name__)

DIVERGED_EXIT_CODE = 1


class WatchesLoss:
    """Trainer mixin: hands every micro-batch's loss to the `TrainingGuard` before the Trainer's NaN
    filter replaces a non-finite one by the running mean."""

    training_guard: TrainingGuard | None = None

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.training_guard is not None:
            self.training_guard.observe_loss(loss)
        return loss


class TrainingGuard(TrainerCallback):
    """Stops training at a step boundary on a signal (saving a checkpoint) or on non-finite losses (saving
    nothing more); see the module docstring. Attach it with `attach_training_guard`."""

    def __init__(self, run: RunDir, max_nonfinite_loss_steps: int = 0):
        self.run = run
        self.max_nonfinite_loss_steps = max_nonfinite_loss_steps
        self.signal: int | None = None  # the first signal received
        self.stop_reason: str | None = None  # "signal" or "diverged", once every process agreed
        self.stopped_at_step: int | None = None
        self.nonfinite_steps: list[tuple[int, float]] = []  # (step, loss) of each skipped step
        self._nonfinite_now = False
        self._nonfinite_value = math.nan
        self._previous_handlers: dict[int, object] = {}
        self._is_main = True

    # -- signals

    def on_train_begin(self, args, state, control, **kwargs):
        self._is_main = state.is_world_process_zero
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only; a Trainer run from another keeps the defaults
        for number in (signal.SIGTERM, signal.SIGINT):
            self._previous_handlers[number] = signal.signal(number, self._on_signal)

    def on_train_end(self, args, state, control, **kwargs):
        for number, handler in self._previous_handlers.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        self._previous_handlers.clear()

    def _on_signal(self, number: int, frame) -> None:
        if self.signal is None:
            self.signal = number
            if self._is_main:
                logger.warning("%s received: finishing this step, then saving a checkpoint and stopping "
                               "(press Ctrl-C again to exit at once, without saving)", signal.Signals(number).name)
            return
        if number == signal.SIGINT:
            os.write(2, b"\nsecond Ctrl-C: exiting now, without saving\n")
            os._exit(128 + signal.SIGINT)

    # -- losses

    def observe_loss(self, loss: torch.Tensor) -> None:
        if not self._nonfinite_now and not torch.isfinite(loss).all():
            self._nonfinite_now = True
            self._nonfinite_value = float(loss.detach().float().reshape(-1)[0])

    # -- the decision, once per optimizer step, shared by every process

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        flags = torch.tensor([self.signal or 0, self._nonfinite_now], dtype=torch.int32, device=args.device)
        if args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        signal_number, nonfinite = flags.tolist()
        step = state.global_step + 1
        if nonfinite:
            self.nonfinite_steps.append((step, self._nonfinite_value))
            self._skip_update(optimizer)
            if self._is_main:
                logger.warning("step %d: the training loss is %s; this step's update is skipped", step,
                               self._nonfinite_value)
            if len(self.nonfinite_steps) > self.max_nonfinite_loss_steps:
                self.stop_reason, self.stopped_at_step = "diverged", step
        self._nonfinite_now, self._nonfinite_value = False, math.nan
        if signal_number and self.stop_reason is None:
            self.stop_reason, self.stopped_at_step = "signal", step
            self.signal = self.signal or signal_number  # another process may have received it first

    def _skip_update(self, optimizer) -> None:
        """No update from non-finite gradients: optimizers skip parameters whose gradient is None. (With
        fp16 loss scaling the scaler already skips such a step, and needs the gradients to see it.)"""
        scaler = getattr(optimizer, "scaler", None)
        if scaler is None and optimizer is not None:
            optimizer.zero_grad(set_to_none=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop_reason is None:
            return
        control.should_training_stop = True
        control.should_evaluate = False
        control.should_save = self.stop_reason == "signal"  # a diverged model is never saved

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stop_reason is not None:  # the checkpoint (if any) was saved at the step end
            control.should_evaluate = control.should_save = False

    # -- after trainer.train()

    def raise_if_stopped(self, args) -> None:
        if self.stop_reason is None:
            return
        resume = resume_command(self.run, args)
        last = self.run.last_complete_checkpoint()
        if self.stop_reason == "signal":
            name = signal.Signals(self.signal).name
            message = (f"training stopped by {name} after step {self.stopped_at_step}; checkpoint saved: {last}. "
                       f"Resume with: {resume}")
            raise RunStopped(message, 128 + self.signal, self._is_main)
        step, value = self.nonfinite_steps[-1]
        message = (
            f"training stopped at step {step}: the training loss is {value} "
            f"({len(self.nonfinite_steps)} step(s) with a non-finite loss, max_nonfinite_loss_steps "
            f"{self.max_nonfinite_loss_steps}); no model was saved after it. Last good checkpoint: "
            f"{last or 'none (the run diverged before its first save)'}. Lower --learning_rate, check the "
            f"precision (fp16 overflows) and the data, then resume from it with: {resume}"
        )
        raise RunStopped(message, DIVERGED_EXIT_CODE, self._is_main)


def attach_training_guard(trainer, run: RunDir) -> TrainingGuard:
    """Add the guard to a Trainer that mixes in `WatchesLoss`."""
    guard = TrainingGuard(run, trainer.args.max_nonfinite_loss_steps)
    trainer.training_guard = guard
    trainer.add_callback(guard)
    return guard


def raise_if_stopped(trainer) -> None:
    """After trainer.train(): raise RunStopped (every process) if the guard stopped training early."""
    if trainer.training_guard is not None:
        trainer.training_guard.raise_if_stopped(trainer.args)


def resume_command(run: RunDir, args) -> str:
    """The command that resumes this run: the launcher that started it, then its run_config.yaml, which holds every
    option, output_dir included; a run with checkpoints resumes from the last complete one."""
    # The same launcher: a sharded checkpoint resumes only under the sharding that wrote it.
    command = [*launcher_command(args.world_size), "scripts/train.py", "--config", str(run.run_config)]
    if args.overwrite_output_dir:
        command += ["--overwrite_output_dir", "false"]  # true would delete the checkpoint just saved
    return shlex.join(command)
