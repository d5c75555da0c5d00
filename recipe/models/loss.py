"""The causal-LM loss without the full logits: the LM head and cross-entropy run only where a label
exists, a chunk of rows at a time, and each chunk's gradients are computed as it goes.

Why: with GPT-2's 50,257-token vocabulary the LM head is about half of a small model's training
FLOPs, and one packed batch of 8 x 256 tokens makes 400 MB of fp32 logits, copied again by the
float upcast, the log-softmax and its gradient. Here at most one chunk of logits exists at a time,
and positions without a label (padding, the turns of speakers left out by `train_on_speakers`)
cost nothing. The maths is the model's own loss: the same shift, the same -100 labels, the same
reduction (a mean over labelled tokens, or a sum divided by `num_items_in_batch`), the same
precision (logits in the autocast dtype, then float32 for the softmax). tests/test_loss.py checks the
loss and every gradient against the model's own for each model family, with LoRA and in bf16;
tests/test_train_cli.py trains with it in two DDP processes.

`ChunkedCausalLMLoss` falls back to the model's own loss (full logits) where it does not apply:
logits that are more than `lm_head(last hidden state)` (soft-capping, scaling), an LM head that is
not a plain `nn.Linear` (a LoRA adapter or a trainable copy on the head), a model that returns no
hidden states, and, decided by the trainer, DeepSpeed ZeRO-3 and FSDP 1, whose head weight is not whole
outside the forward pass. Under FSDP 2 it runs as on one process (`unsharded_class`).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput

from ..data import IGNORE_INDEX

# Logits computed at once: 2**26 float32 values (256 MB), e.g. 1,335 rows of GPT-2's 50,257 tokens, where a
# whole packed batch of 8 x 256 would take 400 MB: large enough for the matmuls to run at full speed.
CHUNK_LOGITS = 2**26
# Config attributes of families whose logits are not lm_head(hidden): Gemma 2/3 soft-capping, Cohere's
# logit_scale, Granite's logits_scaling.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")

logger = logging.getLogger(__name__)


def chunk_rows_for(vocab_size: int) -> int:
    return max(64, CHUNK_LOGITS // max(1, vocab_size))


def _compute_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype an `nn.Linear` runs in here: the autocast dtype when autocast is on."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return dtype


def _float_log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """float32 log-softmax over the vocabulary, computed in place of a float32 copy of the logits: the fused
    kernel keeps each row in cache, where logsumexp and separate passes would stream the chunk several times."""
    logits = logits.float() if logits.dtype != torch.float32 else logits
    return torch.log_softmax(logits, dim=-1, out=logits)


def token_nll(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
              chunk_rows: int | None = None) -> torch.Tensor:
    """Negative log-likelihood of each target (N) given its hidden state (N x d); no gradients."""
    chunk_rows = chunk_rows or chunk_rows_for(weight.shape[0])
    dtype = _compute_dtype(hidden.device, weight.dtype)
    with torch.autocast(hidden.device.type, enabled=False), torch.no_grad():
        weight_c = weight.to(dtype)
        bias_c = bias.to(dtype) if bias is not None else None
        nll = hidden.new_empty(hidden.shape[0], dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk_rows):
            end = min(start + chunk_rows, hidden.shape[0])
            log_probs = _float_log_softmax(F.linear(hidden[start:end].to(dtype), weight_c, bias_c))
            nll[start:end] = -log_probs.gather(1, targets[start:end, None]).squeeze(1)
        return nll


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i NLL(softmax(W h_i + b), t_i), with dL/dh, dL/dW and dL/db computed chunk by chunk in forward.

    The gradient of the summed loss with respect to a row's logits is softmax - onehot, known as soon
    as the row's logits are: keeping the three gradients instead of the logits costs one N x d and
    one V x d buffer, and backward only scales them by the incoming gradient. Matmuls run in the
    compute dtype (bf16 under autocast), softmax and accumulation in float32, as in the plain path.
    Returns (loss sum, per-token NLL; the latter carries no gradient).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_rows):
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        dtype = _compute_dtype(hidden.device, weight.dtype)
        with torch.autocast(hidden.device.type, enabled=False):
            weight_c = weight.to(dtype)
            bias_c = bias.to(dtype) if bias is not None else None
            grad_hidden = torch.empty_like(hidden, dtype=torch.float32) if need_hidden else None
            grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
            grad_bias = torch.zeros_like(bias, dtype=torch.float32) if need_bias else None
            nll = hidden.new_empty(hidden.shape[0], dtype=torch.float32)
            rows = torch.arange(min(chunk_rows, hidden.shape[0]), device=hidden.device)
            for start in range(0, hidden.shape[0], chunk_rows):
                end = min(start + chunk_rows, hidden.shape[0])
                chunk, target = hidden[start:end].to(dtype), targets[start:end]
                log_probs = _float_log_softmax(F.linear(chunk, weight_c, bias_c))
                nll[start:end] = -log_probs.gather(1, target[:, None]).squeeze(1)
                grad_logits = log_probs.exp_()  # softmax - onehot: the gradient of the chunk's summed loss
                grad_logits[rows[: end - start], target] -= 1.0
                if need_bias:
                    grad_bias += grad_logits.sum(0)
                grad_logits = grad_logits.to(dtype)
                if need_hidden:
                    grad_hidden[start:end] = grad_logits @ weight_c
                if need_weight and dtype == torch.float32:
                    grad_weight.addmm_(grad_logits.t(), chunk)  # no V x d temporary
                elif need_weight:
                    grad_weight += grad_logits.t() @ chunk
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(nll)
        return nll.sum(), nll

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll):
        grads = [None if g is None else (g * grad_loss).to(dtype) for g, dtype in zip(ctx.saved_tensors, ctx.dtypes)]
        return (*grads, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         targets: torch.Tensor, chunk_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed NLL, per-token NLL) of `targets` (N) under the logits `hidden @ weight.T + bias`, in chunks."""
    chunk_rows = chunk_rows or chunk_rows_for(weight.shape[0])
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias)):
        return _LinearCrossEntropy.apply(hidden, weight, bias, targets, chunk_rows)
    nll = token_nll(hidden, weight, bias, targets, chunk_rows)
    return nll.sum(), nll


