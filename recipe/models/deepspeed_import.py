"""DeepSpeed imported only where a run uses it."""

from __future__ import annotations

import sys


def import_deepspeed_only_when_used() -> None:
    """accelerate's extract_model_from_parallel (behind every save_pretrained, and the Trainer's start) imports
    DeepSpeed whenever it is installed, only to ask whether the model is a DeepSpeedEngine: seconds of import and
    DeepSpeed's "Setting accelerator to CPU" warning on runs that never use it. A model can only be a DeepSpeedEngine
    once deepspeed is imported (a DeepSpeed launch imports it to build one), so that is asked instead: the same answer,
    without the import."""
    import accelerate.utils.other as accelerate_other

    def deepspeed_imported() -> bool:
        return "deepspeed" in sys.modules

    if getattr(accelerate_other.is_deepspeed_available, "__name__", "") != deepspeed_imported.__name__:
        accelerate_other.is_deepspeed_available = deepspeed_imported
