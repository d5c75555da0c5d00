"""A resume is the same run only with the same recipe: checked before any work, and recorded.

Resuming continues the interrupted run's weights, optimizer, schedule and data order. With another
model, data file, max_length, LoRA setting or learning rate it would crash mid-resume, or carry on the
old weights while run_config.yaml described the new recipe. So a resume whose options differ is
refused, naming each option, unless the option cannot change the weights a step computes (logging, W&B
and Hub names, workers, where caches go) or raises the length of the run (`num_train_epochs`,
`max_steps`: extending it). The data files are compared by their SHA-256 in the run's environment.json.
What did differ is appended to OUTPUT_DIR/resumes.json, one entry per resume, so a reader of the run
directory knows the run was not one straight recipe.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ..common.files import atomic_write_json, file_sha256
from ..common.run_dir import RunDir, read_json_file, recorded_data_files
from ..config import resolved_config
from ..config.data_sources import comparable_option
from .environment import data_record
from .output_dir import OutputDirError, decided_by_main

logger = logging.getLogger(__name__)

# Options that change what is logged or published, or how fast data arrives, never the weights a step computes.
FREE_ON_RESUME = frozenset({
    "logging_strategy", "logging_steps", "logging_first_step", "log_on_each_node", "logging_nan_inf_filter",
    "include_num_input_tokens_seen", "log_level", "log_level_replica", "disable_tqdm", "skip_memory_metrics",
    "report_to", "run_name", "project", "trackio_space_id", "trackio_bucket_id", "trackio_static_space_id",
    "wandb_project", "wandb_entity", "wandb_group", "wandb_tags",
    # replies logged at each evaluation: generated with the random state restored, so no step changes
    "eval_samples", "eval_sample_max_new_tokens", "eval_sample_context_turns",
    "push_to_hub", "hub_private_repo", "hub_model_id", "hub_strategy", "hub_always_push", "hub_revision",
    "hub_merged_model_id",
    "output_dir", "overwrite_output_dir", "save_total_limit", "dataset_cache_dir", "preprocessing_num_workers",
    "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers", "dataloader_prefetch_factor",
    "stop_after_steps",  # where the run ends, not what a step computes
})
EXTENDS_THE_RUN = ("num_train_epochs", "max_steps")  # may be raised: the run goes on for longer
MACHINE_DECIDES = ("bf16", "fp16", "use_cpu")  # settled per machine when asked as automatic (environment.json)


def check_resume(run: RunDir, resume: Path | None, configs: tuple, state) -> dict[str, Any] | None:
    """Refuse (OutputDirError, on every process) a resume whose options differ where they change the result;
    return what may differ and did (None when not resuming), for `record_resume`."""
    if resume is None:
        return None
    return decided_by_main(lambda: _compare(run, resume, configs), state)


def _compare(run: RunDir, resume: Path, configs: tuple) -> dict[str, Any]:
    origin = RunDir.containing(resume) or run
    previous = origin.read_config()
    if not previous:
        logger.warning("resuming from %s: no run_config.yaml beside it, so its options cannot be compared with these",
                       resume)
        return {"checkpoint": str(resume), "compared": False, "changed": {}, "machine_changed": {}}
    current = resolved_config(*configs)
    changed = {key: [previous[key], current.get(key)] for key in sorted(previous)
               if key in current and comparable_option(key, previous[key]) != comparable_option(key, current[key])}
    refused = {key: change for key, change in changed.items() if not _may_differ(key, *change)}
    refused.update(_data_changes(origin, configs[1]))
    if refused:
        raise OutputDirError(_refusal(run, resume, refused))
    if changed:
        logger.warning("resuming %s with options that cannot change its steps, or that extend it: %s", resume,
                       _describe(changed))
    machine = _machine_changes(origin, configs[3])
    if machine:
        logger.warning("resuming %s on a machine that decides differently: %s (the steps from here differ from "
                       "an uninterrupted run's)", resume, _describe(machine))
    return {"checkpoint": str(resume), "compared": True, "changed": changed, "machine_changed": machine}


def _machine_changes(origin: RunDir, training_args) -> dict[str, list[Any]]:
    """What the machine settled differently from the interrupted run: automatic precision, processes. Not
    options (run_config.yaml keeps them as asked), so recorded rather than refused: a preempted job often
    comes back on another node."""
    environment = read_json_file(origin.environment) or {}
    resolved = environment.get("resolved_options") or {}
    before = {key: resolved.get(key) for key in MACHINE_DECIDES}
    before["world_size"] = (environment.get("device") or {}).get("world_size")
    now = {**training_args.resolved_options(), "world_size": training_args.world_size}
    return {key: [before[key], now.get(key)] for key in before
            if before[key] is not None and before[key] != now.get(key)}


def _may_differ(key: str, before: Any, after: Any) -> bool:
    if key in FREE_ON_RESUME:
        return True
    if key in EXTENDS_THE_RUN:
        return isinstance(before, (int, float)) and isinstance(after, (int, float)) and after >= before
    return False


def _data_changes(origin: RunDir, data_args) -> dict[str, list[Any]]:
    """Data files whose bytes differ from the ones the run recorded (same path, edited file)."""
    recorded = (read_json_file(origin.environment) or {}).get("data")
    if recorded is None:
        logger.warning("resuming: %s records no data SHA-256, so the data files cannot be compared", origin.environment)
        return {}
    changes = {}
    current = {(entry["option"], entry["path"]) for entry in data_record(data_args)["files"]}
    for entry in recorded_data_files(recorded):
        option, path = entry["option"], entry["path"]
        now = file_sha256(path)
        if (option, path) in current and entry["sha256"] != now:
            changes[f"{option} {path} (its content, SHA-256)"] = [_short(entry["sha256"]), _short(now)]
    return changes


def _short(digest: str | None) -> str | None:
    return digest[:12] if digest else digest


def _describe(changes: dict[str, list[Any]]) -> str:
    return "; ".join(f"{key} {before!r} -> {after!r}" for key, (before, after) in changes.items())


def _refusal(run: RunDir, resume: Path, refused: dict[str, list[Any]]) -> str:
    if resume.parent.resolve() == run.path.resolve():
        where = f"output_dir {run} holds an interrupted run (last checkpoint {resume.name})"
        ways = ("start a new run with --output_dir NEW, or replace this one with --overwrite_output_dir true "
                "(it deletes the checkpoints)")
    else:  # --resume_from_checkpoint from another directory
        where = f"checkpoint {resume} was written by a run"
        ways = "start afresh: leave out --resume_from_checkpoint and pass --output_dir NEW"
    return (f"{where} with other options than these: {_describe(refused)}. Resuming would continue its weights "
            "under options it was not trained with. Pass the run's own options to resume it (its run_config.yaml), "
            f"or {ways}")


def record_resume(run: RunDir, resumed: dict[str, Any] | None) -> None:
    """Append this resume to OUTPUT_DIR/resumes.json (main process)."""
    if resumed is None:
        return
    history = read_json_file(run.resumes) or []
    history.append({"at": time.strftime("%Y-%m-%d %H:%M:%S"), **resumed})
    atomic_write_json(run.resumes, history)
