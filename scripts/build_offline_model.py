"""Rebuild recipe/assets/tiny-gpt2: a config-only GPT-2 (2 layers, width 64) and a byte-level BPE
tokenizer trained on the bundled dialogues. The offline recipes and the tests use it; nothing is
downloaded.

    python scripts/build_offline_model.py [--data_path data/sample_dialogues.json] [--vocab_size 2048]
"""

import argparse

from recipe.common.cli import user_errors
from recipe.config import DataArguments
from recipe.config.command_line import OptionsParser
from recipe.data import read_dialogues, render_dialogue
from recipe.models import OFFLINE_MODEL_DIR, build_offline_model_dir


def main(data_path: str, vocab_size: int, output_dir: str) -> None:
    args = DataArguments(data_path=data_path)
    dialogues = read_dialogues(data_path, args).dialogues
    texts = [render_dialogue(d.speakers, d.texts, d.roles, args).text for d in dialogues]
    path = build_offline_model_dir(output_dir, texts, vocab_size)
    print(f"wrote {path} from {len(texts)} dialogues")


def parser() -> argparse.ArgumentParser:
    options = OptionsParser(prog="scripts/build_offline_model.py", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_argument("--data_path", default="data/sample_dialogues.json",
                         help="dialogues the tokenizer is trained on (default: data/sample_dialogues.json)")
    options.add_argument("--vocab_size", type=int, default=2048, help="tokenizer vocabulary size (default: 2048)")
    options.add_argument("--output_dir", default=str(OFFLINE_MODEL_DIR),
                         help="the model folder to write (default: recipe/assets/tiny-gpt2, which the offline recipes "
                              "read)")
    return options


if __name__ == "__main__":
    with user_errors():
        main(**vars(parser().parse_args()))
