"""`DialogueTrainingArguments`: HF `TrainingArguments` with the recipe's options and defaults (`TrainingOptions`, in
training_options.py: per-epoch evaluation and checkpoints, Hub pushes of every checkpoint, ...), settled for the machine
(automatic precision) and checked. The one options module that imports transformers."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from transformers import TrainingArguments

from ..common.redaction import SecretsStayInMemory
from .errors import ConfigError, raise_all
from .training_options import TrainingOptions

# Options settled for the machine at hand when the arguments are built: automatic precision (bf16 None),
# use_cpu on a machine without an accelerator (ours), pin_memory off on CPU and report_to "all" (the
# Trainer's). run_config.yaml records them as asked, so a replay on another machine settles them again;
# environment.json records what this machine chose.
MACHINE_RESOLVED_OPTIONS = ("bf16", "fp16", "use_cpu", "dataloader_pin_memory", "report_to")


def _cpu_has_fast_bf16() -> bool:
    """AMX or AVX-512 BF16 make bf16 matmuls several times faster than fp32 on a CPU."""
    import torch

    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


@dataclass
class DialogueTrainingArguments(SecretsStayInMemory, TrainingOptions, TrainingArguments):
    """HF TrainingArguments with the recipe's options and defaults for dialogue fine-tuning (`TrainingOptions`: each
    changed default says why). Pickled (the Trainer's training_args.bin), it holds no hub_token: see
    recipe/common/redaction.py."""

    def __post_init__(self) -> None:
        # Kept before anything is resolved. A dataclasses.replace() copy resolves again and keeps its own
        # (already resolved) values here: record the runs from the arguments as parsed.
        self.asked_options = {name: copy.copy(getattr(self, name)) for name in MACHINE_RESOLVED_OPTIONS}
        if not self.use_cpu and not _accelerator_available():
            # Without use_cpu, a CPU-only machine neither starts gloo data parallelism under torchrun /
            # accelerate launch (each process trains alone) nor accepts bf16.
            self.use_cpu = True
        if self.bf16 is None:
            self.bf16 = _default_bf16(self.use_cpu, self.fp16)
            if not self.bf16 and not self.fp16 and not self.use_cpu and _cuda_without_bf16():
                self.fp16 = True  # older GPUs (V100, T4): fp16 mixed precision with loss scaling
        try:
            super().__post_init__()
        except ConfigError:
            raise
        except ValueError as error:  # TrainingArguments' own checks: a user error, shown without a traceback
            raise ConfigError(f"invalid training options: {error}") from None
        raise_all(training_option_errors(self))

    def resolved_options(self) -> dict:
        """What this machine chose for the options that were left to it (see MACHINE_RESOLVED_OPTIONS)."""
        return {name: copy.copy(getattr(self, name)) for name in MACHINE_RESOLVED_OPTIONS}


def training_option_errors(args: DialogueTrainingArguments) -> list[str]:
    """Values TrainingArguments accepts but that cannot train (or that it would silently ignore)."""
    errors = []
    if args.learning_rate <= 0:
        errors.append(f"learning_rate is {args.learning_rate}; use a positive step size such as 5e-5")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            errors.append(f"{name} is {getattr(args, name)}; use 1 or more")
    if args.num_train_epochs <= 0 and args.max_steps <= 0:
        errors.append(f"num_train_epochs is {args.num_train_epochs}; use a positive number of epochs (or set "
                      "max_steps)")
    if args.stop_after_steps is not None and args.stop_after_steps < 1:
        errors.append(f"stop_after_steps is {args.stop_after_steps}; use 1 or more, or leave it unset")
    if args.weight_decay < 0:
        errors.append(f"weight_decay is {args.weight_decay}; use 0 or more")
    if args.max_grad_norm < 0:
        errors.append(f"max_grad_norm is {args.max_grad_norm}; use a positive norm, or 0 to turn clipping off")
    if args.max_nonfinite_loss_steps < 0:
        errors.append(f"max_nonfinite_loss_steps is {args.max_nonfinite_loss_steps}; use 0 (stop at the first) or more")
    if args.early_stopping_patience is not None:
        if args.early_stopping_patience < 1:
            errors.append(f"early_stopping_patience is {args.early_stopping_patience}; use 1 or more, or leave it "
                          "unset")
        if args.eval_strategy == "no":
            errors.append("early_stopping_patience needs evaluations: set eval_strategy to epoch or steps")
    return errors


def _accelerator_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(mps and mps.is_available()) or bool(xpu and xpu.is_available())


def _cuda_without_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and not torch.cuda.is_bf16_supported()


def _default_bf16(use_cpu: bool, fp16: bool) -> bool:
    import torch

    if fp16:
        return False
    if torch.cuda.is_available() and not use_cpu:
        return torch.cuda.is_bf16_supported()
    return _cpu_has_fast_bf16()
