"""Export a trained model to one GGUF file for llama.cpp, Ollama and LM Studio, with an Ollama Modelfile beside it.

    python scripts/export_gguf.py --model_path outputs/smollm2-lora   # outputs/smollm2-lora/gguf/smollm2-lora.F16.gguf
    python scripts/export_gguf.py --model_path outputs/smollm2-lora --outtype q8_0   # 8-bit blocks, half of f16
    python scripts/export_gguf.py --model_path outputs/smoke-full --output exports/smoke.gguf

A full run, a LoRA adapter (merged into its base in memory) or a QLoRA adapter (merged into its full-precision
base); Llama-family (Llama, Mistral, Qwen2, SmolLM2) and GPT-2 models. The file carries the tokenizer and the run's
dialogue format; FILE.Modelfile beside it runs it in Ollama: `ollama create NAME -f FILE.Modelfile`.
"""

from recipe.common.cli import setup_logging, user_errors
from recipe.config import GGUFExportArguments, RecipeParser


def main(args: GGUFExportArguments):
    from recipe.export import export_gguf, format_export  # torch and transformers: after the command line is accepted

    result = export_gguf(args)
    print(format_export(result))
    return result


def parser() -> RecipeParser:
    return RecipeParser((GGUFExportArguments,), description=__doc__, prog="scripts/export_gguf.py", takes_recipe=False)


if __name__ == "__main__":
    setup_logging()
    with user_errors():
        args, _ = parser().parse_args_and_config()
        main(args)
