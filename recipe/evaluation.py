"""Evaluation of a trained (or base) model: loading it the way it was trained, exact perplexity overall
and per speaker, sampled replies and their quality; what scripts/evaluate.py writes and prints.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, DataArguments, GenerationArguments, ModelArguments, load_recipe_yaml
from .data import IGNORE_INDEX, Dialogue, DialogueCollator, load_dialogue_splits, read_dialogues, tokenize_dialogues
from .files import file_sha256
from .generation import prompts_from_dialogues, read_prompts_file, reply_samples
from .hub import is_hub_id
from .loss import label_nll
from .metrics import DialoguePerplexity, perplexity_from_sums, quality_measures
from .quantization import describe as describe_quantization
from .run_dir import (
    ADAPTER_CONFIG,
    BASE_MODEL_DIR,
    CHECKPOINT_PREFIX,
    EVALUATION,
    FSDP_SHARDED_MODEL,
    RunDir,
    read_json_file,
    sharded_weights,
    weights_file,
)
from .tracking import POSTHOC_EVAL_PREFIX, log_evaluation_to_wandb, read_wandb_record, refresh_model_cards


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
    dtype: str  # of the loaded weights (the run's, unless --dtype said otherwise)
    quantization: str | None = None  # "4-bit nf4, ..." for a base loaded in k bits, as it trained


def _lora_base(adapter_dir: Path, base_model: str | None, run: RunDir | None) -> str:
    """Where the base of an adapter is: --base_model; the random base saved in the run (found wherever the
    run directory is now); else the base the adapter config names or the run's model_name_or_path, a
    folder that exists first (the adapter config names it by absolute path), then a Hub id."""
    if base_model:
        return base_model
    if run is not None and run.base_model.is_dir():
        return str(run.base_model)
    recorded = (read_json_file(adapter_dir / ADAPTER_CONFIG) or {}).get("base_model_name_or_path")
    run_config = run.read_config() if run else {}
    configured = None if run_config.get("random_init") else run_config.get("model_name_or_path")
    candidates = [name for name in (recorded, configured) if name]
    local = [name for name in candidates if os.path.isdir(name) or name.lower().endswith(".gguf") and os.path.isfile(name)]
    found = local + [name for name in candidates if is_hub_id(name)]
    if found:
        return found[0]
    raise ConfigError(f"cannot find the base model of the adapter in {adapter_dir} (its {ADAPTER_CONFIG} names "
                      f"{recorded!r}); pass --base_model")


def _options_from(options_class, config: dict[str, Any]):
    """`options_class` built from the entries of a run_config.yaml (or recipe) that are its fields."""
    names = {f.name for f in dataclasses.fields(options_class) if f.init}
    return options_class(**{k: v for k, v in config.items() if k in names})


def run_model_arguments(run: RunDir | None) -> ModelArguments:
    """The model options a run trained with (defaults for a model no run of this recipe wrote)."""
    return _options_from(ModelArguments, run.read_config() if run else {})


def _loading_arguments(trained: ModelArguments, source: str, dtype: str | None) -> ModelArguments:
    """Load `source` as its run loaded its model (trust_remote_code, attn_implementation, dtype, a 4-bit or
    8-bit base, and the revision when it is the run's own base), through the same `get_model`; `dtype`
    overrides the run's, and loads a k-bit base at full precision in that dtype instead."""
    from .quantization import full_precision

    same_source = source == trained.model_name_or_path
    trained = full_precision(trained) if dtype else trained
    return dataclasses.replace(
        trained, model_name_or_path=source, tokenizer_name_or_path=None, random_init=False,
        model_revision=trained.model_revision if same_source else "main", dtype=dtype or trained.dtype,
        gguf_file=trained.gguf_file if same_source else None,
    )


def refuse_sharded_checkpoint(path: Path) -> None:
    """A checkpoint of an FSDP or DeepSpeed run holds one shard per process, which no single loader reads: say how
    to make it whole (the run's final model is whole already)."""
    if not path.is_dir() or weights_file(path) is not None:
        return
    kind = sharded_weights(path)
    if kind == "fsdp":
        merge = f"accelerate merge-weights {path / FSDP_SHARDED_MODEL} OUT_DIR"
    elif kind == "deepspeed":
        merge = f"python {path / 'zero_to_fp32.py'} {path} OUT_DIR --safe_serialization"
    else:
        return
    raise ConfigError(f"{path} holds {kind} shards, one per process, not a model: evaluate the run's final model "
                      f"({path.parent}), or merge the shards with `{merge}` and copy config.json and the tokenizer "
                      "beside them")


def load_model_for_evaluation(model_path: str, base_model: str | None = None, dtype: str | None = None) -> LoadedModel:
    """Load a full model, a LoRA adapter (on its base) or a checkpoint, in eval mode, on the best device.

    The model (or an adapter's base) is loaded the way its run trained it: the run's revision,
    trust_remote_code, attn_implementation and dtype, through `modeling.get_model`.
    """
    from .modeling import get_model, get_tokenizer, resolve_pretrained

    path = Path(model_path)
    refuse_sharded_checkpoint(path)
    run_dir = RunDir.containing(model_path)
    trained = run_model_arguments(run_dir)
    checkpoint = path.name.startswith(CHECKPOINT_PREFIX)
    if path.is_dir() and (path / ADAPTER_CONFIG).is_file():
        from peft import PeftModel

        base = _lora_base(path, base_model, run_dir)
        model_args = _loading_arguments(trained, base, dtype)
        resolve_pretrained(base, "base model", model_args.model_revision, option="--base_model")  # fails fast
        tokenizer = get_tokenizer(_loading_arguments(trained, str(path), dtype))
        model = PeftModel.from_pretrained(get_model(model_args, tokenizer), str(path))
        kind = "checkpoint-lora" if checkpoint else "lora"
    else:
        model_args = _loading_arguments(trained, model_path, dtype)
        resolve_pretrained(model_path, "model", model_args.model_revision, option="--model_path")  # fails fast
        tokenizer = get_tokenizer(model_args)
        model = get_model(model_args, tokenizer)
        base = None
        kind = "checkpoint-full" if checkpoint else "base" if (run_dir is None or path.name == BASE_MODEL_DIR) else "full"
    if model_args.quantized:  # placed on its device as it was quantized; it cannot move
        model.eval()
    else:
        model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu")).eval()
    weights = weights_file(path) if path.is_dir() else path if path.is_file() else None  # a GGUF file is its weights
    quantization = describe_quantization(dataclasses.asdict(model_args))
    return LoadedModel(model, tokenizer, kind, model_path, base, run_dir, file_sha256(weights), model_args.dtype,
                       quantization)


def evaluation_data_args(run_config: dict[str, Any] | None, data_config: str | None) -> DataArguments:
    """The data options of the run being evaluated (or of --data_config), so the split is the same."""
    options = load_recipe_yaml(data_config) if data_config else run_config or {}  # a missing or bad file is named
    return _options_from(DataArguments, options)


def evaluation_dialogues(eval_args, data_args: DataArguments) -> tuple[list[Dialogue], dict[str, Any]]:
    """The dialogues to evaluate on, and where they came from: path, split, SHA-256, count, and whether the
    run's train_on_speakers is ignored (perplexity counts every speaker's tokens)."""
    if eval_args.data_path:
        dialogues = read_dialogues(eval_args.data_path, data_args).dialogues
        # A dataset folder or Hub dataset gives its train split; a file, every dialogue.
        split = "all" if os.path.isfile(eval_args.data_path) else data_args.dataset_train_split
        what = "all dialogues" if split == "all" else f"the {split} split"
        described = {"source": f"{what} of {eval_args.data_path}", "data_path": eval_args.data_path, "split": split}
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
            "split": eval_args.split,
        }
    if eval_args.max_eval_dialogues:
        dialogues = dialogues[: eval_args.max_eval_dialogues]
    described.update(
        data_sha256=file_sha256(described["data_path"]),
        num_dialogues=len(dialogues),
        train_on_speakers=data_args.train_on_speakers,
        train_on_speakers_ignored=bool(data_args.train_on_speakers),
    )
    return dialogues, described


