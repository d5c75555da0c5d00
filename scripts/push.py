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

from recipe.common.cli import setup_logging, user_errors
from recipe.tracking import HubPushError, push_run_dir


def main(run_dir: str, hub_model_id: str | None, hub_private_repo: bool | None, hub_merged_model_id: str | None,
         include_checkpoints: bool, hub_revision: str | None, gguf: list[str] | None = None) -> list[str]:
    return push_run_dir(run_dir, hub_model_id, private=hub_private_repo, merged_repo_id=hub_merged_model_id,
                        include_checkpoints=include_checkpoints, revision=hub_revision, gguf=gguf)


def _bool(text: str) -> bool:
    if text.lower() not in {"true", "false"}:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() == "true"


if __name__ == "__main__":
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="output directory of a finished training run")
    parser.add_argument("--hub_model_id", help="repo to push to (default: hub_model_id of the run's run_config.yaml)")
    parser.add_argument("--hub_private_repo", type=_bool, default=None, help="create the repo private (true/false)")
    parser.add_argument("--hub_merged_model_id", help="also push merged/ (a LoRA run with merge_lora) to this repo")
    parser.add_argument("--include_checkpoints", type=_bool, default=False,
                        help="also push every checkpoint-N/ folder, to checkpoint-N/ in the repo (true/false)")
    parser.add_argument("--hub_revision", help="branch to push to (default: main)")
    parser.add_argument("--gguf", nargs="*", metavar="FILE",
                        help="also push GGUF exports (scripts/export_gguf.py), each with the Modelfile beside it, to "
                             "the run's repo; without FILE, every .gguf in the run directory (default: none)")
    arguments = parser.parse_args()
    with user_errors():
        try:
            urls = main(**vars(arguments))
        except HubPushError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
    print("\n".join(urls))
