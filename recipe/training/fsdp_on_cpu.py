"""FSDP on CPU processes, as on GPUs.

accelerate turns an FSDP launch into FSDP only on GPUs (its AcceleratorState picks FSDP in its multi-GPU branch); on
CPU processes it silently trains with DDP instead. PyTorch's FSDP 2 itself runs on CPUs over gloo, so a CPU launch
that asks for FSDP gets FSDP, the same code path a GPU run takes: that is how this project checks FSDP without a GPU.
"""

from __future__ import annotations

from accelerate import PartialState
from accelerate.utils import DistributedType

from ..config.sharding import fsdp_requested


def allow_fsdp_on_cpu(training_args) -> None:
    """Make accelerate build FSDP on CPU processes, as it does on GPUs (see the module docstring). Call before the
    Trainer builds its Accelerator."""
    if not fsdp_requested(training_args):
        return
    state = PartialState()
    if state.distributed_type == DistributedType.MULTI_CPU:
        # AcceleratorState picks FSDP in its multi-device branch; it then records FSDP as the distributed type.
        PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU
