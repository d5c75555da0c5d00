"""Chat with a trained model in the terminal: it answers as one speaker of the dialogues.

    python scripts/chat.py --model_path outputs/smoke-full
    python scripts/chat.py --model_path outputs/distilgpt2-lora --speaker Bob --user Alex --do_sample false

Commands: /reset clears the history, /quit (or Ctrl-D) leaves. The history is kept within the
context window, oldest turns dropped first.
"""

import sys

from recipe.common.cli import setup_logging, user_errors
from recipe.config import ChatArguments, GenerationArguments, RecipeParser, run_data_arguments
from recipe.models import ChatSession, chat_speakers, load_model_for_evaluation


def main(chat_args: ChatArguments, gen_args: GenerationArguments) -> None:
    loaded = load_model_for_evaluation(chat_args.model_path, chat_args.base_model, chat_args.dtype)
    data_args = run_data_arguments(loaded.run_dir.read_config() if loaded.run_dir else None)
    user, speaker = chat_speakers(loaded.run_dir, chat_args.user, chat_args.speaker)
    context = chat_args.max_context_tokens or max(16, data_args.max_length - gen_args.max_new_tokens)
    session = ChatSession(loaded.model, loaded.tokenizer, data_args, gen_args, speaker, user, context)
    print(f"Chatting with {chat_args.model_path} as {speaker}; you are {user}. /reset clears the history, "
          "/quit leaves.")
    while True:
        try:
            line = input(f"{user}: ").strip()
        except EOFError:
            print()
            break
        if line in {"/quit", "/exit"}:
            break
        if line == "/reset":
            session.reset()
            print("(history cleared)")
            continue
        if not line:
            continue
        reply = session.reply(line)
        print(f"{speaker}: {reply.text or '(no reply)'}")
        sys.stdout.flush()


if __name__ == "__main__":
    setup_logging()
    with user_errors():
        *configs, _ = RecipeParser((ChatArguments, GenerationArguments)).parse_args_and_config()
        main(*configs)
