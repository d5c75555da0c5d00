"""Replies in the training format: prompts that end with the next speaker's cue, sampling that stops
where the turn ends, and the terminal chat session."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..common.cli import say
from ..common.run_dir import RunDir, read_json_file
from ..config import ConfigError, DataArguments, GenerationArguments
from ..data import DialogueDataError, apply_chat_template, chat_messages, render_dialogue, render_with_chat_template


@dataclass
class Prompt:
    prompt: str
    reference: str | None = None
    speaker: str | None = None


def prompts_from_dialogues(dialogues, data_args: DataArguments, tokenizer, num_samples: int,
                           context_turns: int) -> list[Prompt]:
    """The first k turns as context, then the next speaker's label as the cue (`...\\nBob:`);
    that speaker's real turn is the reference."""
    eligible = [d for d in dialogues if len(d.speakers) >= 2]
    if len(eligible) > num_samples:  # spread the prompts over the whole split, deterministically
        eligible = [eligible[round(i * (len(eligible) - 1) / max(1, num_samples - 1))] for i in range(num_samples)]
    prompts = []
    for d in eligible:
        k = min(context_turns, len(d.speakers) - 1)
        text = build_prompt(d.speakers[:k], d.texts[:k], d.speakers[k], data_args, tokenizer, d.roles[:k])
        prompts.append(Prompt(text, d.texts[k], d.speakers[k]))
    return prompts


def build_prompt(speakers: list[str], texts: list[str], next_speaker: str, data_args: DataArguments, tokenizer,
                 roles: list[str | None] | None = None) -> str:
    """Context turns written exactly as in training, then the cue for the next speaker."""
    roles = roles or [None] * len(speakers)
    if data_args.use_chat_template:
        messages = chat_messages(speakers, texts, roles, data_args, "the prompt")
        return apply_chat_template(tokenizer, messages, "the prompt", add_generation_prompt=True)
    if not speakers:
        return turn_cue(next_speaker, data_args)
    context = render_dialogue(speakers, texts, roles, data_args).text
    return context + data_args.turn_separator + turn_cue(next_speaker, data_args)


def turn_cue(speaker: str, data_args: DataArguments) -> str:
    """The start of a turn up to its text, without trailing space (BPE glues the space to the next word)."""
    return data_args.turn_template.split("{text}")[0].format(speaker=speaker).rstrip()


def turn_end(data_args: DataArguments, tokenizer) -> tuple[str, list[int]]:
    """What ends a reply's turn: (a stop string, stop token ids).

    Turn-template text ends a turn with `turn_separator`. A chat template ends it with its own marker
    (`<|im_end|>`, `<|eot_id|>`, Phi-3's `<|end|>`): the special tokens it writes after an assistant
    message, which are stop tokens besides EOS (for many families they are EOS).
    """
    if not data_args.use_chat_template:
        return data_args.turn_separator, []
    return "", chat_template_turn_end_ids(tokenizer)


def chat_template_turn_end_ids(tokenizer) -> list[int]:
    """The special token the tokenizer's chat template writes after an assistant message, when it is not EOS
    (Phi-3's `<|end|>`); [] without a chat template, or when EOS ends a turn (ChatML, Llama-3)."""
    if not getattr(tokenizer, "chat_template", None):
        return []
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Bye"}]
    try:
        rendered = render_with_chat_template(messages, tokenizer, "a user/assistant exchange")
    except DialogueDataError:
        return []  # a template without an assistant role: EOS alone ends a reply
    marker = rendered.text[rendered.content_ends[1] : rendered.ends[1]]
    ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
    special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    return [i for i in ids if i in special and i != tokenizer.eos_token_id][:1]


