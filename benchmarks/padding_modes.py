"""Benchmark: real tokens per second of each batching mode (--padding), on a distilgpt2-shaped model.

Not a test: it takes minutes. Records its result with the environment, then prints a table:

    python benchmarks/padding_modes.py                       # distilgpt2 shape, random init, offline
    python benchmarks/padding_modes.py --steps 10 --modes packing longest
    python benchmarks/padding_modes.py --model_name_or_path models/distilgpt2   # the real weights

Every mode trains the same model from the same initial weights on the same data for --steps
optimizer steps, in the same precision; "real tokens" exclude padding, so a mode that spends compute
on padding shows it as fewer real tokens per second. "epoch time" = seconds per step x steps per
epoch, which is what a user waits for.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from recipe.config import DataArguments, DialogueTrainingArguments, ModelArguments
from recipe.data import build_datasets
from recipe.modeling import OFFLINE_MODEL_DIR, get_model, get_tokenizer
from recipe.training import build_trainer, environment_record

MODES = {
    "max_length": {"padding": "max_length"},
    "longest": {"padding": "longest"},
    "longest+group_by_length": {"padding": "longest", "train_sampling_strategy": "group_by_length"},
    "packing": {"padding": "packing"},
}


def distilgpt2_shaped(tokenizer) -> GPT2LMHeadModel:
    """distilgpt2's body (6 layers, width 768, 12 heads) on the offline tokenizer's vocabulary."""
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=1024, n_embd=768, n_layer=6, n_head=12,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    return GPT2LMHeadModel(config)


def run_mode(name, options, model_args, args, tokenizer, output_dir) -> dict:
    data_args = DataArguments(data_path=args.data_path, max_length=args.max_length, padding=options["padding"])
    prepared = build_datasets(data_args, tokenizer)
    torch.manual_seed(0)
    model = get_model(model_args, tokenizer) if model_args else distilgpt2_shaped(tokenizer)
    training_args = DialogueTrainingArguments(
        output_dir=str(output_dir / name), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        eval_strategy="no", save_strategy="no", load_best_model_at_end=False, report_to="none",
        logging_steps=args.steps, disable_tqdm=True, bf16=args.bf16, seed=0,
        train_sampling_strategy=options.get("train_sampling_strategy", "random"),
    )
    trainer = build_trainer(model, tokenizer, prepared, data_args, training_args)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    rows = len(prepared.train_dataset)
    steps_per_epoch = -(-rows // args.batch_size)
    real_tokens = trainer.total_real_tokens_trained()
    return {
        "mode": name,
        "rows_per_epoch": rows,
        "padding_share": prepared.report["train"]["batching"].get("padding_share_of_row_tokens"),
        "seconds_per_step": round(seconds / args.steps, 3),
        "real_tokens_per_second": round(real_tokens / seconds, 1),
        "estimated_epoch_seconds": round(seconds / args.steps * steps_per_epoch, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", default="data/sample_dialogues.json")
    parser.add_argument("--model_name_or_path", default=None, help="default: distilgpt2-shaped random model")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--bf16", type=lambda v: v.lower() == "true", default=None, help="default: auto")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--output_dir", default="benchmarks/results")
    args = parser.parse_args()

    model_args = ModelArguments(model_name_or_path=args.model_name_or_path) if args.model_name_or_path else None
    tokenizer = get_tokenizer(model_args or ModelArguments(model_name_or_path=str(OFFLINE_MODEL_DIR)))
    scratch = Path(args.output_dir) / "scratch"
    results = [run_mode(name, MODES[name], model_args, args, tokenizer, scratch) for name in args.modes]
    training_args = DialogueTrainingArguments(output_dir=str(scratch), bf16=args.bf16, report_to="none")
    record = {
        "benchmark": "padding_modes",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": vars(args) | {"model": args.model_name_or_path or "distilgpt2-shaped, random init, vocab "
                                  f"{len(tokenizer)}", "bf16": training_args.bf16},
        "environment": environment_record(DataArguments(data_path=args.data_path), training_args),
        "machine": platform.node(),
        "results": results,
    }
    output = Path(args.output_dir) / f"padding_modes-{record['date'][:10]}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2) + "\n")
    print("| mode | rows/epoch | padding share | s/step | real tokens/s | epoch (s) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        share = "n/a" if r["padding_share"] is None else f"{r['padding_share']:.1%}"
        print(f"| {r['mode']} | {r['rows_per_epoch']} | {share} | {r['seconds_per_step']} | "
              f"{r['real_tokens_per_second']:,.0f} | {r['estimated_epoch_seconds']} |")
    print(f"recorded in {output}")


if __name__ == "__main__":
    main()
