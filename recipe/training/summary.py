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
        f"time: {train_metrics['train_runtime']:.1f} s (steps {train_metrics['train_steps_runtime']:.1f} s, "
        f"evaluation {train_metrics['train_evaluation_runtime']:.1f} s, "
        f"checkpoints {train_metrics['train_checkpoint_runtime']:.1f} s), "
        f"{train_metrics['train_real_tokens_per_second']:,.0f} tokens/s in the steps (real tokens, padding excluded)",
        f"peak memory {train_metrics['peak_memory_mb']:,.0f} MB (process RSS)" + tensor_memory_line(train_metrics),
        f"final train loss: {train_metrics.get('final_train_loss', float('nan')):.4f}",
    ]
    if eval_metrics:
        lines.append(
            f"eval: loss {eval_metrics['eval_token_loss']:.4f} nats/token over {eval_metrics['eval_num_tokens']:,} "
            f"tokens, perplexity {eval_metrics['eval_perplexity']:.2f}"
        )
    lines.append(f"model: {output_dir}")
    return "\n".join(lines)


def tensor_memory_line(train_metrics) -> str:
    measured, planned = train_metrics.get("peak_tensor_memory_mb"), train_metrics.get("memory_plan_mb")
    if measured is None:
        return ""
    return f", {measured:,.0f} MB in tensors" + (f" (plan {planned:,.0f} MB)" if planned else "")
