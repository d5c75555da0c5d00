"""The training run: output directory rules, resume, the run's records, data and model, training, the final
model and results.

`run_training` is what `scripts/train.py` calls. It never assumes one process: data is prepared on
the main process first, and every file, summary and log line is written once, by the main process.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers import set_seed

from ..common.files import atomic_write_json, atomic_write_text
from ..common.library_messages import quiet_deepspeed_deprecations
from ..common.redaction import redact_argv
from ..common.run_dir import RunDir, read_json_file
from ..config import (
    DataArguments,
    DialogueTrainingArguments,
    LoraArguments,
    ModelArguments,
    TrackingArguments,
    resolved_config,
    save_resolved_config,
)
from ..config.sharding import get_sharding
from ..data import PreparedData, build_datasets, check_data_paths
from ..data.packing_check import check_packing_isolation, refuse_cache_with_packing
from ..data.streaming import check_streaming
from ..memory.check import format_plan, plan_and_check_memory
from ..memory.measured import TensorMemoryCallback
from ..memory.plan import MIB, plan_memory
from ..models.generation import chat_template_turn_end_ids
from ..models.loading import (
    align_generation_config,
    check_max_length,
    count_parameters,
    get_model,
    get_model_config,
    get_tokenizer,
)
from ..models.lora import apply_lora, get_quantized_base, merge_on_full_precision_base, record_adapter_base
from ..models.quantization import check_quantization
from ..models.source import ModelSource, resolve_model_source
from ..tracking import RunTracker, run_mode
from .environment import environment_record, peak_memory_mb, requirements_lock_text
from .output_dir import RunLock, check_disk_space, prepare_output_dir, removed_on_user_error
from .resume import check_resume, record_resume
from .safeguards import attach_training_guard, raise_if_stopped
from .summary import end_summary, final_train_loss, start_summary, total_steps
from .timing import train_timing
from .trainer import DialogueTrainer, build_trainer, without_evaluation

logger = logging.getLogger(__name__)


@dataclass
class TrainingResult:
    output_dir: Path
    train_metrics: dict[str, Any]
    eval_metrics: dict[str, Any]


def run_training(
    model_args: ModelArguments,
    data_args: DataArguments,
    lora_args: LoraArguments,
    training_args: DialogueTrainingArguments,
    tracking_args: TrackingArguments | None = None,
) -> TrainingResult | None:
    """Fine-tune, evaluate and save; see the README for everything written to output_dir. A dry run prints
    the memory plan and returns None, having written and loaded nothing.

    Four steps: decide how the output directory is used and record the run; prepare the tokenizer,
    data and model; train; write the final model, results and records. Where the base is read from is settled
    once, first (`ModelSource`), and the output directory is one `RunDir`: both are handed to every step.
    """
    redact_argv()  # no --hub_token in what W&B records as the command line
    state = PartialState()
    _set_recipe_log_level(training_args, state.is_main_process)
    sharding = get_sharding(training_args)
    if sharding.is_deepspeed:
        quiet_deepspeed_deprecations()  # torch's deprecation warnings about DeepSpeed's own calls
    check_quantization(model_args, lora_args, training_args.device, sharding)  # before anything is written or loaded
    source = resolve_model_source(model_args)  # a base that cannot be read fails here, in seconds
    check_data_paths(data_args)  # so does a data path with nothing there
    if data_args.streaming:
        check_streaming(data_args, training_args)
    plan = plan_and_check_memory(model_args, data_args, lora_args, training_args, state.is_main_process, source)
    if training_args.dry_run:  # the plan is printed; nothing is written or loaded
        return None
    # The tokenizer and the model's positions, before the output directory: a base that cannot run is refused
    # without leaving a run directory behind.
    tokenizer = get_tokenizer(model_args, source)
    check_max_length(get_model_config(model_args, source), data_args.max_length)
    tracking_args = tracking_args or TrackingArguments()
    run = RunDir(training_args.output_dir)
    tracker = RunTracker(tracking_args, lora_args, run, state.is_main_process, training_args.push_to_hub)

    with removed_on_user_error(run, state):  # a run stopped before its first step leaves no directory it made
        resume = prepare_output_dir(run, training_args, state)  # locked and decided by the main process, shared
        configs = (model_args, data_args, lora_args, training_args, tracking_args)
        resumed = check_resume(run, resume, configs, state)  # another recipe on these checkpoints is refused
        state.wait_for_everyone()
        if state.is_main_process:
            write_run_records(run, configs, resumed, source)

        tokenizer, prepared, model, training_args = prepare_data_and_model(
            model_args, data_args, lora_args, training_args, run, state.is_main_process, source, tokenizer
        )
        parameters = count_parameters(model)
        if state.is_main_process:
            summary = start_summary(model_args, lora_args, training_args, prepared, *parameters, resume, sharding)
            logger.info("run summary\n%s", summary + (f"\n{format_plan(plan)}" if plan else ""))
        steps = training_args.max_steps if data_args.streaming else total_steps(len(prepared.train_dataset),
                                                                                training_args)
        check_disk_space(run, model, training_args, lora_args, steps, resume, state)

        training_args = tracker.configure(training_args, resume, parameters)  # W&B started; Hub off if unreachable
        trainer = build_trainer(model, tokenizer, prepared, data_args, training_args)
    if trainer.chunked_loss_off and state.is_main_process:
        logger.info("chunked LM loss off under %s: %s; the model's own loss holds the full logits%s",
                    trainer.sharding.label, trainer.chunked_loss_off, _full_logits_cost(plan))
    tensor_memory = TensorMemoryCallback(model)  # the peak held in tensors, to set against the plan
    trainer.add_callback(tensor_memory)
    attach_training_guard(trainer, run)  # stop and save on SIGTERM / Ctrl-C; stop on a non-finite loss
    tracker.attach(trainer, prepared, data_args)  # with replies to validation prompts at each evaluation
    train_metrics, eval_metrics = train_and_evaluate(trainer, prepared, lora_args, parameters, resume)
    peaks = per_process(tensor_memory.peak_mb)  # every process holds its own share: the largest is the one to fit
    train_metrics.update(peak_tensor_memory_mb=max(peaks, key=lambda peak: peak or 0),
                         tensor_memory_steps=tensor_memory.measured_steps,
                         memory_plan_mb=round(plan.peak / MIB, 1) if plan else None,
                         sharding=sharding.kind, processes=sharding.processes)
    if len(peaks) > 1:
        train_metrics["peak_tensor_memory_mb_per_process"] = peaks

    save_final_model(trainer, tokenizer, lora_args, run, model_args)
    if trainer.is_world_process_zero():
        write_results(run, trainer, train_metrics, eval_metrics)
    state.wait_for_everyone()
    tracker.finish(train_metrics, eval_metrics)  # model card, W&B summary, final Hub push (main process)
    RunLock.release(run)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Every process leaves together: DeepSpeed's CPU backend aborts a process whose group is torn down while
        # another is still in it (exit -6 after a finished run).
        torch.distributed.barrier()
        # gloo's worker thread frees the barrier's work (and the Python tensors it holds, which takes the GIL) just
        # after the barrier returns; destroying the group meanwhile deadlocks, as ~ProcessGroupGloo joins that thread
        # while holding the GIL (torch 2.13: a two-process test hung there). Sleeping hands it the GIL.
        time.sleep(0.2)
        torch.distributed.destroy_process_group()
    return TrainingResult(run.path, train_metrics, eval_metrics)


def per_process(value) -> list:
    """`value` of every process, in rank order (call on every process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [value]
    values = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(values, value)
    return values


def _full_logits_cost(plan) -> str:
    """What the model's own loss costs against the chunked one, by the memory plan (measured on SmolLM2 in the
    README's scale-out table)."""
    if plan is None:
        return ""
    chunked = plan_memory(plan.shape, dataclasses.replace(plan.options, chunked_loss=True)).peak
    own = plan_memory(plan.shape, dataclasses.replace(plan.options, chunked_loss=False)).peak
    return f" (+{(own - chunked) / MIB:,.0f} MB at the peak per process, by the memory plan)"


def _set_recipe_log_level(training_args: DialogueTrainingArguments, is_main: bool) -> None:
    """The recipe's own log lines: info on the main process, warnings only on the others."""
    level = logging.INFO if is_main else logging.WARNING
    if training_args.log_level != "passive":
        level = training_args.get_process_log_level()
    logging.getLogger("recipe").setLevel(level)


def write_run_records(run: RunDir, configs: tuple, resumed: dict[str, Any] | None,
                      source: ModelSource | None = None) -> None:
    """run_config.yaml (every resolved option), environment.json, and on a resume its entry in resumes.json
    (check_resume let through only options that cannot change the steps, or that extend the run)."""
    run.path.mkdir(parents=True, exist_ok=True)
    record_resume(run, resumed)
    changed = any((entry.get("changed") or {}) for entry in read_json_file(run.resumes) or [])
    note = (f"# It was resumed with other options ({run.resumes.name}): a replay runs the options below from the "
            "start.\n")
    save_resolved_config(
        run.run_config, *configs,
        header="# Every option of this run as asked (automatic ones stay automatic; environment.json has what this "
               f"machine chose).\n# Replay it, from the repository root: {run.replay_command()}\n"
               + (note if changed else ""),
    )
    model_args, data_args, _, training_args, _ = configs
    options = {**resolved_config(*configs), **training_args.resolved_options()}  # as used: automatic ones settled
    record = environment_record(data_args, training_args, model_args, source, options)
    atomic_write_json(run.environment, record)
    atomic_write_text(run.requirements_lock, requirements_lock_text(record["git"]))


def prepare_data_and_model(model_args, data_args, lora_args, training_args, run: RunDir, is_main: bool,
                           source: ModelSource | None = None, tokenizer=None):
    """Tokenizer, data (prepared once, by the main process first; its labels audited) and model (with LoRA
    adapters when asked), checked to keep packed dialogues apart. `source`: where the base is read from, and
    `tokenizer` (both resolved here when not given: run_training settles them before it writes anything).

    Returns the training arguments too: without validation data, evaluation is turned off.
    """
    refuse_cache_with_packing(data_args, training_args)
    source = source or resolve_model_source(model_args)
    set_seed(training_args.seed)
    if tokenizer is None:
        tokenizer = get_tokenizer(model_args, source)
        check_max_length(get_model_config(model_args, source), data_args.max_length)  # before data and weights
    prepared = build_datasets(
        data_args, tokenizer, main_process_first=lambda: training_args.main_process_first(desc="data preparation")
    )
    if prepared.validation_dataset is None:
        training_args = without_evaluation(training_args)
    if is_main:
        atomic_write_json(run.data_report, prepared.report)

    set_seed(training_args.seed)  # same initial weights whatever the data step consumed
    if model_args.quantized:  # a random base is saved to base_model/ at full precision first
        model = get_quantized_base(model_args, training_args, tokenizer, run.base_model, is_main, source)
    elif model_args.random_init:
        model = get_model(model_args, tokenizer, source)
    else:
        # Loading draws no random numbers on one process, but does under DeepSpeed ZeRO-3 (it initialises each layer
        # as it partitions it): the adapters below start from the same random state either way.
        with torch.random.fork_rng():
            model = get_model(model_args, tokenizer, source)
    if lora_args.use_lora:
        if model_args.random_init and is_main and not model_args.quantized:
            # An adapter works only on its exact base, and a random base exists nowhere else: keep it.
            model.save_pretrained(run.base_model)
            tokenizer.save_pretrained(run.base_model)
        if training_args.gradient_checkpointing:
            model.enable_input_require_grads()  # checkpointed blocks need inputs that carry gradients
        model = apply_lora(model, lora_args)
        record_adapter_base(model, model_args, run.base_model, source)  # adapter_config.json names a loadable base
    probe = prepared.train_examples if prepared.train_examples is not None else prepared.validation_examples
    check_packing_isolation(model, tokenizer, probe, data_args, training_args.use_cache)
    return tokenizer, prepared, model, training_args


def train_and_evaluate(trainer: DialogueTrainer, prepared: PreparedData, lora_args: LoraArguments,
                       parameters: tuple[int, int], resume: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train (resuming when asked), evaluate the final model, and return (train metrics, eval metrics)."""
    start = time.perf_counter()
    train_output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    runtime = time.perf_counter() - start
    raise_if_stopped(trainer)  # a signal or a non-finite loss: nothing final is written
    real_tokens = trainer.total_real_tokens_trained()
    timing = train_timing(trainer, train_output.metrics, runtime, real_tokens)  # before the final evaluation
    eval_metrics = trainer.evaluate() if prepared.validation_dataset is not None else {}
    window = trainer.state.logging_steps if trainer.args.logging_strategy == "steps" else 1  # else: the last epoch's
    final_loss = final_train_loss(trainer.state.log_history, window)
    trainable, total = parameters
    train_metrics = dict(train_output.metrics)
    train_metrics.update(
        **timing,  # train_runtime (the whole call), the steps, evaluation and checkpoints inside it; tokens/s
        train_real_tokens=real_tokens,
        final_train_loss=final_loss[0] if final_loss else None,
        final_train_loss_steps=list(final_loss[1:]) if final_loss else None,
        peak_memory_mb=peak_memory_mb(trainer.args.device),
        trainable_parameters=trainable,
        total_parameters=total,
        global_step=trainer.state.global_step,
        best_checkpoint=trainer.state.best_model_checkpoint,
        resumed_from=str(resume) if resume else None,
        skipped_nonfinite_loss_steps=[step for step, _ in trainer.training_guard.nonfinite_steps],
        mode=run_mode(lora_args.use_lora),
    )
    return train_metrics, eval_metrics


def write_results(run: RunDir, trainer: DialogueTrainer, train_metrics: dict[str, Any],
                  eval_metrics: dict[str, Any]) -> None:
    """eval_results.json, trainer_state.json, then train_results.json, which marks the run finished."""
    if eval_metrics:
        atomic_write_json(run.eval_results, eval_metrics)
    trainer.state.save_to_json(str(run.trainer_state))
    atomic_write_json(run.train_results, train_metrics)  # last: marks the run finished
    logger.info("done\n%s", end_summary(run.path, train_metrics, eval_metrics))


def save_final_model(trainer: DialogueTrainer, tokenizer, lora_args: LoraArguments, run: RunDir,
                     model_args: ModelArguments | None = None) -> None:
    """The final (best, when load_best_model_at_end) model or adapter, its tokenizer and a generation
    config whose EOS stops generation; with merge_lora, also base+adapter merged into merged/ (onto the
    base at full precision when it trained in k bits)."""
    model = trainer.model
    base = model.get_base_model() if lora_args.use_lora else model
    base.config.use_cache = True  # the Trainer turned the KV cache off for training; generation wants it
    align_generation_config(base, tokenizer, chat_template_turn_end_ids(tokenizer))  # + the template's turn end
    if trainer.is_fsdp_enabled:  # checkpoints are sharded; the final model is one file that any loader reads
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(run.path))  # the adapter alone for LoRA; gathered on every process, written by the main
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(run.path)
        base.generation_config.save_pretrained(run.path)
    if lora_args.use_lora and lora_args.merge_lora and trainer.is_world_process_zero():
        merged_dir = run.merged
        # A k-bit base merges onto its full-precision weights; a sharded one is not whole in any process: both
        # merge the saved adapter onto the base read again from disk.
        if (model_args is not None and model_args.quantized) or trainer.sharding.shards_weights:
            merge_on_full_precision_base(model_args, run.path, merged_dir, tokenizer)
            return
        merged = trainer.accelerator.unwrap_model(model).merge_and_unload()
        merged.save_pretrained(merged_dir)
        tokenizer.save_pretrained(merged_dir)
        logger.info("merged LoRA model written to %s", merged_dir)
