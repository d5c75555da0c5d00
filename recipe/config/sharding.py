"""Several processes: DDP, FSDP 2 or DeepSpeed ZeRO, as `accelerate launch` (its config file) or the Trainer's own
`--fsdp` / `--deepspeed` options ask, and what the recipe does for each.

`get_sharding` reads what the launch asked for (accelerate passes its config to the processes as environment
variables), so the memory plan, the start-up summary, the loss and replies during training know how weights,
gradients and optimizer states are divided between the processes. (That accelerate builds FSDP on CPU processes
too is `recipe/training/fsdp_on_cpu.py`'s job.)
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

KINDS = ("single", "ddp", "fsdp", "zero1", "zero2", "zero3")
LABELS = {"single": "one process", "ddp": "DDP", "fsdp": "FSDP", "zero1": "DeepSpeed ZeRO-1",
          "zero2": "DeepSpeed ZeRO-2", "zero3": "DeepSpeed ZeRO-3"}


@dataclass(frozen=True)
class Sharding:
    """How a run is spread over its processes."""

    kind: str = "single"  # one of KINDS
    processes: int = 1
    offload: bool = False  # parameters or optimizer states kept in CPU memory (FSDP / ZeRO offload)
    fsdp_version: int = 2

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"sharding kind {self.kind!r} is not one of {', '.join(KINDS)}")

    @property
    def shards_weights(self) -> bool:
        """Each process holds only its share of the weights between layers' forward and backward passes."""
        return self.kind in ("fsdp", "zero3")

    @property
    def shards_gradients(self) -> bool:
        return self.kind in ("fsdp", "zero2", "zero3")

    @property
    def shards_optimizer(self) -> bool:
        return self.kind in ("fsdp", "zero1", "zero2", "zero3")

    @property
    def is_deepspeed(self) -> bool:
        return self.kind.startswith("zero")

    @property
    def label(self) -> str:
        name = f"FSDP {self.fsdp_version}" if self.kind == "fsdp" else LABELS[self.kind]
        return name + (" with CPU offload" if self.offload else "")

    def describe(self) -> str:
        """For the start-up summary: `FSDP 2 over 2 processes`."""
        if self.kind == "single":
            return "one process"
        return f"{self.label} over {self.processes} processes"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def fsdp_requested(training_args) -> bool:
    """FSDP asked for by `accelerate launch` (an FSDP config file or --use_fsdp) or by --fsdp."""
    return _env_flag("ACCELERATE_USE_FSDP") or bool(getattr(training_args, "fsdp", None))


def deepspeed_requested(training_args) -> bool:
    return _env_flag("ACCELERATE_USE_DEEPSPEED") or bool(getattr(training_args, "deepspeed", None))


def deepspeed_config(training_args) -> dict:
    """The DeepSpeed JSON of the run, where there is one ({} when the launch configured DeepSpeed inline)."""
    source = getattr(training_args, "deepspeed", None) or os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if isinstance(source, dict):
        return source
    if source and source != "None" and Path(source).is_file():
        try:
            return json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}
    return {}


def _deepspeed_stage_and_offload(training_args) -> tuple[int, bool]:
    zero = deepspeed_config(training_args).get("zero_optimization") or {}
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") or zero.get("stage", 0)
    devices = [os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"),
               os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"),
               (zero.get("offload_optimizer") or {}).get("device"), (zero.get("offload_param") or {}).get("device")]
    try:
        stage = int(stage)
    except (TypeError, ValueError):
        stage = 0
    return stage, any(str(device).lower() in ("cpu", "nvme") for device in devices if device)


def get_sharding(training_args) -> Sharding:
    """What this run's launch asked for (`training_args` None: from the launcher's environment alone); `processes` is
    the world size."""
    world_size = getattr(training_args, "world_size", None) or os.environ.get("WORLD_SIZE") or 1
    processes = max(1, int(world_size))
    if fsdp_requested(training_args):
        config = getattr(training_args, "fsdp_config", None) or {}
        version = int(os.environ.get("FSDP_VERSION") or config.get("version", 2) or 2)
        asked = getattr(training_args, "fsdp", None) or []
        options = " ".join(str(getattr(option, "value", option)) for option in asked)
        offload = _env_flag("FSDP_OFFLOAD_PARAMS") or "offload" in options
        return Sharding("fsdp", processes, offload, version)
    if deepspeed_requested(training_args):
        stage, offload = _deepspeed_stage_and_offload(training_args)
        kind = {3: "zero3", 2: "zero2", 1: "zero1"}.get(stage, "ddp")  # stage 0 is plain data parallelism
        return Sharding(kind, processes, offload)
    return Sharding("ddp" if processes > 1 else "single", processes)


def launcher_command(world_size: int) -> list[str]:
    """The launcher that started this process, as a user would type it again (`accelerate launch --config_file
    accelerate_configs/fsdp.yaml --num_processes 2`, `torchrun --nproc_per_node 2`): read from the parent
    process, which is the launcher under torchrun and accelerate launch. `python` for a single process."""
    if world_size <= 1:
        return ["python"]
    fallback = ["torchrun", "--nproc_per_node", str(world_size)]
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return fallback
    try:
        argv = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode().split("\0")
    except (OSError, UnicodeDecodeError):
        return fallback
    argv = [arg for arg in argv if arg]
    # The first script after the launcher's own
    scripts = [i for i, arg in enumerate(argv) if i > 1 and arg.endswith(".py")]
    if not scripts:
        return fallback
    launcher = argv[: scripts[0]]
    for index, arg in enumerate(launcher):  # drop the interpreter: `accelerate launch ...`, `torchrun ...`
        name = Path(arg).name
        if name in ("accelerate", "torchrun", "deepspeed"):
            return [name, *launcher[index + 1:]]
        module = launcher[index + 1] if arg == "-m" and index + 1 < len(launcher) else None
        if module == "torch.distributed.run":
            return ["torchrun", *launcher[index + 2:]]
        if module == "accelerate.commands.launch":
            return ["accelerate", "launch", *launcher[index + 2:]]
    return fallback


def format_launcher(world_size: int) -> str:
    return shlex.join(launcher_command(world_size))