def read_prompts_file(path: str) -> list[Prompt]:
    """Prompts from .txt (one per line, `\\n` for a line break) or .json/.jsonl (strings or objects)."""
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith((".json", ".jsonl")):
        try:
            if path.endswith(".json"):
                values = json.loads(text)
            else:
                values = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path} line {error.lineno} column {error.colno}: invalid JSON ({error.msg})") from None
        if isinstance(values, (str, dict)):
            values = [values]
        prompts = []
        for index, value in enumerate(values):
            if isinstance(value, str):
                prompts.append(Prompt(value))
            elif isinstance(value, dict) and isinstance(value.get("prompt"), str):
                prompts.append(Prompt(value["prompt"], value.get("reference"), value.get("speaker")))
            else:
                raise ConfigError(f'{path} entry [{index}]: expected a string or {{"prompt": ..., "reference": ...}}')
    else:
        prompts = [Prompt(line.replace("\\n", "\n")) for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ConfigError(f"{path} holds no prompts")
    return prompts


@dataclass
class Reply:
    text: str
    ended_by: str  # "eos", "turn_end", "max_new_tokens", or "cancelled" (a chat reply stopped by Ctrl-C)
    new_tokens: int


def generate_replies(model, tokenizer, prompts: list[str], gen_args: GenerationArguments, turn_separator: str,
                     batch_size: int = 8, add_special_tokens: bool = True, reseed: bool = True,
                     turn_end_ids: list[int] = (), synced_processes: bool = False,
                     stopping_criteria: list | None = None) -> list[list[Reply]]:
    """Sample replies (num_return_sequences per prompt), each cut where its turn or the dialogue ends.

    The turn ends at `turn_separator` or at one of `turn_end_ids` (see `turn_end`). With `reseed`,
    sampling starts from generation_seed, so the same prompts give the same replies. `synced_processes`: every
    process of a sharded model calls this with the same prompts and keeps stepping until all are done.
    `stopping_criteria`: more transformers StoppingCriteria (the chat's cancel, `cancel_criterion`).
    """
    from transformers import set_seed

    device = next(model.parameters()).device
    if reseed:
        set_seed(gen_args.generation_seed)
    options: dict[str, Any] = {
        "max_new_tokens": gen_args.max_new_tokens,
        "do_sample": gen_args.do_sample,
        "num_return_sequences": gen_args.num_return_sequences,
        "repetition_penalty": gen_args.repetition_penalty,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": [tokenizer.eos_token_id, *(turn_end_ids if gen_args.stop_at_turn_end else [])],
    }
    if synced_processes:
        options["synced_gpus"] = True  # transformers' name; it means every process of a sharded model
    if gen_args.do_sample:
        options.update(temperature=gen_args.temperature, top_k=gen_args.top_k, top_p=gen_args.top_p)
    if gen_args.stop_at_turn_end and turn_separator:
        options.update(stop_strings=[turn_separator], tokenizer=tokenizer)
    if stopping_criteria:
        from transformers import StoppingCriteriaList

        options["stopping_criteria"] = StoppingCriteriaList(stopping_criteria)
    from tqdm.auto import tqdm

    positions = model_positions(model)
    room = positions - gen_args.max_new_tokens if positions else None
    if room is not None and room < 1:
        raise ConfigError(f"--max_new_tokens {gen_args.max_new_tokens} leaves no room for a prompt in the model's "
                          f"{positions:,} positions; set --max_new_tokens {positions - 16} or less")
    replies: list[list[Reply]] = []
    cut = 0
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="Generating", unit="batch", disable=len(starts) < 2):
        encoded = [prompt_ids(tokenizer, p, add_special_tokens) for p in prompts[start : start + batch_size]]
        if room is not None:  # a prompt and its reply must fit the positions: the prompt keeps its last tokens
            cut += sum(len(ids) > room for ids in encoded)
            encoded = [ids[-room:] for ids in encoded]
        width = max(len(ids) for ids in encoded)
        # Left padding: every prompt ends at the same position, where generation starts.
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(ids)) + ids for ids in encoded],
                                 device=device)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=device)
        with torch.no_grad():
            output = model.generate(input_ids=input_ids, attention_mask=attention_mask, **options)
        new = output[:, width:].tolist()
        for i in range(len(encoded)):
            group = new[i * gen_args.num_return_sequences : (i + 1) * gen_args.num_return_sequences]
            replies.append([cut_reply(tokens, tokenizer, turn_separator, gen_args, turn_end_ids) for tokens in group])
    if cut:
        say(f"({cut} prompt(s) longer than the model's {positions:,} positions less --max_new_tokens "
            f"{gen_args.max_new_tokens}: each kept its last {room:,} tokens)")
    return replies


