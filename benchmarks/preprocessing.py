"""Benchmark: the data path (`build_datasets`) against a plain batched tokenization of the same text.

Not a test: it takes a minute or more. In one process, on N dialogues (the bundled sample repeated,
each copy's text made distinct so nothing is deduplicated or cached by accident):

- `plain`: `datasets.Dataset.from_dict({"text": ...}).map(tokenizer, batched=True)` over the very
  text the recipe trains on (turns rendered, EOS written out): the floor any pipeline pays;
- `build_datasets` on a fresh cache: read and validate the file, split, render, tokenize with label
  masks and windows, pack, report;
- `build_datasets` again: what a second run (or every process after the first) pays, from the cache.

    python benchmarks/preprocessing.py                      # 100,000 dialogues
    python benchmarks/preprocessing.py --dialogues 20000    # quicker

Writes benchmarks/results/preprocessing-<date>.json and prints the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
import time
from pathlib import Path

from recipe.config import DataArguments, ModelArguments
from recipe.data import build_datasets, read_dialogues, render_dialogue
from recipe.models.loading import get_tokenizer
from recipe.models.offline import OFFLINE_MODEL_DIR
from recipe.training.environment import cpu_name

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample_dialogues.json"
RESULTS = Path(__file__).parent / "results"


def write_corpus(path: Path, count: int) -> list[list[tuple[str, str]]]:
    """`count` dialogues in the seed format (speaker keys repeat inside an object), as a .json file."""
    base = read_dialogues(str(SAMPLE), DataArguments(data_path=str(SAMPLE))).dialogues
    dialogues = []
    for i in range(count):
        source = base[i % len(base)]
        copy = i // len(base)
        dialogues.append([(s, f"{t} ({copy})" if copy else t) for s, t in zip(source.speakers, source.texts)])
    objects = ("{" + ", ".join(f"{json.dumps(s)}: {json.dumps(t)}" for s, t in d) + "}" for d in dialogues)
    path.write_text("[\n" + ",\n".join(objects) + "\n]\n", encoding="utf-8")
    return dialogues


def time_plain(dialogues, tokenizer, data_args: DataArguments) -> float:
    import datasets

    texts = [render_dialogue([s for s, _ in d], [t for _, t in d], [None] * len(d), data_args).text
             + tokenizer.eos_token for d in dialogues]
    table = datasets.Dataset.from_dict({"text": texts})
    start = time.perf_counter()
    table.map(lambda batch: tokenizer(batch["text"]), batched=True, remove_columns=["text"],
              keep_in_memory=True, load_from_cache_file=False)
    return time.perf_counter() - start


def time_build(data_args: DataArguments, tokenizer) -> tuple[float, dict]:
    start = time.perf_counter()
    prepared = build_datasets(data_args, tokenizer)
    return time.perf_counter() - start, prepared.report


def main(dialogues: int, max_length: int) -> dict:
    tokenizer = get_tokenizer(ModelArguments(model_name_or_path=str(OFFLINE_MODEL_DIR)))
    with tempfile.TemporaryDirectory() as scratch:
        corpus = Path(scratch) / "dialogues.json"
        written = write_corpus(corpus, dialogues)
        data_args = DataArguments(data_path=str(corpus), max_length=max_length,
                                  dataset_cache_dir=str(Path(scratch) / "cache"))
        plain = time_plain(written, tokenizer, data_args)
        first, report = time_build(data_args, tokenizer)
        second, _ = time_build(data_args, tokenizer)
    record = {
        "date": datetime.date.today().isoformat(),
        "machine": cpu_name(),
        "dialogues": dialogues,
        "tokens": report["train"]["tokens"] + report["validation"]["tokens"],
        "tokenizer": str(OFFLINE_MODEL_DIR.name),
        "seconds": {"plain_batched_map": round(plain, 2), "build_datasets_first": round(first, 2),
                    "build_datasets_cached": round(second, 2)},
        "ratios": {"first_over_plain": round(first / plain, 2), "cached_over_first": round(second / first, 3)},
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"preprocessing-{record['date']}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{dialogues:,} dialogues, {record['tokens']:,} tokens ({record['machine']})")
    print("| step | seconds | ratio |\n|---|---|---|")
    print(f"| plain batched datasets.map tokenization | {plain:.1f} | 1.0 |")
    print(f"| build_datasets, first run | {first:.1f} | {first / plain:.2f} x plain |")
    print(f"| build_datasets, from the cache | {second:.2f} | {second / first:.3f} x first |")
    print(f"recorded in {out}")
    return record


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dialogues", type=int, default=100_000, help="how many dialogues to prepare")
    parser.add_argument("--max_length", type=int, default=256, help="row length (as the default recipe)")
    main(**vars(parser.parse_args()))
