"""What a run prints: the start-up summary (model, parameters, data, batch, steps) and the end summary (time,
memory, losses, perplexity)."""

from __future__ import annotations

import dataclasses
import math

from ..config import DialogueTrainingArguments
from ..data import format_report
from ..models.quantization import describe_quantization


def steps_per_epoch(num_rows: int, training_args: DialogueTrainingArguments) -> int:
    batches = math.ceil(num_rows / (training_args.per_device_train_batch_size * training_args.world_size))
    return max(1, math.ceil(batches / training_args.gradient_accumulation_steps))


def total_steps(num_rows: int, training_args: DialogueTrainingArguments) -> int:
    if training_args.max_steps > 0:
        return training_args.max_steps
    return math.ceil(steps_per_epoch(num_rows, training_args) * training_args.num_train_epochs)


def final_train_loss(log_history: list[dict], logging_steps: float) -> tuple[float, int, int] | None:
    """(loss, first step, last step): the mean training loss over at least the last `logging_steps` steps, from the
    logged windows that cover them (a window's loss is the mean over the steps since the one before), weighted by
    their steps; all the steps trained where there were fewer. None where no loss was logged."""
    logged = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    if not logged:
        return None
    starts = [0] + [step for step, _ in logged[:-1]]  # each window covers (previous logged step, its step]
    total, covered, first = 0.0, 0, logged[-1][0]
    for (step, loss), start in zip(reversed(logged), reversed(starts)):
        total += loss * (step - start)
        covered += step - start
        first = start + 1
        if covered >= logging_steps:
            break
    return total / covered, first, logged[-1][0]


def start_summary(model_args, lora_args, training_args, prepared, trainable, total, resume, sharding) -> str:
    train = prepared.report["train"]
    effective_batch = (
        training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * training_args.world_size
    )
    streamed = prepared.report.get("streaming")
    per_epoch = "? (streamed)" if streamed else steps_per_epoch(len(prepared.train_dataset), training_args)
    all_steps = training_args.max_steps if streamed else total_steps(len(prepared.train_dataset), training_args)
    precision = "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32"
    lines = [
        f"model: {model_args.model_name_or_path}{' (random init)' if model_args.random_init else ''}, "
        f"{'LoRA r=%d' % lora_args.lora_r if lora_args.use_lora else 'full fine-tuning'}"
        + (f" on a {describe_quantization(dataclasses.asdict(model_args))} base" if model_args.quantized else ""),
        f"parameters: {total:,} total, {trainable:,} trainable ({trainable / total:.2%})",
        format_report(prepared.report),
        "tokens per epoch: streamed, counted as trained" if streamed else
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
        f"time: {train_metrics['train_runtime']:.1f} s (steps {train_metrics['train_steps_runtime']:.1f} s, "
        f"evaluation {train_metrics['train_evaluation_runtime']:.1f} s, "
        f"checkpoints {train_metrics['train_checkpoint_runtime']:.1f} s), "
        f"{train_metrics['train_real_tokens_per_second']:,.0f} tokens/s in the steps (real tokens, padding excluded)",
        f"peak memory {train_metrics['peak_memory_mb']:,.0f} MB (process RSS)" + tensor_memory_line(train_metrics),
        final_loss_line(train_metrics),
    ]
    if eval_metrics:
        lines.append(
            f"eval: loss {eval_metrics['eval_token_loss']:.4f} nats/token over {eval_metrics['eval_num_tokens']:,} "
            f"tokens, perplexity {eval_metrics['eval_perplexity']:.2f}"
        )
    lines.append(f"model: {output_dir}")
    return "\n".join(lines)


def final_loss_line(train_metrics) -> str:
    loss, steps = train_metrics.get("final_train_loss"), train_metrics.get("final_train_loss_steps")
    if loss is None:
        return "final train loss: none logged"
    span = f" (mean over steps {steps[0]}-{steps[1]})" if steps and steps[0] != steps[1] else \
        f" (step {steps[1]})" if steps else ""
    return f"final train loss: {loss:.4f}{span}"


def tensor_memory_line(train_metrics) -> str:
    measured, planned = train_metrics.get("peak_tensor_memory_mb"), train_metrics.get("memory_plan_mb")
    if measured is None:
        return ""
    return f", {measured:,.0f} MB in tensors" + (f" (plan {planned:,.0f} MB)" if planned else "")
