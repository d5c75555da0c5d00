"""Trainer setup and the training run: output directory rules, resume, summaries and run records.

`run_training` is what `scripts/train.py` calls. It never assumes one process: data is prepared on
the main process first, and every file, summary and log line is written once, by the main process.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import DistributedDataParallelKwargs
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, set_seed

from .config import (
    ConfigError,
    DataArguments,
    DialogueTrainingArguments,
    LoraArguments,
    ModelArguments,
    TrackingArguments,
    save_resolved_config,
)
from .data import PreparedData, build_datasets, format_report, get_data_collator
from .environment import environment_record, peak_memory_mb
from .files import atomic_write_json
from .generation import chat_template_turn_end_ids
from .loss import ChunkedCausalLMLoss
from .memory import MIB, plan_memory
from .memory_check import format_plan, plan_and_check_memory
from .metrics import compute_perplexity_metrics, sequence_nll
from .modeling import (
    align_generation_config,
    apply_lora,
    check_max_length,
    count_parameters,
    get_model,
    get_model_config,
    get_tokenizer,
    record_adapter_base,
)
from .output_dir import OutputDirError  # noqa: F401 - re-exported: callers catch it from here
from .output_dir import RunLock, check_disk_space, prepare_output_dir
from .packing_check import check_packing_isolation, refuse_cache_with_packing
from .quantization import check_quantization, get_quantized_base, merge_on_full_precision_base
from .quantization import describe as describe_quantization
from .redaction import redact_argv
from .resume import check_resume, record_resume
from .run_dir import RunDir, read_json_file
from .safeguards import WatchesLoss, attach_training_guard, raise_if_stopped
from .sharding import allow_fsdp_on_cpu, get_sharding
from .timing import TimesPhases, train_timing
from .tensor_memory import TensorMemoryCallback
from .tracking import RunTracker, run_mode

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Trainer


class DialogueTrainer(TimesPhases, WatchesLoss, Trainer):
    """The HF Trainer, plus a count of the real (non-padding) tokens it trained on, the LM loss computed
    without full logits (recipe/loss.py) unless `chunked_lm_loss` is off or the model is sharded, and,
    through WatchesLoss, every micro-batch loss shown to the safeguards before the NaN filter hides it, and,
    through TimesPhases, the time of training steps, evaluation and checkpoints apart (recipe/timing.py).

    The collator sends `num_real_tokens` with each batch; it is taken out before the model sees
    the batch. (The Trainer's own non-padding count treats every pad-id token as padding, but for
    GPT-2 the pad id is EOS, so it would miss one real token per dialogue.) Evaluation steps return
    per-sequence [summed NLL, token count] instead of logits: what exact perplexity needs.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.real_tokens_trained = 0
        self.chunked_loss_off: str | None = None  # why the sharding keeps the chunked loss off
        self.lm_loss = self._chunked_loss()

    def _chunked_loss(self) -> ChunkedCausalLMLoss | None:
        """The chunked LM loss (recipe/loss.py), unless it is off or cannot apply: a label smoother or
        compute_loss_func wants logits, and under DeepSpeed ZeRO-3 or FSDP 1 the head's weight is not whole
        outside the forward pass (FSDP 2 keeps it gathered until the backward pass)."""
        if not getattr(self.args, "chunked_lm_loss", True) or self.label_smoother or self.compute_loss_func:
            return None
        if self.sharding.kind == "zero3":
            self.chunked_loss_off = "ZeRO-3 gathers the LM head's weight only inside the head's own forward pass"
        elif self.sharding.kind == "fsdp" and self.sharding.fsdp_version == 1:
            self.chunked_loss_off = "FSDP 1 keeps the LM head's weight in a flat shard outside the forward pass"
        if self.chunked_loss_off:
            return None
        return ChunkedCausalLMLoss(self.accelerator.autocast, self.is_world_process_zero())

    def create_accelerator_and_postprocess(self):
        allow_fsdp_on_cpu(self.args)  # accelerate would run an FSDP launch on CPU processes as DDP
        super().create_accelerator_and_postprocess()
        self.sharding = get_sharding(self.args)

    def _build_accelerator_args(self, **kwargs):
        args = super()._build_accelerator_args(**kwargs)
        for handler in args.get("kwargs_handlers") or []:
            if isinstance(handler, DistributedDataParallelKwargs):
                # DDP: gradients live in its communication buckets instead of beside them (one copy of the
                # gradients less); every trainable weight gets a gradient each step, so the Trainer's default
                # search for unused ones costs a graph traversal per step (and a warning) for nothing.
                handler.gradient_as_bucket_view = True
                if self.args.ddp_find_unused_parameters is None:
                    handler.find_unused_parameters = False
        return args

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        # The Trainer records a checkpoint as the best one only if its folder exists after save_model, which under
        # sharded FSDP writes nothing there (the shards come after): the best checkpoint would never be reloaded.
        if output_dir is not None and _internal_call:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
        super().save_model(output_dir, _internal_call)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        real_tokens = inputs.pop("num_real_tokens", None)
        if real_tokens is not None and model.training:
            self.real_tokens_trained += int(real_tokens)
        forward = self.lm_loss.forward_for(model) if self.lm_loss else model
        return super().compute_loss(forward, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs.pop("num_real_tokens", None)
        if prediction_loss_only or "labels" not in inputs:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        inputs = self._prepare_inputs(inputs)
        labels = inputs["labels"]  # compute_loss may pop them (label smoothing)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        sums = outputs.get("sequence_sums")
        if sums is None:  # the model's own loss ran: reduce its logits here
            sums = sequence_nll(outputs["logits"], labels)
        return loss.detach().mean(), sums, labels

    def total_real_tokens_trained(self) -> int:
        """Summed over processes (call on every process)."""
        count = torch.tensor(self.real_tokens_trained, device=self.args.device, dtype=torch.long)
        return int(self.accelerator.reduce(count, reduction="sum").item())


class CountingCollator:
    """Wraps the data collator to report the number of real tokens in each batch."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, features):
        batch = self.collator(features)
        batch["num_real_tokens"] = torch.tensor(sum(len(f["input_ids"]) for f in features))
        return batch


def build_trainer(
    model, tokenizer, prepared: PreparedData, data_args: DataArguments, training_args: DialogueTrainingArguments
) -> DialogueTrainer:
    callbacks: list[TrainerCallback] = []
    if training_args.early_stopping_patience is not None:
        callbacks.append(
            EarlyStoppingCallback(training_args.early_stopping_patience, training_args.early_stopping_threshold)
        )
    return DialogueTrainer(
        model=model,
        args=training_args,
        train_dataset=prepared.train_dataset,
        eval_dataset=prepared.validation_dataset,
        data_collator=CountingCollator(get_data_collator(data_args, tokenizer)),
        processing_class=tokenizer,
        compute_metrics=compute_perplexity_metrics,  # from the per-sequence sums of prediction_step
        callbacks=callbacks,
    )


def without_evaluation(training_args: DialogueTrainingArguments) -> DialogueTrainingArguments:
    """Training arguments for a run with no validation data (validation_split_ratio 0)."""
    if training_args.early_stopping_patience is not None:
        raise ConfigError("early_stopping_patience needs validation data; set validation_split_ratio above 0")
    return dataclasses.replace(training_args, eval_strategy="no", load_best_model_at_end=False)


# ----------------------------------------------------------------------------------------------
# The run


@dataclass
class TrainingResult:
    output_dir: Path
    train_metrics: dict[str, Any]
    eval_metrics: dict[str, Any]


def steps_per_epoch(num_rows: int, training_args: DialogueTrainingArguments) -> int:
    batches = math.ceil(num_rows / (training_args.per_device_train_batch_size * training_args.world_size))
    return max(1, math.ceil(batches / training_args.gradient_accumulation_steps))


def total_steps(num_rows: int, training_args: DialogueTrainingArguments) -> int:
    if training_args.max_steps > 0:
        return training_args.max_steps
    return math.ceil(steps_per_epoch(num_rows, training_args) * training_args.num_train_epochs)


def start_summary(model_args, lora_args, training_args, prepared, trainable, total, resume, sharding) -> str:
    train = prepared.report["train"]
    effective_batch = (
        training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * training_args.world_size
    )
    per_epoch = steps_per_epoch(len(prepared.train_dataset), training_args)
    all_steps = total_steps(len(prepared.train_dataset), training_args)
    precision = "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32"
    lines = [
        f"model: {model_args.model_name_or_path}{' (random init)' if model_args.random_init else ''}, "
        f"{'LoRA r=%d' % lora_args.lora_r if lora_args.use_lora else 'full fine-tuning'}"
        + (f" on a {describe_quantization(dataclasses.asdict(model_args))} base" if model_args.quantized else ""),
        f"parameters: {total:,} total, {trainable:,} trainable ({trainable / total:.2%})",
        format_report(prepared.report),
        f"tokens per epoch: {train['tokens']:,} ({train['loss_tokens']:,} in the loss), "
        f"in {len(prepared.train_dataset):,} rows",
        f"batch: {training_args.per_device_train_batch_size} per device x {training_args.gradient_accumulation_steps} "
        f"accumulation x {training_args.world_size} processes = {effective_batch} rows per step"
        + (f" ({sharding.describe()})" if sharding.processes > 1 else ""),
        f"steps: {per_epoch} per epoch, {all_steps} in all; device {training_args.device}, {precision}",
        f"output: {training_args.output_dir}" + (f" (resuming from {resume})" if resume else ""),
    ]
    return "\n".join(lines)


def end_summary(output_dir, train_metrics, eval_metrics) -> str:
    lines = [
        f"time: {train_metrics['train_runtime']:.1f} s (steps {train_metrics['train_steps_runtime']:.1f} s, evaluation "
        f"{train_metrics['train_evaluation_runtime']:.1f} s, checkpoints {train_metrics['train_checkpoint_runtime']:.1f} s), "
        f"{train_metrics['train_real_tokens_per_second']:,.0f} tokens/s in the steps (real tokens, padding excluded)",
        f"peak memory {train_metrics['peak_memory_mb']:,.0f} MB (process RSS)" + _tensor_memory_line(train_metrics),
        f"final train loss: {train_metrics.get('final_train_loss', float('nan')):.4f}",
    ]
    if eval_metrics:
        lines.append(
            f"eval: loss {eval_metrics['eval_token_loss']:.4f} nats/token over {eval_metrics['eval_num_tokens']:,} "
            f"tokens, perplexity {eval_metrics['eval_perplexity']:.2f}"
        )
    lines.append(f"model: {output_dir}")
    return "\n".join(lines)


def _tensor_memory_line(train_metrics) -> str:
    measured, planned = train_metrics.get("peak_tensor_memory_mb"), train_metrics.get("memory_plan_mb")
    if measured is None:
        return ""
    return f", {measured:,.0f} MB in tensors" + (f" (plan {planned:,.0f} MB)" if planned else "")


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
    data and model; train; write the final model, results and records.
    """
    from accelerate import PartialState

    redact_argv()  # no --hub_token in what W&B records as the command line
    state = PartialState()
    _set_recipe_log_level(training_args, state.is_main_process)
    sharding = get_sharding(training_args)
    check_quantization(model_args, lora_args, training_args.device, sharding)  # before anything is written or loaded
    plan = plan_and_check_memory(model_args, data_args, lora_args, training_args, state.is_main_process)
    if training_args.dry_run:  # the plan is printed; nothing is written or loaded
        return None
    tracking_args = tracking_args or TrackingArguments()
    run = RunDir(training_args.output_dir)
    tracker = RunTracker(tracking_args, lora_args, run.path, state.is_main_process, training_args.push_to_hub)

    resume = prepare_output_dir(training_args, state)  # locked and decided by the main process, shared
    configs = (model_args, data_args, lora_args, training_args, tracking_args)
    resumed = check_resume(run, resume, configs, state)  # another recipe on these checkpoints is refused
    state.wait_for_everyone()
    if state.is_main_process:
        write_run_records(run, configs, resumed)

    tokenizer, prepared, model, training_args = prepare_data_and_model(
        model_args, data_args, lora_args, training_args, run, state.is_main_process
    )
    parameters = count_parameters(model)
    if state.is_main_process:
        summary = start_summary(model_args, lora_args, training_args, prepared, *parameters, resume, sharding)
        logger.info("run summary\n%s", summary + (f"\n{format_plan(plan)}" if plan else ""))
    check_disk_space(run, model, training_args, lora_args, total_steps(len(prepared.train_dataset), training_args),
                     resume, state)

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

    save_final_model(trainer, tokenizer, lora_args, run.path, model_args)
    if trainer.is_world_process_zero():
        write_results(run, trainer, train_metrics, eval_metrics)
    state.wait_for_everyone()
    tracker.finish(train_metrics, eval_metrics)  # model card, W&B summary, final Hub push (main process)
    RunLock.release(run)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Every process leaves together: DeepSpeed's CPU backend aborts a process whose group is torn down while
        # another is still in it (exit -6 after a finished run).
        torch.distributed.barrier()
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


def write_run_records(run: RunDir, configs: tuple, resumed: dict[str, Any] | None) -> None:
    """run_config.yaml (every resolved option), environment.json, and on a resume its entry in resumes.json
    (check_resume let through only options that cannot change the steps, or that extend the run)."""
    run.path.mkdir(parents=True, exist_ok=True)
    record_resume(run, resumed)
    changed = any((entry.get("changed") or {}) for entry in read_json_file(run.resumes) or [])
    note = f"# It was resumed with other options ({run.resumes.name}): a replay runs the options below from the start.\n"
    save_resolved_config(
        run.run_config, *configs,
        header="# Every option of this run as asked (automatic ones stay automatic; environment.json has what this "
               f"machine chose).\n# Replay it, from the repository root: {run.replay_command()}\n" + (note if changed else ""),
    )
    model_args, data_args, _, training_args, _ = configs
    atomic_write_json(run.environment, environment_record(data_args, training_args, model_args))


def prepare_data_and_model(model_args, data_args, lora_args, training_args, run: RunDir, is_main: bool):
    """Tokenizer, data (prepared once, by the main process first; its labels audited) and model (with LoRA
    adapters when asked), checked to keep packed dialogues apart.

    Returns the training arguments too: without validation data, evaluation is turned off.
    """
    refuse_cache_with_packing(data_args, training_args)
    set_seed(training_args.seed)
    tokenizer = get_tokenizer(model_args)
    check_max_length(get_model_config(model_args), data_args.max_length)  # before data and weights
    prepared = build_datasets(
        data_args, tokenizer, main_process_first=lambda: training_args.main_process_first(desc="data preparation")
    )
    if prepared.validation_dataset is None:
        training_args = without_evaluation(training_args)
    if is_main:
        atomic_write_json(run.data_report, prepared.report)

    set_seed(training_args.seed)  # same initial weights whatever the data step consumed
    if model_args.quantized:  # a random base is saved to base_model/ at full precision first
        model = get_quantized_base(model_args, training_args, tokenizer, run.base_model, is_main)
    elif model_args.random_init:
        model = get_model(model_args, tokenizer)
    else:
        # Loading draws no random numbers on one process, but does under DeepSpeed ZeRO-3 (it initialises each layer
        # as it partitions it): the adapters below start from the same random state either way.
        with torch.random.fork_rng():
            model = get_model(model_args, tokenizer)
    if lora_args.use_lora:
        if model_args.random_init and is_main and not model_args.quantized:
            # An adapter works only on its exact base, and a random base exists nowhere else: keep it.
            model.save_pretrained(run.base_model)
            tokenizer.save_pretrained(run.base_model)
        if training_args.gradient_checkpointing:
            model.enable_input_require_grads()  # checkpointed blocks need inputs that carry gradients
        model = apply_lora(model, lora_args)
        record_adapter_base(model, model_args, run.base_model)  # adapter_config.json names a loadable base
    check_packing_isolation(model, tokenizer, prepared.train_examples, data_args, training_args.use_cache)
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
    train_losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    trainable, total = parameters
    train_metrics = dict(train_output.metrics)
    train_metrics.update(
        **timing,  # train_runtime (the whole call), the steps, evaluation and checkpoints inside it; tokens/s
        train_real_tokens=real_tokens,
        final_train_loss=train_losses[-1] if train_losses else None,
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


def save_final_model(trainer: DialogueTrainer, tokenizer, lora_args: LoraArguments, output_dir: Path,
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
    trainer.save_model(str(output_dir))  # the adapter alone for LoRA; gathered on every process, written by the main
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(output_dir)
        base.generation_config.save_pretrained(output_dir)
    if lora_args.use_lora and lora_args.merge_lora and trainer.is_world_process_zero():
        merged_dir = RunDir(output_dir).merged
        # A k-bit base merges onto its full-precision weights; a sharded one is not whole in any process: both
        # merge the saved adapter onto the base read again from disk.
        if (model_args is not None and model_args.quantized) or trainer.sharding.shards_weights:
            merge_on_full_precision_base(model_args, output_dir, merged_dir, tokenizer)
            return
        merged = trainer.accelerator.unwrap_model(model).merge_and_unload()
        merged.save_pretrained(merged_dir)
        tokenizer.save_pretrained(merged_dir)
        logger.info("merged LoRA model written to %s", merged_dir)
