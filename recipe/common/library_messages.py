"""Messages of the libraries under a run that its user cannot act on, each dropped here with the reason.

A normal run prints no warning a user cannot act on. Most are fixed where they arise (DeepSpeed imported only when a
launch uses it: recipe/models/loading.py; a tied LM head not reported missing: recipe/training/trainer.py; the tensor
scan of recipe/memory/measured.py). These are not ours to fix, so they are dropped, and only they: a filter matches
one logger and the start of one message, or one warning raised from one library.
"""

from __future__ import annotations

import logging
import warnings

# bitsandbytes logs this as it is imported. peft imports it whenever it is installed (and the Trainer imports peft),
# and bitsandbytes then looks for a fused CPU kernel for 4-bit matmuls in the Hub's `kernels` package. Without it, its
# own PyTorch code does those matmuls, which only a QLoRA run on a CPU uses at all; installing `kernels` would download
# the kernel from the Hub at import. Nothing for the user to do.
BITSANDBYTES_CPU_KERNEL = ("bitsandbytes.backends.cpu.ops",
                           "Failed to load CPU gemm_4bit_forward from kernels-community")
# transformers warns once when input_ids may be padded and no attention mask is given. Packed rows carry position_ids
# and no mask on purpose: transformers builds each dialogue's own causal mask from the position_ids only when no mask
# is given (masking_utils.find_packed_sequence_indices), and the start-up check (recipe/data/packing_check.py) proves
# the dialogues stay apart. Padded batches (--padding longest / max_length), evaluation and generation carry a mask.
PACKED_ROWS_WITHOUT_MASK = ("transformers.modeling_utils", "We strongly recommend passing in an `attention_mask`")
# The Trainer orders checkpoints by modification time to rotate them, and calls mtime unreliable whenever two of them
# are less than a second apart (a fast run: the smoke recipe's epochs), then orders them by step, which is the order
# the recipe keeps them in anyway (RunDir): a warning about the filesystem that is about the run's speed.
CHECKPOINTS_SECONDS_APART = ("transformers.trainer_utils", "mtime may not be reliable on this filesystem")


class DropRecords(logging.Filter):
    """Drops the records of one logger whose message starts with `start`."""

    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


def drop_log_records(logger_name: str, start: str) -> None:
    """Install the filter once, before the logger's library is imported or at least before it speaks."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, DropRecords) and f.start == start for f in logger.filters):
        logger.addFilter(DropRecords(start))


def quiet_libraries() -> None:
    """What the libraries say on import or on every run that no user can act on (the scripts call this before they
    import them)."""
    drop_log_records(*BITSANDBYTES_CPU_KERNEL)
    drop_log_records(*CHECKPOINTS_SECONDS_APART)
    # peft (0.21) reads transformers' deprecated `is_gradient_checkpointing` alias in every PeftModel it builds (each
    # LoRA run, each adapter evaluated): peft's code to change, not the user's. The recipe reads neither alias.
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def quiet_packed_rows() -> None:
    """transformers' attention-mask warning, for runs that pack (see PACKED_ROWS_WITHOUT_MASK)."""
    drop_log_records(*PACKED_ROWS_WITHOUT_MASK)


def quiet_deepspeed_deprecations() -> None:
    """DeepSpeed's communication layer calls torch.distributed.all_gather_into_tensor and reduce_scatter_tensor, which
    torch deprecates in favour of *_single: DeepSpeed's code to change, not the user's. Only those two warnings, on
    runs under DeepSpeed (the recipe calls neither; torch raises them from its own wrapper, so the module that called
    cannot be matched)."""
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` "
                                              r"is deprecated", category=FutureWarning)
