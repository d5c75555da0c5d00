"""Benchmark: what the data path (`build_datasets`, scripts/prepare_data.py) costs in CPU time, memory and disk as
the corpus grows, against the floor a user's own script pays: `datasets.load_dataset("json")` then a batched
tokenizing `.map`. Written for the question whether the data path's memory stays flat in corpus size.

The corpus is synthetic messages-format JSON Lines shaped like UltraChat or SmolTalk: per line
`{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}, ...]}`, 4 to 6 turns and
about 600 words per dialogue, the words drawn (seeded) with their frequencies in data/sample_dialogues.json, so the
text tokenizes like English and no two dialogues are alike (nothing is deduplicated). It is written streaming, in
batches: about 3.4 KB a dialogue, so 1M dialogues are ~3.4 GB, written in about 3 minutes. `--format json` writes the
same dialogues as one JSON array.

Each step runs in its own fresh process (`--step NAME` of this script, or scripts/prepare_data.py itself), so that
no peak carries over from a step to the next. The benchmark samples the process's /proc/PID/status every 50 ms for
its peak RssAnon (anonymous memory: RSS less file-backed pages, such as memory-mapped Arrow files and shared
libraries: what grows with a corpus held in Python objects) and VmRSS, and takes its CPU time (user + system, its
own waited-for children included) and the kernel's peak RSS from wait4. Steps (`--steps`, groups of them):

- `baseline`: the imports and the tokenizer alone, the fixed cost inside every other step;
- `plain`: `load_dataset("json", data_files=CORPUS, cache_dir=FRESH)` then `.map(batched=True)` rendering each
  dialogue as `role: content` lines + EOS and tokenizing the batch;
- `recipe_cold` / `recipe_warm`: `build_datasets(DataArguments(data_path=CORPUS, data_format="messages", ...))` on
  an empty cache, then again on the cache the first one wrote;
- `prepare_cold` / `prepare_warm`: `python scripts/prepare_data.py` the same way (it also writes the splits out).

The tokenizer is the bundled offline one (recipe/assets/tiny-gpt2, 512 positions: hence `--max_length 512`).
Every step's datasets cache (HF_DATASETS_CACHE too) is inside its own folder, whose size is the step's cache on disk.

    python benchmarks/preprocessing.py --dialogues 10000                   # ~2 min on 2 CPU cores
    python benchmarks/preprocessing.py --dialogues 10000 100000 --steps plain,recipe
    nohup python benchmarks/preprocessing.py --dialogues 1000000 --scratch /big/disk > preprocessing.log 2>&1 &
        # 1M dialogues: ~3.4 GB of corpus plus the caches on --scratch; a few hours on 2 cores

Prints a table per corpus size (and one of peak memory against size, for several sizes) and writes every number,
with the command, to benchmarks/results/preprocessing-<date>-<N>k.json (-2, -3 ... where one exists).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SAMPLE = REPO / "data" / "sample_dialogues.json"
PREPARE_SCRIPT = REPO / "scripts" / "prepare_data.py"
RESULTS = Path(__file__).parent / "results"

STEP_GROUPS = {"baseline": ["baseline"], "plain": ["plain"], "recipe": ["recipe_cold", "recipe_warm"],
               "prepare": ["prepare_cold", "prepare_warm"]}
TURNS = (4, 6)  # turns per dialogue, both ends included; user and assistant alternate, the user first
WORDS = (500, 700)  # words per dialogue, both ends included: ~600 on average
BATCH = 2000  # dialogues drawn and written at once
SAMPLE_EVERY_S = 0.05
MB = 1024 * 1024


# The corpus


def word_frequencies() -> tuple[np.ndarray, np.ndarray]:
    """The words of the bundled sample dialogues (lower case) and the share of each: a fixed English vocabulary."""
    counts: dict[str, int] = {}
    for dialogue in json.loads(SAMPLE.read_text(encoding="utf-8")):
        for text in dialogue.values():
            for word in re.findall(r"[a-z]+(?:'[a-z]+)*", text.lower().replace("\u2019", "'")):
                counts[word] = counts.get(word, 0) + 1
    words = sorted(counts)
    frequency = np.array([counts[w] for w in words], dtype=np.float64)
    return np.array(words, dtype=object), frequency / frequency.sum()


def dialogue_batch(rng: np.random.Generator, words: np.ndarray, shares: np.ndarray, count: int) -> Iterator[dict]:
    """`count` messages-format dialogues, their words drawn for the whole batch at once."""
    turns = rng.integers(TURNS[0], TURNS[1] + 1, size=count)
    totals = rng.integers(WORDS[0], WORDS[1] + 1, size=count)
    drawn = words[rng.choice(len(words), size=int(totals.sum()), p=shares)].tolist()
    # Each turn's share of its dialogue's words: uniform weights in [0.5, 1.5), the unused turns weighing nothing.
    weights = rng.uniform(0.5, 1.5, size=(count, TURNS[1])) * (np.arange(TURNS[1]) < turns[:, None])
    ends = np.rint(np.cumsum(weights, axis=1) / weights.sum(axis=1, keepdims=True) * totals[:, None]).astype(int)
    starts = np.concatenate([[0], np.cumsum(totals)[:-1]])
    for start, n_turns, turn_ends in zip(starts.tolist(), turns.tolist(), ends.tolist()):
        bounds = [0] + turn_ends[:n_turns]
        yield {"messages": [message(t, drawn[start + bounds[t]:start + bounds[t + 1]]) for t in range(n_turns)]}


def message(turn: int, words: list[str]) -> dict:
    user = turn % 2 == 0
    return {"role": "user" if user else "assistant", "content": " ".join(words).capitalize() + ("?" if user else ".")}


def write_corpus(path: Path, count: int, file_format: str, seed: int = 0) -> int:
    """Write `count` dialogues to `path` (JSON Lines, or one JSON array), a batch at a time; returns its bytes."""
    rng = np.random.default_rng(seed)
    words, shares = word_frequencies()
    separator = "\n" if file_format == "jsonl" else ",\n"
    with path.open("w", encoding="utf-8") as out:
        out.write("" if file_format == "jsonl" else "[\n")
        for first in range(0, count, BATCH):
            lines = [json.dumps(d) for d in dialogue_batch(rng, words, shares, min(BATCH, count - first))]
            out.write(("" if first == 0 else separator) + separator.join(lines))
        out.write("\n" if file_format == "jsonl" else "\n]\n")
    return path.stat().st_size


# The steps, each run in a fresh process (`--step NAME`)


def offline_tokenizer():
    from recipe.config import ModelArguments
    from recipe.models.loading import get_tokenizer
    from recipe.models.offline import OFFLINE_MODEL_DIR

    return get_tokenizer(ModelArguments(model_name_or_path=str(OFFLINE_MODEL_DIR)))


def plain_tokenization(corpus: str, cache_dir: str, tokenizer) -> dict:
    """What a user's own script pays: load the JSON (Lines) with datasets, render, tokenize in batches."""
    import datasets
    import pyarrow.compute as pc

    eos = tokenizer.eos_token

    def tokenize(batch):
        texts = ["\n".join(f"{m['role']}: {m['content']}" for m in messages) + eos for messages in batch["messages"]]
        return tokenizer(texts)

    loaded = datasets.load_dataset("json", data_files=corpus, split="train", cache_dir=cache_dir)
    tokenized = loaded.map(tokenize, batched=True, remove_columns=loaded.column_names)
    lengths = pc.list_value_length(tokenized.data.column("input_ids"))
    return {"dialogues": len(tokenized), "tokens": int(pc.sum(lengths).as_py())}


