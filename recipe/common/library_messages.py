"""Messages of the libraries under a run that its user cannot act on, each dropped here with the reason.

A normal run prints no warning a user cannot act on. Most are fixed where they arise (DeepSpeed not imported where
it is not used: recipe/models/loading.py; a tied LM head not reported missing: recipe/training/trainer.py; the tensor
scan of recipe/memory/measured.py). These are not ours to fix, so they are dropped, and only they.

Each is matched by where it comes from, never by its wording, which changes between versions (and a library's new
message would slip past a filter on the old one's text): a log record by its library's logger and level and, where that
logger says other things too, the library code that is running as it logs; a Python warning by the module that raises it
and its category. Records at ERROR and above always show. A warning raised by a library's wrapper on behalf of another
library carries the wrapper's module, which says nothing of the caller: there alone the filter also names the deprecated
call (DEPRECATED_COLLECTIVES, PEFT_DEPRECATED_ALIAS).
"""

from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import dataclass


@dataclass(frozen=True)
class LogSource:
    """The records below ERROR of `logger` (and, with `with_children`, of the loggers under it) logged while `caller`
    runs, where one is given: a module or package (`bitsandbytes`), or one function of one (`pkg.module:function`)."""

    logger: str
    caller: str | None = None
    with_children: bool = False

    def matches(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR and (self.caller is None or running(self.caller))


@dataclass(frozen=True)
class WarningSource:
    """Python warnings of `category` raised from `module` (a regular expression that the raising module's name must
    match whole: the module of the code that calls warnings.warn, or of its caller when the warning gives a
    stacklevel); `message`, the start of the text, only where that module raises on behalf of others."""

    module: str
    category: type[Warning]
    message: str = ""


# bitsandbytes looks, as it is imported, for a fused CPU kernel for 4-bit matmuls on the Hub (through the `kernels`
# package), and logs to this logger when it finds none. peft imports bitsandbytes whenever it is installed (and the
# Trainer imports peft). Without the kernel, its own PyTorch code does those matmuls, which only a QLoRA run on a CPU
# uses at all. The whole logger below ERROR: that fallback is all it logs.
BITSANDBYTES_CPU_KERNEL = LogSource("bitsandbytes.backends.cpu.ops")
# What `kernels` says to bitsandbytes' probe above (offline, that the Hub cannot vouch for the kernel's publisher).
# Every `kernels` logger below ERROR, but only while bitsandbytes' code runs: where the recipe itself asks `kernels`
# for something (transformers fetches flash attention from it for --attn_implementation flash_attention_2 without the
# flash-attn package), it speaks.
KERNELS_PROBED_BY_BITSANDBYTES = LogSource("kernels", caller="bitsandbytes", with_children=True)
# transformers warns once when input_ids may be padded and no attention mask is given. Packed rows carry position_ids
# and no mask on purpose: transformers builds each dialogue's own causal mask from the position_ids only when no mask
# is given (masking_utils.find_packed_sequence_indices), and the start-up check (recipe/data/packing_check.py) proves
# the dialogues stay apart. Padded batches (--padding longest / max_length), evaluation and generation carry a mask.
# The logger is the whole of modeling_utils, so only the function that checks the mask.
PACKED_ROWS_WITHOUT_MASK = LogSource("transformers.modeling_utils",
                                     caller="transformers.modeling_utils:warn_if_padding_and_no_attention_mask")
# A model computing its own loss (wherever the recipe's chunked loss is off: under DeepSpeed ZeRO-3, for one) looks
# it up by the model's class name, in which GPT2LMHeadModel names none: transformers warns that `loss_type=None` is
# unrecognized and takes ForCausalLMLoss, the causal LM loss, the one loss of every model the recipe loads (through
# AutoModelForCausalLM). Only the `loss_function` lookup, which warns of nothing else.
UNNAMED_CAUSAL_LM_LOSS = LogSource("transformers.modeling_utils", caller="transformers.modeling_utils:loss_function")
# The Trainer orders checkpoints by modification time to rotate them, and calls mtime unreliable whenever two of them
# are less than a second apart (a fast run: the smoke recipe's epochs), then orders them by step, which is the order
# the recipe keeps them in anyway (RunDir): a warning about the filesystem that is about the run's speed. The logger
# also warns when a resumed run's options differ from its checkpoint's, which a user acts on: only sort_checkpoints.
CHECKPOINTS_SECONDS_APART = LogSource("transformers.trainer_utils",
                                      caller="transformers.trainer_utils:sort_checkpoints")
# DeepSpeed, imported by a launch that uses it, falls back to its CPU accelerator when torch sees no GPU, and says
# so: the run is on the CPU, as its start-up summary says (device cpu), and so are DeepSpeed's collectives. Only the
# accelerator detection, whose one warning that is (its logger writes to stdout with its own handler). Where DeepSpeed
# is not used it is not imported at all (import_deepspeed_only_when_used, recipe/models/deepspeed_import.py: before the
# Trainer starts, a model loads, or a GGUF base is dequantized and saved).
DEEPSPEED_CPU_ACCELERATOR = LogSource("DeepSpeed", caller="deepspeed.accelerator.real_accelerator:get_accelerator")
LOG_SOURCES = (BITSANDBYTES_CPU_KERNEL, KERNELS_PROBED_BY_BITSANDBYTES, UNNAMED_CAUSAL_LM_LOSS,
               CHECKPOINTS_SECONDS_APART, DEEPSPEED_CPU_ACCELERATOR)

# FSDP 2 warns when a wrapped module returns a view, in case the caller changes it in place (which would skip the
# all-gather of its backward). GPT-2's last hidden state is a view (GPT2Model reshapes it), and the recipe's chunked
# loss reads it without changing it (tests/test_fsdp.py trains FSDP to a single process's losses). torch's FSDP 2 state
# module raises this UserWarning and no other.
FSDP_VIEW_OUTPUT = WarningSource(r"torch\.distributed\.fsdp\._fully_shard\._fsdp_state", UserWarning)
# torch 2.8's distributed-checkpoint writer (FSDP's sharded checkpoints) reads tensors through the TypedStorage API
# torch itself deprecates: torch's code to change (later releases do), not the user's. Only that deprecation, from
# that module.
CHECKPOINT_WRITER_TYPED_STORAGE = WarningSource(r"torch\.distributed\.checkpoint\.filesystem", UserWarning,
                                                message=r"TypedStorage is deprecated")
# peft (before 0.22) reads transformers' deprecated `is_gradient_checkpointing` alias in every PeftModel it builds
# (each LoRA run, each adapter evaluated): peft's code to change, not the user's. transformers raises it from the
# alias itself, in modeling_utils, which raises other FutureWarnings the recipe must see: the alias is named.
PEFT_DEPRECATED_ALIAS = WarningSource(r"transformers\.modeling_utils", FutureWarning,
                                      message=r"`is_gradient_checkpointing` is deprecated")
# DeepSpeed's communication layer calls torch.distributed.all_gather_into_tensor and reduce_scatter_tensor, which
# torch deprecates in favour of *_single: DeepSpeed's code to change, not the user's. torch raises them from the
# wrapper of every collective (c10d_logger), so the two calls are named; and only on runs under DeepSpeed (the recipe
# calls neither).
DEPRECATED_COLLECTIVES = WarningSource(r"torch\.distributed\.c10d_logger", FutureWarning,
                                       message=r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` "
                                               r"is deprecated")


def running(caller: str) -> bool:
    """Whether code of `caller` (a module or package, or `module:function`) is on the current call stack."""
    module, _, function = caller.partition(":")
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if (name == module or name.startswith(module + ".")) and (not function or frame.f_code.co_name == function):
            return True
        frame = frame.f_back
    return False


class DropRecords(logging.Filter):
    """Drops the records of one LogSource."""

    def __init__(self, source: LogSource):
        super().__init__()
        self.source = source

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.source.matches(record)


class PassUp(logging.Handler):
    """Propagation that filters: on the top logger of a library whose propagation is off, it hands the records its
    filters keep to the handlers above, as propagation would. A logger's own filters see only the records logged to
    it, never those of the loggers under it."""

    def __init__(self, top: logging.Logger):
        super().__init__()
        self.top = top

    def emit(self, record: logging.LogRecord) -> None:
        if self.top.parent is not None:
            self.top.parent.callHandlers(record)


def drop_log_records(source: LogSource) -> None:
    """Install once, before the library is imported or at least before it speaks (a library that sets up its logger
    on import keeps the filters already on it)."""
    logger = logging.getLogger(source.logger)
    if not any(isinstance(f, DropRecords) and f.source == source for f in logger.filters):
        logger.addFilter(DropRecords(source))
    if source.with_children:
        gate = next((h for h in logger.handlers if isinstance(h, PassUp)), None)
        if gate is None:
            gate = PassUp(logger)
            logger.addHandler(gate)
            logger.propagate = False
        if not any(isinstance(f, DropRecords) and f.source == source for f in gate.filters):
            gate.addFilter(DropRecords(source))


def drop_warnings(source: WarningSource) -> None:
    """warnings.filterwarnings puts an identical filter back in front rather than adding another."""
    warnings.filterwarnings("ignore", message=source.message, category=source.category, module=source.module + r"\Z")


def quiet_libraries() -> None:
    """What the libraries say on import or on every run that no user can act on (the scripts call this before they
    import them)."""
    for source in LOG_SOURCES:
        drop_log_records(source)
    drop_warnings(FSDP_VIEW_OUTPUT)
    drop_warnings(CHECKPOINT_WRITER_TYPED_STORAGE)
    drop_warnings(PEFT_DEPRECATED_ALIAS)


def quiet_packed_rows() -> None:
    """transformers' attention-mask warning, for runs that pack (see PACKED_ROWS_WITHOUT_MASK)."""
    drop_log_records(PACKED_ROWS_WITHOUT_MASK)


def quiet_deepspeed_deprecations() -> None:
    """torch's deprecation of two collectives DeepSpeed calls, on runs under DeepSpeed (see DEPRECATED_COLLECTIVES)."""
    drop_warnings(DEPRECATED_COLLECTIVES)
