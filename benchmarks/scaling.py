"""Benchmark: the scale-out modes the project ships as accelerate configs, against one process, on the same CPU
cores. Each row is a real training run (`scripts/train.py`, launched as a user would: `python` for one process,
`accelerate launch --config_file accelerate_configs/MODE.yaml --num_processes 2` for the others) of the same global
batch (the recipe's 8 rows of 128 tokens per step: per-device batch 4 in each of 2 processes, 8 in one), so every
mode should train the same losses as one process, and differs only in time and in what each process holds.

    python benchmarks/scaling.py --base /path/to/SmolLM2-135M-Instruct    # every row (~15 min on 2 idle CPU cores)
    python benchmarks/scaling.py --modes single zero2 zero3 --recipes full     # a subset
    python benchmarks/scaling.py --quick --output_dir /tmp/x                   # smoke: tiny random GPT-2, ~1 min

Modes: `single` (one process, the baseline), `ddp` (multi_gpu.yaml: on CPUs, 2 gloo processes), `fsdp` (FSDP 2),
`zero2` and `zero3` (DeepSpeed; skipped with a note where deepspeed is not installed), and `zero2-own-loss`: ZeRO-2
full fine-tuning with `--chunked_lm_loss false`, set against the `zero2` full row to measure what the model's own
loss (full logits) costs, which ZeRO-3 runs must pay (the recipe keeps the chunked loss off there and logs why).
Recipes: `full` (smollm2-full.yaml) and `lora` (smollm2-lora.yaml), in fp32 (--bf16 false: the same precision on
every CPU). Threads: OMP_NUM_THREADS=1 in each of the 2 processes, 2 in the single one: the same 2 cores in all.

Each row reads the run's train_results.json (tensor peak per process, the recipe's memory plan per process, the
steps' time), its trainer_state.json (the loss of every step) and times the steps itself: the Trainer prints each
step's loss line as the step ends (--logging_steps 1), and the benchmark timestamps those lines as they arrive, so
it can leave out the first step (start-up work, the optimizer states' allocation) and the steps the recipe's tensor
meter watches (steps 1-3, a Python call per operator; see recipe/memory/measured.py). Hence 6 steps by default: steps
4-6 are timed (real tokens at the run's mean per step: packed rows hold within ~1% the same). train_results' own
tokens/s divides all real tokens by all steps' time, the first and the metered steps included
(recipe/training/timing.py): it is recorded beside, as `recipe_tokens_per_s`, and so is the rate over steps 2-N. Writes
OUTPUT_DIR/scaling-BASE-DATE.json and .md (a second record of the same day gets a numbered suffix; an existing one
is never overwritten).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import inspect
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recipe.config import load_recipe_yaml  # noqa: E402
from recipe.memory.measured import TensorMemoryCallback  # noqa: E402

# mode -> the accelerate config it launches with (None: one process, `python scripts/train.py`)
MODES = {
    "single": None,
    "ddp": "accelerate_configs/multi_gpu.yaml",
    "fsdp": "accelerate_configs/fsdp.yaml",
    "zero2": "accelerate_configs/deepspeed_zero2.yaml",
    "zero3": "accelerate_configs/deepspeed_zero3.yaml",
    "zero2-own-loss": "accelerate_configs/deepspeed_zero2.yaml",
}
MODE_LABELS = {"single": "one process", "ddp": "DDP", "fsdp": "FSDP 2", "zero2": "ZeRO-2", "zero3": "ZeRO-3",
               "zero2-own-loss": "ZeRO-2, model's own loss"}
MODE_FLAGS = {"zero2-own-loss": ["--chunked_lm_loss", "false"]}
OWN_LOSS_RECIPES = ("full",)  # the chunked-loss row is ZeRO-2 full fine-tuning only
DEEPSPEED_MODES = ("zero2", "zero3", "zero2-own-loss")
RECIPES = {"full": "recipe/configs/smollm2-full.yaml", "lora": "recipe/configs/smollm2-lora.yaml"}
DEFAULT_BASE = "models/SmolLM2-135M-Instruct"
QUICK_BASE = "recipe/assets/tiny-gpt2"  # a config and a tokenizer, no weights: trained from --random_init
QUICK_MODES = ["single", "ddp", "fsdp"]
# The steps the recipe's tensor meter watches (TensorMemoryCallback's default): a Python call per operator, and on
# SmolLM2 step 2 took 8.1 s under it against 5.1-5.7 s for steps 3-6 (one process, fp32). train_results.json's
# tensor_memory_steps cannot say which steps they were: it counts every step of the run.
METERED_STEPS = inspect.signature(TensorMemoryCallback).parameters["steps"].default
LOSS_TOLERANCE = 1e-4  # relative: fp32 sums in another order (gradients all-reduced, sharded) differ by ~1e-6
LOSS_LINE = re.compile(r"^\{'loss': ")  # transformers' PrinterCallback, one line per logged step (--disable_tqdm)
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt")


def free_port() -> int:
    """A port nothing listens on now, for the launcher's rendezvous (two benchmarks at once must not share one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rows_to_run(modes: list[str], recipes: list[str]) -> list[dict]:
    rows = []
    for recipe in recipes:
        for mode in modes:
            if mode == "zero2-own-loss" and recipe not in OWN_LOSS_RECIPES:
                continue
            rows.append({"name": f"{mode}/{recipe}", "mode": mode, "recipe": recipe})
    return rows