def recipe_preparation(corpus: str, cache_dir: str, tokenizer, max_length: int) -> dict:
    """The project's data path, as training calls it."""
    from recipe.config import DataArguments
    from recipe.data import build_datasets

    args = DataArguments(data_path=corpus, data_format="messages", max_length=max_length, dataset_cache_dir=cache_dir)
    return report_counts(build_datasets(args, tokenizer).report)


def report_counts(report: dict) -> dict:
    """Tokens, examples (windows) and packed rows of a data report, both splits together."""
    splits = [report[name] for name in ("train", "validation") if report.get(name)]
    return {"tokens": sum(s.get("tokens", 0) for s in splits), "examples": sum(s.get("examples", 0) for s in splits),
            "rows": sum(s.get("batching", {}).get("rows", 0) for s in splits)}


def run_step(step: str, corpus: str, cache_dir: str, max_length: int, result: str) -> None:
    """One measured step, in this (fresh) process; what it found, and the time of its work alone, go to `result`."""
    import datasets  # noqa: F401  (imported by every step: part of the baseline)

    import recipe.data  # noqa: F401

    tokenizer = offline_tokenizer()
    cpu, wall = time.process_time(), time.perf_counter()
    if step == "plain":
        found = plain_tokenization(corpus, cache_dir, tokenizer)
    elif step in ("recipe_cold", "recipe_warm"):
        found = recipe_preparation(corpus, cache_dir, tokenizer, max_length)
    else:
        found = {}
    found.update(work_cpu_s=round(time.process_time() - cpu, 2), work_wall_s=round(time.perf_counter() - wall, 2))
    Path(result).write_text(json.dumps(found))


