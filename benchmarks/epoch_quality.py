"""Benchmark: what an epoch teaches. Validation perplexity after each part of an epoch, and the training
time the recipe needs to reach the report-style loop's final perplexity, on the same data, split and
model, for the same epochs.

    python benchmarks/epoch_quality.py                                   # the smoke model, smoke.yaml's epochs
    python benchmarks/epoch_quality.py --variants shipped "4 rows, lr x2"  # some rows only
    python benchmarks/epoch_quality.py --clock cpu --threads 1           # on a shared, busy machine

The loop is the report's (every dialogue padded to 128 tokens with pad = EOS, labels = input_ids,
batch 8, fp32, `torch.optim.AdamW` at a constant learning rate: the recipe's, and half of it; the better
of the two sets the perplexity to reach); its perplexity is the
recipe's exact one (recipe.evaluation.perplexity.perplexity_by_speaker) on the recipe's validation split. Each
variant is the recipe's own training path (prepare_data_and_model, build_trainer) on the recipe YAML
plus the variant's flags. Evaluation time is not training time. Writes
benchmarks/results/epoch_quality-<date>.json and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recipe.common.run_dir import RunDir  # noqa: E402
from recipe.config import DataArguments, DialogueTrainingArguments, LoraArguments, ModelArguments, RecipeParser  # noqa: E402
from recipe.data import load_dialogue_splits, render_dialogue  # noqa: E402
from recipe.evaluation.perplexity import perplexity_by_speaker  # noqa: E402
from recipe.training.run import prepare_data_and_model  # noqa: E402
from recipe.training.trainer import build_trainer  # noqa: E402
from throughput_tools import CLOCKS, StepTimer, TokenCountingCollator, reference_batches, write_json  # noqa: E402

VARIANTS = {
    "shipped": [],
    "lr / 2": ["--learning_rate_scale", "0.5"],
    "lr x 2": ["--learning_rate_scale", "2"],
    "256-token rows, lr / 2": ["--max_length", "256", "--learning_rate_scale", "0.5"],
    "4 rows": ["--per_device_train_batch_size", "4"],
    "2 rows": ["--per_device_train_batch_size", "2"],
    "no warmup": ["--warmup_steps", "0"],
}


def recipe_args(recipe: str, flags: list[str], scratch: Path, name: str, args):
    flags = list(flags)
    scale = 1.0
    if "--learning_rate_scale" in flags:  # a multiple of the recipe's own learning rate
        at = flags.index("--learning_rate_scale")
        scale = float(flags[at + 1])
        del flags[at:at + 2]
    argv = ["--config", recipe, "--output_dir", str(scratch / name.replace(" ", "_").replace(",", "")),
            "--save_strategy", "no", "--load_best_model_at_end", "false", "--report_to", "none",
            "--disable_tqdm", "true", "--dataset_cache_dir", str(scratch / "cache"), "--logging_steps", "1", *flags]
    parser = RecipeParser((ModelArguments, DataArguments, LoraArguments, DialogueTrainingArguments))
    model_args, data_args, lora_args, training_args, _ = parser.parse_args_and_config(argv)
    training_args.learning_rate *= scale
    return model_args, data_args, lora_args, training_args


def run_variant(name: str, recipe: str, scratch: Path, args) -> dict:
    model_args, data_args, lora_args, training_args = recipe_args(recipe, VARIANTS[name], scratch, name, args)
    run = RunDir(training_args.output_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    tokenizer, prepared, model, training_args = prepare_data_and_model(
        model_args, data_args, lora_args, training_args, run, True
    )
    steps_per_epoch = math.ceil(len(prepared.train_dataset) / training_args.per_device_train_batch_size)
    training_args.eval_strategy = "steps"
    training_args.eval_steps = max(1, round(steps_per_epoch / args.evals_per_epoch))
    trainer = build_trainer(model, tokenizer, prepared, data_args, training_args)
    counter = TokenCountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    timer = StepTimer(counter, "cpu", CLOCKS[args.clock])
    trainer.add_callback(timer)
    trainer.train()
    final = trainer.evaluate()
    elapsed = [sum(timer.log.seconds[:step]) for step in range(len(timer.log.seconds) + 1)]
    points = [(entry["step"], entry["eval_perplexity"]) for entry in trainer.state.log_history
              if "eval_perplexity" in entry]
    if not points or points[-1][0] != trainer.state.global_step:
        points.append((trainer.state.global_step, final["eval_perplexity"]))
    return {
        "name": name, "flags": VARIANTS[name], "rows_per_step": training_args.per_device_train_batch_size,
        "learning_rate": training_args.learning_rate, "warmup_steps": training_args.warmup_steps,
        "max_length": data_args.max_length, "steps_per_epoch": steps_per_epoch,
        "epochs": training_args.num_train_epochs, "precision": "bf16" if training_args.bf16 else "fp32",
        "curve": [{"step": s, "epoch": round(s / steps_per_epoch, 3), "train_seconds": round(elapsed[s], 2),
                   "perplexity": round(p, 3)} for s, p in points],
    }


def run_loop(recipe: str, scratch: Path, args, scale: float) -> dict:
    """The report-style loop on the recipe's model and split, at `scale` x its learning rate, evaluated like it."""
    flags = ["--learning_rate_scale", str(scale)]
    model_args, data_args, lora_args, training_args = recipe_args(recipe, flags, scratch, f"loop-{scale}", args)
    run = RunDir(training_args.output_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    tokenizer, _, model, _ = prepare_data_and_model(model_args, data_args, lora_args, training_args, run, True)
    splits = load_dialogue_splits(data_args)
    texts = [render_dialogue(d.speakers, d.texts, d.roles, data_args).text + tokenizer.eos_token for d in splits.train]
    optimizer = torch.optim.AdamW(model.parameters(), lr=training_args.learning_rate)
    steps_per_epoch = len(texts) // 8
    every = max(1, round(steps_per_epoch / args.evals_per_epoch))
    clock, seconds, step, curve = CLOCKS[args.clock], 0.0, 0, []
    for epoch in range(int(training_args.num_train_epochs)):
        for input_ids, attention_mask in reference_batches(texts, tokenizer, 8, 128, seed=epoch):
            model.train()
            start = clock()
            model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            seconds += clock() - start
            step += 1
            if step % every == 0 or step == steps_per_epoch * int(training_args.num_train_epochs):
                model.eval()
                ppl = perplexity_by_speaker(model, tokenizer, splits.validation, data_args, batch_size=16)["perplexity"]
                curve.append({"step": step, "epoch": round(step / steps_per_epoch, 3),
                              "train_seconds": round(seconds, 2), "perplexity": round(ppl, 3)})
    return {"name": f"report-style loop, lr x {scale:g}", "rows_per_step": 8,
            "learning_rate": training_args.learning_rate, "max_length": 128, "steps_per_epoch": steps_per_epoch,
            "epochs": training_args.num_train_epochs, "precision": "fp32", "curve": curve}


def time_to(curve: list[dict], perplexity: float) -> float | None:
    return next((point["train_seconds"] for point in curve if point["perplexity"] <= perplexity), None)


def main(args) -> dict:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    scratch = Path(tempfile.mkdtemp(prefix="epoch-quality-"))
    loops = [run_loop(args.recipe, scratch, args, scale) for scale in args.loop_learning_rate_scales]
    loop = min(loops, key=lambda row: row["curve"][-1]["perplexity"])  # the better loop sets the target
    target = loop["curve"][-1]["perplexity"]
    rows = loops + [run_variant(name, args.recipe, scratch, args) for name in args.variants]
    for row in rows:
        row["final_perplexity"] = row["curve"][-1]["perplexity"]
        row["train_seconds"] = row["curve"][-1]["train_seconds"]
        row["seconds_to_loop_perplexity"] = time_to(row["curve"], target)
    started = datetime.datetime.now(datetime.timezone.utc)
    record = {"benchmark": "epoch_quality", "date": started.isoformat(timespec="seconds"), "recipe": args.recipe,
              "clock": args.clock, "threads": torch.get_num_threads(), "target_perplexity": target,
              "command": " ".join(["python", "benchmarks/epoch_quality.py", *sys.argv[1:]]), "rows": rows}
    name = f"epoch_quality-{Path(args.recipe).stem}-{started.date().isoformat()}.json"
    write_json(Path(args.output_dir) / name, record)
    print(f"| run | rows/step | lr | steps/epoch | perplexity after {loop['epochs']:g} epochs | train s "
          f"| s to the loop's {target:.1f} |\n|---|---|---|---|---|---|---|")
    for r in rows:
        reach = "n/a" if r["seconds_to_loop_perplexity"] is None else f"{r['seconds_to_loop_perplexity']:.1f}"
        print(f"| {r['name']} | {r['rows_per_step']} | {r['learning_rate']:g} | {r['steps_per_epoch']} "
              f"| {r['final_perplexity']:.1f} | {r['train_seconds']:.1f} | {reach} |")
    return record


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(REPO / "recipe" / "configs" / "smoke.yaml"))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--evals_per_epoch", type=int, default=4)
    parser.add_argument("--loop_learning_rate_scales", type=float, nargs="+", default=[1.0, 0.5],
                        help="the loop runs at these multiples of the recipe's learning rate; the best sets the target")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output_dir", default=str(REPO / "benchmarks" / "results"))
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
