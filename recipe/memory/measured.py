"""Peak memory held by tensors, measured: CUDA's allocator peak, or on a CPU a count of live tensor storages.

Why not the process's resident memory (RSS): on a CPU it measures the allocator, not the tensors. glibc
keeps freed blocks and RSS grows from step to step, so a LoRA run can show a higher RSS peak than full
fine-tuning while it holds ~1 GB less in tensors (SmolLM2-135M, measured while planning). The memory
plan (recipe/memory/plan.py) is checked against this measure.

On a CPU, `TensorMemoryMeter` watches every operator's outputs at the dispatcher (forward, backward, the
optimizer) and counts each storage once, from its first tensor until its last one is gone; what existed
before it started (the weights) is counted from the model, once: views of it are not counted again.
Memory an operator allocates and frees inside its own kernel is not seen; PyTorch keeps a tensor's Python
object alive as long as the tensor itself.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import TrainerCallback

from .plan import MIB


class TensorMemoryMeter(TorchDispatchMode):
    """Bytes of live tensor storages: `existing` and `baseline_bytes`, then what is created while it is active;
    and their peak.

    A storage is counted at its size when first seen. FSDP 2 frees a gathered layer by resizing its storage to
    nothing while the tensors stay (and gathers into it again later), which no operator shows: before a new peak
    is recorded, the sizes of the storages being counted are read again."""

    def __init__(self, baseline_bytes: int = 0, existing: Iterable[torch.Tensor] = ()):
        """`existing`: tensors there before the meter (a model's weights, an optimizer's states), their storages
        counted once each. What an operator returns on those storages is not counted again: a view of a weight
        (its transpose, which a float32 linear layer saves for backward) or an in-place update."""
        super().__init__()
        existing_storages = storage_bytes(existing)
        self._existing = set(existing_storages)
        baseline_bytes += sum(existing_storages.values())
        self.baseline = baseline_bytes
        self.current = baseline_bytes
        self.peak = baseline_bytes
        # (device, storage) -> [bytes counted, live tensors, the storage]
        self._storages: dict[tuple[str, int], list] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self._track(value)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        tensor = local_tensor(tensor)
        try:
            storage = tensor.untyped_storage()
            size, address = storage.nbytes(), storage.data_ptr()
        except (RuntimeError, NotImplementedError):  # subclasses without one storage (a collective's async wrapper)
            return
        if size == 0 or address == 0 or tensor.device.type == "meta":
            return
        key = (str(tensor.device), storage._cdata)  # the storage itself: its address moves when FSDP regathers it
        if key in self._existing:
            return
        entry = self._storages.get(key)
        if entry is None:
            self._storages[key] = [size, 1, storage]
            self.current += size
            if self.current > self.peak:
                self._resync()
                self.peak = max(self.peak, self.current)
        else:
            entry[1] += 1
        weakref.finalize(tensor, self._release, key)

    def _resync(self) -> None:
        """Count each storage at its size now (see the class docstring)."""
        for entry in self._storages.values():
            size = entry[2].nbytes()
            if size != entry[0]:
                self.current += size - entry[0]
                entry[0] = size

    def _release(self, key: tuple[str, int]) -> None:
        entry = self._storages.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self._storages[key]
            self.current -= entry[0]

    @property
    def peak_mb(self) -> float:
        return round(self.peak / MIB, 1)


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """What this process holds of a tensor: the local shard of a DTensor (FSDP 2's sharded parameters, their
    gradients and optimizer states), else the tensor itself."""
    local = getattr(tensor, "_local_tensor", None)
    return local if isinstance(local, torch.Tensor) else tensor


def _storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    return str(tensor.device), tensor.untyped_storage()._cdata


def storage_bytes(tensors: Iterable[torch.Tensor]) -> dict[tuple[str, int], int]:
    """Bytes of each storage under `tensors`, each once (tied weights and views share one; a sharded tensor
    counts its local shard)."""
    sizes = {}
    for tensor in tensors:
        tensor = local_tensor(tensor)
        if tensor.device.type == "meta":
            continue
        try:
            sizes[_storage_key(tensor)] = tensor.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):  # a subclass without one storage of its own
            continue
    return sizes


def model_tensors(model) -> list[torch.Tensor]:
    """A model's parameters, buffers and gradients."""
    tensors = [*model.parameters(), *model.buffers()]
    return tensors + [p.grad for p in model.parameters() if p.grad is not None]


def live_tensors() -> list[torch.Tensor]:
    """Every tensor a Python object holds now: the weights (or this process's shards of them), and what FSDP and
    DeepSpeed built before training starts (DeepSpeed's flat fp32 partitions and gradient buffers, ZeRO-3's
    partitioned weights), which no model attribute lists."""
    import gc
    import warnings

    with warnings.catch_warnings():
        # isinstance() reads the class of every live object, torch.distributed.reduce_op among them, whose every
        # attribute read warns that it is deprecated: a warning about our scan, not about the user's code.
        warnings.filterwarnings("ignore", message=r"`torch\.distributed\.reduce_op` is deprecated",
                                category=FutureWarning)
        return [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]


class TensorMemoryCallback(TrainerCallback):
    """Measures the peak of tensor memory over the first `steps` optimizer steps of a run (CUDA: the
    allocator's peak over the whole run). With packed rows every step holds the same; the first steps
    include the optimizer's states from step 1 on, and a meter on every step would cost a Python call
    per operator for the whole run."""

    def __init__(self, model, steps: int = 3):
        self.model, self.steps = model, steps
        self.meter: TensorMemoryMeter | None = None
        self.peak_bytes: int | None = None
        self.measured_steps = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if args.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(args.device)
        else:
            self.meter = TensorMemoryMeter(existing=[*model_tensors(self.model), *live_tensors()])
            self.meter.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        self.measured_steps += 1
        if self.meter is not None and self.measured_steps >= self.steps:
            self._stop()

    def on_train_end(self, args, state, control, **kwargs):
        if args.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(args.device)
            self.measured_steps = state.global_step
        self._stop()

    def _stop(self) -> None:
        if self.meter is not None:
            self.meter.__exit__(None, None, None)
            self.peak_bytes = self.meter.peak
            self.meter = None

    @property
    def peak_mb(self) -> float | None:
        return None if self.peak_bytes is None else round(self.peak_bytes / MIB, 1)
