"""A run's model as one GGUF file, for llama.cpp, Ollama and LM Studio, with its tokenizer and dialogue format.

    python scripts/export_gguf.py --model_path outputs/smollm2-lora --outtype q8_0

The model loads as `scripts/evaluate.py` loads it, in float32: a full run as saved; a LoRA adapter on its base,
merged in memory; a QLoRA adapter on its base loaded at full precision (the weights the 4-bit base was quantized
from, as `--merge_lora` merges), not on dequantized 4-bit weights. Tensors are named with gguf's own map
(`gguf.get_tensor_name_map`) and laid out as llama.cpp's convert_hf_to_gguf.py writes them: a Llama's q and k rows
permuted for llama.cpp's rope (transformers' GGUF reader undoes it on load), GPT-2's Conv1D weights transposed,
1-D tensors (norms, biases) kept in float32. The file carries the tokenizer (byte-level BPE: tokens, types,
merges, pre-tokenizer), the special tokens, and the run's dialogue format: its chat template when it trained with
one, else a Jinja template that writes `Speaker: text` turns as training did; the token that ends a turn is the
file's end-of-turn token, so llama.cpp stops a reply there. An Ollama Modelfile beside the file carries the same
format as a Go template with its stop strings.

The file is written to a temporary name and renamed when whole: an interrupted export leaves no `.gguf` behind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..common.files import atomic_write_text
from ..common.run_dir import GGUF_DIR, GGUF_SUFFIX, RunDir, modelfile_of
from ..config import ConfigError, GGUFExportArguments, run_data_arguments
from ..models.trained import load_model_for_evaluation
from ..tracking import refresh_model_cards
from .dialogue_format import dialogue_format, modelfile_text
from .gguf_file import family_of, require_gguf, write_gguf


@dataclass
class ExportResult:
    path: Path
    modelfile: Path
    outtype: str
    size_bytes: int
    architecture: str
    kind: str  # what was exported: full, lora (merged), checkpoint-..., base
    dialogue_format: str
    cards: list[Path] = field(default_factory=list)



# -- the model

def load_model_for_export(model_path: str, base_model: str | None = None):
    """(model, tokenizer, loaded) in float32 on the CPU, a LoRA or QLoRA adapter merged into its full-precision base."""
    loaded = load_model_for_evaluation(model_path, base_model, dtype="float32")  # a k-bit base at full precision
    model = loaded.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model.to("cpu").eval(), loaded.tokenizer, loaded


def model_name(model_path: str | os.PathLike) -> str:
    """The exported model's name: the run's (a checkpoint's: RUN-checkpoint-N), else the folder's."""
    path = Path(model_path).resolve()
    run = RunDir.containing(path)
    return path.name if run is None or run.path == path else f"{run.path.name}-{path.name}"


def default_output(model_path: str | os.PathLike, outtype: str) -> Path:
    """MODEL_PATH/gguf/NAME.OUTTYPE.gguf."""
    return Path(model_path) / GGUF_DIR / f"{model_name(model_path)}.{outtype.upper()}{GGUF_SUFFIX}"


def export_gguf(args: GGUFExportArguments) -> ExportResult:
    """Export the model at args.model_path to one GGUF file and its Modelfile; refresh the run's model card when
    the file lands in the run directory (the card lists it)."""
    require_gguf()
    if not Path(args.model_path).is_dir():
        raise ConfigError(f"model_path {args.model_path} is not a folder; pass a training output dir, checkpoint, "
                          "adapter or model folder")
    output = Path(args.output) if args.output else default_output(args.model_path, args.outtype)
    if output.suffix != GGUF_SUFFIX:
        raise ConfigError(f"output {output} must end with {GGUF_SUFFIX}")
    model, tokenizer, loaded = load_model_for_export(args.model_path, args.base_model)
    family = family_of(model, args.model_path)
    run = loaded.run_dir
    data_args = run_data_arguments(run.read_config() if run else None)
    dialogue = dialogue_format(data_args, tokenizer, run, args.user, args.speaker, args.model_path)
    write_gguf(output, model, tokenizer, family, dialogue, args.outtype, model_name(args.model_path))
    modelfile = atomic_write_text(modelfile_of(output), modelfile_text(output.name, dialogue))
    cards = []
    if run is not None and run.is_finished() and output.parent.resolve() == run.gguf_dir.resolve():
        cards = refresh_model_cards(run)
    return ExportResult(output, modelfile, args.outtype, output.stat().st_size, family.arch.lower(), loaded.kind,
                        dialogue.description, cards)


def format_export(result: ExportResult) -> str:
    return "\n".join([
        f"gguf: {result.path} ({result.size_bytes / 1e6:,.1f} MB, {result.outtype}, {result.architecture}, "
        f"from the {result.kind} model)",
        f"dialogue format: {result.dialogue_format}",
        f"ollama: ollama create NAME -f {result.modelfile} && ollama run NAME",
        f"llama.cpp: llama-cli -m {result.path} --jinja -cnv",
        *(f"model card: {card}" for card in result.cards),
    ])
