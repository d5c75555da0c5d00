"""Chat with a trained model in the terminal: it answers as one speaker of the dialogues.

    python scripts/chat.py --model_path outputs/smoke-full
    python scripts/chat.py --model_path outputs/distilgpt2-lora --speaker Bob --user Alex --do_sample false

Commands: /reset clears the history, /quit (or Ctrl-D, or Ctrl-C at the prompt) leaves; Ctrl-C during a reply
cancels it. The prompt is kept within the context window, oldest turns dropped first, and says so on stderr.
"""

from recipe.common.cli import setup_logging, user_errors
from recipe.config import ChatArguments, GenerationArguments, RecipeParser, run_data_arguments


def main(chat_args: ChatArguments, gen_args: GenerationArguments) -> None:
    # torch and transformers: after the command line is accepted (--help and a typo answer at once)
    from recipe.models import ChatSession, chat_speakers, load_model_for_evaluation
    from recipe.models.generation import chat_prompt_tokens, run_chat

    loaded = load_model_for_evaluation(chat_args.model_path, chat_args.base_model, chat_args.dtype)
    data_args = run_data_arguments(loaded.run_dir.read_config() if loaded.run_dir else None)
    user, speaker = chat_speakers(loaded.run_dir, chat_args.user, chat_args.speaker)
    context = chat_prompt_tokens(loaded.model, data_args.max_length, gen_args.max_new_tokens,
                                 chat_args.max_context_tokens)
    session = ChatSession(loaded.model, loaded.tokenizer, data_args, gen_args, speaker, user, context)
    run_chat(session, f"Chatting with {chat_args.model_path} as {speaker}; you are {user}. /reset clears the "
                      "history, /quit leaves, Ctrl-C cancels a reply.")


def parser() -> RecipeParser:
    return RecipeParser((ChatArguments, GenerationArguments), description=__doc__, prog="scripts/chat.py")


if __name__ == "__main__":
    setup_logging()
    with user_errors():
        *configs, _ = parser().parse_args_and_config()
        main(*configs)