# Measuring a step from outside


def read_memory(pid: int) -> dict[str, int]:
    """RssAnon and VmRSS of a running process, in kB (none once it has exited)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    fields = (line.split(":", 1) for line in lines if line.startswith(("RssAnon:", "VmRSS:")))
    return {name: int(value.split()[0]) for name, value in fields}


def measure(command: list[str], env: dict, log_path: Path) -> dict:
    """Run `command` to its end, its output to `log_path`: CPU and wall seconds, sampled peak RssAnon and VmRSS,
    and the kernel's peak RSS (wait4's ru_maxrss)."""
    peaks = {"RssAnon": 0, "VmRSS": 0}
    started = time.perf_counter()
    with log_path.open("w") as log:
        log.write("$ " + shlex.join(command) + "\n")
        log.flush()
        child = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            for name, kb in read_memory(child.pid).items():
                peaks[name] = max(peaks[name], kb)
            time.sleep(SAMPLE_EVERY_S)
    except BaseException:  # the benchmark stopped: its step stops too
        child.kill()
        child.wait()
        raise
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    return {"returncode": child.returncode, "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "wall_s": round(time.perf_counter() - started, 2), "peak_anon_mb": round(peaks["RssAnon"] / 1024, 1),
            "peak_rss_mb": round(peaks["VmRSS"] / 1024, 1), "max_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def step_command(step: str, corpus: Path, cache_dir: Path, work: Path, max_length: int) -> list[str]:
    if step.startswith("prepare"):
        from recipe.models.offline import OFFLINE_MODEL_DIR

        return [sys.executable, str(PREPARE_SCRIPT), "--data_path", str(corpus), "--data_format", "messages",
                "--max_length", str(max_length), "--model_name_or_path", str(OFFLINE_MODEL_DIR),
                "--tokenizer_name_or_path", str(OFFLINE_MODEL_DIR), "--dataset_cache_dir", str(cache_dir),
                "--output_dir", str(work / f"{step}-output")]
    return [sys.executable, str(Path(__file__).resolve()), "--step", step, "--corpus", str(corpus),
            "--cache_dir", str(cache_dir), "--max_length", str(max_length), "--result", str(work / f"{step}.json")]


def step_environment(cache_dir: Path) -> dict:
    """Offline, and whatever datasets caches by default kept in the step's cache folder (so it is counted)."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "HF_DATASETS_CACHE": str(cache_dir / "hf_datasets_cache"), "PYTHONPATH": str(REPO)}


