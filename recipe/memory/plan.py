"""The memory plan: what a training run will hold at its peak, estimated from the model's config before the
model loads, against the device's free memory.

Why: a run that does not fit dies when it first runs out (a 6.5B model on a 24 GB CPU machine was killed by
the kernel, exit 137, with no message). The plan is printed in the start-up summary and by `--dry_run true`;
one that does not fit stops the run before the model loads, naming the options that would make it fit.

What is counted, in bytes (`plan_memory`, plain arithmetic over `ModelShape`, the config's shapes):
- weights at their storage precision (a 4-bit layer: half a byte per weight plus its block scales), and the
  LoRA adapters;
- gradients and optimizer states of what trains (AdamW: two states per trainable weight);
- activations saved for backward, per token and decoder layer, from what autograd keeps for this layer
  shape (norm inputs, the attention's q/k/v/output, the MLP's intermediates, each linear layer's input where
  its weight trains, LoRA dropout's masks and copies), at the activation precision (2 bytes under bf16/fp16
  autocast for what runs in it), or only each layer's input with gradient checkpointing plus one layer
  recomputed in backward;
- the chunked loss's buffers (recipe/models/loss.py) and the largest short-lived buffer.
The peak is the weights and optimizer states plus the largest of the end of the forward pass, the backward
pass and the optimizer step. Checked against peaks measured by counting tensors (recipe/memory/measured.py):
tests/test_memory.py on the tiny model, benchmarks/memory.py on SmolLM2-135M.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

MIB = 2**20
GIB = 2**30
FIT_SHARE = 0.9  # the plan must fit in 90% of the free memory: allocator slack and what the plan does not count

# Linear layers of a decoder layer by role, by the last part of their name; the role decides which input they read.
ATTN_IN = {"q_proj", "k_proj", "v_proj", "qkv_proj", "c_attn", "query_key_value", "Wqkv", "query", "key", "value"}
ATTN_OUT = {"o_proj", "out_proj", "dense"}
MLP_IN = {"gate_proj", "up_proj", "gate_up_proj", "c_fc", "fc1", "dense_h_to_4h", "w1", "w3"}
MLP_OUT = {"down_proj", "fc2", "dense_4h_to_h", "w2"}


@dataclass(frozen=True)
class LayerLinear:
    name: str
    role: str  # attn_in, attn_out, mlp_in, mlp_out
    d_in: int
    d_out: int
    has_bias: bool = False


@dataclass(frozen=True)
class ModelShape:
    """The shapes the plan needs, read from a config (through a weightless model on the meta device)."""

    parameters: int
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    layer_linears: tuple[LayerLinear, ...]  # of one decoder layer
    mlp: str  # gated (SiLU-gated, Llama), gelu_tanh (GPT-2's composite GELU), plain (one activation)
    norm_weights_saved: bool  # an RMSNorm-style norm keeps its normalised input for its weight's gradient
    attention_dropout: float = 0.0
    residual_dropout: float = 0.0
    name: str = ""

    @property
    def quantizable(self) -> int:
        """Weights of the linear layers bitsandbytes replaces (every decoder layer's; not the LM head)."""
        return self.layers * sum(lin.d_in * lin.d_out for lin in self.layer_linears)


@dataclass(frozen=True)
class PlanOptions:
    """What the plan depends on beyond the model: the run's options that change memory."""

    batch: int
    row_length: int
    gradient_accumulation: int = 1
    gradient_checkpointing: bool = False
    use_lora: bool = False
    lora_r: int = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] | str | None = None  # None: the recipe's default; "all-linear"; names
    bits: int | None = None  # 4 or 8: a k-bit base
    double_quant: bool = True
    weight_bytes: int = 4  # of the stored float weights (--dtype)
    autocast: str | None = None  # bf16 or fp16 mixed precision
    optimizer: str = "adamw_torch_fused"
    chunked_loss: bool = True
    attention_mask: bool = True  # packing and padding give the attention a 4D mask (and expand grouped k/v)
    eager_attention: bool = False
    random_init: bool = False  # a random k-bit base is built at full precision, then quantized
    sharding: str = "single"  # how the processes divide the run (recipe/config/sharding.py): single, ddp, fsdp, zero1-3
    processes: int = 1

    @property
    def autocast_bytes(self) -> int | None:
        return 2 if self.autocast else None


