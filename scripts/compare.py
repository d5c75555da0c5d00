"""Compare finished runs side by side (full fine-tuning against LoRA): a Markdown table and a loss plot.

    python scripts/compare.py outputs/smoke-full outputs/smoke-lora
    python scripts/compare.py outputs/distilgpt2-full outputs/distilgpt2-lora --output outputs/comparison.md

Writes the report (default comparison.md) and, next to it, the plot of train and eval loss per epoch
(same name, .png). Reads only the run directories: works offline, without W&B. Diversity (distinct-1/2)
needs evaluation.json: python scripts/evaluate.py --model_path RUN_DIR.
"""

import argparse

from recipe.cli import setup_logging, user_errors
from recipe.comparison import compare_runs


def main(run_dirs: list[str], output: str) -> None:
    report, plot = compare_runs(run_dirs, output)
    print(report.read_text(encoding="utf-8"))
    print(f"report: {report}\nplot: {plot}")


if __name__ == "__main__":
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="output directories of finished training runs")
    parser.add_argument("-o", "--output", default="comparison.md", help="Markdown report; the plot goes next to it")
    arguments = parser.parse_args()
    with user_errors():
        main(arguments.run_dirs, arguments.output)
