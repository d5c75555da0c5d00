"""The memory plan against measured peaks, and what gradient checkpointing saves and costs: full fine-tuning,
LoRA and QLoRA, each with and without gradient checkpointing, a few optimizer steps each through the
recipe's own set-up (`prepare_data_and_model`, `build_trainer`).

    python benchmarks/memory.py --model_name_or_path models/SmolLM2-135M-Instruct      # ~20 min on 2 CPU cores
    python benchmarks/memory.py --model tiny                                            # the smoke model, ~1 min
    python benchmarks/memory.py --model_name_or_path ... --clock cpu --threads 1 --output_dir DIR   # busy machine

Each row: the plan's peak (recipe/memory/plan.py, from the config, before the model loads), the peak measured by
counting tensors (recipe/memory/measured.py; CUDA: the allocator's peak), the process's peak RSS (the
allocator, not the tensors: shown, never compared), and the median step time after the first step.
Writes benchmarks/results/memory/<date>-<device>.json and .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from recipe.common.run_dir import RunDir  # noqa: E402
from recipe.config import (  # noqa: E402
    DataArguments,
    DialogueTrainingArguments,
    LoraArguments,
    ModelArguments,
    RecipeParser,
    load_recipe_yaml,
)
from recipe.memory.check import plan_for_run  # noqa: E402
from recipe.memory.measured import TensorMemoryCallback  # noqa: E402
from recipe.memory.plan import MIB  # noqa: E402
from recipe.training.environment import environment_record  # noqa: E402
from recipe.training.run import prepare_data_and_model  # noqa: E402
from recipe.training.trainer import build_trainer  # noqa: E402
from throughput_tools import CLOCKS, PeakMemory, StepTimer, TokenCountingCollator, release_memory  # noqa: E402

MODES = {
    "full": ["--use_lora", "false", "--load_in_4bit", "false"],
    "lora": ["--use_lora", "true", "--load_in_4bit", "false"],
    "qlora": ["--use_lora", "true", "--load_in_4bit", "true"],
}
ROWS = {name: flags for mode, base in MODES.items()
        for name, flags in ((mode, base + ["--gradient_checkpointing", "false"]),
                            (f"{mode}, checkpointing", base + ["--gradient_checkpointing", "true"]))}
RECIPES = {"smollm2": REPO / "recipe" / "configs" / "smollm2-qlora.yaml",
           "tiny": REPO / "recipe" / "configs" / "smoke.yaml"}


def recipe_for_row(recipe: Path, flags: list[str], scratch: Path) -> Path:
    """The recipe a row builds on: for a full-fine-tuning row of a LoRA recipe, a copy without its LoRA
    options (training refuses a lora_dropout or lora_r it would not use)."""
    if "--use_lora" not in flags or flags[flags.index("--use_lora") + 1] != "false":
        return recipe
    lora_only = {f.name for f in dataclasses.fields(LoraArguments)} - {"use_lora"}
    kept = {key: value for key, value in load_recipe_yaml(recipe).items() if key not in lora_only}
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / f"{recipe.stem}-without-lora.yaml"
    path.write_text(yaml.safe_dump(kept, sort_keys=False))
    return path


def row_options(recipe: Path, flags: list[str], scratch: Path, steps: int, extra: list[str] = ()) -> tuple:
    """The recipe's option dataclasses for a row: a few steps, no evaluation, no checkpoints."""
    argv = ["--config", str(recipe_for_row(recipe, flags, scratch)), "--output_dir", str(scratch / "run"),
            "--max_steps", str(steps),
            "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
            "--report_to", "none", "--logging_steps", "1", "--disable_tqdm", "true",
            "--dataset_cache_dir", str(scratch.parent / "cache"), *flags, *extra]
    parser = RecipeParser((ModelArguments, DataArguments, LoraArguments, DialogueTrainingArguments))
    *configs, _ = parser.parse_args_and_config(argv)
    return tuple(configs)