@dataclass
class MemoryPlan:
    """Bytes of each part of a run at its peak; `parts` is ordered for printing."""

    parts: dict[str, int]
    peak: int
    phase: str  # where the peak falls: forward pass, backward pass, optimizer step or model loading
    activations_other: int  # activations with gradient checkpointing switched the other way
    lora_bytes: int  # LoRA's share: adapters, their gradients, states and activations
    options: PlanOptions
    shape: ModelShape
    free: int | None = None
    free_source: str = ""
    alternatives: list[tuple[str, int]] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.free is None or self.peak <= FIT_SHARE * self.free


def _lora_adapted(shape: ModelShape, options: PlanOptions) -> list[LayerLinear]:
    if not options.use_lora:
        return []
    targets = options.lora_targets
    if targets is None:  # the recipe's default (models.lora.default_lora_targets): GPT-2's names, else all-linear
        names = {lin.name for lin in shape.layer_linears}
        targets = ("c_attn", "c_proj", "c_fc") if names >= {"c_attn", "c_proj", "c_fc"} else "all-linear"
    if targets == "all-linear" or targets == ("all-linear",):
        return list(shape.layer_linears)
    return [lin for lin in shape.layer_linears if lin.name in set(targets)]


def _layer_activations(shape: ModelShape, options: PlanOptions, adapted: list[LayerLinear]) -> tuple[float, float]:
    """(bytes per token, bytes per layer independent of tokens) that one decoder layer keeps for backward."""
    r = options.weight_bytes  # the residual stream and norms run at the weights' precision
    a = options.autocast_bytes or r  # linear layers, attention and the MLP under autocast
    # A bitsandbytes layer computes in its compute dtype but returns its input's dtype (the residual stream's):
    # under autocast the MLP's intermediates stay at full precision.
    a_out = r if options.bits else a
    h, h_q = shape.hidden, shape.heads * shape.head_dim
    grouped = shape.kv_heads < shape.heads
    h_kv = h_q if (options.attention_mask and grouped) else shape.kv_heads * shape.head_dim  # expanded with a mask
    full = not options.use_lora
    per_token = 2 * h * r  # the two norms' inputs
    if full and shape.norm_weights_saved:
        per_token += 2 * h * r
    per_token += (2 * h_q + 2 * h_kv) * a + shape.heads * 4  # q, k, v, output; the softmax statistics
    per_token += {"gated": 3, "gelu_tanh": 4, "plain": 1}[shape.mlp] * shape.intermediate * a_out
    if options.attention_mask:
        per_token += options.row_length * r  # the 4D mask, one per layer
    if options.eager_attention or shape.attention_dropout > 0:
        per_token += shape.heads * options.row_length * 3 * a  # probabilities, dropout mask, dropped
    if shape.residual_dropout > 0:
        per_token += 2 * h * r
    adapted_names = {lin.name for lin in adapted}
    for role in ("attn_in", "mlp_in", "mlp_out"):  # attn_out reads the attention output, kept anyway
        group = [lin for lin in shape.layer_linears if lin.role == role]
        plain_input = full or any(lin.name in adapted_names and options.lora_dropout == 0 for lin in group)
        if group and plain_input:
            per_token += group[0].d_in * a
    for lin in adapted:
        per_token += options.lora_r * a  # lora_B's input
        if options.lora_dropout > 0:  # the dropout mask, and the dropped copy that lora_A keeps
            mask_bytes = {"attn_in": r, "mlp_in": r, "attn_out": a}.get(lin.role, a_out)
            per_token += lin.d_in * (mask_bytes + a)
    per_layer = 0.0
    if options.autocast_bytes and not options.bits:  # a half-precision copy of each weight, kept for backward
        per_layer = sum(lin.d_in * lin.d_out for lin in shape.layer_linears) * options.autocast_bytes
    return per_token, per_layer


