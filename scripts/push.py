"""Push a finished run to the Hugging Face Hub: model or LoRA adapter, tokenizer, model card, results.

    python scripts/push.py outputs/smoke-full --hub_model_id you/dialogue-smoke
    python scripts/push.py outputs/distilgpt2-lora                       # hub_model_id from run_config.yaml
    python scripts/push.py outputs/distilgpt2-lora --hub_merged_model_id you/distilgpt2-dialogue-merged
    python scripts/push.py outputs/smollm2-lora --gguf                  # also every .gguf export and its Modelfile

This is how a push that failed during training is retried. The token comes from HF_TOKEN or
`hf auth login`. When the Hub cannot be reached it stops within seconds and says so (exit status 2).
"""

import argparse
import sys

from recipe.common.cli import say, setup_logging, user_errors
from recipe.config.command_line import OptionsParser


def main(run_dir: str, hub_model_id: str | None, hub_private_repo: bool | None, hub_merged_model_id: str | None,
         include_checkpoints: bool, hub_revision: str | None, gguf: list[str] | None = None) -> list[str]:
    from recipe.tracking import HubPushError, push_run_dir  # torch and the Hub client: after the command line

    try:
        return push_run_dir(run_dir, hub_model_id, private=hub_private_repo, merged_repo_id=hub_merged_model_id,
                            include_checkpoints=include_checkpoints, revision=hub_revision, gguf=gguf)
    except HubPushError as error:  # an OSError, not a UserError (as huggingface_hub's own are): said the same way
        say(f"error: {error}")
        sys.exit(2)


def _bool(text: str) -> bool:
    if text.lower() not in {"true", "false"}:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() == "true"


def parser() -> argparse.ArgumentParser:
    """A bad command line is a ConfigError (one line, exit status 2) like every other script's."""
    options = OptionsParser(prog="scripts/push.py", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_argument("run_dir", help="output directory of a finished training run")
    options.add_argument("--hub_model_id", help="repo to push to (default: hub_model_id of the run's run_config.yaml)")
    options.add_argument("--hub_private_repo", type=_bool, default=None,
                         help="create the repo private, true or false (default: the Hub's, public)")
    options.add_argument("--hub_merged_model_id",
                         help="also push merged/ (a LoRA run with merge_lora) to this repo")
    options.add_argument("--include_checkpoints", type=_bool, default=False,
                         help="also push every checkpoint-N/ folder, to checkpoint-N/ in the repo, true or false "
                              "(default: false)")
    options.add_argument("--hub_revision", help="branch to push to (default: main)")
    options.add_argument("--gguf", nargs="*", metavar="FILE",
                         help="also push GGUF exports (scripts/export_gguf.py), each with the Modelfile beside it, to "
                              "the run's repo; without FILE, every .gguf in the run directory")
    return options


if __name__ == "__main__":
    setup_logging()
    with user_errors():
        urls = main(**vars(parser().parse_args()))
    print("\n".join(urls))
