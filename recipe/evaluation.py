"""Evaluation of a trained (or base) model: loading it the way it was trained, exact perplexity overall
and per speaker, sampled replies and their quality; what scripts/evaluate.py writes and prints.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from .config import ConfigError, DataArguments, GenerationArguments, ModelArguments
from .data import IGNORE_INDEX, Dialogue, DialogueCollator, load_dialogue_splits, read_dialogues, tokenize_dialogues
from .files import file_sha256
from .generation import generate_replies, prompts_from_dialogues, read_prompts_file
from .loss import label_nll
from .metrics import DialoguePerplexity, perplexity_from_sums, quality_measures
from .run_dir import ADAPTER_CONFIG, BASE_MODEL_DIR, CHECKPOINT_PREFIX, EVALUATION, RunDir, weights_file
from .tracking import log_evaluation_to_wandb, read_wandb_record

@dataclass
class LoadedModel:
    """A model ready for evaluation, with what it is and which training run it came from."""

    model: Any
    tokenizer: Any
    kind: str  # "full", "lora", "checkpoint-full", "checkpoint-lora" or "base"
    path: str
    base_model: str | None
    run_dir: RunDir | None  # the training run it came from, if any
    weights_sha256: str | None


def _lora_base(adapter_dir: Path, base_model: str | None, run: RunDir | None) -> str:
    """Where the base of an adapter is: --base_model, the run's saved random base, the run's
    model_name_or_path, or what the adapter config recorded."""
    if base_model:
        return base_model
    if run is not None and run.base_model.is_dir():
        return str(run.base_model)
    run_config = run.read_config() if run else {}
    if run_config.get("model_name_or_path") and not run_config.get("random_init"):
        return run_config["model_name_or_path"]
    recorded = json.loads((adapter_dir / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if recorded:
        return recorded
    raise ConfigError(f"cannot tell the base model of the adapter in {adapter_dir}; pass --base_model")


def load_model_for_evaluation(model_path: str, base_model: str | None = None, dtype: str = "float32") -> LoadedModel:
    """Load a full model, a LoRA adapter (on its base) or a checkpoint, in eval mode, on the best device."""
    from transformers import AutoModelForCausalLM

    from .modeling import align_generation_config, get_tokenizer, resolve_pretrained

    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    path = Path(model_path)
    run_dir = RunDir.containing(model_path)
    checkpoint = path.name.startswith(CHECKPOINT_PREFIX)
    if path.is_dir() and (path / ADAPTER_CONFIG).is_file():
        from peft import PeftModel

        base = _lora_base(path, base_model, run_dir)
        source, local_only = resolve_pretrained(base, "base model", option="--base_model")
        model = AutoModelForCausalLM.from_pretrained(source, local_files_only=local_only, dtype=torch_dtype)
        model = PeftModel.from_pretrained(model, str(path))
        kind, tokenizer_source = ("checkpoint-lora" if checkpoint else "lora"), str(path)
    else:
        source, local_only = resolve_pretrained(model_path, "model", option="--model_path")
        model = AutoModelForCausalLM.from_pretrained(source, local_files_only=local_only, dtype=torch_dtype)
        base = None
        kind = "checkpoint-full" if checkpoint else "base" if (run_dir is None or path.name == BASE_MODEL_DIR) else "full"
        tokenizer_source = model_path
    tokenizer = get_tokenizer(ModelArguments(model_name_or_path=tokenizer_source))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    align_generation_config(model.get_base_model() if base else model, tokenizer)
    weights = weights_file(path) if path.is_dir() else None
    return LoadedModel(model, tokenizer, kind, model_path, base, run_dir, file_sha256(weights))


def evaluation_data_args(run_config: dict[str, Any] | None, data_config: str | None) -> DataArguments:
    """The data options of the run being evaluated (or of --data_config), so the split is the same."""
    options: dict[str, Any] = {}
    if data_config:
        options = yaml.safe_load(Path(data_config).read_text(encoding="utf-8")) or {}
    elif run_config:
        options = run_config
    names = {f.name for f in dataclasses.fields(DataArguments) if f.init}
    return DataArguments(**{k: v for k, v in options.items() if k in names})


def evaluation_dialogues(eval_args, data_args: DataArguments) -> tuple[list[Dialogue], dict[str, Any]]:
    """The dialogues to evaluate on, and a description of where they came from."""
    if eval_args.data_path:
        dialogues = read_dialogues(eval_args.data_path, data_args).dialogues
        described = {"source": f"all dialogues of {eval_args.data_path}", "data_path": eval_args.data_path,
                     "data_sha256": file_sha256(eval_args.data_path)}
    else:
        splits = load_dialogue_splits(data_args)
        dialogues = splits.validation if eval_args.split == "validation" else splits.train
        if not dialogues:
            raise ConfigError(
                f"the run has no {eval_args.split} dialogues (validation_split_ratio 0?); pass --data_path FILE"
            )
        where = data_args.validation_path if data_args.validation_path and eval_args.split == "validation" else None
        described = {
            "source": f"{eval_args.split} split of {where or data_args.data_path}"
            + ("" if where else f" (validation_split_ratio {data_args.validation_split_ratio}, "
                                f"split_seed {data_args.split_seed})"),
            "data_path": where or data_args.data_path,
            "data_sha256": file_sha256(where or data_args.data_path),
        }
    if eval_args.max_eval_dialogues:
        dialogues = dialogues[: eval_args.max_eval_dialogues]
    described["num_dialogues"] = len(dialogues)
    return dialogues, described


@dataclass
class _Sums:
    nll: float = 0.0
    tokens: int = 0

    def add(self, nll: float, tokens: int) -> None:
        self.nll += nll
        self.tokens += tokens


def _evaluation_sequences(dialogues, tokenizer, data_args: DataArguments, stride: int | None):
    """(input_ids, labels, target speakers) per sequence; every token of every turn carries a label.

    Without stride: the training windows. With stride: one sliding window of max_length tokens per
    `stride`, labels only on tokens not predicted by an earlier window.
    """
    all_tokens = dataclasses.replace(data_args, train_on_speakers=None)
    if stride is None:
        examples = tokenize_dialogues(dialogues, tokenizer, all_tokens, "evaluation", with_token_turns=True)
        for ids, labels, turns, speakers in zip(
            examples["input_ids"], examples["labels"], examples["token_turns"], examples["speakers"]
        ):
            yield ids, labels, [speakers[t] if t >= 0 else None for t in turns]
        return
    if stride >= data_args.max_length:
        raise ConfigError(f"stride {stride} must be smaller than max_length {data_args.max_length} (windows overlap)")
    whole = dataclasses.replace(all_tokens, max_length=10**9, overflow_strategy="truncate")
    examples = tokenize_dialogues(dialogues, tokenizer, whole, "evaluation-whole", with_token_turns=True)
    for ids, labels, turns, speakers in zip(
        examples["input_ids"], examples["labels"], examples["token_turns"], examples["speakers"]
    ):
        owners = [speakers[t] if t >= 0 else None for t in turns]
        predicted_up_to = 1  # position 0 is never predicted
        for begin in range(0, len(ids), stride):
            end = min(begin + data_args.max_length, len(ids))
            window_labels = [
                label if position >= predicted_up_to else IGNORE_INDEX
                for position, label in zip(range(begin, end), labels[begin:end])
            ]
            yield ids[begin:end], window_labels, owners[begin:end]
            predicted_up_to = end
            if end == len(ids):
                break


def perplexity_by_speaker(model, tokenizer, dialogues, data_args: DataArguments, batch_size: int = 8,
                          stride: int | None = None) -> dict[str, Any]:
    """Exact perplexity over every predicted token, and per speaker (tokens of that speaker's turns)."""
    from tqdm.auto import tqdm

    collator = DialogueCollator(tokenizer.pad_token_id, padding="longest")
    device = next(model.parameters()).device
    metric = DialoguePerplexity()
    per_speaker: dict[str, _Sums] = {}
    sequences = list(_evaluation_sequences(dialogues, tokenizer, data_args, stride))
    for start in tqdm(range(0, len(sequences), batch_size), desc="Perplexity", unit="batch"):
        chunk = sequences[start : start + batch_size]
        batch = collator([{"input_ids": ids, "labels": labels} for ids, labels, _ in chunk])
        labels = batch["labels"].to(device)
        token_nll = label_nll(model, batch["input_ids"].to(device), batch["attention_mask"].to(device), labels)
        counts = (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)
        metric.add_batch(nll_sum=token_nll.sum(dim=1).tolist(), num_tokens=counts.tolist())
        for row, (_, row_labels, owners) in enumerate(chunk):
            row_nll = token_nll[row].tolist()
            for position in range(1, len(row_labels)):
                if row_labels[position] == IGNORE_INDEX or owners[position] is None:
                    continue
                per_speaker.setdefault(owners[position], _Sums()).add(row_nll[position - 1], 1)
    overall = metric.compute()
    return overall | {
        "per_speaker": {name: perplexity_from_sums(s.nll, s.tokens) for name, s in sorted(per_speaker.items())}
    }


def default_output_file(model_path: str) -> Path:
    path = Path(model_path)
    if path.is_dir():
        return path / EVALUATION
    return Path(f"evaluation-{model_path.replace('/', '--')}.json")


def evaluate_model(eval_args, gen_args: GenerationArguments) -> dict[str, Any]:
    """Perplexity on the run's validation split (or a file), samples, quality measures: the content of evaluation.json."""
    started = time.time()
    loaded = load_model_for_evaluation(eval_args.model_path, eval_args.base_model, eval_args.dtype)
    run_config = loaded.run_dir.read_config() if loaded.run_dir and not eval_args.data_config else None
    data_args = evaluation_data_args(run_config, eval_args.data_config)
    dialogues, data_description = evaluation_dialogues(eval_args, data_args)
    data_description["windowing"] = (
        f"sliding window of {data_args.max_length} tokens, stride {eval_args.stride}: every token but a "
        "dialogue's first is predicted once"
        if eval_args.stride
        else f"the training windows: dialogues longer than {data_args.max_length} tokens "
        f"{'split at turn boundaries' if data_args.overflow_strategy == 'split' else 'truncated'}; "
        "the first token of each window is not predicted"
    )
    perplexity = perplexity_by_speaker(
        loaded.model, loaded.tokenizer, dialogues, data_args, eval_args.batch_size, eval_args.stride
    )

    if eval_args.prompts:
        prompts = read_prompts_file(eval_args.prompts)
        prompts_source = eval_args.prompts
    else:
        prompts = prompts_from_dialogues(
            dialogues, data_args, loaded.tokenizer, eval_args.num_samples, eval_args.context_turns
        )
        prompts_source = f"first {eval_args.context_turns} turn(s) of {len(prompts)} evaluation dialogues"
    replies = generate_replies(
        loaded.model, loaded.tokenizer, [p.prompt for p in prompts], gen_args, data_args.turn_separator,
        eval_args.batch_size, add_special_tokens=not data_args.use_chat_template,
    )
    samples = [
        {"prompt": p.prompt, "reply": r.text, "reference": p.reference, "speaker": p.speaker, "ended_by": r.ended_by,
         "new_tokens": r.new_tokens}
        for p, group in zip(prompts, replies)
        for r in group
    ]
    return {
        "model": {
            "path": eval_args.model_path,
            "kind": loaded.kind,
            "base_model": loaded.base_model,
            "run_dir": str(loaded.run_dir) if loaded.run_dir else None,
            "weights_sha256": loaded.weights_sha256,
            "run_config": run_config,
        },
        "data": data_description,
        "perplexity": perplexity,
        "generation": dataclasses.asdict(gen_args) | {"prompts_source": prompts_source, "num_prompts": len(prompts),
                                                      "turn_separator": data_args.turn_separator},
        "quality": quality_measures(samples),
        "samples": samples,
        "seed": gen_args.generation_seed,
        "runtime_seconds": round(time.time() - started, 2),
    }


def format_results(results: dict[str, Any], max_samples: int = 5) -> str:
    """The terminal table: figures first, then a few samples."""
    p, q = results["perplexity"], results["quality"]
    rows = [
        ("model", f"{results['model']['path']} ({results['model']['kind']})"),
        ("data", f"{results['data']['source']}, {results['data']['num_dialogues']} dialogues"),
        ("perplexity", f"{p['perplexity']:.3f}"),
        ("loss", f"{p['token_loss']:.4f} nats/token, {p['bits_per_token']:.4f} bits/token, {p['num_tokens']:,} tokens"),
    ]
    for speaker, figures in p["per_speaker"].items():
        rows.append((f"  {speaker}", f"perplexity {figures['perplexity']:.3f} over {figures['num_tokens']:,} tokens"))
    rows += [
        ("replies", f"{q['num_replies']} ({q['ended_by']})"),
        ("distinct-1 / -2", f"{q['distinct_1']:.3f} / {q['distinct_2']:.3f}"),
        ("exact repeats", f"{q['repeat_share']:.1%}"),
        ("clean ends", f"{q['clean_end_share']:.1%} (EOS or end of turn within {results['generation']['max_new_tokens']} tokens)"),
        ("token F1", "n/a (no references)" if q["token_f1"] is None else f"{q['token_f1']:.3f} over {q['num_with_reference']} replies"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
    for sample in results["samples"][:max_samples]:
        lines.append("-" * 60)
        lines.append(sample["prompt"].rstrip() + " >> " + (sample["reply"] or "(empty)") + f"   [{sample['ended_by']}]")
        if sample.get("reference"):
            lines.append(f"   reference: {sample['reference']}")
    return "\n".join(lines)


def wandb_metrics(results: dict[str, Any]) -> dict[str, float]:
    """Flat figures for W&B, named like the training run's eval metrics."""
    p, q = results["perplexity"], results["quality"]
    metrics = {f"eval/{key}": p[key] for key in ("perplexity", "token_loss", "bits_per_token", "num_tokens")}
    for speaker, figures in p["per_speaker"].items():
        metrics[f"eval/perplexity_{speaker}"] = figures["perplexity"]
    for key in ("distinct_1", "distinct_2", "repeat_share", "clean_end_share", "mean_reply_words"):
        metrics[f"eval/{key}"] = q[key]
    if q["token_f1"] is not None:
        metrics["eval/token_f1"] = q["token_f1"]
    return metrics


def log_results_to_wandb(eval_args, results: dict[str, Any]) -> None:
    """--wandb auto: only into the training run's W&B run, when it had one; new: into a new W&B run."""
    run_dir = results["model"]["run_dir"] or eval_args.model_path
    if eval_args.wandb == "auto" and read_wandb_record(run_dir) is None:
        return
    log_evaluation_to_wandb(run_dir, wandb_metrics(results), results["samples"], new_run=eval_args.wandb == "new")