def _weights(shape: ModelShape, options: PlanOptions) -> tuple[int, int]:
    """(base weights at their storage precision, LoRA adapter weights)."""
    quantizable = shape.quantizable
    floats = shape.parameters - (quantizable if options.bits else 0)
    stored = floats * options.weight_bytes
    if options.bits == 4:  # packed nibbles, one scale per 64 weights (a byte, plus a float per 256 scales, doubled)
        stored += quantizable // 2 + (quantizable // 64 + quantizable // 64 // 256 * 4 if options.double_quant
                                      else quantizable // 64 * 4)
    elif options.bits == 8:  # a byte per weight, a float scale per output row
        stored += quantizable + shape.layers * sum(lin.d_out for lin in shape.layer_linears) * 4
    adapters = sum(options.lora_r * (lin.d_in + lin.d_out) for lin in _lora_adapted(shape, options)) * shape.layers
    return stored, adapters * 4


def _optimizer_bytes(trainable: int, optimizer: str) -> int:
    if "8bit" in optimizer:
        return 2 * trainable
    if optimizer.startswith("sgd"):
        return 0
    if optimizer.startswith(("adafactor", "adagrad", "rmsprop")):
        return trainable * 4
    return 2 * trainable * 4  # AdamW and its relatives: two float32 states per trainable weight