def run_measured_step(step: str, corpus: Path, work: Path, max_length: int) -> dict:
    """Measure one step in a fresh process; a warm step reuses its cold step's cache folder."""
    cache_dir = work / f"{step.replace('_warm', '_cold')}-cache"
    command = step_command(step, corpus, cache_dir, work, max_length)
    print(f"  {step} ...", end="", flush=True)
    measured = measure(command, step_environment(cache_dir), work / f"{step}.log")
    measured["command"] = shlex.join(command)
    measured["cache_mb"] = None if step == "baseline" else round(folder_bytes(cache_dir) / MB, 1)
    result, report = work / f"{step}.json", work / f"{step}-output" / "data_report.json"
    if result.exists():
        measured.update(json.loads(result.read_text()))
    elif report.exists():
        measured.update(report_counts(json.loads(report.read_text())))
        measured["output_mb"] = round(folder_bytes(report.parent) / MB, 1)
    if measured["returncode"] != 0:
        measured["log_tail"] = (work / f"{step}.log").read_text(errors="replace").splitlines()[-15:]
        print(f" failed (exit {measured['returncode']}):\n    " + "\n    ".join(measured["log_tail"]), flush=True)
    else:
        print(f" {measured['cpu_s']:.1f} s CPU, {measured['peak_anon_mb']:.0f} MB anonymous at peak", flush=True)
    return measured


# One corpus size, and the record


def ratio(steps: dict, top: str, bottom: str, key: str) -> float | None:
    a, b = steps.get(top, {}), steps.get(bottom, {})
    if a.get("returncode") or b.get("returncode") or not a.get(key) or not b.get(key):
        return None
    return round(a[key] / b[key], 3)


def ratios(steps: dict) -> dict:
    return {"recipe_cpu_over_plain": ratio(steps, "recipe_cold", "plain", "cpu_s"),
            "recipe_work_cpu_over_plain": ratio(steps, "recipe_cold", "plain", "work_cpu_s"),  # less the baseline
            "recipe_peak_anon_over_plain": ratio(steps, "recipe_cold", "plain", "peak_anon_mb"),
            "recipe_cache_over_plain": ratio(steps, "recipe_cold", "plain", "cache_mb"),
            "recipe_warm_over_cold_cpu": ratio(steps, "recipe_warm", "recipe_cold", "cpu_s"),
            "recipe_warm_over_cold_wall": ratio(steps, "recipe_warm", "recipe_cold", "wall_s"),
            "prepare_warm_over_cold_cpu": ratio(steps, "prepare_warm", "prepare_cold", "cpu_s"),
            "prepare_warm_over_cold_wall": ratio(steps, "prepare_warm", "prepare_cold", "wall_s")}


def benchmark_size(count: int, args, scratch_root: Path) -> dict:
    """Write a corpus of `count` dialogues in a folder of its own, measure every step on it, delete the folder
    (with --keep-corpus, all but the corpus)."""
    work = Path(tempfile.mkdtemp(prefix=f"preprocessing-{count}-", dir=scratch_root))
    corpus = work / f"dialogues.{args.format}"
    print(f"{count:,} dialogues: writing {corpus} ...", end="", flush=True)
    started = time.perf_counter()
    corpus_bytes = write_corpus(corpus, count, args.format)
    write_s = round(time.perf_counter() - started, 1)
    print(f" {corpus_bytes / MB:,.1f} MB in {write_s} s", flush=True)
    try:
        steps = {step: run_measured_step(step, corpus, work, args.max_length) for step in args.steps}
    finally:
        for path in work.iterdir() if args.keep_corpus else [work]:
            if path != corpus:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    if args.keep_corpus:
        print(f"  kept {corpus}")
    return {"dialogues": count, "corpus_mb": round(corpus_bytes / MB, 1), "corpus_write_s": write_s,
            "steps": steps, "ratios": ratios(steps)}


