"""`DialogueTrainer`: the HF Trainer with the recipe's loss, token count, safeguards and timing, and how it is built
for a run (its data collator, metrics and early stopping)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from accelerate.utils import DistributedDataParallelKwargs
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback

from ..config import ConfigError, DataArguments, DialogueTrainingArguments
from ..config.sharding import get_sharding
from ..data import PreparedData, get_data_collator
from ..evaluation.metrics import compute_perplexity_metrics, sequence_nll
from ..models.deepspeed_import import import_deepspeed_only_when_used
from ..models.loss import ChunkedCausalLMLoss
from .fsdp_on_cpu import allow_fsdp_on_cpu
from .safeguards import WatchesLoss
from .timing import TimesPhases


class DialogueTrainer(TimesPhases, WatchesLoss, Trainer):
    """The HF Trainer, plus a count of the real (non-padding) tokens it trained on, the LM loss computed
    without full logits (recipe/models/loss.py) unless `chunked_lm_loss` is off or the model is sharded, and,
    through WatchesLoss, every micro-batch loss shown to the safeguards before the NaN filter hides it, and,
    through TimesPhases, the time of training steps, evaluation and checkpoints apart (recipe/training/timing.py).

    The collator sends `num_real_tokens` with each batch; it is taken out before the model sees
    the batch. (The Trainer's own non-padding count treats every pad-id token as padding, but for
    GPT-2 the pad id is EOS, so it would miss one real token per dialogue.) Evaluation steps return
    per-sequence [summed NLL, token count] instead of logits: what exact perplexity needs.
    """

    def __init__(self, *args, **kwargs):
        import_deepspeed_only_when_used()  # the Trainer unwraps its model as it starts
        super().__init__(*args, **kwargs)
        self.real_tokens_trained = 0
        self.chunked_loss_off: str | None = None  # why the sharding keeps the chunked loss off
        self.lm_loss = self._chunked_loss()

    def _chunked_loss(self) -> ChunkedCausalLMLoss | None:
        """The chunked LM loss (recipe/models/loss.py), unless it is off or cannot apply: a label smoother or
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

    def _issue_warnings_after_load(self, load_result):
        """Loading the best checkpoint at the end reports the keys it did not find. A tied LM head (GPT-2's, SmolLM2's:
        the embedding matrix itself) is saved once, under the embedding's name, so it is reported missing though it
        is the very tensor just loaded: only keys missing for another reason are reported."""
        tied = tied_copies(self.model, set(load_result.missing_keys))
        load_result = load_result._replace(missing_keys=[k for k in load_result.missing_keys if k not in tied])
        super()._issue_warnings_after_load(load_result)

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
        return super().compute_loss(forward, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

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


def tied_copies(model, missing: set[str]) -> set[str]:
    """The names among `missing` whose parameter is shared with a name that is not missing (so it was loaded)."""
    names_by_tensor: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names_by_tensor.setdefault(id(parameter), []).append(name)
    return {name for names in names_by_tensor.values() if any(n not in missing for n in names)
            for name in names if name in missing}


class CountingCollator:
    """Wraps the data collator to report the number of real tokens in each batch."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, features):
        batch = self.collator(features)
        batch["num_real_tokens"] = torch.tensor(sum(len(f["input_ids"]) for f in features))
        return batch


class StopAfterSteps(TrainerCallback):
    """Ends training after `steps` optimizer steps, the schedule left as for the whole run (--stop_after_steps). The
    epoch it stops in is neither evaluated nor saved (unless the run ends there anyway): a replay of a run's start
    compares its logged losses only."""

    def __init__(self, steps: int):
        self.steps = steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.steps:
            control.should_training_stop = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.steps <= state.global_step < state.max_steps:  # at the run's own end, as the run did
            control.should_evaluate = control.should_save = False
        return control


class LogTheLastStep(TrainerCallback):
    """Logs the training loss at the last step too: the Trainer logs every logging_steps steps, so the steps after the
    last multiple (all but the first of a run shorter than logging_steps) were in no logged loss, and the run's final
    train loss came from an earlier window."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps and args.logging_strategy == "steps":
            control.should_log = True
        return control


def build_trainer(
    model, tokenizer, prepared: PreparedData, data_args: DataArguments, training_args: DialogueTrainingArguments
) -> DialogueTrainer:
    callbacks: list[TrainerCallback] = [LogTheLastStep()]
    if training_args.early_stopping_patience is not None:
        callbacks.append(
            EarlyStoppingCallback(training_args.early_stopping_patience, training_args.early_stopping_threshold)
        )
    if training_args.stop_after_steps:
        callbacks.append(StopAfterSteps(training_args.stop_after_steps))
    train_dataset = prepared.train_dataset
    if data_args.streaming:
        # Each process reads the stream and trains its share of every step's rows (accelerate's shard of an
        # iterable); dispatching from the main process would need rows of one length.
        training_args.accelerator_config.dispatch_batches = False
        train_dataset = IterableRows(train_dataset)
    return DialogueTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=prepared.validation_dataset,
        data_collator=CountingCollator(get_data_collator(data_args, tokenizer)),
        processing_class=tokenizer,
        compute_metrics=compute_perplexity_metrics,  # from the per-sequence sums of prediction_step
        callbacks=callbacks,
    )


class IterableRows(torch.utils.data.IterableDataset):
    """Streamed rows (recipe/data/streaming.py) as the torch IterableDataset the Trainer and its DataLoader take."""

    def __init__(self, rows):
        super().__init__()
        self.rows = rows

    def __iter__(self):
        return iter(self.rows)


def without_evaluation(training_args: DialogueTrainingArguments) -> DialogueTrainingArguments:
    """Training arguments for a run with no validation data (validation_split_ratio 0)."""
    if training_args.early_stopping_patience is not None:
        raise ConfigError("early_stopping_patience needs validation data; set validation_split_ratio above 0")
    return dataclasses.replace(training_args, eval_strategy="no", load_best_model_at_end=False)