def reply_samples(model, tokenizer, prompts: list[Prompt], data_args: DataArguments, gen_args: GenerationArguments,
                  batch_size: int = 8, synced_processes: bool = False) -> list[dict[str, Any]]:
    """Replies to prompts, one record each as evaluation.json and samples.jsonl hold them: prompt, reply,
    reference, speaker, how it ended (eos, turn_end or max_new_tokens) and the tokens generated."""
    separator, turn_end_ids = turn_end(data_args, tokenizer)
    replies = generate_replies(
        model, tokenizer, [p.prompt for p in prompts], gen_args, separator, batch_size,
        add_special_tokens=not data_args.use_chat_template, turn_end_ids=turn_end_ids,
        synced_processes=synced_processes,
    )
    return [
        {"prompt": p.prompt, "reply": r.text, "reference": p.reference, "speaker": p.speaker, "ended_by": r.ended_by,
         "new_tokens": r.new_tokens}
        for p, group in zip(prompts, replies)
        for r in group
    ]


def prompt_ids(tokenizer, prompt: str, add_special_tokens: bool) -> list[int]:
    """Token ids of a prompt as training wrote its text: with the tokenizer's BOS, but without an EOS
    that the tokenizer appends (some Llama tokenizers do), which would end the dialogue before the reply."""
    ids = tokenizer(prompt, add_special_tokens=add_special_tokens, split_special_tokens=add_special_tokens)["input_ids"]
    return ids[:-1] if add_special_tokens and len(ids) > 1 and ids[-1] == tokenizer.eos_token_id else ids


def cut_reply(tokens: list[int], tokenizer, turn_separator: str, gen_args: GenerationArguments,
              turn_end_ids: list[int] = ()) -> Reply:
    """The reply up to EOS, or up to the end of its turn (a turn-end token or the separator)."""
    eos = tokenizer.eos_token_id
    stops = {eos, *(turn_end_ids if gen_args.stop_at_turn_end else [])}
    end = next((i for i, token in enumerate(tokens) if token in stops), None)
    until_end = tokens if end is None else tokens[:end]
    text = tokenizer.decode(until_end, skip_special_tokens=True)
    if gen_args.stop_at_turn_end and turn_separator and turn_separator in text:
        return Reply(text.split(turn_separator, 1)[0].strip(), "turn_end", len(until_end))
    if end is None:
        return Reply(text.strip(), "max_new_tokens", len(tokens))
    return Reply(text.strip(), "eos" if tokens[end] == eos else "turn_end", end + 1)


def model_positions(model) -> int | None:
    """How many tokens the model's position table holds (prompt and reply together); None if unbounded."""
    config = model.config
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def chat_prompt_tokens(model, max_length: int, max_new_tokens: int, max_context_tokens: int | None = None) -> int:
    """The longest chat prompt: `max_context_tokens`, else the run's max_length less max_new_tokens (at least
    16); never more than the model's positions less max_new_tokens, which the reply needs after the prompt."""
    budget = max_context_tokens or max(16, max_length - max_new_tokens)
    positions = model_positions(model)
    if positions is None:
        return budget
    room = positions - max_new_tokens
    if room < 16:
        raise ConfigError(f"--max_new_tokens {max_new_tokens} leaves {max(room, 0)} of the model's {positions:,} "
                          f"positions for the chat's prompt; set --max_new_tokens {positions - 16} or less")
    if budget > room:
        say(f"(context: prompts keep to {room:,} tokens, so that they and --max_new_tokens {max_new_tokens} fit "
            f"the model's {positions:,} positions)")
    return min(budget, room)


