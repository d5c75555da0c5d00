"""Comparing finished runs (full fine-tuning against LoRA) from their run directories alone, and sweeping a grid of
them.

- `runs`: `RunSummary`, what the comparison reads of each run.
- `ranking`: runs ranked by eval perplexity, the Pareto fronts of perplexity against cost, the full/LoRA verdict.
- `report`: `compare_runs`, the Markdown report and its plots (scripts/compare.py).
- `sweep`: a grid of training runs over a full / LoRA recipe pair, each evaluated, ending in one report
  (scripts/sweep.py).
"""

from .report import compare_runs
from .runs import ComparisonError, RunSummary, read_run, read_runs
from .sweep import SweepInterrupted, run_sweep

__all__ = [
    "ComparisonError",
    "RunSummary",
    "SweepInterrupted",
    "compare_runs",
    "read_run",
    "read_runs",
    "run_sweep",
]
