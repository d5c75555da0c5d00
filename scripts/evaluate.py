"""Evaluate a fine-tuned (or base) model: exact perplexity, per-speaker perplexity, sampled replies
and their quality. By default on the validation split of the run that produced the model.

    python scripts/evaluate.py --model_path outputs/smoke-full
    python scripts/evaluate.py --model_path outputs/smoke-lora                      # adapter on its base
    python scripts/evaluate.py --model_path outputs/smoke-full/checkpoint-29 --do_sample false
    python scripts/evaluate.py --model_path distilgpt2 --data_config outputs/distilgpt2-full/run_config.yaml

Writes RUN_DIR/evaluation.json for a run of this recipe (or a checkpoint of one), ./evaluation-NAME.json for any
other model (a base model's folder is left as it is), or --output_file; prints a table; logs to W&B when the
training run did (see --wandb). Evaluating a run's final model also writes its model card again, with
these figures in its metadata (model-index).
"""

from recipe.common.cli import setup_logging, user_errors
from recipe.common.files import atomic_write_json
from recipe.config import EvaluationArguments, GenerationArguments, RecipeParser


def main(eval_args: EvaluationArguments, gen_args: GenerationArguments) -> dict:
    # torch and transformers: after the command line is accepted (--help and a typo answer at once)
    from recipe.evaluation import (
        default_output_file,
        describe_output_file,
        evaluate_model,
        format_results,
        log_results_to_wandb,
        refresh_run_card,
    )

    results = evaluate_model(eval_args, gen_args)
    output_file = eval_args.output_file or default_output_file(eval_args.model_path)
    atomic_write_json(output_file, results)
    print(format_results(results))
    print(f"results: {describe_output_file(eval_args.model_path, output_file)}")
    for card in refresh_run_card(eval_args.model_path, output_file):
        print(f"model card: {card}")
    if eval_args.wandb != "off":
        log_results_to_wandb(eval_args, results)
    return results


def parser() -> RecipeParser:
    return RecipeParser((EvaluationArguments, GenerationArguments), description=__doc__, prog="scripts/evaluate.py")


if __name__ == "__main__":
    setup_logging()
    with user_errors():
        *configs, _ = parser().parse_args_and_config()
        main(*configs)
