"""The tiny offline model of the smoke recipes and the tests: a config and a byte-level BPE tokenizer, no weights,
so `random_init: true` builds the model and nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path

OFFLINE_MODEL_DIR = Path(__file__).parent.parent / "assets" / "tiny-gpt2"
EOS_TOKEN = "<|endoftext|>"


def build_offline_model_dir(output_dir: str | os.PathLike, texts: list[str], vocab_size: int = 2048) -> Path:
    """Write a config-only GPT-2 model directory with a byte-level BPE tokenizer trained on `texts`.

    This is what `recipe/assets/tiny-gpt2` holds (built from data/sample_dialogues.json by
    scripts/build_offline_model.py): no weights, so `random_init: true` builds the model; no download.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPT2Config, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, unk_token=EOS_TOKEN, model_max_length=512
    )
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=512,
        n_embd=64,
        n_layer=2,
        n_head=4,
        # No dropout: a random smoke model has nothing to regularise, and runs compare exactly.
        attn_pdrop=0.0,
        embd_pdrop=0.0,
        resid_pdrop=0.0,
        summary_first_dropout=0.0,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(output_dir)
    config.save_pretrained(output_dir)
    return output_dir