def differences_from_training_eval(eval_args, data_args: DataArguments, loaded: LoadedModel) -> list[str] | None:
    """Why this evaluation's token loss is not the quantity the run's Trainer logged as eval/token_loss
    (an empty list: it is); None for a model no run of this recipe trained."""
    run = loaded.run_dir
    if run is None:
        return None
    reasons = []
    if eval_args.data_config:
        reasons.append(f"the data and split of --data_config {eval_args.data_config}")
    if eval_args.data_path:
        reasons.append(f"--data_path {eval_args.data_path} instead of the run's validation split")
    elif eval_args.split != "validation":
        reasons.append(f"the {eval_args.split} split instead of the validation split")
    if eval_args.max_eval_dialogues:
        reasons.append(f"the first {eval_args.max_eval_dialogues} dialogues only")
    if data_args.train_on_speakers:
        reasons.append(f"every speaker's tokens, where training counted only those of {data_args.train_on_speakers}")
    if eval_args.stride:
        reasons.append(f"a sliding window (stride {eval_args.stride}) instead of the training windows")
    environment = read_json_file(run.environment) or {}
    if not eval_args.data_path and not eval_args.data_config:
        reasons += _data_file_changes(environment, eval_args, data_args, run)
    used = environment.get("resolved_options") or environment.get("device") or {}
    autocast = "bf16" if used.get("bf16") else "fp16" if used.get("fp16") else None
    trained_dtype = run_model_arguments(run).dtype
    if autocast or loaded.dtype != trained_dtype:
        reasons.append(f"{loaded.dtype} weights without autocast; training evaluated {trained_dtype} weights"
                       + (f" under {autocast} autocast" if autocast else ""))
    return reasons