def cancel_criterion(cancel: threading.Event):
    """A transformers StoppingCriteria that ends every sequence at the next token once `cancel` is set."""
    from transformers import StoppingCriteria

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
            return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

    return Cancelled()


@contextlib.contextmanager
def interrupt_sets(cancel: threading.Event) -> Iterator[None]:
    """Inside, Ctrl-C (SIGINT) sets `cancel` instead of raising KeyboardInterrupt, so that generation stops at
    the next token and the chat goes on; a second Ctrl-C raises it, in case one step takes too long."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def on_interrupt(signum, frame) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class ChatSession:
    """A conversation with the model as one speaker.

    The prompt (history, message and cue) keeps to `max_context_tokens`: the oldest turns are left out first,
    then a message too long alone keeps its last tokens; each cut is told once through `notify` (stderr).
    Setting `cancel` during `reply` (Ctrl-C, see `interrupt_sets`) stops the reply at the next token; a
    cancelled exchange leaves the history as it was before the message, so the model never sees a message
    without its answer, nor the turns it left out to make room for it.
    """

    model: Any
    tokenizer: Any
    data_args: DataArguments
    gen_args: GenerationArguments
    speaker: str
    user: str
    max_context_tokens: int
    speakers: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    notify: Callable[[str], None] = say
    cancel: threading.Event = field(default_factory=threading.Event)
    turns_left_out: int = 0  # since the start or /reset, for the notice

    def __post_init__(self) -> None:
        from transformers import set_seed

        positions = model_positions(self.model)
        if positions is not None and self.max_context_tokens + self.gen_args.max_new_tokens > positions:
            raise ConfigError(
                f"max_context_tokens {self.max_context_tokens} and max_new_tokens {self.gen_args.max_new_tokens} "
                f"exceed the model's {positions:,} positions; lower --max_context_tokens or --max_new_tokens"
            )
        cue = self.count(build_prompt([self.user], ["a"], self.speaker, self.data_args, self.tokenizer))
        if cue > self.max_context_tokens:
            raise ConfigError(f"max_context_tokens {self.max_context_tokens} cannot hold a one-word message "
                              f"({cue} tokens with its speaker labels); raise --max_context_tokens")
        set_seed(self.gen_args.generation_seed)  # once: a conversation is reproducible, turns still differ

    def reset(self) -> None:
        self.speakers.clear()
        self.texts.clear()
        self.turns_left_out = 0

    def count(self, prompt: str) -> int:
        """The prompt's tokens as `generate_replies` encodes them."""
        return len(prompt_ids(self.tokenizer, prompt, not self.data_args.use_chat_template))

    def render(self) -> str:
        return build_prompt(self.speakers, self.texts, self.speaker, self.data_args, self.tokenizer)

    def prompt(self) -> str:
        """The history written as in training, then the model's cue, within max_context_tokens: drops the
        oldest turns, then cuts the last one alone to its last tokens; says what it cut."""
        text, dropped = self.render(), 0
        while self.count(text) > self.max_context_tokens and len(self.speakers) > 1:
            del self.speakers[0], self.texts[0]
            dropped += 1
            # Some chat templates (Mistral's, Gemma's) refuse a conversation that opens with the assistant.
            if self.data_args.use_chat_template and self.speakers[0] == self.speaker and len(self.speakers) > 1:
                del self.speakers[0], self.texts[0]
                dropped += 1
            text = self.render()
        if dropped:
            self.turns_left_out += dropped
            oldest = "the oldest turn" if self.turns_left_out == 1 else f"the {self.turns_left_out:,} oldest turns"
            self.notify(f"(history: {oldest} left out to fit {self.max_context_tokens:,} tokens)")
        if self.count(text) > self.max_context_tokens:
            text = self.cut_last_turn()
        return text

    def cut_last_turn(self) -> str:
        """The prompt with the one turn left cut to its last tokens, the most its labels and cue leave room for."""
        ids = self.tokenizer(self.texts[-1], add_special_tokens=False)["input_ids"]
        keep, text = len(ids), self.render()
        while (excess := self.count(text) - self.max_context_tokens) > 0 and keep > 1:
            keep = max(1, keep - excess)  # the text re-tokenizes in its place within a token or two: try again
            # A cut inside a character decodes to U+FFFD; the tail starts at the next whole character.
            self.texts[-1] = self.tokenizer.decode(ids[-keep:]).lstrip("\ufffd").strip()
            text = self.render()
        self.notify(f"(message: cut to its last {keep:,} of {len(ids):,} tokens to fit {self.max_context_tokens:,} "
                    "tokens)")
        return text

    def reply(self, message: str) -> Reply:
        """The model's reply to `message`, added to the history with it; if `cancel` is set meanwhile, a reply
        that ended_by "cancelled" and the history as it was (a KeyboardInterrupt restores it too)."""
        before = list(self.speakers), list(self.texts), self.turns_left_out
        self.speakers.append(self.user)
        self.texts.append(message)
        try:
            separator, turn_end_ids = turn_end(self.data_args, self.tokenizer)
            (reply,) = generate_replies(
                self.model, self.tokenizer, [self.prompt()], self.gen_args, separator,
                add_special_tokens=not self.data_args.use_chat_template, reseed=False, turn_end_ids=turn_end_ids,
                stopping_criteria=[cancel_criterion(self.cancel)],
            )[0][:1]
            if self.cancel.is_set():
                reply = Reply(reply.text, "cancelled", reply.new_tokens)
        except BaseException:
            self.speakers[:], self.texts[:], self.turns_left_out = before
            raise
        finally:
            self.cancel.clear()
        if reply.ended_by == "cancelled":
            self.speakers[:], self.texts[:], self.turns_left_out = before
        else:  # an empty reply stays as an empty turn: turns keep alternating, which chat templates require
            self.speakers.append(self.speaker)
            self.texts.append(reply.text)
        return reply