def _f(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def size_table(size: dict) -> str:
    tokens = next((s["tokens"] for s in size["steps"].values() if s.get("tokens")), None)
    lines = [f"{size['dialogues']:,} dialogues, {size['corpus_mb']:,.1f} MB corpus"
             + (f", {tokens:,} tokens (plain)" if tokens else ""), "",
             "| step | CPU s | wall s | peak anonymous MB | peak RSS MB | cache on disk MB |",
             "|---|---|---|---|---|---|"]
    for name, s in size["steps"].items():
        if s["returncode"]:
            lines.append(f"| {name} | failed (exit {s['returncode']}) | | | | |")
            continue
        lines.append(f"| {name} | {s['cpu_s']:.1f} | {s['wall_s']:.1f} | {s['peak_anon_mb']:.0f} | "
                     f"{s['max_rss_mb']:.0f} | {_f(s['cache_mb'], ',.1f')} |")
    lines.append("")
    lines += [f"- {name.replace('_', ' ')}: {_f(value, '.3g')}" for name, value in size["ratios"].items()]
    return "\n".join(lines)


def growth_table(sizes: list[dict]) -> str:
    """Peak anonymous MB of each step at each corpus size: flat rows are what the issue asks for."""
    steps = list(sizes[0]["steps"])
    lines = ["Peak anonymous MB by corpus size", "",
             "| step | " + " | ".join(f"{s['dialogues']:,}" for s in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    for step in steps:
        cells = [_f(s["steps"][step]["peak_anon_mb"] if not s["steps"][step]["returncode"] else None, ".0f")
                 for s in sizes]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def record_path(date: str, counts: list[int]) -> Path:
    """benchmarks/results/preprocessing-DATE-10k-100k.json, or -2, -3 ... where it exists (never overwritten)."""
    stem = f"preprocessing-{date}-" + "-".join(f"{n / 1000:g}k" for n in counts)
    path, number = RESULTS / f"{stem}.json", 1
    while path.exists():
        number += 1
        path = RESULTS / f"{stem}-{number}.json"
    return path


def main(args) -> dict:
    from recipe.training.environment import cpu_name, git_commit

    scratch_root = Path(args.scratch or tempfile.gettempdir())
    scratch_root.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    out = record_path(datetime.date.today().isoformat(), args.dialogues)
    sizes = []
    for count in args.dialogues:
        sizes.append(benchmark_size(count, args, scratch_root))
        print("\n" + size_table(sizes[-1]) + "\n", flush=True)
        # Written after every size: a long run stopped at its largest size keeps what it measured.
        record = {"date": datetime.date.today().isoformat(), "machine": cpu_name(), "cores": os.cpu_count(),
                  "load_average_after": [round(x, 2) for x in os.getloadavg()], "git": git_commit(),
                  "command": shlex.join(["python", *sys.argv]), "format": args.format,
                  "max_length": args.max_length, "tokenizer": "recipe/assets/tiny-gpt2", "sizes": sizes}
        out.write_text(json.dumps(record, indent=2) + "\n")
    if len(sizes) > 1:
        print(growth_table(sizes) + "\n")
    print(f"recorded in {out}")
    if any(step["returncode"] for size in sizes for step in size["steps"].values()):
        raise SystemExit("some steps failed: see their log tails above and in the record")
    return record


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dialogues", type=int, nargs="+", default=[10_000], help="corpus sizes, one run each")
    parser.add_argument("--steps", default="baseline,plain,recipe,prepare",
                        help=f"comma-separated groups of steps, from {', '.join(STEP_GROUPS)}")
    parser.add_argument("--max_length", type=int, default=512,
                        help="the recipe's max_length (the offline tokenizer's model has 512 positions)")
    parser.add_argument("--format", choices=["jsonl", "json"], default="jsonl",
                        help="JSON Lines, or the same dialogues as one JSON array")
    parser.add_argument("--scratch", default=None, help="where each size's corpus and caches go (default: the "
                                                        "system's temporary folder); deleted after")
    parser.add_argument("--keep-corpus", action="store_true", help="keep the corpora (their paths are printed)")
    for hidden in ("--step", "--corpus", "--cache_dir", "--result"):  # a measured step, run by the benchmark
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.step:
        groups = [g.strip() for g in args.steps.split(",") if g.strip()]
        unknown = [g for g in groups if g not in STEP_GROUPS]
        if unknown or not groups:
            parser.error(f"--steps: unknown {', '.join(unknown) or '(none given)'}; choose from "
                         f"{', '.join(STEP_GROUPS)}")
        args.steps = [step for g in groups for step in STEP_GROUPS[g]]
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.step:
        run_step(arguments.step, arguments.corpus, arguments.cache_dir, arguments.max_length, arguments.result)
    else:
        main(arguments)