def _data_file_changes(environment: dict[str, Any], eval_args, data_args: DataArguments, run) -> list[str]:
    """The run's split is rebuilt from its data file: an edited file gives another split under the same name.
    Compared with the SHA-256 that environment.json recorded at training time."""
    own_validation = eval_args.split == "validation" and data_args.validation_path
    option, key = ("validation_path", "validation_sha256") if own_validation else ("data_path", "data_sha256")
    path = getattr(data_args, option)
    now = file_sha256(path)
    if now is None:  # a datasets folder or a Hub dataset: no file to hash (cached by fingerprint instead)
        return []
    recorded = environment.get("data") or {}
    if key not in recorded:
        return [f"{path} cannot be checked against the file the run trained on ({run.environment.name} records "
                "no SHA-256 of it)"]
    if recorded[key] != now:
        return [f"{path} has changed since training (SHA-256 {str(recorded[key])[:12]} then, {now[:12]} now), so "
                f"its {eval_args.split} split is not the one the run evaluated"]
    return []


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


def refresh_run_card(model_path: str, output_file: str | os.PathLike) -> list[Path]:
    """Write the run's model card again, with this evaluation's figures in its model-index, when the run's
    final model was evaluated into the run's own evaluation.json (the file the card reads)."""
    run = RunDir(model_path)
    if not run.is_finished() or Path(output_file).resolve() != run.evaluation.resolve():
        return []
    return refresh_model_cards(run.path)


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
    differences = differences_from_training_eval(eval_args, data_args, loaded)

    if eval_args.prompts:
        prompts = read_prompts_file(eval_args.prompts)
        prompts_source = eval_args.prompts
    else:
        prompts = prompts_from_dialogues(
            dialogues, data_args, loaded.tokenizer, eval_args.num_samples, eval_args.context_turns
        )
        prompts_source = f"first {eval_args.context_turns} turn(s) of {len(prompts)} evaluation dialogues"
    samples = reply_samples(loaded.model, loaded.tokenizer, prompts, data_args, gen_args, eval_args.batch_size)
    return {
        "model": {
            "path": eval_args.model_path,
            "kind": loaded.kind,
            "base_model": loaded.base_model,
            "run_dir": str(loaded.run_dir) if loaded.run_dir else None,
            "weights_sha256": loaded.weights_sha256,
            "dtype": loaded.dtype,
            "quantization": loaded.quantization,
            "run_config": run_config,
        },
        "data": data_description,
        "differs_from_training_eval": differences,
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
    differences = results.get("differs_from_training_eval")
    if differences is not None:
        rows.append(("vs training eval", "; ".join(differences) if differences else "same quantity as eval_token_loss"))
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
    """Flat figures for W&B under posthoc_eval/, apart from the Trainer's eval/ figures: see
    `differs_from_training_eval` for why the two may measure different quantities."""
    p, q = results["perplexity"], results["quality"]
    prefix = POSTHOC_EVAL_PREFIX
    metrics = {f"{prefix}/{key}": p[key] for key in ("perplexity", "token_loss", "bits_per_token", "num_tokens")}
    for speaker, figures in p["per_speaker"].items():
        metrics[f"{prefix}/perplexity_{speaker}"] = figures["perplexity"]
    for key in ("distinct_1", "distinct_2", "repeat_share", "clean_end_share", "mean_reply_words"):
        metrics[f"{prefix}/{key}"] = q[key]
    if q["token_f1"] is not None:
        metrics[f"{prefix}/token_f1"] = q["token_f1"]
    return metrics


def wandb_source(results: dict[str, Any]) -> dict[str, Any]:
    """What the logged figures measure: the model, the data (path, split, SHA-256, dialogues, whether
    train_on_speakers was ignored) and how they differ from the training run's eval/ figures."""
    model = results["model"]
    return {
        "model_path": model["path"], "kind": model["kind"], "dtype": model["dtype"],
        "weights_sha256": model["weights_sha256"], **results["data"],
        "differs_from_training_eval": results["differs_from_training_eval"],
    }


def log_results_to_wandb(eval_args, results: dict[str, Any]) -> str | None:
    """--wandb auto: only into the training run's W&B run, when it had one; new: into a new W&B run.
    Returns the local W&B run directory written, if any."""
    run_dir = results["model"]["run_dir"] or eval_args.model_path
    if eval_args.wandb == "auto" and read_wandb_record(run_dir) is None:
        return None
    return log_evaluation_to_wandb(run_dir, wandb_metrics(results), results["samples"],
                                   new_run=eval_args.wandb == "new", source=wandb_source(results))