def measure_row(recipe: Path, flags: list[str], scratch: Path, steps: int = 3, extra: list[str] = (),
                clock: str = "wall") -> dict:
    """The plan and the measured peaks of `steps` optimizer steps of one row."""
    scratch.mkdir(parents=True, exist_ok=True)
    model_args, data_args, lora_args, training_args = row_options(recipe, flags, scratch, steps, extra)
    plan = plan_for_run(model_args, data_args, lora_args, training_args)
    run = RunDir(training_args.output_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    device = training_args.device.type
    with PeakMemory(device) as rss:
        tokenizer, prepared, model, training_args = prepare_data_and_model(
            model_args, data_args, lora_args, training_args, run, True)
        trainer = build_trainer(model, tokenizer, prepared, data_args, training_args)
        meter = TensorMemoryCallback(model, steps=steps)
        trainer.add_callback(meter)
        counter = TokenCountingCollator(trainer.data_collator)
        trainer.data_collator = counter
        timer = StepTimer(counter, device, CLOCKS[clock])
        trainer.add_callback(timer)
        trainer.train()
    seconds = timer.log.seconds[1:] or timer.log.seconds
    record = {
        "flags": flags + list(extra),
        "plan_mb": round(plan.peak / MIB, 1),
        "plan_phase": plan.phase,
        "plan_parts_mb": {name: round(count / MIB, 1) for name, count in plan.parts.items()},
        "measured_mb": meter.peak_mb,
        "plan_error": round(plan.peak / MIB / meter.peak_mb - 1, 4),
        "rss_peak_mb": rss.mb,
        "median_step_s": round(statistics.median(seconds), 3),
        "losses": [round(x, 4) for x in timer.log.losses],
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "precision": "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32",
    }
    del trainer, model, prepared
    release_memory()
    return record


def checkpointing_effect(rows: dict[str, dict]) -> dict[str, dict]:
    """Per mode: memory saved and step time paid by gradient checkpointing."""
    effect = {}
    for mode in MODES:
        plain, checkpointed = rows.get(mode), rows.get(f"{mode}, checkpointing")
        if plain and checkpointed:
            effect[mode] = {
                "memory_saved_mb": round(plain["measured_mb"] - checkpointed["measured_mb"], 1),
                "memory_saved_share": round(1 - checkpointed["measured_mb"] / plain["measured_mb"], 3),
                "step_time_ratio": round(checkpointed["median_step_s"] / plain["median_step_s"], 3),
            }
    return effect


def markdown(record: dict) -> str:
    lines = [f"Memory plan against measured peaks: {record['model']}, {record['steps']} steps per row, "
             f"{record['device']['name']} ({record['clock']} clock)", "",
             "| row | precision | plan (MB) | measured, tensors (MB) | plan error | RSS peak (MB) | median step (s) |",
             "|---|---|---|---|---|---|---|"]
    for name, row in record["rows"].items():
        lines.append(f"| {name} | {row['precision']} | {row['plan_mb']:,.0f} | {row['measured_mb']:,.0f} | "
                     f"{row['plan_error']:+.1%} | {row['rss_peak_mb'] or 0:,.0f} | {row['median_step_s']:.2f} |")
    if record["checkpointing"]:  # rows with and without it, for a mode
        lines += ["", "| gradient checkpointing | memory saved (MB) | share | step time |", "|---|---|---|---|"]
    for mode, effect in record["checkpointing"].items():
        lines.append(f"| {mode} | {effect['memory_saved_mb']:,.0f} | {effect['memory_saved_share']:.0%} | "
                     f"{effect['step_time_ratio']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(args) -> dict:
    started = datetime.datetime.now(datetime.timezone.utc)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    recipe = Path(args.config) if args.config else RECIPES[args.model]
    extra = ["--model_name_or_path", args.model_name_or_path] if args.model_name_or_path else []
    extra += ["--bf16", args.bf16] if args.bf16 else []
    scratch = Path(tempfile.mkdtemp(prefix="memory-", dir=args.scratch_dir))
    rows = {}
    for name in args.rows or list(ROWS):
        print(f"[memory] {name} ...", flush=True)
        rows[name] = measure_row(recipe, ROWS[name], scratch / name.replace(", ", "-"), args.steps, extra, args.clock)
        print(f"[memory] {name}: plan {rows[name]['plan_mb']:,.0f} MB, measured {rows[name]['measured_mb']:,.0f} MB "
              f"({rows[name]['plan_error']:+.1%})", flush=True)
    *_, training_args = row_options(recipe, ROWS["full"], scratch / "env", args.steps, extra)
    record = {
        "benchmark": "memory",
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/memory.py", *sys.argv[1:]]),
        "model": args.model_name_or_path or args.model,
        "recipe": str(recipe.relative_to(REPO)) if recipe.is_relative_to(REPO) else str(recipe),
        "steps": args.steps,
        "clock": args.clock,
        "device": {"type": training_args.device.type, "name": environment_record(DataArguments(),
                                                                                  training_args)["device"]["name"],
                   "threads": torch.get_num_threads()},
        "rows": rows,
        "checkpointing": checkpointing_effect(rows),
        "environment": environment_record(DataArguments(), training_args),
    }
    table = markdown(record)
    stem = Path(args.output_dir) / f"{started.date().isoformat()}-{record['device']['type']}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    stem.with_suffix(".md").write_text(table)
    print(table + f"recorded in {stem}.json and {stem}.md")
    return record


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(RECIPES), default="smollm2",
                        help="smollm2: smollm2-qlora.yaml's rows; tiny: the smoke model (random GPT-2)")
    parser.add_argument("--model_name_or_path", default=None, help="the base, e.g. a local SmolLM2 folder")
    parser.add_argument("--config", default=None, help="another recipe to build the rows on")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), help="these rows only")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per row (the peak is steady from step 2)")
    parser.add_argument("--bf16", choices=["true", "false"], default=None,
                        help="default: the recipe's automatic choice")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="cpu: the process's CPU seconds, which other jobs disturb far less (with --threads 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--output_dir", default=str(REPO / "benchmarks" / "results" / "memory"))
    parser.add_argument("--scratch_dir", default=None)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