@dataclass
class ChunkedLossOutput(ModelOutput):
    """The model's loss, and per sequence [summed NLL, predicted tokens] (batch x 2): what exact
    perplexity needs, in place of the logits."""

    loss: torch.Tensor | None = None
    sequence_sums: torch.Tensor | None = None


def shifted_labels(labels: torch.Tensor) -> torch.Tensor:
    """Labels aligned with the logits that predict them (position t's logits predict label t+1)."""
    return F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]


def sequence_sums(nll: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sequence [summed NLL, predicted tokens] from the NLL of the labelled positions of `mask`."""
    rows = mask.nonzero()[:, 0]
    sums = torch.zeros(mask.shape[0], dtype=torch.float32, device=nll.device).index_add_(0, rows, nll.detach())
    return torch.stack([sums, mask.sum(dim=1).to(torch.float32)], dim=1)


def unwrap_model(model):
    """The transformers model inside DDP, torch.compile and PEFT wrappers."""
    while True:
        if isinstance(getattr(model, "module", None), torch.nn.Module):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        elif callable(getattr(model, "get_base_model", None)):
            model = model.get_base_model()
        else:
            return model


def unsharded_class(module) -> type:
    """A module's own class under the one FSDP 2 swaps in when it shards it (`FSDPLinear` for a Linear). Its LM
    head stays gathered from the end of the forward pass to the start of the backward pass (accelerate shards it
    in a group that is not resharded after forward), so the loss may read its weight as on one process."""
    cls = type(module)
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a PyTorch built without distributed support
        return cls
    if issubclass(cls, FSDPModule):
        return next(base for base in cls.__mro__[1:] if not issubclass(base, FSDPModule))
    return cls


def _is_sharded(tensor: torch.Tensor) -> bool:
    """A DTensor shard (FSDP 2 between a layer's forward and backward when it reshards after forward)."""
    return hasattr(tensor, "_local_tensor")


def fast_path_problem(model) -> str | None:
    """Why this model's loss cannot be computed from its last hidden state (None when it can)."""
    inner = unwrap_model(model)
    config = getattr(inner, "config", None)
    for name in LOGIT_TRANSFORMS:
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0):
            return f"its config sets {name}={value}, so its logits are more than the LM head's output"
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if unsharded_class(head) is not torch.nn.Linear:
        return f"its LM head is a {type(head).__name__}, not a plain Linear layer"
    if "logits_to_keep" not in inspect.signature(inner.forward).parameters:
        return f"{type(inner).__name__}.forward takes no logits_to_keep"
    return None


def label_nll(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
              labels: torch.Tensor) -> torch.Tensor:
    """NLL of each label given the tokens before it (batch x length-1; 0 where the label is -100), for
    evaluation without gradients: from the last hidden state where the model allows it (no full logits),
    else from the model's logits."""
    shift = labels[:, 1:]
    mask = shift != IGNORE_INDEX
    nll = torch.zeros(shift.shape, dtype=torch.float32, device=labels.device)
    with torch.no_grad():
        if fast_path_problem(model) is None:
            outputs = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                            output_hidden_states=-1, logits_to_keep=1)
            hidden = outputs.hidden_states[-1] if getattr(outputs, "hidden_states", None) else None
            head = unwrap_model(model).get_output_embeddings()
            if hidden is not None and _head_reproduces(head, hidden[:, -1], outputs.logits[:, -1]):
                nll[mask] = token_nll(hidden[:, :-1][mask], head.weight, head.bias, shift[mask])
                return nll
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1].float()
        nll[mask] = F.cross_entropy(logits[mask], shift[mask], reduction="none")
    return nll


