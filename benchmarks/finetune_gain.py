"""Benchmark: what fine-tuning buys. The base model before training, then the full and the LoRA run of a recipe
pair after each epoch, evaluated alike (scripts/evaluate.py on every epoch's checkpoint: exact validation
perplexity overall and per speaker, clean ends, distinct-1/2, token F1, greedy replies to the same prompts),
with each run's training time per epoch, peak memory and trainable parameters.

    python benchmarks/finetune_gain.py                  # SmolLM2-135M-Instruct (models/, see scripts/get_base_model.py)
    python benchmarks/finetune_gain.py --pair smoke     # the offline tiny pair: checks the machinery in a minute

Runs `scripts/run_comparison.sh PAIR` into --work_dir (every epoch's checkpoint kept, replies greedy), so its
comparison report (with the base as a row) and these tables describe the same runs; then evaluates each
epoch's checkpoint alike, and writes benchmarks/results/finetune_gain-PAIR-DATE.json and .md (the README's
tables come from them). Runs and evaluations already in --work_dir are reused: an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PAIRS = {
    "smollm2": ("recipe/configs/smollm2-full.yaml", "recipe/configs/smollm2-lora.yaml"),
    "smoke": ("recipe/configs/smoke.yaml", "recipe/configs/smoke-lora.yaml"),
}
GREEDY = ["--do_sample", "false"]


def run(command: list[str], log: Path, env: dict | None = None) -> None:
    print("$ " + " ".join(command), flush=True)
    with log.open("w") as out:
        done = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise SystemExit(f"failed (exit {done.returncode}); see {log}")


def train_pair(pair: str, work: Path, epochs: int, evaluate_options: list[str], extra: list[str]) -> None:
    """scripts/run_comparison.sh PAIR into `work`: both runs, their evaluation, the base's, the report."""
    if (work / f"comparison-{pair}.md").is_file():
        return
    import os

    env = {**os.environ, "OUTPUTS_DIR": str(work), "PYTHON": sys.executable,
           "EVALUATE_OPTIONS": " ".join(evaluate_options)}
    run(["bash", "scripts/run_comparison.sh", pair, "--save_total_limit", str(epochs + 1), "--report_to", "none",
         "--disable_tqdm", "true", *extra], work / f"run_comparison-{pair}.log", env)


def evaluate(model_path: Path | str, output: Path, extra: list[str]) -> dict:
    if not output.is_file():
        run([sys.executable, "scripts/evaluate.py", "--model_path", str(model_path), "--output_file", str(output),
             "--wandb", "off", *extra], output.with_suffix(".log"))
    return json.loads(output.read_text())


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("checkpoint-*"), key=lambda c: int(c.name.split("-")[1]))


def row(label: str, epoch: float, results: dict) -> dict:
    perplexity, quality = results["perplexity"], results["quality"]
    return {"model": label, "epoch": epoch, "perplexity": perplexity["perplexity"],
            "token_loss": perplexity["token_loss"],
            "per_speaker": {s: v["perplexity"] for s, v in perplexity["per_speaker"].items()},
            "clean_ends": quality.get("clean_end_share"), "distinct_1": quality.get("distinct_1"),
            "distinct_2": quality.get("distinct_2"), "token_f1": quality.get("token_f1"),
            "mean_reply_words": quality.get("mean_reply_words"),
            "differs_from_training_eval": results.get("differs_from_training_eval")}


def run_figures(run_dir: Path) -> dict:
    train = json.loads((run_dir / "train_results.json").read_text())
    config_epochs = float(train.get("epoch") or 0) or len(checkpoints(run_dir))
    steps = train.get("train_steps_runtime", train["train_runtime"])  # the training steps, evaluation apart
    return {"train_runtime_s": train["train_runtime"], "train_steps_s": steps,
            "seconds_per_epoch": steps / config_epochs, "real_tokens_per_second": train["train_real_tokens_per_second"],
            "peak_memory_mb": train["peak_memory_mb"], "peak_tensor_memory_mb": train.get("peak_tensor_memory_mb"),
            "memory_plan_mb": train.get("memory_plan_mb"), "trainable_parameters": train["trainable_parameters"],
            "total_parameters": train["total_parameters"], "mode": train["mode"]}


