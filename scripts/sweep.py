"""Sweep a full / LoRA recipe pair over a grid, evaluate every run, and end with one report.

    python scripts/sweep.py                                   # smoke pair: full + LoRA r8, r32 x 3 learning rates
    python scripts/sweep.py --grid lora_r=4,8,16 learning_rate_scale=1 -- --num_train_epochs 1
    python scripts/sweep.py --full_recipe recipe/configs/smollm2-full.yaml \\
        --lora_recipe recipe/configs/smollm2-lora.yaml --use_wandb true -- --max_dialogues 300
    python scripts/sweep.py --config my_sweep.yaml --dry_run true           # list the cells, run nothing

Runs each cell with scripts/train.py into SWEEP_DIR/CELL (default outputs/sweep-NAME), evaluates it with
scripts/evaluate.py, and writes SWEEP_DIR/report.md with report.png (loss curves of every run) and
report-pareto.png. Options after `--` go to every training run. Interrupted, it resumes when run again
with the same command. Exit status: 0, 1 when a cell failed (the report still covers the others),
128 + the signal when stopped by one.
"""

import sys

from recipe.common.cli import setup_logging, user_errors
from recipe.config import RecipeParser, SweepArguments
from recipe.config.sweep_arguments import split_train_options


def main(sweep_args: SweepArguments) -> int:
    from recipe.comparison import SweepInterrupted, run_sweep  # after the command line is accepted

    try:
        report, failed = run_sweep(sweep_args)
    except SweepInterrupted as stopped:
        print(f"stopped: {stopped}", file=sys.stderr)
        return stopped.exit_code
    if report is None:  # a dry run
        return 0
    print(report.read_text(encoding="utf-8"))
    print(f"report: {report}")
    if failed:
        print(f"{len(failed)} cell(s) failed: {', '.join(cell.name for cell in failed)}", file=sys.stderr)
    return 1 if failed else 0


def parser() -> RecipeParser:
    return RecipeParser((SweepArguments,), description=__doc__, prog="scripts/sweep.py")


if __name__ == "__main__":
    setup_logging()
    with user_errors():
        own, train_options = split_train_options(sys.argv[1:])
        sweep_args, _ = parser().parse_args_and_config(own)
        sweep_args.train_options = [*(sweep_args.train_options or []), *train_options]
        code = main(sweep_args)
    sys.exit(code)
