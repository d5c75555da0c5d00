"""Memory: what a training run will hold at its peak, planned from the model's config before it loads, checked
against the device, and measured while it trains.

- `plan`: `plan_memory`, plain arithmetic over the model's shapes and the run's options.
- `check`: the plan of a run from its options, the device's free memory, and the refusal of a plan that does not fit.
- `measured`: the peak held in tensors, counted while training runs (the figure the plan is checked against).
"""

from .check import format_plan, plan_and_check_memory, plan_for_run, shape_from_config
from .measured import TensorMemoryCallback, TensorMemoryMeter
from .plan import FIT_SHARE, GIB, MIB, MemoryPlan, PlanOptions, plan_memory

__all__ = [
    "FIT_SHARE",
    "GIB",
    "MIB",
    "MemoryPlan",
    "PlanOptions",
    "TensorMemoryCallback",
    "TensorMemoryMeter",
    "format_plan",
    "plan_and_check_memory",
    "plan_for_run",
    "plan_memory",
    "shape_from_config",
]
