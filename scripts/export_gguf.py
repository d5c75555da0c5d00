"""Export a trained model to one GGUF file for llama.cpp, Ollama and LM Studio, with an Ollama Modelfile beside it.

    python scripts/export_gguf.py --model_path outputs/smollm2-lora                  # -> outputs/smollm2-lora/smollm2-lora.F16.gguf
    python scripts/export_gguf.py --model_path outputs/smollm2-lora --outtype q8_0   # 8-bit blocks, about half the f16 size
    python scripts/export_gguf.py --model_path outputs/smoke-full --output exports/smoke.gguf

A full run, a LoRA adapter (merged into its base in memory) or a QLoRA adapter (merged into its full-precision
base); Llama-family (Llama, Mistral, Qwen2, SmolLM2) and GPT-2 models. The file carries the tokenizer and the run's
dialogue format; FILE.Modelfile beside it runs it in Ollama: `ollama create NAME -f FILE.Modelfile`.
"""

from transformers import HfArgumentParser

from recipe.cli import setup_logging, user_errors
from recipe.gguf_export import GGUFExportArguments, export_gguf, format_export


def main(args: GGUFExportArguments):
    result = export_gguf(args)
    print(format_export(result))
    return result


if __name__ == "__main__":
    setup_logging()
    with user_errors():
        (arguments,) = HfArgumentParser(GGUFExportArguments).parse_args_into_dataclasses()
        main(arguments)