def accelerate_launcher() -> str:
    """The `accelerate` command of this interpreter's environment (the one users type)."""
    beside = Path(sys.executable).parent / "accelerate"
    found = str(beside) if beside.is_file() else shutil.which("accelerate")
    if not found:
        raise SystemExit("accelerate's command is not installed beside this Python: pip install accelerate")
    return found


def train_command(row: dict, base: str, args, output_dir: Path, port: int) -> tuple[list[str], int]:
    """The row's training command (the recipe, the base, a few steps with nothing but training in them) and its
    per-device batch."""
    recipe = RECIPES[row["recipe"]]
    batch = int(load_recipe_yaml(REPO / recipe).get("per_device_train_batch_size", 8))  # the recipe's global step
    config = MODES[row["mode"]]
    if config is None:
        launcher, per_device = [sys.executable, "scripts/train.py"], batch
    else:
        if batch % args.num_processes:
            raise SystemExit(f"{recipe}: per_device_train_batch_size {batch} does not split over "
                             f"{args.num_processes} processes; choose --num_processes dividing it")
        launcher = [accelerate_launcher(), "launch", "--config_file", config,
                    "--num_processes", str(args.num_processes), "--main_process_port", str(port), "scripts/train.py"]
        per_device = batch // args.num_processes
    flags = ["--config", recipe, "--model_name_or_path", base, "--max_steps", str(args.max_steps),
             "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
             "--report_to", "none", "--eval_samples", "0", "--logging_steps", "1", "--disable_tqdm", "true",
             "--bf16", "false", "--output_dir", str(output_dir), "--per_device_train_batch_size", str(per_device)]
    if args.random_init:
        flags += ["--random_init", "true"]
    return [*launcher, *flags, *MODE_FLAGS.get(row["mode"], [])], per_device


def row_environment(row: dict, args) -> dict:
    threads = args.cores if MODES[row["mode"]] is None else max(1, args.cores // args.num_processes)
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",  # each step's loss line arrives as the step ends: the benchmark's clock
            "WANDB_MODE": "disabled"}


def cpu_busy_seconds() -> float | None:
    """CPU seconds the machine has been busy since boot, every process together (/proc/stat; None off Linux). Time
    the hypervisor stole is left out: no process of this machine used it."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait_s: float, threshold: float, window_s: float = 5.0) -> float | None:
    """Wait until other processes use less than `threshold` of the CPUs over `window_s` (at most `max_wait_s`);
    returns their share over the last window. Another job on these cores slows the rows unevenly: with 2 OpenMP
    threads on 2 cores, one busy core made the one-process row 4.4x slower (184 s against 42 s for 6 steps on
    SmolLM2), while 2 single-threaded processes lose far less; the relative figures would be the other job's."""
    if max_wait_s <= 0 or cpu_busy_seconds() is None:
        return None
    deadline, announced = time.monotonic() + max_wait_s, False
    while True:
        before = cpu_busy_seconds()
        time.sleep(window_s)
        share = (cpu_busy_seconds() - before) / (window_s * os.cpu_count())
        if share < threshold or time.monotonic() >= deadline:
            return round(share, 3)
        if not announced:
            print(f"[scaling] other processes use {share:.0%} of the CPUs: waiting for them (at most "
                  f"{max_wait_s:.0f} s)", flush=True)
            announced = True


