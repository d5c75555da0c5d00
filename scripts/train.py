"""Fine-tune a causal LM on dialogues: full fine-tuning or LoRA, one process or many.

    python scripts/train.py --config recipe/configs/smoke.yaml            # offline, under a minute on CPU
    accelerate launch --config_file accelerate_config.yaml scripts/train.py --config recipe/configs/distilgpt2-lora.yaml
    python scripts/train.py --config recipe/configs/smoke.yaml --num_train_epochs 1 --output_dir outputs/try

Without --config, runs recipe/configs/distilgpt2-full.yaml. Every option is listed by --help, by stage, and on
docs/options.md.
"""

from recipe.common.cli import setup_logging, user_errors
from recipe.config import (
    DEFAULT_RECIPE,
    DataArguments,
    LoraArguments,
    ModelArguments,
    RecipeParser,
    TrackingArguments,
    TrainingOptions,
)


def main(model_args, data_args, lora_args, training_args, tracking_args=None):
    from recipe.training.run import run_training  # torch and transformers: after the command line is accepted

    return run_training(model_args, data_args, lora_args, training_args, tracking_args)


def parser() -> RecipeParser:
    """The options by stage; TrainingOptions come back as DialogueTrainingArguments (every Trainer option)."""
    return RecipeParser((ModelArguments, DataArguments, LoraArguments, TrainingOptions, TrackingArguments),
                        default_config=DEFAULT_RECIPE, description=__doc__, prog="scripts/train.py")


if __name__ == "__main__":
    setup_logging()
    with user_errors():
        *configs, _ = parser().parse_args_and_config()
        main(*configs)