def plan_memory(shape: ModelShape, options: PlanOptions) -> MemoryPlan:
    """The peak a run with these options holds, in parts (see the module docstring)."""
    r = options.weight_bytes
    a = options.autocast_bytes or r
    tokens = options.batch * options.row_length
    adapted = _lora_adapted(shape, options)
    weights, adapters = _weights(shape, options)
    trainable_weights = adapters // 4 if options.use_lora else shape.parameters
    grad_bytes = adapters if options.use_lora else shape.parameters * r
    optimizer = _optimizer_bytes(trainable_weights, options.optimizer)

    per_token, per_layer = _layer_activations(shape, options, adapted)
    one_layer = tokens * per_token + per_layer
    stored = tokens * (shape.layers * per_token + 2 * shape.hidden * r) + shape.layers * per_layer
    checkpointed = tokens * (shape.layers + 2) * shape.hidden * r + tokens * options.row_length * r
    activations = checkpointed if options.gradient_checkpointing else stored
    activations_other = stored if options.gradient_checkpointing else checkpointed
    lora_activations = 0
    if adapted:
        without = dataclasses.replace(options, use_lora=True, lora_targets=())
        lora_activations = tokens * shape.layers * (per_token - _layer_activations(shape, without, [])[0])

    head_trains = not options.use_lora
    vh = shape.vocab * shape.hidden
    if options.chunked_loss:
        rows = min(tokens, max(64, 2**26 // shape.vocab))
        loss_kept = tokens * shape.hidden * 4 + (vh * 4 if head_trains else 0)
        loss_short = rows * shape.vocab * (a + (4 + a if a != 4 else 0)) + (vh * a if a != r else 0)
        loss_backward = tokens * shape.hidden * 4 + (vh * 4 if head_trains else 0)
    else:  # the model's own loss: full logits, their float copy and log-softmax
        loss_kept = tokens * shape.vocab * (a + 4) + tokens * shape.hidden * a
        loss_short = tokens * shape.vocab * 4
        loss_backward = tokens * shape.vocab * 4
    dequantized = max(lin.d_in * lin.d_out for lin in shape.layer_linears) * 4 if options.bits else 0
    layer_gradients = tokens * (2 * shape.hidden + 2 * shape.intermediate) * 4
    recompute = one_layer if options.gradient_checkpointing else 0
    share = _process_share(shape, options, weights, adapters, grad_bytes, optimizer, trainable_weights)
    grads = share["gradients"]
    accumulated = grads if options.gradient_accumulation > 1 else 0
    head_gradient = vh * 4 if head_trains else 0

    phases = {
        "forward pass": activations + loss_kept + max(loss_short, dequantized) + accumulated + share["gathered"],
        "backward pass": max(activations + loss_kept + loss_backward + recompute,
                             grads + max(head_gradient, share["gradients in flight"]))
        + layer_gradients + dequantized + 2 * share["gathered"],  # one layer gathered ahead in backward
        "optimizer step": grads + (trainable_weights * 4 // share["optimizer divisor"]
                                   if options.optimizer == "adamw_torch" else 0),
    }
    if options.random_init and options.bits:  # the whole float model exists once, before bitsandbytes quantizes it
        phases["model loading"] = shape.parameters * options.weight_bytes - weights - adapters - optimizer
    phase = max(phases, key=phases.get)
    parts = {
        "weights": share["weights"],
        "LoRA adapters": share["adapters"],
        "gradients": grads + share["held gradients"],
        "optimizer states": share["optimizer states"],
        "fp32 master weights": share["master weights"],
        "activations": activations,
        "loss buffers": loss_kept + max(loss_short, dequantized),
    }
    held = share["weights"] + share["adapters"] + share["optimizer states"] + share["master weights"]
    peak = held + share["held gradients"] + phases[phase]
    lora_bytes = adapters * 4 + lora_activations if options.use_lora else 0  # weights, grads, 2 states
    return MemoryPlan(parts, peak, phase, activations_other, lora_bytes, options, shape)


def _process_share(shape: ModelShape, options: PlanOptions, weights: int, adapters: int, grad_bytes: int,
                   optimizer: int, trainable_weights: int) -> dict[str, int]:
    """What one process holds of the weights, gradients and optimizer states under its sharding
    (recipe/config/sharding.py):

    - one process, DDP: everything whole. DDP keeps the gradients in its communication buckets, from its start to
      the end of the run (the recipe makes them the gradients themselves, not a copy).
    - FSDP: weights, gradients and states divided by the processes; each layer is gathered whole for its forward
      and backward passes (in the autocast dtype, FSDP's mixed precision), the embeddings, final norm and LM head
      from the start of the forward pass to their backward; a layer's whole gradients exist until they are
      scattered.
    - DeepSpeed ZeRO: the optimizer states divided, with a float32 copy of the trainable weights (divided); ZeRO-2
      divides the gradients too, ZeRO-3 the weights as well, gathering each layer only while it runs. Gradients
      pass through a reduction bucket of hidden x hidden floats ("auto" in the recipe's DeepSpeed configs).
    """
    n = max(1, options.processes)
    kind = options.sharding
    layer_params = sum(lin.d_in * lin.d_out + (lin.d_out if lin.has_bias else 0) for lin in shape.layer_linears) \
        + 2 * shape.hidden
    tail_params = max(0, shape.parameters - shape.layers * layer_params)  # embeddings, final norm, LM head
    layer_bytes = max(0, weights - tail_params * options.weight_bytes) / max(1, shape.layers)
    trainable_layer = adapters / max(1, shape.layers) if options.use_lora else layer_params * options.weight_bytes
    trainable_tail = 0 if options.use_lora else tail_params * options.weight_bytes
    share = {"weights": weights, "adapters": adapters, "gradients": grad_bytes, "held gradients": 0,
             "optimizer states": optimizer, "master weights": 0, "gathered": 0, "gradients in flight": 0,
             "optimizer divisor": 1}
    if kind == "ddp":
        share.update({"held gradients": grad_bytes, "gradients": 0})
    elif kind == "fsdp":
        gathered_bytes = options.autocast_bytes if options.autocast_bytes and not options.bits else None
        ratio = gathered_bytes / options.weight_bytes if gathered_bytes else 1
        share.update({"weights": weights // n, "adapters": adapters // n, "gradients": grad_bytes // n,
                      "optimizer states": optimizer // n, "optimizer divisor": n,
                      "gathered": int((tail_params * options.weight_bytes + layer_bytes) * ratio),
                      "gradients in flight": int(trainable_layer + trainable_tail)})
    elif kind.startswith("zero"):
        bucket = shape.hidden * shape.hidden * 4
        share.update({"optimizer states": optimizer // n, "master weights": trainable_weights * 4 // n,
                      "optimizer divisor": n, "gradients in flight": bucket})
        if kind in ("zero2", "zero3"):
            share["gradients"] = trainable_weights * 4 // n
        if kind == "zero3":  # the divided gradients live in one buffer from the start
            share.update({"weights": weights // n, "adapters": adapters // n, "gathered": int(layer_bytes),
                          "held gradients": share["gradients"], "gradients": 0})
    return share
