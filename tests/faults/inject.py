"""scripts/train.py with one fault injected at a chosen training step; for tests/faults/ only.

    FAULT=signal:SIGTERM:5   python tests/faults/inject.py --config ...   # as `python scripts/train.py ...`
    FAULT=signal:SIGINT:5    torchrun --nproc_per_node 2 tests/faults/inject.py --config ...
    FAULT=signal:SIGINT:3:2  python tests/faults/inject.py ...   # Ctrl-C twice
    FAULT=nan:9              python tests/faults/inject.py ...

signal:NAME:STEP[:TIMES]  when step STEP begins, the main process sends the signal the way a cluster
                          or a terminal does: to the launcher (torchrun, which passes it on to every
                          worker), or, without one, to itself; with FAULT_TARGET=parent, to the process
                          that started it (scripts/sweep.py, which passes it on).
nan:STEP                  the model's activations are NaN during step STEP (as after an overflow).
kill:STEP:RANK            when step STEP begins, the process of that rank dies at once (SIGKILL: a lost
                          machine or the kernel's out-of-memory killer); the launcher stops the others.
"""

import os
import runpy
import signal
import sys
from pathlib import Path

from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[2]


class Fault(TrainerCallback):
    def __init__(self, spec: str):
        kind, *rest = spec.split(":")
        self.kind = kind
        if kind == "signal":
            self.signal, self.step = getattr(signal, rest[0]), int(rest[1])
            self.times = int(rest[2]) if len(rest) > 2 else 1
        elif kind == "kill":
            self.step, self.rank = int(rest[0]), int(rest[1])
        else:
            self.step = int(rest[0])
        self.poisoned = False

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.kind == "nan":
            # At the input embeddings, so every later layer and the loss see it, whichever way the loss is
            # computed (the chunked loss reads the LM head's weight without calling its forward).
            model.get_input_embeddings().register_forward_hook(self.poison)

    def poison(self, module, inputs, output):
        return output * float("nan") if self.poisoned and module.training else output

    def on_step_begin(self, args, state, control, **kwargs):
        this_step = state.global_step + 1
        if self.kind == "kill" and this_step == self.step and args.process_index == self.rank:
            os.kill(os.getpid(), signal.SIGKILL)
        self.poisoned = self.kind == "nan" and this_step == self.step
        if self.kind == "signal" and this_step == self.step and state.is_world_process_zero:
            to_parent = "TORCHELASTIC_RUN_ID" in os.environ or os.environ.get("FAULT_TARGET") == "parent"
            target = os.getppid() if to_parent else os.getpid()
            for _ in range(self.times):
                os.kill(target, self.signal)


def with_fault(build_trainer, spec: str):
    """`build_trainer` that adds the fault to every Trainer it builds."""

    def build(*args, **kwargs):
        trainer = build_trainer(*args, **kwargs)
        trainer.add_callback(Fault(spec))
        return trainer

    return build


if __name__ == "__main__":
    import recipe.training.run

    recipe.training.run.build_trainer = with_fault(recipe.training.run.build_trainer, os.environ["FAULT"])
    sys.argv[0] = str(REPO / "scripts" / "train.py")
    runpy.run_path(sys.argv[0], run_name="__main__")
