"""Evaluating a trained (or base) model: the data it is evaluated on, its perplexity, sampled replies and their
quality, and how the figures differ from the training run's own evaluation; what scripts/evaluate.py writes and
prints, and logs to W&B.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from ..common.files import file_sha256
from ..common.run_dir import EVALUATION, RunDir, read_json_file, recorded_data_files
from ..config import ConfigError, DataArguments, GenerationArguments, run_data_arguments, run_model_arguments
from ..data import Dialogue, load_dialogue_splits, read_dialogues
from ..models.generation import prompts_from_dialogues, read_prompts_file, reply_samples
from ..models.loading import check_max_length
from ..models.trained import LoadedModel, load_model_for_evaluation
from ..tracking import POSTHOC_EVAL_PREFIX, log_evaluation_to_wandb, read_wandb_record, refresh_model_cards
from .metrics import quality_measures
from .perplexity import perplexity_by_speaker


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
        options_from = eval_args.data_config or "the run's run_config.yaml (evaluate another file with --data_path)"
        splits = load_dialogue_splits(data_args, options_from)
        dialogues = splits.validation if eval_args.split == "validation" else splits.train
        if not dialogues:
            raise ConfigError(
                f"the run has no {eval_args.split} dialogues (validation_split_ratio 0?); pass --data_path FILE"
            )
        where = data_args.validation_path if data_args.validation_path and eval_args.split == "validation" else None
        described = {
            "source": f"{eval_args.split} split of {where or data_args.data_paths_text}"
            + ("" if where else f" (validation_split_ratio {data_args.validation_split_ratio}, "
                                f"split_seed {data_args.split_seed})"),
            "data_path": where or data_args.data_paths_text,
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
    """The run's split is rebuilt from its data files: an edited file gives another split under the same name.
    Compared with the SHA-256 that environment.json recorded at training time, file by file."""
    own_validation = eval_args.split == "validation" and data_args.validation_path
    option = "validation_path" if own_validation else "data_path"
    paths = [data_args.validation_path] if own_validation else [source.path for source in data_args.sources]
    recorded = {entry["path"]: entry["sha256"]
                for entry in recorded_data_files(environment.get("data") or {}) if entry["option"] == option}
    reasons = []
    for path in paths:
        now = file_sha256(path)
        if now is None:  # a datasets folder or a Hub dataset: no file to hash (cached by fingerprint instead)
            continue
        if not recorded.get(path):
            reasons.append(f"{path} cannot be checked against the file the run trained on ({run.environment.name} "
                           "records no SHA-256 of it)")
        elif recorded[path] != now:
            reasons.append(f"{path} has changed since training (SHA-256 {recorded[path][:12]} then, {now[:12]} now), "
                           f"so its {eval_args.split} split is not the one the run evaluated")
    return reasons


def default_output_file(model_path: str) -> Path:
    """MODEL_PATH/evaluation.json for a run of this recipe or a folder inside one (a checkpoint): the model card reads
    it there. Anything else (a base model's folder, a GGUF file, a Hub id) is not ours to write into:
    ./evaluation-NAME.json, NAME the folder's name, the file's name without .gguf, or the Hub id with -- for /."""
    path = Path(model_path)
    if path.is_dir() and RunDir.containing(path) is not None:
        return path / EVALUATION
    if path.is_dir():
        name = path.resolve().name
    elif path.is_file():  # a .gguf: its stem, not its path (whose / would become -- and its folders part of the name)
        name = path.stem
    else:
        name = model_path.replace("/", "--")
    return Path(f"evaluation-{name}.json")


def describe_output_file(model_path: str, output_file: str | os.PathLike) -> str:
    """Where the results went, for the line the script prints: a base model's results are not in its folder."""
    if RunDir.containing(model_path) is None and Path(output_file).parent == Path("."):
        return f"{output_file} (in the current directory: {model_path} is not a run of this recipe; --output_file " \
               "chooses another file)"
    return str(output_file)


def refresh_run_card(model_path: str, output_file: str | os.PathLike) -> list[Path]:
    """Write the run's model card again, with this evaluation's figures in its model-index, when the run's
    final model was evaluated into the run's own evaluation.json (the file the card reads)."""
    run = RunDir(model_path)
    if not run.is_finished() or Path(output_file).resolve() != run.evaluation.resolve():
        return []
    return refresh_model_cards(run)


def evaluate_model(eval_args, gen_args: GenerationArguments) -> dict[str, Any]:
    """Perplexity on the run's validation split (or a file), samples, quality measures: the content of
    evaluation.json."""
    started = time.time()
    loaded = load_model_for_evaluation(eval_args.model_path, eval_args.base_model, eval_args.dtype)
    run_config = loaded.run_dir.read_config() if loaded.run_dir and not eval_args.data_config else None
    data_args = run_data_arguments(run_config, eval_args.data_config)
    where = eval_args.data_config or "the run_config.yaml it comes from"
    check_max_length(loaded.model, data_args.max_length, f"set max_length: {{limit}} or less in {where}")
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
    for source, figures in (p.get("per_source") or {}).items():
        rows.append((f"  {source}", f"perplexity {figures['perplexity']:.3f} over {figures['num_tokens']:,} tokens"))
    differences = results.get("differs_from_training_eval")
    if differences is not None:
        rows.append(("vs training eval", "; ".join(differences) if differences else "same quantity as eval_token_loss"))
    rows += [
        ("replies", f"{q['num_replies']} ({q['ended_by']})"),
        ("distinct-1 / -2", f"{q['distinct_1']:.3f} / {q['distinct_2']:.3f}"),
        ("exact repeats", f"{q['repeat_share']:.1%}"),
        ("clean ends", f"{q['clean_end_share']:.1%} (EOS or end of turn within "
                       f"{results['generation']['max_new_tokens']} tokens)"),
        ("token F1", "n/a (no references)" if q["token_f1"] is None
         else f"{q['token_f1']:.3f} over {q['num_with_reference']} replies"),
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
    for source, figures in (p.get("per_source") or {}).items():
        metrics[f"{prefix}/perplexity_source_{source}"] = figures["perplexity"]
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
