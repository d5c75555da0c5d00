"""Benchmark: choose a recipe's hyperparameters by measurement. Each cell of a grid is a real training run
(`scripts/train.py`, the recipe plus the cell's flags), evaluated after every epoch; the table ranks the
cells by their best validation perplexity.

    python benchmarks/recipe_grid.py benchmarks/grids/smollm2.yaml                # every cell (hours on 2 CPU cores)
    python benchmarks/recipe_grid.py benchmarks/grids/smollm2.yaml --cells full-lr5e-5 lora-r16-lr5e-4

A grid file names a `recipe` per mode (any name: full, lora, qlora), optional `flags` that every trained cell
gets before its own (a precision pinned for the whole grid, say), and its `cells` (name, mode, flags). Cells run
one after the other into `--work_dir` (default benchmarks/results/scratch/grid-NAME/); a cell whose run finished is
read, not rerun, so an interrupted grid resumes where it stopped. Checkpoints are off (`--save_strategy no`): a cell
measures what the recipe learns per epoch, not how it saves. Writes benchmarks/results/grid-NAME-DATE.json
(every cell: flags, per-epoch validation perplexity and loss, train time, peak memory, tokens/s) and the
same table in .md.

A cell may name `run: PATH` instead of flags: a finished run of the recipe itself (the recorded run of
benchmarks/finetune_gain.py, say), read rather than trained again, so the grid's reference row is the run the
README reports.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def cell_command(grid: dict, cell: dict, run_dir: Path) -> list[str]:
    recipe = grid["recipes"][cell["mode"]]
    return [sys.executable, str(REPO / "scripts" / "train.py"), "--config", recipe, "--output_dir", str(run_dir),
            "--overwrite_output_dir", "true", "--save_strategy", "no", "--load_best_model_at_end", "false",
            "--report_to", "none", "--disable_tqdm", "true",
            *[str(flag) for flag in [*grid.get("flags", []), *cell.get("flags", [])]]]


def read_cell(grid: dict, cell: dict, run_dir: Path) -> dict:
    """The cell's figures from its run directory (a finished run of the recipe)."""
    state = json.loads((run_dir / "trainer_state.json").read_text())
    train = json.loads((run_dir / "train_results.json").read_text())
    epochs, seen = [], set()
    for entry in state["log_history"]:  # the evaluation after training repeats the last epoch's: once each
        if "eval_perplexity" in entry and entry["epoch"] not in seen:
            seen.add(entry["epoch"])
            epochs.append({"epoch": round(entry["epoch"], 2), "perplexity": round(entry["eval_perplexity"], 4),
                           "token_loss": round(entry["eval_token_loss"], 5),
                           "loss_tokens": entry.get("eval_num_tokens")})
    best = min(epochs, key=lambda e: e["perplexity"])
    device = json.loads((run_dir / "environment.json").read_text()).get("device", {})
    return {
        "name": cell["name"], "mode": cell["mode"], "recipe": grid["recipes"][cell["mode"]],
        "flags": cell.get("flags", []), "epochs": epochs, "best_perplexity": best["perplexity"],
        "best_epoch": best["epoch"], "train_runtime_s": train.get("train_steps_runtime", train["train_runtime"]),
        "real_tokens_per_second": train["train_real_tokens_per_second"], "peak_memory_mb": train["peak_memory_mb"],
        "trainable_parameters": train["trainable_parameters"], "global_step": train["global_step"],
        "peak_tensor_memory_mb": train.get("peak_tensor_memory_mb"), "read_from": cell.get("run"),
        "learning_rate": yaml.safe_load((run_dir / "run_config.yaml").read_text()).get("learning_rate"),
        # as this machine ran it
        "precision": "bf16" if device.get("bf16") else "fp16" if device.get("fp16") else "fp32",
    }


