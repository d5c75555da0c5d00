"""Compare finished runs (full fine-tuning against LoRA, or a whole sweep): tables, a loss plot, Pareto fronts.

    python scripts/compare.py outputs/smoke-full outputs/smoke-lora
    python scripts/compare.py outputs/distilgpt2-full outputs/distilgpt2-lora --output outputs/comparison.md
    python scripts/compare.py outputs/sweep-smoke/*/ --output outputs/sweep-smoke/report.md
    python scripts/compare.py outputs/smollm2-full outputs/smollm2-lora --baseline outputs/smollm2-base.json

Writes the report (default comparison.md): the runs side by side (up to four), ranked by eval perplexity,
the Pareto fronts of perplexity against wall time and trainable parameters, the best full and LoRA runs;
next to it the plot of train and eval loss per epoch (same name, .png) and the Pareto plot (NAME-pareto.png).
--baseline takes the base model's evaluation (python scripts/evaluate.py --model_path BASE --data_config
RUN_DIR/run_config.yaml --output_file FILE) and shows it as the row every run started from, and as a line on
the loss plot. Reads only the run directories: works offline, without W&B. Per-speaker perplexity and diversity
(distinct-1/2) need evaluation.json: python scripts/evaluate.py --model_path RUN_DIR.
"""

import argparse

from recipe.common.cli import setup_logging, user_errors
from recipe.config.command_line import OptionsParser


def main(run_dirs: list[str], output: str, baseline: str | None = None) -> None:
    from recipe.comparison import compare_runs  # matplotlib and the rest: after the command line is accepted

    report, plot, pareto = compare_runs(run_dirs, output, baseline=baseline)
    print(report.read_text(encoding="utf-8"))
    print(f"report: {report}\nplots: {plot}, {pareto}")


def parser() -> argparse.ArgumentParser:
    """A bad command line is a ConfigError (one line, exit status 2) like every other script's."""
    options = OptionsParser(prog="scripts/compare.py", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_argument("run_dirs", nargs="+", help="output directories of finished training runs")
    options.add_argument("-o", "--output", default="comparison.md",
                         help="Markdown report; the plot goes next to it (default: comparison.md)")
    options.add_argument("--baseline", default=None,
                         help="the base model's evaluation.json (scripts/evaluate.py), shown as a row and a line")
    return options


if __name__ == "__main__":
    setup_logging()
    with user_errors():
        arguments = parser().parse_args()
        main(arguments.run_dirs, arguments.output, arguments.baseline)
