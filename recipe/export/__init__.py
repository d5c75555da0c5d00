"""Exporting a trained model for other runtimes: one GGUF file for llama.cpp, Ollama and LM Studio.

- `gguf_export`: `export_gguf`, what scripts/export_gguf.py runs: load, write, and list the file in the run's card.
- `gguf_file`: the GGUF file itself: tensors in llama.cpp's layout, the tokenizer, the special tokens.
- `dialogue_format`: the run's dialogue format for clients: the file's chat template and the Ollama Modelfile.
"""

from ..config import OUTTYPES, GGUFExportArguments  # the options live with every other script's (recipe/config)
from .gguf_export import ExportResult, export_gguf, format_export

__all__ = ["OUTTYPES", "ExportResult", "GGUFExportArguments", "export_gguf", "format_export"]
