"""The terminal chat on a tiny random model: what it says when it cuts the prompt to fit, Ctrl-C during a
reply (cancelled, the history as before) and at the prompt (leaves), and Ctrl-D (exit 0)."""

import builtins
import signal
import subprocess
import sys

import pytest

import recipe.models.generation as generation
from conftest import REPO
from recipe.config import ConfigError, DataArguments, GenerationArguments
from recipe.models.generation import ChatSession, chat_prompt_tokens, interrupt_sets, run_chat


@pytest.fixture
def session(tiny_model, tokenizer):
    """A session whose notices land in `session.notices`; 24 prompt tokens hold about two short turns."""
    notices = []
    chat = ChatSession(tiny_model, tokenizer, DataArguments(), GenerationArguments(max_new_tokens=4, do_sample=False),
                       "Bob", "Alex", max_context_tokens=24, notify=notices.append)
    chat.notices = notices
    return chat


def interrupt_on_forward(model, calls: int = 1) -> None:
    """Ctrl-C pressed while the model computes: a real SIGINT, raised in the main thread by the first `calls`
    forward passes, so its handler runs at a known point (no timing)."""
    forward, seen = model.forward, []

    def forward_then_interrupt(*args, **kwargs):
        output = forward(*args, **kwargs)
        seen.append(1)
        if len(seen) <= calls:
            signal.raise_signal(signal.SIGINT)
        return output

    model.forward = forward_then_interrupt


def test_the_notice_says_how_many_oldest_turns_are_left_out(session, tokenizer):
    session.reply("first message here")
    assert session.notices == []
    for message in ["second message here", "third message here", "fourth one"]:
        session.reply(message)
    assert session.notices, "the history was cut without a word"
    assert all(n.startswith("(history: the ") and n.endswith(" left out to fit 24 tokens)") for n in session.notices)
    assert session.notices[-1] == f"(history: the {session.turns_left_out} oldest turns left out to fit 24 tokens)"
    session.prompt()  # may leave out the oldest turn to make room for the last reply
    before = len(session.notices)
    prompt = session.prompt()  # nothing new left out: nothing new said
    assert len(session.notices) == before
    assert len(tokenizer(prompt)["input_ids"]) <= 24 and "first message" not in prompt


def test_a_message_too_long_alone_keeps_its_last_tokens_and_says_so(session, tokenizer):
    message = " ".join(f"word{i}" for i in range(40))
    total = len(tokenizer(message, add_special_tokens=False)["input_ids"])
    session.reply(message)
    (notice,) = session.notices
    kept = int(notice.split("its last ")[1].split(" of")[0])
    assert notice == f"(message: cut to its last {kept} of {total} tokens to fit 24 tokens)"
    assert 0 < kept < total
    assert session.texts[0].endswith("word39") and "word0 " not in session.texts[0]
    assert len(tokenizer(session.prompt())["input_ids"]) <= 24


def test_a_chat_template_history_opens_with_the_users_turn(family_dir):
    """Mistral's template refuses a conversation that opens with the assistant: the cut leaves out whole exchanges."""
    import torch

    from recipe.config import ModelArguments
    from recipe.models.loading import get_model, get_tokenizer

    model_args = ModelArguments(model_name_or_path=str(family_dir("mistral")), random_init=True)
    tokenizer = get_tokenizer(model_args)
    torch.manual_seed(0)
    model = get_model(model_args, tokenizer).eval()
    notices = []
    chat = ChatSession(model, tokenizer, DataArguments(use_chat_template=True, role_to_speaker=["user=Alex",
                       "assistant=Bob"]), GenerationArguments(max_new_tokens=4, do_sample=False),
                       "Bob", "Alex", max_context_tokens=40, notify=notices.append)
    for message in ["hello there friend", "how are you today", "fine thanks", "and you", "good"]:
        chat.reply(message)
    assert notices and chat.speakers[0] == "Alex"


