"""Show exactly what the model will see: the formatted train/validation splits and a data report.

    python scripts/prepare_data.py --config recipe/configs/smoke.yaml --output_dir prepared/
    python scripts/prepare_data.py --data_path my_dialogues.jsonl --tokenizer_name_or_path recipe/assets/tiny-gpt2 \
        --output_dir prepared/ --train_on_speakers Bob

Writes DIR/train.jsonl and DIR/validation.jsonl ({"text": ...} per example, after windowing, with
EOS written out) and DIR/data_report.json, and prints a summary. Training runs the same code.
"""

import os
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
    from recipe.models import get_tokenizer, resolve_model_source
    from recipe.models.loading import check_max_length

    # The tokenizer's folder or Hub id, settled as get_tokenizer would: the base's own, unless --tokenizer_name_or_path
    # names another (then get_tokenizer reads that, and the base is looked at only where it already is).
    source = None if model_args.tokenizer_name_or_path else resolve_model_source(model_args, "tokenizer",
                                                                                   needs=("tokenizer",))
    config = local_model_config(model_args, source)
    if config is not None:  # a max_length training would refuse, refused before the data is read
        check_max_length(config, data_args.max_length)
    tokenizer = get_tokenizer(model_args, source)
    prepared = build_datasets(data_args, tokenizer)
    paths = write_prepared_data(prepared, tokenizer, prepare_args.output_dir)
    print(format_report(prepared.report))
    print("wrote " + ", ".join(str(p) for p in paths))


def local_model_config(model_args: ModelArguments, source=None):
    """The base's config, read only where it already is, never from the network: the config.json of `source` (the
    folder the tokenizer comes from; for a GGUF base, the folder made from it) or, without one, of
    --model_name_or_path's folder, or a Hub model's in the local cache. None where there is none, or it cannot be
    read: a tokenizer alone has no positions, and none is made up (training reads the base and checks again)."""
    from huggingface_hub import try_to_load_from_cache
    from transformers import AutoConfig

    from recipe.common.hub import is_hub_id

    if source is None and (model_args.gguf_file or model_args.model_name_or_path.lower().endswith(".gguf")):
        return None  # a GGUF base beside a tokenizer of its own: not dequantized for this check alone
    path = source.path if source is not None else model_args.model_name_or_path
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            return None
    elif not (is_hub_id(path) and isinstance(try_to_load_from_cache(path, "config.json",
                                                                    revision=model_args.model_revision), str)):
        return None
    try:
        return AutoConfig.from_pretrained(path, revision=model_args.model_revision, local_files_only=True,
                                          trust_remote_code=model_args.trust_remote_code)
    except (OSError, ValueError):  # unreadable (damaged, unknown type): the tokenizer's loading or training says why
        return None


def parser() -> RecipeParser:
    return RecipeParser((ModelArguments, DataArguments, PrepareArguments), default_config=DEFAULT_RECIPE,
                        description=__doc__, prog="scripts/prepare_data.py")


if __name__ == "__main__":
    setup_logging()
    with user_errors():
        # A recipe's output_dir is where training writes; here --output_dir must be given on the command line.
        *configs, _ = parser().parse_args_and_config(yaml_ignored_keys=("output_dir",))
        main(*configs)
