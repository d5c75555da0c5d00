"""A sweep over a full / LoRA recipe pair: a grid of training runs, one after another, each evaluated, ending
in one report (recipe/comparison/report.py over every finished run: the ranking, the Pareto fronts, the loss plot).

Each cell is one `scripts/train.py` process with its own output folder under the sweep directory, so
everything the recipe does for one run holds for each (resume from the last checkpoint, refusal to
overwrite, SIGTERM saving a checkpoint). `sweep.json` records every cell's options and status. Run the
same command again and the sweep goes on where it stopped: finished cells are kept (and evaluated if they
were not), an interrupted cell resumes from its last checkpoint, the cells not yet started run; cells
that failed (a diverged run, say) keep their failure unless `--retry_failed true`. A signal (Ctrl-C,
SIGTERM) reaches the running cell, which saves a checkpoint; the sweep then stops with its exit status.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common.files import atomic_write_json
from ..common.redaction import redact_command
from ..common.run_dir import RunDir, read_json_file
from ..config import (
    DEFAULT_GRID,
    ConfigError,
    DataArguments,
    DialogueTrainingArguments,
    LoraArguments,
    ModelArguments,
    RecipeParser,
    SweepArguments,
    TrackingArguments,
    load_recipe_yaml,
    parse_axis,
)
from .report import compare_runs

logger = logging.getLogger(__name__)

MANIFEST = "sweep.json"
REPORT = "report.md"
EVALUATE_SCRIPT = "scripts/evaluate.py"
SIGNAL_EXITS = {128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGINT, -signal.SIGTERM}
SHORT_NAMES = {"lora_r": "r", "learning_rate_scale": "lrx", "learning_rate": "lr"}  # in cell names


class SweepInterrupted(Exception):
    """A signal stopped the sweep; `exit_code` is the one to leave with (128 + the signal)."""

    def __init__(self, exit_code: int, message: str):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Cell:
    """One run of the grid: its recipe and the options it sets, named by them (`lora-r8-lrx0.5`)."""

    name: str
    mode: str  # full or lora
    recipe: str
    options: dict[str, str]
    axes: dict[str, str]  # the grid values that made it (learning_rate_scale, not the learning_rate it gives)

    def tags(self, sweep_name: str) -> list[str]:
        """W&B tags (64 characters at most each): the sweep, the cell, and each of its grid values."""
        tags = [f"sweep:{sweep_name}", f"cell:{self.name}", *(f"{k}={v}" for k, v in self.axes.items())]
        return [tag[:64] for tag in tags]


def _is_lora_only(option: str) -> bool:
    return option.startswith("lora_") or option == "merge_lora"


def grid_axes(grid: list[str] | None) -> dict[str, list[str]]:
    """The default grid with the given axes put in (an axis replaces the default one of its name; a
    learning_rate axis replaces the default learning_rate_scale)."""
    given = dict(parse_axis(spec) for spec in grid or [])
    axes = dict(parse_axis(spec) for spec in DEFAULT_GRID)
    if "learning_rate" in given:
        axes.pop("learning_rate_scale", None)
    axes.update(given)
    return axes


def _recipe_value(recipe: dict[str, Any], options_class, name: str):
    """An option as a recipe sets it, else its dataclass default."""
    if name in recipe:
        return recipe[name]
    return next(f.default for f in dataclasses.fields(options_class) if f.name == name)


def _given_options(args: SweepArguments) -> set[str]:
    return {flag[2:].split("=")[0] for flag in args.train_options or [] if flag.startswith("--")}


def _cell_name(mode: str, axes: dict[str, str]) -> str:
    parts = [mode] + [f"{SHORT_NAMES.get(key, key)}{value}" for key, value in axes.items()]
    return re.sub(r"[^\w.=+-]", "_", "-".join(parts))


def grid_cells(args: SweepArguments) -> list[Cell]:
    """Every cell of the grid, full ones first. An axis of LoRA options does not multiply the full cells.

    learning_rate_scale multiplies each recipe's own learning rate. A lora_r axis keeps the recipe's
    lora_alpha / lora_r (LoRA's scaling), as a practitioner comparing ranks expects, unless lora_alpha is
    an axis or a train option itself.
    """
    axes = grid_axes(args.grid)
    modes = axes.pop("mode")
    recipes = {"full": args.full_recipe, "lora": args.lora_recipe}
    check_recipe_pair(recipes)
    alpha_follows_rank = "lora_alpha" not in axes and "lora_alpha" not in _given_options(args)
    cells: dict[str, Cell] = {}
    for mode in modes:
        recipe = load_recipe_yaml(recipes[mode])
        applicable = {key: values for key, values in axes.items() if mode == "lora" or not _is_lora_only(key)}
        for combination in itertools.product(*applicable.values()):
            values = dict(zip(applicable, combination))
            options = {key: value for key, value in values.items() if key != "learning_rate_scale"}
            if "learning_rate_scale" in values:
                rate = float(_recipe_value(recipe, DialogueTrainingArguments, "learning_rate"))
                options["learning_rate"] = f"{rate * float(values['learning_rate_scale']):.6g}"
            if "lora_r" in values and values["lora_r"].isdigit() and alpha_follows_rank:
                alpha, rank = (_recipe_value(recipe, LoraArguments, name) for name in ("lora_alpha", "lora_r"))
                options["lora_alpha"] = str(max(1, round(int(values["lora_r"]) * alpha / rank)))
            name = _cell_name(mode, values)
            cells.setdefault(name, Cell(name, mode, recipes[mode], options, values))
    return list(cells.values())


def check_recipe_pair(recipes: dict[str, str]) -> None:
    for mode, path in recipes.items():
        use_lora = bool(load_recipe_yaml(path).get("use_lora"))  # a missing or bad recipe is an error naming it
        if use_lora != (mode == "lora"):
            option = "lora_recipe" if mode == "lora" else "full_recipe"
            raise ConfigError(f"{option} {path} has use_lora {str(use_lora).lower()}; the {mode} cells need a recipe "
                              f"with use_lora {str(mode == 'lora').lower()}")


def sweep_dir_for(args: SweepArguments) -> Path:
    if args.sweep_dir:
        return Path(args.sweep_dir)
    return Path("outputs") / f"sweep-{Path(args.full_recipe).stem.removesuffix('-full')}"


def train_arguments(args: SweepArguments, cell: Cell, run_dir: Path, sweep_name: str) -> list[str]:
    """The training script's options for one cell: its recipe, folder and grid values, the sweep's
    train_options, and W&B (one group per sweep, tags naming the cell) or none."""
    arguments = ["--config", cell.recipe, "--output_dir", str(run_dir), *(args.train_options or [])]
    for key, value in cell.options.items():
        arguments += [f"--{key}", value]
    if args.use_wandb:
        arguments += ["--report_to", "wandb", "--wandb_group", sweep_name, "--run_name", cell.name,
                      "--wandb_tags", *cell.tags(sweep_name)]
    else:
        arguments += ["--report_to", "none"]
    return arguments


def _training_part(arguments: list[str]) -> list[str]:
    """A cell's training options without the tracking ones train_arguments puts last (from --report_to on)."""
    at = len(arguments) - 1 - arguments[::-1].index("--report_to") if "--report_to" in arguments else len(arguments)
    return arguments[:at]


def check_cells(args: SweepArguments, cells: list[Cell], sweep_dir: Path, sweep_name: str) -> None:
    """Every cell's options parsed as the training script will parse them, before anything trains: a typo
    fails in seconds, not after hours of the cells before it."""
    given = _given_options(args)
    axes = set(grid_axes(args.grid)) | ({"learning_rate"} if "learning_rate_scale" in grid_axes(args.grid) else set())
    clash = sorted(given & axes)
    if clash:
        raise ConfigError(f"train_options set {', '.join(clash)}, an axis of the grid; drop it there or from --grid")
    parser = RecipeParser((ModelArguments, DataArguments, LoraArguments, DialogueTrainingArguments, TrackingArguments))
    for cell in cells:
        try:
            parser.parse_args_and_config(train_arguments(args, cell, sweep_dir / cell.name, sweep_name))
        except ConfigError as error:
            raise ConfigError(f"cell {cell.name}: {error}") from None


# ----------------------------------------------------------------------------------------------
# Running


def run_child(command: list[str]) -> int:
    """Run one process to its end and return its exit status. It gets a session of its own, so that a
    Ctrl-C reaches it once, through us: SIGINT and SIGTERM are passed on, and it saves a checkpoint."""
    process = subprocess.Popen(command, start_new_session=True)
    received: list[int] = []

    def forward(signum, _frame):
        received.append(signum)
        process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received and code not in SIGNAL_EXITS:
        code = 128 + received[0]  # it stopped on our signal, whatever status it chose
    return code


class Sweep:
    """The cells of one sweep directory, what sweep.json says of them, and running them in order."""

    def __init__(self, args: SweepArguments, command_line: str):
        self.args = args
        self.dir = sweep_dir_for(args)
        self.name = args.sweep_name or self.dir.name
        self.cells = grid_cells(args)
        self.command_line = command_line
        self.manifest = read_json_file(self.dir / MANIFEST) or {"cells": {}}
        self.launcher = shlex.split(args.launcher) if args.launcher else [sys.executable]

    def run_of(self, cell: Cell) -> RunDir:
        """The run directory a cell trains into."""
        return RunDir(self.dir / cell.name)

    def status(self, cell: Cell) -> dict[str, Any]:
        return self.manifest["cells"].setdefault(cell.name, {})

    def save(self) -> None:
        self.manifest.update(full_recipe=self.args.full_recipe, lora_recipe=self.args.lora_recipe,
                             sweep_name=self.name, grid=grid_axes(self.args.grid), resume=self.command_line)
        atomic_write_json(self.dir / MANIFEST, self.manifest)

    def check(self) -> None:
        for script in (self.args.train_script, EVALUATE_SCRIPT):
            if not Path(script).is_file():
                raise ConfigError(f"{script} not found: run the sweep from the recipe's repository root")
        check_cells(self.args, self.cells, self.dir, self.name)
        for cell in self.cells:  # a cell's folder is kept only if it was trained as this grid asks (W&B aside)
            recorded = self.status(cell).get("train_arguments")  # as recorded: secrets masked
            wanted = redact_command(train_arguments(self.args, cell, self.dir / cell.name, self.name))
            trained = self.run_of(cell).is_recipe_run()
            if recorded and trained and _training_part(recorded) != _training_part(wanted):
                raise ConfigError(
                    f"{self.dir / cell.name} was trained by this sweep with other options ({shlex.join(recorded)}); "
                    f"now: {shlex.join(wanted)}. Use another --sweep_dir, or delete that folder to train it again")

    def run(self) -> list[Cell]:
        """Train and evaluate every cell that needs it; returns the cells that failed."""
        self.check()
        failed = []
        for index, cell in enumerate(self.cells, start=1):
            logger.info("== [%d/%d] %s (%s)", index, len(self.cells), cell.name, self.dir / cell.name)
            if self.train(cell):
                self.evaluate(cell)
            else:
                failed.append(cell)
        return failed

    def train(self, cell: Cell) -> bool:
        run, status = self.run_of(cell), self.status(cell)
        if run.is_finished():
            logger.info("   finished before: kept")
            return True
        if status.get("status") == "failed" and not self.args.retry_failed:
            logger.warning("   failed before (exit %s): kept as failed; --retry_failed true trains it again",
                           status.get("exit_code"))
            return False
        arguments = train_arguments(self.args, cell, run.path, self.name)
        status.update(mode=cell.mode, axes=cell.axes, options=cell.options, train_arguments=redact_command(arguments),
                      status="running", exit_code=None)
        self.save()
        code = run_child([*self.launcher, self.args.train_script, *arguments])
        status.update(status="finished" if code == 0 and run.is_finished() else
                      "interrupted" if code in SIGNAL_EXITS else "failed", exit_code=code)
        self.save()
        if status["status"] == "interrupted":
            raise SweepInterrupted(code if code > 0 else 128 - code, f"the sweep stopped during {cell.name} (its last "
                                   f"checkpoint is kept); run the same command to resume: {self.command_line}")
        if status["status"] == "failed":
            logger.warning("   %s failed (exit %s); the sweep goes on with the next cell", cell.name, code)
        return status["status"] == "finished"

    def evaluate(self, cell: Cell) -> None:
        """scripts/evaluate.py on a finished cell that has no evaluation.json; a failure leaves n/a in the report."""
        run, status = self.run_of(cell), self.status(cell)
        if not self.args.evaluate or run.evaluation.is_file():
            return
        command = [sys.executable, EVALUATE_SCRIPT, "--model_path", str(run.path),
                   *shlex.split(self.args.evaluate_options)]
        code = run_child(command)
        status.update(evaluation_exit_code=code)
        self.save()
        if code in SIGNAL_EXITS:
            raise SweepInterrupted(code if code > 0 else 128 - code, f"the sweep stopped while evaluating {cell.name}; "
                                   f"run the same command to resume: {self.command_line}")
        if code != 0:
            logger.warning("   evaluating %s failed (exit %s): its per-speaker figures show n/a", cell.name, code)

    def report(self, failed: list[Cell]) -> Path:
        finished = [cell for cell in self.cells if self.run_of(cell).is_finished()]
        if not finished:
            raise ConfigError(f"no cell of the sweep in {self.dir} finished; nothing to compare")
        notes = [f"Sweep `{self.name}`: {len(self.cells)} cells of `{self.args.full_recipe}` / "
                 f"`{self.args.lora_recipe}`, grid " + ", ".join(f"{k}={','.join(v)}" for k, v in
                                                                  grid_axes(self.args.grid).items())
                 + f"; run again (resumes, then writes this report) with `{self.command_line}`."]
        if self.args.train_options:
            notes.append(f"Every run also had `{shlex.join(redact_command(self.args.train_options))}`.")
        if failed:
            notes.append("Not in the tables (no finished run): " + ", ".join(
                f"{cell.name} (exit {self.status(cell).get('exit_code')})" for cell in failed) + ".")
        title = f"# Sweep {self.name}: {len(finished)} runs"
        report, _, _ = compare_runs([self.dir / cell.name for cell in finished], self.dir / REPORT, title, notes)
        return report


def describe_cells(sweep: Sweep) -> str:
    """The dry-run listing: each cell and the command that trains it."""
    lines = [f"{len(sweep.cells)} cells in {sweep.dir}:"]
    for cell in sweep.cells:
        arguments = train_arguments(sweep.args, cell, sweep.dir / cell.name, sweep.name)
        command = redact_command([*sweep.launcher, sweep.args.train_script, *arguments])
        lines.append(f"  {cell.name}: {shlex.join(command)}")
    return "\n".join(lines)


def typed_command(argv: list[str], root: Path | None = None) -> str:
    """The sweep's command line as a user types it at the repository root: `python`, not this machine's interpreter,
    and paths inside the root relative to it (`--opt=PATH` too), so that the report's rerun command works on
    another checkout; secrets masked."""
    root = Path(os.path.abspath(root or Path.cwd()))

    def relative(arg: str) -> str:
        flag, value = arg.split("=", 1) if arg.startswith("--") and "=" in arg else (None, arg)
        if os.path.isabs(value) and Path(os.path.normpath(value)).is_relative_to(root):
            value = os.path.relpath(value, root)
        return value if flag is None else f"{flag}={value}"

    return shlex.join(["python", *map(relative, redact_command(argv))])


def run_sweep(args: SweepArguments, command_line: str | None = None) -> tuple[Path | None, list[Cell]]:
    """Run (or resume) the sweep, then write its report; returns (report, failed cells). With dry_run,
    prints the cells and runs nothing."""
    sweep = Sweep(args, command_line or typed_command(sys.argv))
    if args.dry_run:
        sweep.check()
        print(describe_cells(sweep))
        return None, []
    sweep.dir.mkdir(parents=True, exist_ok=True)
    failed = sweep.run()
    return sweep.report(failed), failed