def run_chat(session: ChatSession, greeting: str) -> None:
    """The terminal loop: a line in, the reply out (stdout, the transcript; cut notices go to stderr).

    /reset clears the history, /quit, Ctrl-D or Ctrl-C at the prompt leave; Ctrl-C during a reply cancels it
    (`(reply cancelled)`) and the prompt comes back.
    """
    print(greeting)
    while True:
        try:
            line = input(f"{session.user}: ").strip()
        except (EOFError, KeyboardInterrupt):  # Ctrl-D / Ctrl-C at the prompt: leave, as /quit does
            print()
            return
        if line in {"/quit", "/exit"}:
            return
        if line == "/reset":
            session.reset()
            print("(history cleared)")
            continue
        if not line:
            continue
        try:
            with interrupt_sets(session.cancel):
                reply = session.reply(line)
        except KeyboardInterrupt:  # a second Ctrl-C within one step; the session restored its history
            reply = Reply("", "cancelled", 0)
        if reply.ended_by == "cancelled":
            print("(reply cancelled)")
        else:
            print(f"{session.speaker}: {reply.text or '(no reply)'}")
        sys.stdout.flush()


def chat_speakers(run: RunDir | None, user: str | None, speaker: str | None) -> tuple[str, str]:
    """(user, speaker) for chat: given ones win; else the run's trained speaker and its most frequent
    other speaker (from data_report.json); else User and Assistant."""
    report = (read_json_file(run.data_report) if run else None) or {}
    known = list((report.get("train") or {}).get("turns_per_speaker", {}))
    trained = (run.read_config() if run else {}).get("train_on_speakers") or []
    speaker = speaker or (trained[0] if trained else known[1] if len(known) > 1 else "Assistant")
    user = user or next((name for name in known if name != speaker), "User")
    return user, speaker
