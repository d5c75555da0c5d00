"""The README's table of what fits on 8, 24 and 80 GB GPUs, computed by the memory plan (recipe/memory/plan.py) from
the published configs of four model sizes: computed, not run.

    python scripts/memory_table.py            # prints the Markdown table the README holds

The runs are the recipe's defaults on a GPU: 8 rows of 128 tokens per step, bf16 autocast, float32 weights
(--dtype float32), fused AdamW, the chunked loss, packing; LoRA r 16 on every linear layer, dropout 0.05.
"""

from transformers import LlamaConfig, Qwen2Config

from recipe.memory import FIT_SHARE, GIB, PlanOptions, plan_memory, shape_from_config

# From each model's config.json on the Hub (the shapes the plan reads), written out: no download.
MODELS = {
    "0.5B (Qwen2.5-0.5B)": Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                       num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                                       tie_word_embeddings=True),
    "1.5B (Qwen2.5-1.5B)": Qwen2Config(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                                       num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                                       tie_word_embeddings=True),
    "7B (Llama-2-7B)": LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                   num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                                   tie_word_embeddings=False),
    "13B (Llama-2-13B)": LlamaConfig(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                                     num_attention_heads=40, num_key_value_heads=40, vocab_size=32000,
                                     tie_word_embeddings=False),
}
MODES = {
    "full fine-tuning": {},
    "LoRA": {"use_lora": True},
    "LoRA, bf16 base (`--dtype bfloat16`)": {"use_lora": True, "weight_bytes": 2},
    "QLoRA (`--load_in_4bit true`)": {"use_lora": True, "bits": 4},
}
GPUS_GB = (8, 24, 80)


def fits(peak_plain: int, peak_checkpointed: int, gigabytes: int) -> str:
    room = FIT_SHARE * gigabytes * GIB
    return "yes" if peak_plain <= room else "with checkpointing" if peak_checkpointed <= room else "no"


def memory_table() -> str:
    header = ("| model | mode | peak (GB) | with gradient checkpointing (GB) | "
              + " | ".join(f"{gb} GB" for gb in GPUS_GB) + " |")
    lines = [header, "|---" * (4 + len(GPUS_GB)) + "|"]
    for name, config in MODELS.items():
        shape = shape_from_config(config, name=name)
        for mode, changes in MODES.items():
            options = PlanOptions(batch=8, row_length=128, autocast="bf16", **changes)
            plain = plan_memory(shape, options).peak
            checkpointed = plan_memory(shape, PlanOptions(**{**options.__dict__, "gradient_checkpointing": True})).peak
            cells = [fits(plain, checkpointed, gb) for gb in GPUS_GB]
            lines.append(f"| {name} | {mode} | {plain / GIB:.1f} | {checkpointed / GIB:.1f} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(memory_table(), end="")