def main(args) -> dict:
    full_recipe, lora_recipe = PAIRS[args.pair]
    work = Path(args.work_dir or REPO / "benchmarks" / "results" / "scratch" / f"finetune_gain-{args.pair}")
    work.mkdir(parents=True, exist_ok=True)
    import yaml

    epochs = int(yaml.safe_load((REPO / full_recipe).read_text())["num_train_epochs"])
    eval_options = [*GREEDY, "--num_samples", str(args.num_samples)]
    train_pair(args.pair, work, epochs, eval_options, args.train_args)
    runs = {"full": work / f"{args.pair}-full", "lora": work / f"{args.pair}-lora"}
    # The pair's QLoRA run, where it has one: its figures, and only its final model's evaluation (the one
    # run_comparison made): its other epochs are not evaluated again, as 4-bit generation is slow on a CPU.
    if (work / f"{args.pair}-qlora" / "train_results.json").is_file():
        runs["qlora"] = work / f"{args.pair}-qlora"
    rows, samples = [], {}
    if (work / f"{args.pair}-base.json").is_file():  # run_comparison evaluated the base (not a random one)
        base = json.loads((work / f"{args.pair}-base.json").read_text())
        rows.append(row("base", 0, base))
        samples["base"] = base["samples"]
    for mode, run_dir in runs.items():
        best = json.loads((run_dir / "train_results.json").read_text()).get("best_checkpoint")
        for epoch, checkpoint in enumerate(checkpoints(run_dir), start=1):
            if best and Path(best).name == checkpoint.name and (run_dir / "evaluation.json").is_file():
                results = json.loads((run_dir / "evaluation.json").read_text())  # the final model is this one
            elif mode == "qlora":
                continue
            else:
                results = evaluate(checkpoint, work / f"{mode}-epoch{epoch}.json", eval_options)
            rows.append(row(mode, epoch, results))
            samples[mode] = results["samples"]  # the last epoch's
    record = {
        "benchmark": "finetune_gain", "pair": args.pair, "date": datetime.date.today().isoformat(),
        "command": " ".join(["python", "benchmarks/finetune_gain.py", *sys.argv[1:]]),
        "recipes": {"full": full_recipe, "lora": lora_recipe}, "rows": rows,
        "runs": {mode: run_figures(run_dir) for mode, run_dir in runs.items()},
        "samples": samples, "environment": json.loads((runs["full"] / "environment.json").read_text()),
        "comparison_report": str(work / f"comparison-{args.pair}.md"),
    }
    out = Path(args.output_dir) / f"finetune_gain-{args.pair}-{record['date']}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    out.with_suffix(".md").write_text(markdown(record, args.samples_shown))
    print(out.with_suffix(".md").read_text())
    return record


def _f(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(record: dict, samples_shown: int) -> str:
    speakers = sorted({s for r in record["rows"] for s in r["per_speaker"]})
    head = ["model", "epoch", "perplexity", *[f"ppl {s}" for s in speakers], "clean ends", "distinct-1",
            "distinct-2", "token F1", "reply words"]
    lines = [f"# What fine-tuning buys: {record['pair']}, {record['date']}", "", f"`{record['command']}`", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in record["rows"]:
        lines.append("| " + " | ".join([
            r["model"], str(r["epoch"]), f"{r['perplexity']:.2f}",
            *[_f(r["per_speaker"].get(s), ".2f") for s in speakers],
            _f(r["clean_ends"] and 100 * r["clean_ends"], ".1f") + "%", _f(r["distinct_1"], ".3f"),
            _f(r["distinct_2"], ".3f"), _f(r["token_f1"], ".3f"), _f(r["mean_reply_words"], ".1f")]) + " |")
    lines += ["", "| run | trainable parameters | training steps per epoch (s) | real tokens/s "
              "| peak memory in tensors (MB) | memory plan (MB) | peak RSS (MB) |", "|---|---|---|---|---|---|---|"]
    for mode, figures in record["runs"].items():
        share = figures["trainable_parameters"] / figures["total_parameters"]
        lines.append(f"| {mode} | {figures['trainable_parameters']:,} ({share:.2%}) "
                     f"| {figures['seconds_per_epoch']:.0f} | {figures['real_tokens_per_second']:,.0f} "
                     f"| {_f(figures['peak_tensor_memory_mb'], ',.0f')} | {_f(figures['memory_plan_mb'], ',.0f')} "
                     f"| {figures['peak_memory_mb']:,.0f} |")
    lines += ["", "Replies (greedy, the same prompts; the last epoch of each run):", ""]
    models = list(record["samples"])
    first = record["samples"][models[0]]
    for index in range(min(samples_shown, len(first))):
        lines += [f"**Prompt {index + 1}** (reference: {first[index]['reference']!r})", "", "```",
                  first[index]["prompt"], "```", ""]
        for model in models:
            sample = record["samples"][model][index]
            lines.append(f"- {model}: {sample['reply']!r} ({sample['ended_by']})")
        lines.append("")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", choices=list(PAIRS), default="smollm2")
    parser.add_argument("--num_samples", type=int, default=32, help="prompts per evaluation")
    parser.add_argument("--samples_shown", type=int, default=3, help="prompts shown side by side in the .md")
    parser.add_argument("--work_dir", default=None)
    parser.add_argument("--output_dir", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: options for both training runs")
    args = parser.parse_args(argv)
    args.train_args = [a for a in args.train_args if a != "--"]
    return args


if __name__ == "__main__":
    main(parse_args())
