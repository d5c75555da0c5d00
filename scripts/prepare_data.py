"""Show exactly what the model will see: the formatted train/validation splits and a data report.

    python scripts/prepare_data.py --config recipe/configs/smoke.yaml --output_dir prepared/
    python scripts/prepare_data.py --data_path my_dialogues.jsonl --tokenizer_name_or_path recipe/assets/tiny-gpt2 \
        --output_dir prepared/ --train_on_speakers Bob

Writes DIR/train.jsonl and DIR/validation.jsonl ({"text": ...} per example, after windowing, with
EOS written out) and DIR/data_report.json, and prints a summary. Training runs the same code.
"""

from dataclasses import dataclass, field

from recipe.common.cli import setup_logging, user_errors
from recipe.config import DEFAULT_RECIPE, DataArguments, ModelArguments, RecipeParser


@dataclass
class PrepareArguments:
    """Where the formatted splits and the data report go."""

    help_group = "Output"
    output_dir: str = field(metadata={"help": "Folder for train.jsonl, validation.jsonl and data_report.json."})


def main(model_args: ModelArguments, data_args: DataArguments, prepare_args: PrepareArguments) -> None:
    from recipe.data import build_datasets, format_report, write_prepared_data  # after the command line is accepted
    from recipe.models import get_tokenizer

    tokenizer = get_tokenizer(model_args)
    prepared = build_datasets(data_args, tokenizer)
    paths = write_prepared_data(prepared, tokenizer, prepare_args.output_dir)
    print(format_report(prepared.report))
    print("wrote " + ", ".join(str(p) for p in paths))


def parser() -> RecipeParser:
    return RecipeParser((ModelArguments, DataArguments, PrepareArguments), default_config=DEFAULT_RECIPE,
                        description=__doc__, prog="scripts/prepare_data.py")


if __name__ == "__main__":
    setup_logging()
    with user_errors():
        # A recipe's output_dir is where training writes; here --output_dir must be given on the command line.
        *configs, _ = parser().parse_args_and_config(yaml_ignored_keys=("output_dir",))
        main(*configs)
