"""Export a trained model to one GGUF file for llama.cpp, Ollama and LM Studio, with an Ollama Modelfile beside it.

    python scripts/export_gguf.py --model_path outputs/smollm2-lora   # outputs/smollm2-lora/gguf/smollm2-lora.F16.gguf
    python scripts/export_gguf.py --model_path outputs/smollm2-lora --outtype q8_0   # 8-bit blocks, half of f16
    python scripts/export_gguf.py --model_path outputs/smoke-full --output exports/smoke.gguf

A full run, a LoRA adapter (merged into its base in memory) or a QLoRA adapter (merged into its full-precision
base); Llama-family (Llama, Mistral, Qwen2, SmolLM2) and GPT-2 models. The file carries the tokenizer and the run's
dialogue format; FILE.Modelfile beside it runs it in Ollama: `ollama create NAME -f FILE.Modelfile`.
"""

import argparse
import dataclasses

from recipe.common.cli import setup_logging, user_errors
from recipe.export import OUTTYPES, GGUFExportArguments, export_gguf, format_export


def main(args: GGUFExportArguments):
    result = export_gguf(args)
    print(format_export(result))
    return result


def parser() -> argparse.ArgumentParser:
    """Flags declared one by one, as push.py declares its own; each default and help is GGUFExportArguments'."""
    fields = {f.name: f for f in dataclasses.fields(GGUFExportArguments)}

    def help_of(name: str) -> str:
        return fields[name].metadata["help"]

    options = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    options.add_argument("--model_path", required=True, help=help_of("model_path"))
    options.add_argument("--outtype", choices=OUTTYPES, default=fields["outtype"].default, help=help_of("outtype"))
    options.add_argument("--output", help=help_of("output"))
    options.add_argument("--base_model", help=help_of("base_model"))
    options.add_argument("--speaker", help=help_of("speaker"))
    options.add_argument("--user", help=help_of("user"))
    return options


if __name__ == "__main__":
    setup_logging()
    with user_errors():
        main(GGUFExportArguments(**vars(parser().parse_args())))