def run_cell(grid: dict, cell: dict, work_dir: Path) -> dict:
    if "run" in cell:  # the recipe's own run, made elsewhere: read, never trained here
        run_dir = REPO / cell["run"]
        if cell.get("flags"):
            raise SystemExit(f"cell {cell['name']}: a cell that reads a finished run ('run') takes no flags")
        if not (run_dir / "train_results.json").is_file():
            raise SystemExit(f"cell {cell['name']}: {run_dir} holds no finished run (train_results.json); "
                             "make it first (its command is in the grid file) or remove the cell")
        return read_cell(grid, cell, run_dir)
    run_dir = work_dir / cell["name"]
    if not (run_dir / "train_results.json").is_file():
        print(f"== {cell['name']}: {' '.join(map(str, cell.get('flags', [])))}", flush=True)
        log = work_dir / f"{cell['name']}.log"
        with log.open("w") as out:
            done = subprocess.run(cell_command(grid, cell, run_dir), cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise SystemExit(f"cell {cell['name']} failed (exit {done.returncode}); see {log}")
    return read_cell(grid, cell, run_dir)


def markdown_table(rows: list[dict]) -> str:
    most_epochs = max(len(row["epochs"]) for row in rows)
    head = ["cell", "mode", "flags", "learning rate", "precision", *[f"ppl epoch {i + 1}" for i in range(most_epochs)],
            "loss tokens", "training s", "tokens/s", "tensor peak MB", "trainable"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in sorted(rows, key=lambda r: r["best_perplexity"]):
        perplexities = [f"{e['perplexity']:.2f}" for e in row["epochs"]] + [""] * (most_epochs - len(row["epochs"]))
        lines.append("| " + " | ".join([
            row["name"], row["mode"], " ".join(map(str, row["flags"])) or
            (f"read from `{row['read_from']}`" if row.get("read_from") else "(recipe)"), f"{row['learning_rate']:g}",
            row.get("precision", "n/a"),
            *perplexities, f"{row['epochs'][-1].get('loss_tokens') or 'n/a'}", f"{row['train_runtime_s']:.0f}",
            f"{row['real_tokens_per_second']:.0f}",
            "n/a" if row.get("peak_tensor_memory_mb") is None else f"{row['peak_tensor_memory_mb']:,.0f}",
            f"{row['trainable_parameters']:,}"]) + " |")
    return "\n".join(lines)


def main(args) -> dict:
    grid_file = Path(args.grid)
    grid = yaml.safe_load(grid_file.read_text())
    name = grid_file.stem
    cells = [c for c in grid["cells"] if not args.cells or c["name"] in args.cells]
    unknown = set(args.cells or []) - {c["name"] for c in grid["cells"]}
    if unknown:
        raise SystemExit(f"{grid_file}: no cells named {sorted(unknown)}")
    work_dir = Path(args.work_dir or REPO / "benchmarks" / "results" / "scratch" / f"grid-{name}")
    work_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    while len(rows) < len(cells):  # the grid file is read again after each cell: cells can be added while it runs
        rows.append(run_cell(grid, cells[len(rows)], work_dir))
        grid = yaml.safe_load(grid_file.read_text())
        done = {row["name"] for row in rows}
        cells = [c for c in grid["cells"] if (not args.cells or c["name"] in args.cells)]
        cells = [c for c in cells if c["name"] in done] + [c for c in cells if c["name"] not in done]
        rows = [next(r for r in rows if r["name"] == c["name"]) for c in cells if c["name"] in done]
    date = datetime.date.today().isoformat()
    from recipe.training.environment import cpu_name

    record = {"benchmark": "recipe_grid", "grid": str(grid_file), "date": date, "device": cpu_name(),
              "cpu_count": os.cpu_count(), "grid_flags": grid.get("flags", []),
              "command": " ".join(["python", "benchmarks/recipe_grid.py", *sys.argv[1:]]), "rows": rows}
    out = Path(args.output_dir) / f"grid-{name}-{date}"
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    table = markdown_table(rows)
    common = " ".join(map(str, grid.get("flags", [])))
    every = f"Every trained cell also had `{common}`.\n\n" if common else ""
    out.with_suffix(".md").write_text(f"# {grid_file}, {date}, {cpu_name()}\n\n`{record['command']}`\n\n"
                                      f"{every}{table}\n")
    print(table)
    return record


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", help="a grid YAML file (benchmarks/grids/)")
    parser.add_argument("--cells", nargs="+", help="run only these cells")
    parser.add_argument("--work_dir", default=None)
    parser.add_argument("--output_dir", default=str(REPO / "benchmarks" / "results"))
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main(parse_args())