class ChunkedCausalLMLoss:
    """The model's causal-LM loss, computed from its last hidden state (see the module docstring).

    `forward_for(model)` gives what the Trainer should call in place of the model: a function that
    runs the model's forward once (keeping the logits of the last position only) and returns a
    `ChunkedLossOutput`. On the first batch the head applied to the returned hidden state is compared
    with those logits; a model whose logits are computed otherwise falls back to its own loss.
    """

    def __init__(self, autocast=contextlib.nullcontext, log_warnings: bool = True, chunk_rows: int | None = None):
        """`autocast`: the mixed-precision context of the model's forward (the Trainer's
        `accelerator.autocast`, which wraps only the model's forward), so that the head runs in the
        same precision as it would inside the model. `log_warnings`: on the main process only."""
        self.autocast = autocast
        self.log_warnings = log_warnings
        self.chunk_rows = chunk_rows
        self.problem: str | None = None
        self.verified = False

    @property
    def active(self) -> bool:
        return self.problem is None

    def forward_for(self, model):
        if self.problem is None and not self.verified:
            self._give_up(fast_path_problem(model))
        if self.problem is not None:
            return model

        def forward(**batch):
            if "labels" not in batch:  # a label smoother or compute_loss_func took them: the model's own path
                return model(**batch)
            output = self(model, batch)
            return output if output is not None else model(**batch)

        return forward

    def _give_up(self, problem: str | None) -> None:
        if problem:
            self.problem = problem
            if self.log_warnings:
                logger.warning("chunked LM loss off: %s; using the model's own loss (full logits)", problem)

    def __call__(self, model, batch: dict) -> ChunkedLossOutput | None:
        """Loss and per-sequence sums of a batch with labels; None when the model turns out not to fit."""
        batch = dict(batch)
        labels = batch.pop("labels")
        shift = batch.pop("shift_labels", None)
        shift = shifted_labels(labels) if shift is None else shift
        num_items_in_batch = batch.pop("num_items_in_batch", None)
        for name in ("use_cache", "output_hidden_states", "logits_to_keep"):
            batch.pop(name, None)
        outputs = model(**batch, use_cache=False, output_hidden_states=-1, logits_to_keep=1)
        hidden = outputs.hidden_states[-1] if getattr(outputs, "hidden_states", None) else None
        last_logits = outputs.logits[:, -1]
        del outputs  # the other layers' hidden states, if the model returned them all
        head = unwrap_model(model).get_output_embeddings()
        with self.autocast():
            if not self.verified:
                if hidden is None:
                    self._give_up("the model returned no hidden states")
                    return None
                if _is_sharded(head.weight):
                    self._give_up("its LM head's weight is sharded after the forward pass")
                    return None
                if not _head_reproduces(head, hidden[:, -1], last_logits):
                    self._give_up("its logits differ from its LM head applied to its last hidden state")
                    return None
                self.verified = True
            return self._loss(hidden, head, shift, num_items_in_batch)

    def _loss(self, hidden, head, shift, num_items_in_batch) -> ChunkedLossOutput:
        mask = shift != IGNORE_INDEX
        total, nll = linear_cross_entropy(hidden[mask], head.weight, head.bias, shift[mask], self.chunk_rows)
        if num_items_in_batch is not None:  # a sum over the whole (accumulated) batch, as the model does
            if torch.is_tensor(num_items_in_batch):
                num_items_in_batch = num_items_in_batch.to(total.device)
            loss = total / num_items_in_batch
        else:
            loss = total / mask.sum()  # the mean over labelled tokens (nan without any, as the model gives)
        return ChunkedLossOutput(loss=loss, sequence_sums=sequence_sums(nll, mask))


def _head_reproduces(head, last_hidden: torch.Tensor, logits: torch.Tensor) -> bool:
    """Whether the model's logits are its head's output, up to the rounding of the logits' dtype (a bf16 matmul
    of another shape may round differently); a scale on the logits is far outside that."""
    with torch.no_grad():
        expected = head(last_hidden).float()
        dtype = _compute_dtype(last_hidden.device, head.weight.dtype)  # the logits may have been upcast since
        tolerance = max(1e-4, 4 * torch.finfo(dtype).eps) * float(expected.abs().max().clamp(min=1.0))
        return bool((logits.float() - expected).abs().max() <= tolerance)
