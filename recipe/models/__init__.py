"""The model: where its files are, loading it, its adapters, its loss and generating replies with it.

- `source`: `ModelSource`, where a base is read from (a folder, a GGUF base's dequantized folder, a Hub id), settled
  once and passed to every loader.
- `loading`: the tokenizer, config and weights from a source.
- `quantization`: k-bit bases through bitsandbytes (what QLoRA loads).
- `lora`: LoRA adapters, the base an adapter names, the k-bit base they train on and merging them.
- `gguf_base`: a GGUF file as a base, dequantized once into a float folder.
- `bases`: pretrained bases the recipe fetches itself, with or without the Hub.
- `offline`: the tiny offline model of the smoke recipes and the tests.
- `trained`: a trained model (or a base) loaded the way its run trained it.
- `loss`: the LM loss without full logits.
- `generation`: prompts in the training format, replies cut where the turn ends, the chat session.
"""

from .bases import KNOWN_BASES, get_base_model
from .generation import ChatSession, chat_speakers
from .loading import get_model, get_tokenizer
from .lora import apply_lora
from .offline import OFFLINE_MODEL_DIR, build_offline_model_dir
from .source import ModelSource, resolve_model_source
from .trained import LoadedModel, load_model_for_evaluation

__all__ = [
    "KNOWN_BASES",
    "OFFLINE_MODEL_DIR",
    "ChatSession",
    "LoadedModel",
    "ModelSource",
    "apply_lora",
    "build_offline_model_dir",
    "chat_speakers",
    "get_base_model",
    "get_model",
    "get_tokenizer",
    "load_model_for_evaluation",
    "resolve_model_source",
]