def run_timed(command: list[str], env: dict, log_path: Path, timeout_s: float) -> dict:
    """Run `command`, its output to `log_path`; the arrival time of every loss line, the exit code, and the largest
    peak RSS of any process of the run (wait4's ru_maxrss covers the launcher's children it waited for)."""
    started, load_before, busy_before = time.perf_counter(), os.getloadavg()[0], cpu_busy_seconds()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1, start_new_session=True)  # its own group: a timeout ends all
    timed_out = threading.Event()

    def stop():
        timed_out.set()
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    watchdog = threading.Timer(timeout_s, stop)
    watchdog.start()
    loss_times = []
    try:
        with log_path.open("w") as log:
            log.write("$ " + " ".join(command) + "\n")
            for line in process.stdout:
                if LOSS_LINE.match(line):
                    loss_times.append(time.perf_counter())
                log.write(line)
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        watchdog.cancel()
        if process.returncode is None and process.poll() is None:  # the benchmark stopped: its run stops too
            stop()
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    wall, own = time.perf_counter() - started, usage.ru_utime + usage.ru_stime
    others = None  # the machine's busy CPU time during the run less the run's own (every process of it, reaped)
    if busy_before is not None:
        others = round(max(0.0, cpu_busy_seconds() - busy_before - own) / (wall * os.cpu_count()), 3)
    return {"returncode": process.returncode, "timed_out": timed_out.is_set(), "loss_times": loss_times,
            "wall_s": round(wall, 1), "rss_peak_mb": round(usage.ru_maxrss / 1024, 1), "cpu_s": round(own, 1),
            "others_cpu_share": others,
            # 1-minute load average: this run's own processes count in it; above the cores, others were running
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def step_times(loss_times: list[float]) -> list[float]:
    """Seconds of steps 2..N, from the arrival of each step's loss line to the next's."""
    return [round(b - a, 3) for a, b in zip(loss_times, loss_times[1:])]


def read_run(run_dir: Path, timed: dict) -> dict:
    """The row's figures from its run directory and its clock."""
    train = json.loads((run_dir / "train_results.json").read_text())
    state = json.loads((run_dir / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    steps = train["global_step"]
    # steps 2..N; none where the log did not show one loss line per step (the timing would be another's)
    seconds = step_times(timed["loss_times"]) if len(timed["loss_times"]) == steps else []
    per_step_tokens = train["train_real_tokens"] / steps  # packed rows: the same within ~1% at every step
    metered = min(METERED_STEPS, steps)
    after_first = seconds
    clean = seconds[metered - 1:]  # steps metered+1..N: no meter, no first step
    if not clean:  # too few steps to leave the meter's out (--quick): every step after the first
        clean, metered = after_first, 1
    peaks = train.get("peak_tensor_memory_mb_per_process") or [train.get("peak_tensor_memory_mb")]
    plan = train.get("memory_plan_mb")
    return {
        "sharding": train.get("sharding"), "processes": train.get("processes"), "global_step": steps,
        "step_seconds": seconds,
        "tokens_per_s": round(per_step_tokens * len(clean) / sum(clean), 1) if clean else None,
        "s_per_step": round(sum(clean) / len(clean), 3) if clean else None,
        "timed_steps": f"{metered + 1}-{steps}" if clean else None,
        "tokens_per_s_after_first_step": round(per_step_tokens * len(after_first) / sum(after_first), 1)
        if after_first else None,
        "recipe_tokens_per_s": train.get("train_real_tokens_per_second"),  # all steps: see the module docstring
        "train_steps_runtime_s": train.get("train_steps_runtime"),
        "real_tokens": train.get("train_real_tokens"),
        "tensor_peak_mb_per_process": peaks,
        "tensor_meter_steps": f"1-{min(METERED_STEPS, steps)}",
        "memory_plan_mb": plan,
        "plan_error_per_process": [round(plan / peak - 1, 4) if plan and peak else None for peak in peaks],
        "rss_peak_mb_largest_process": timed["rss_peak_mb"],
        "rss_peak_mb_main_process": train.get("peak_memory_mb"),
        "losses": losses,
        "trainable_parameters": train.get("trainable_parameters"),
        "wall_s": timed["wall_s"], "cpu_s": timed["cpu_s"], "load_average_before_after": timed["load_average"],
        "others_cpu_share": timed["others_cpu_share"],
    }


def log_lines(log_path: Path, pattern: str) -> list[str]:
    return [line.strip() for line in log_path.read_text(errors="replace").splitlines() if pattern in line]


def run_row(row: dict, base: str, args, scratch: Path) -> dict:
    """Train one row; its figures, or why it has none."""
    if row["mode"] in DEEPSPEED_MODES and importlib.util.find_spec("deepspeed") is None:
        return {**row, "skipped": "deepspeed is not installed (pip install -e \".[deepspeed]\"): no ZeRO row"}
    run_dir = scratch / row["name"].replace("/", "-")
    log_path = scratch / f"{run_dir.name}.log"
    tries, best = [], None
    for attempt in range(1, args.attempts + 1):
        shutil.rmtree(run_dir, ignore_errors=True)  # a try again starts in an empty output directory
        command, per_device = train_command(row, base, args, run_dir, free_port())
        quiet = wait_for_quiet(args.quiet_wait, args.max_contention)
        print(f"[scaling] {row['name']} ...", flush=True)
        timed = run_timed(command, row_environment(row, args), log_path, args.row_timeout)
        shown = {sys.executable: "python", **({accelerate_launcher(): "accelerate"} if MODES[row["mode"]] else {})}
        figures = {**row, "command": " ".join(shown.get(c, c) for c in command),
                   "per_device_train_batch_size": per_device,
                   "omp_num_threads": int(row_environment(row, args)["OMP_NUM_THREADS"]),
                   "others_cpu_share_before": quiet}
        if timed["returncode"] != 0 or not (run_dir / "train_results.json").is_file():
            tail = log_path.read_text(errors="replace").splitlines()[-25:]
            why = f"timed out after {args.row_timeout:.0f} s" if timed["timed_out"] else f"exit {timed['returncode']}"
            print(f"[scaling] {row['name']} failed ({why}); see {log_path}", flush=True)
            return {**figures, "failed": why, "log": str(log_path), "log_tail": tail, "tries": tries}
        figures.update(read_run(run_dir, timed))
        figures["log_notes"] = log_lines(log_path, "chunked LM loss off")  # the recipe says why, under ZeRO-3
        for pattern in WEIGHT_FILES:  # a full SmolLM2 run writes 513 MB of weights: the figures are read
            for path in run_dir.rglob(pattern):
                path.unlink()
        others = figures["others_cpu_share"]
        print(f"[scaling] {row['name']}: {figures['tokens_per_s']} tokens/s, tensor peaks "
              f"{figures['tensor_peak_mb_per_process']} MB, plan {figures['memory_plan_mb']} MB; other processes "
              f"{_f(others, '.0%')} of the CPUs", flush=True)
        tries.append({key: figures[key] for key in ("s_per_step", "tokens_per_s", "others_cpu_share")})
        if best is None or (others or 0) < (best["others_cpu_share"] or 0):
            best = figures
        if others is None or others <= args.max_contention:
            break
        if attempt < args.attempts:
            print(f"[scaling] {row['name']}: other processes used {others:.0%} of the CPUs during the run "
                  f"(more than {args.max_contention:.0%}): again, try {attempt + 1} of {args.attempts}", flush=True)
    best["tries"] = tries  # every try's figures; the row is the least disturbed one
    return best


def compare_to_baseline(rows: list[dict]) -> None:
    """Each row's speed and losses against the one-process row of its recipe."""
    baselines = {row["recipe"]: row for row in rows if row["mode"] == "single" and "losses" in row}
    for row in rows:
        baseline = baselines.get(row["recipe"])
        if "losses" not in row or baseline is None:
            continue
        if row["tokens_per_s"] and baseline["tokens_per_s"]:
            row["relative_to_single"] = round(row["tokens_per_s"] / baseline["tokens_per_s"], 3)
        pairs = list(zip(row["losses"], baseline["losses"]))
        if pairs and len(row["losses"]) == len(baseline["losses"]):
            row["loss_max_relative_difference"] = max(abs(a - b) / abs(b) for a, b in pairs)
            row["losses_equal_single"] = row["loss_max_relative_difference"] <= LOSS_TOLERANCE


def chunked_loss_cost(rows: list[dict]) -> dict | None:
    """ZeRO-2 full with the model's own loss against ZeRO-2 full with the chunked one."""
    chunked = next((r for r in rows if r["mode"] == "zero2" and r["recipe"] == "full" and "losses" in r), None)
    own = next((r for r in rows if r["mode"] == "zero2-own-loss" and "losses" in r), None)
    if not (chunked and own):
        return None
    zero3_line = next((line for r in rows if r["mode"] == "zero3" for line in r.get("log_notes", [])), None)
    return {
        "tensor_peak_mb_per_process": [round(o - c, 1) for o, c in zip(own["tensor_peak_mb_per_process"],
                                                                       chunked["tensor_peak_mb_per_process"])],
        "plan_mb": round(own["memory_plan_mb"] - chunked["memory_plan_mb"], 1)
        if own["memory_plan_mb"] and chunked["memory_plan_mb"] else None,
        "s_per_step": round(own["s_per_step"] - chunked["s_per_step"], 3)
        if own["s_per_step"] and chunked["s_per_step"] else None,
        "step_time_ratio": round(own["s_per_step"] / chunked["s_per_step"], 3)
        if own["s_per_step"] and chunked["s_per_step"] else None,
        "losses_max_relative_difference": max(abs(a - b) / abs(b) for a, b in zip(own["losses"], chunked["losses"])),
        "zero3_log_line": zero3_line,
    }


def package_versions() -> dict:
    versions = {}
    for name in ("torch", "transformers", "accelerate", "deepspeed", "peft", "datasets"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def record_stem(output_dir: Path, base: str, date: str) -> Path:
    """OUTPUT_DIR/scaling-BASE-DATE, or -2, -3 ... where a record of that day exists (never overwritten)."""
    stem = output_dir / f"scaling-{Path(base).name}-{date}"
    number = 1
    while stem.with_suffix(".json").exists() or stem.with_suffix(".md").exists():
        number += 1
        stem = output_dir / f"scaling-{Path(base).name}-{date}-{number}"
    if number > 1:
        print(f"[scaling] a record of {date} exists in {output_dir}: this one is written as {stem.name}", flush=True)
    return stem


def _f(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _list(values, spec: str) -> str:
    return " / ".join(_f(v, spec) for v in values) if values else "n/a"


def markdown(record: dict) -> str:
    env = record["environment"]
    lines = [f"# Scale-out modes on {env.get('cpu', 'CPU')}: {record['base']}, {record['date'][:10]}", "",
             f"`{record['command']}`", "",
             f"{record['cores']} CPU cores in every row: one process with OMP_NUM_THREADS={record['cores']}, or "
             f"{record['num_processes']} processes (gloo) with {record['cores'] // record['num_processes']} thread"
             f"{'s' if record['cores'] // record['num_processes'] > 1 else ''} each; the same global batch "
             f"(the recipe's {record['global_batch_rows']} rows of {record['max_length']} tokens per step); fp32; "
             f"{record['max_steps']} steps per row. Real tokens/s and s/step over steps {record['timed_steps']} "
             f"(after the first and the steps the tensor meter watches); the recipe's own figure "
             "(train_results.json, every step) and the rate over steps 2-N beside it. Tensor peaks per process "
             f"over steps {record['tensor_meter_steps']} (recipe/memory/measured.py); the plan is the recipe's "
             "per-process memory plan; plan error = plan / measured - 1. RSS: the largest process's peak "
             "(allocator included: shown, never compared). Others' CPU share: what other processes of the machine "
             "used of its CPUs during the row (/proc/stat less the row's own CPU time); a row above "
             f"{record['max_contention']:.0%} ran again, up to {record['attempts']} tries, the least disturbed kept.",
             "",
             "| row | recipe | processes x batch | real tokens/s | x one process | s/step | tokens/s, steps 2-N "
             "| recipe tokens/s (all steps) | tensor peak per process (MB) | plan (MB) | plan error per process "
             "| RSS peak (MB) | others' CPU share | step losses | max rel. diff vs one process |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in record["rows"]:
        label = MODE_LABELS[row["mode"]]
        if "skipped" in row or "failed" in row:
            lines.append(f"| {label} | {row['recipe']} | " + " | ".join(["n/a"] * 12)
                         + f" | {row.get('skipped') or 'failed: ' + row['failed']} |")
            continue
        difference = row.get("loss_max_relative_difference")
        equal = "" if difference is None else (" (equal)" if row["losses_equal_single"] else " (DIFFERENT)")
        lines.append(
            f"| {label} | {row['recipe']} | {row['processes']} x {row['per_device_train_batch_size']} "
            f"| {_f(row['tokens_per_s'], ',.0f')} | {_f(row.get('relative_to_single'), '.2f')} "
            f"| {_f(row['s_per_step'], '.2f')} | {_f(row['tokens_per_s_after_first_step'], ',.0f')} "
            f"| {_f(row['recipe_tokens_per_s'], ',.0f')} "
            f"| {_list(row['tensor_peak_mb_per_process'], ',.0f')} | {_f(row['memory_plan_mb'], ',.0f')} "
            f"| {_list(row['plan_error_per_process'], '+.1%')} | {_f(row['rss_peak_mb_largest_process'], ',.0f')} "
            f"| {_f(row['others_cpu_share'], '.0%')} "
            f"| {' '.join(f'{loss:.4f}' for loss in row['losses'])} "
            f"| {'-' if row['mode'] == 'single' else _f(difference, '.1e') + equal} |")
    cost = record.get("chunked_loss_cost")
    if cost:
        lines += ["", "What the model's own loss (full logits) costs against the chunked loss, ZeRO-2 full "
                  "fine-tuning (ZeRO-3 runs pay it: the recipe keeps the chunked loss off there):", "",
                  f"- tensor peak: {_list(cost['tensor_peak_mb_per_process'], '+,.0f')} MB per process "
                  f"(the plan: {_f(cost['plan_mb'], '+,.0f')} MB)",
                  f"- step time: {_f(cost['s_per_step'], '+.2f')} s per step ({_f(cost['step_time_ratio'], '.2f')}x)",
                  f"- losses: max relative difference {cost['losses_max_relative_difference']:.1e}"]
        if cost["zero3_log_line"]:
            lines.append(f"- the ZeRO-3 run's log: `{cost['zero3_log_line']}`")
    if record["notes"]:
        lines += ["", *[f"- {note}" for note in record["notes"]]]
    lines += ["", f"Versions: {', '.join(f'{k} {v}' for k, v in record['environment']['packages'].items())}; "
              f"Python {env.get('python')}; git {env.get('git_commit')}{' (dirty)' if env.get('git_dirty') else ''}; "
              f"{env.get('cpu')} ({env.get('cpu_count')} CPUs)."]
    return "\n".join(lines) + "\n"


def environment(rows: list[dict], scratch: Path) -> dict:
    """Versions, git SHA and CPU: from a run's environment.json (what the recipe records), plus deepspeed's."""
    from recipe.training.environment import cpu_name, git_commit

    git = git_commit() or {}
    env = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
           "platform": None, "packages": package_versions(), "git_commit": git.get("commit"),
           "git_dirty": git.get("dirty")}
    for row in rows:
        path = scratch / row["name"].replace("/", "-") / "environment.json"
        if path.is_file():
            run_env = json.loads(path.read_text())
            env.update(platform=run_env.get("platform"), cpu_capability=run_env["device"].get("cpu_capability"),
                       data=run_env.get("data"))
            break
    return env


def main(args) -> dict:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped benchmark stops the run it launched
    started = datetime.datetime.now()
    base = args.base or (QUICK_BASE if args.quick else DEFAULT_BASE)
    args.random_init = args.random_init or (args.quick and args.base is None)
    if not (REPO / base).exists() and not Path(base).exists():
        raise SystemExit(f"base {base} not found: put SmolLM2 there (python scripts/get_base_model.py) or pass "
                         "--base PATH to a model folder")
    modes = args.modes or (QUICK_MODES if args.quick else list(MODES))
    rows = rows_to_run(modes, args.recipes)
    scratch = Path(args.scratch_dir) if args.scratch_dir else Path(tempfile.mkdtemp(prefix="scaling-"))
    scratch.mkdir(parents=True, exist_ok=True)
    print(f"[scaling] {len(rows)} rows; runs and logs in {scratch}", flush=True)
    results = [run_row(row, base, args, scratch) for row in rows]
    compare_to_baseline(results)
    recipe = load_recipe_yaml(REPO / RECIPES[args.recipes[0]])
    timed = next((r["timed_steps"] for r in results if r.get("timed_steps")), None)
    notes = [f"{row['name']}: {row['skipped']}" for row in results if "skipped" in row]
    notes += [f"{row['name']} failed ({row['failed']}): {row['log_tail'][-1] if row['log_tail'] else ''}"
              for row in results if "failed" in row]
    loads = {row["name"]: row["load_average_before_after"] for row in results if "load_average_before_after" in row}
    if loads:
        notes.append(f"1-minute load average before / after each row ({os.cpu_count()} CPUs; a row's own processes "
                     "count in it, so above the cores others shared them): "
                     + ", ".join(f"{name} {before:.1f} / {after:.1f}" for name, (before, after) in loads.items()))
    notes.append(f"train_results.json's train_real_tokens_per_second (recipe/training/timing.py) is all real tokens "
                 f"over all steps' time, the first step and the {METERED_STEPS} steps under the tensor meter included: "
                 "the 'recipe tokens/s' column. The 'real tokens/s' column times the steps after those from the "
                 "arrival of each step's loss line, at the run's mean real tokens per step (packed rows).")
    record = {
        "benchmark": "scaling",
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/scaling.py", *sys.argv[1:]]),
        "base": base, "random_init": args.random_init, "quick": args.quick,
        "recipes": {name: RECIPES[name] for name in args.recipes},
        "modes": {mode: MODES[mode] for mode in modes},
        "max_steps": args.max_steps, "cores": args.cores, "num_processes": args.num_processes,
        "global_batch_rows": int(recipe.get("per_device_train_batch_size", 8)),
        "max_length": int(recipe.get("max_length", 128)),
        "timed_steps": timed, "tensor_meter_steps": f"1-{min(METERED_STEPS, args.max_steps)}",
        "loss_tolerance": LOSS_TOLERANCE, "max_contention": args.max_contention, "attempts": args.attempts,
        "rows": results, "chunked_loss_cost": chunked_loss_cost(results), "notes": notes,
        "environment": environment(results, scratch),
    }
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = record_stem(output_dir, base, started.date().isoformat())
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(record))
    print(stem.with_suffix(".md").read_text() + f"recorded in {stem}.json and {stem}.md", flush=True)
    if not args.keep_runs and not args.scratch_dir:
        shutil.rmtree(scratch, ignore_errors=True)
    if any("failed" in row for row in results):
        raise SystemExit("some rows failed: see the record's notes and their logs")
    return record


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=None, help=f"the base model folder (default {DEFAULT_BASE}; "
                                                      f"--quick: {QUICK_BASE}, random init)")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=None,
                        help="these modes only (default: all; --quick: single ddp fsdp)")
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--max_steps", type=int, default=6,
                        help=f"optimizer steps per row; the timed ones are those after step {METERED_STEPS} (the "
                             "tensor meter's), so 6 times three clean steps")
    parser.add_argument("--quick", action="store_true",
                        help="smoke: the tiny random GPT-2, 2 steps, one process, DDP and FSDP (for the tests)")
    parser.add_argument("--random_init", action="store_true", help="train the base from random weights")
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--cores", type=int, default=2, help="CPU threads in every row, divided among its processes")
    parser.add_argument("--row_timeout", type=float, default=3600, help="seconds before a row's run is stopped")
    parser.add_argument("--max_contention", type=float, default=0.1,
                        help="share of the CPUs other processes may use during a row; a row above it runs again")
    parser.add_argument("--attempts", type=int, default=3, help="tries per row while others use the CPUs")
    parser.add_argument("--quiet_wait", type=float, default=900,
                        help="seconds to wait, before each row, for other processes to leave the CPUs (0: no wait)")
    parser.add_argument("--output_dir", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--scratch_dir", default=None, help="where the runs go (kept); default: a temporary folder")
    parser.add_argument("--keep_runs", action="store_true", help="keep the temporary folder of runs and logs")
    args = parser.parse_args(argv)
    given = argv if argv is not None else sys.argv[1:]
    if args.quick:  # a smoke run: no timing is claimed, so nothing waits for a quiet machine either
        for flag, value in (("--max_steps", 2), ("--attempts", 1), ("--quiet_wait", 0)):
            if flag not in given:
                setattr(args, flag[2:], value)
    return args


if __name__ == "__main__":
    main(parse_args())