def test_the_prompt_leaves_the_reply_room_in_the_models_positions(tiny_model):
    positions = tiny_model.config.n_positions  # 512
    assert chat_prompt_tokens(tiny_model, 128, 48) == 80  # the run's max_length less the reply
    assert chat_prompt_tokens(tiny_model, 128, 48, max_context_tokens=600) == positions - 48
    with pytest.raises(ConfigError, match="set --max_new_tokens 496 or less"):
        chat_prompt_tokens(tiny_model, 128, 500)


def test_ctrl_c_during_a_reply_cancels_it_and_leaves_the_history_as_it_was(session, tiny_model):
    session.reply("hello there")
    history = list(session.speakers), list(session.texts)
    interrupt_on_forward(tiny_model)
    with interrupt_sets(session.cancel):
        cancelled = session.reply("a message whose reply is cancelled")
    assert cancelled.ended_by == "cancelled" and cancelled.new_tokens <= 1  # stopped at the first token
    assert (session.speakers, session.texts) == history
    assert not session.cancel.is_set()
    following = session.reply("and the next one")
    assert following.ended_by != "cancelled"
    assert session.texts[len(history[1])] == "and the next one"


def test_a_second_ctrl_c_raises_and_the_history_is_restored(session, tiny_model):
    """The first Ctrl-C sets the flag, which generation reads after its step; a second one while the flag is
    set (a slow step) raises KeyboardInterrupt at once, and the session puts its history back."""
    session.reply("hello there")
    history = list(session.speakers), list(session.texts), session.turns_left_out
    handler = signal.getsignal(signal.SIGINT)  # Python's own, or SIG_IGN where the suite runs in the background
    interrupt_on_forward(tiny_model)
    with pytest.raises(KeyboardInterrupt), interrupt_sets(session.cancel):
        session.cancel.set()  # the first Ctrl-C
        session.reply("a long one")
    assert (session.speakers, session.texts, session.turns_left_out) == history
    assert signal.getsignal(signal.SIGINT) is handler  # the handler is put back


def test_the_loop_says_reply_cancelled_goes_on_and_leaves_at_ctrl_c(session, tiny_model, monkeypatch, capsys):
    lines = iter(["hello", "/reset", "again"])

    def read_line(prompt):
        print(prompt, end="")
        line = next(lines, None)
        if line is None:
            raise KeyboardInterrupt  # Ctrl-C at the prompt
        return line

    monkeypatch.setattr(builtins, "input", read_line)
    interrupt_on_forward(tiny_model)
    run_chat(session, "Chatting")  # returns: the script exits 0
    out = capsys.readouterr().out
    assert out.splitlines()[1] == "Alex: (reply cancelled)"
    assert "(history cleared)" in out and out.count("Bob: ") == 1
    assert out.endswith("Alex: \n")


def test_ctrl_d_at_the_prompt_exits_0(tmp_path, tiny_model, tokenizer):
    """The script end to end: a message cut to fit (the notice on stderr, the transcript on stdout), then EOF."""
    tiny_model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    result = subprocess.run(
        [sys.executable, "scripts/chat.py", "--model_path", str(tmp_path / "model"), "--max_new_tokens", "4",
         "--max_context_tokens", "24"],
        cwd=REPO, input=" ".join(f"word{i}" for i in range(40)) + "\n", capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "(message: cut to its last " in result.stderr and "(message" not in result.stdout
    transcript = result.stdout.splitlines()
    assert transcript[0].startswith("Chatting with ") and transcript[1].startswith("User: Assistant: ")
    assert transcript[-1] == "User: "


def test_an_empty_reply_stays_a_turn_so_speakers_keep_alternating(session, monkeypatch):
    """A model that ends its turn at once (EOS first) still answered: the next prompt must not hold two user turns
    in a row, which alternating chat templates reject."""
    monkeypatch.setattr(generation, "generate_replies", lambda *args, **kwargs: ([generation.Reply("", "eos", 1)],))
    session.reply("hello there")
    session.reply("anyone?")
    assert session.speakers == ["Alex", "Bob", "Alex", "Bob"] and session.texts == ["hello there", "", "anyone?", ""]
