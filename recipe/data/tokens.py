"""Many rendered dialogues -> flat token arrays: one tokenizer call for the whole batch, every token placed
in its turn (header or content), EOS exactly once at each dialogue's end, labels by speaker.

Why flat arrays: a Python loop over tokens costs about a microsecond per token, several times the
tokenizer's own cost, and most of the data path's time on a large corpus. Here the per-token work is
numpy over the batch (the dialogues share one character axis, so one `searchsorted` places every
token); Python only walks dialogues and turns.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import numpy as np

from ..config import DataArguments
from .content_specials import keep_content_specials_as_text
from .errors import DialogueDataError
from .templates import RenderedDialogue

IGNORE_INDEX = -100


@dataclass
class TokenBatch:
    """The tokens of a batch of dialogues, end to end; dialogue d owns `starts[d]:starts[d + 1]`.

    `turns` is the token's turn within its dialogue (-1: a special token the tokenizer added, such as
    BOS), `headers` marks turn headers and speaker labels, `labels` is -100 where there is no target.
    """

    ids: np.ndarray
    turns: np.ndarray
    headers: np.ndarray
    starts: np.ndarray
    labels: np.ndarray | None = None

    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)

    def arrays(self, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(ids, labels, turns, headers) of dialogue d (views of the batch's arrays)."""
        part = slice(self.starts[d], self.starts[d + 1])
        return self.ids[part], self.labels[part], self.turns[part], self.headers[part]


def _flat(values, dtype, count: int) -> np.ndarray:
    return np.fromiter(chain.from_iterable(values), dtype=dtype, count=count)


def offsets_from_lengths(lengths, dtype=np.int64) -> np.ndarray:
    """Where each of consecutive pieces of these lengths starts, and the end: [0, l0, l0 + l1, ...]."""
    return np.concatenate([[0], np.cumsum(lengths)]).astype(dtype)


def tokenize_batch(rendered: list[RenderedDialogue], tokenizer, templated: bool,
                   sources: list[str] | None = None) -> TokenBatch:
    """Tokenize every text in one call and place each token in a turn.

    A token belongs where its last character is (byte-level BPE glues a word to the space before it,
    so " Hi" in "Bob: Hi" starts inside the label but is the first word of the turn). So a turn's
    first token is the token holding the turn's first character, and a turn's header ends at the
    token holding its content's first character: a few `char_to_token` lookups per turn place every
    token, with no per-token offsets brought into Python.

    Turn-template text gets the tokenizer's own special tokens (BOS, an appended EOS), and any
    special-token string inside the dialogue stays text. A chat template writes its own special
    tokens, so nothing is added and they are read as special tokens; a message that spells one keeps
    it as text too (content_specials.py; `sources` name the dialogues in its error).
    """
    encoding = tokenizer(
        [r.text for r in rendered],
        add_special_tokens=not templated,
        split_special_tokens=not templated,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,  # no "longer than the maximum sequence length" warning: long dialogues are windowed
    )
    ids_lists, encodings = encoding["input_ids"], encoding.encodings
    starts = offsets_from_lengths(np.fromiter(map(len, ids_lists), np.int64, len(rendered)))
    ids = _flat(ids_lists, np.int64, int(starts[-1]))
    if templated:
        again = keep_content_specials_as_text(rendered, ids, starts, encodings, tokenizer, sources)
        if again:
            ids_lists = [again[d].ids if d in again else i for d, i in enumerate(ids_lists)]
            encodings = [again.get(d, e) for d, e in enumerate(encodings)]
            starts = offsets_from_lengths(np.fromiter(map(len, ids_lists), np.int64, len(rendered)))
            ids = _flat(ids_lists, np.int64, int(starts[-1]))
    total = int(starts[-1])
    places = [_turn_tokens(e, r) for e, r in zip(encodings, rendered)]
    turn_counts = np.fromiter((len(r.turn_starts) for r in rendered), np.int64, len(rendered))
    first_turn = offsets_from_lengths(turn_counts)
    base = np.repeat(starts[:-1], turn_counts)  # the batch's token axis: dialogue d starts at starts[d]
    turn_tokens = _flat((p[0] for p in places), np.int64, int(first_turn[-1])) + base
    content_tokens = _flat((p[1] for p in places), np.int64, int(first_turn[-1])) + base

    dialogue = np.repeat(np.arange(len(rendered)), np.diff(starts))
    position = np.arange(total, dtype=np.int64)
    global_turn = np.maximum(np.searchsorted(turn_tokens, position, side="right") - 1, first_turn[dialogue])
    turns = global_turn - first_turn[dialogue]
    headers = position < content_tokens[global_turn]
    if templated:
        # A BOS the template writes starts every window, like one the tokenizer adds.
        bos = tokenizer.bos_token_id
        opening = starts[:-1][np.diff(starts) > 0]
        if bos is not None:
            turns[opening[ids[opening] == bos]] = -1
    else:
        # Special tokens here are only the ones the tokenizer added (BOS, an appended EOS): text that
        # spells a special token was split into ordinary tokens.
        added = _flat((e.special_tokens_mask for e in encoding.encodings), np.bool_, total)
        turns[added] = -1
        headers[added] = False
    return TokenBatch(ids, turns, headers, starts)


def _token_at(encoding, char: int, end: int) -> int | None:
    """The first token holding `char`, or the next held character's (a normalizer may drop characters,
    e.g. spaces, that no token then holds)."""
    while char < end:
        token = encoding.char_to_token(char)
        if token is not None:
            return token
        char += 1
    return None


def _turn_tokens(encoding, rendered: RenderedDialogue) -> tuple[list[int], list[int]]:
    """Per turn, its first token and the first token of its content (a character split over several
    byte tokens belongs, with all of them, to the turn of its first one)."""
    end, after = len(rendered.text), len(encoding.ids)
    turn_tokens = [_token_at(encoding, c, end) for c in rendered.turn_starts]
    content_tokens = [_token_at(encoding, c, end) for c in rendered.content_starts]
    return [after if t is None else t for t in turn_tokens], [after if t is None else t for t in content_tokens]


def end_with_eos(tokens: TokenBatch, eos: int | None, turn_counts: np.ndarray, tokenizer_name: str) -> TokenBatch:
    """Make each dialogue's last token its EOS, exactly once, owned by the last turn (so it carries
    loss). An EOS the tokenizer appended itself, or a chat template wrote, is that EOS; else it is
    added as an id (dialogue text that happens to contain the EOS string stays text)."""
    if eos is None:
        raise DialogueDataError(f"tokenizer {tokenizer_name!r} has no EOS token; set eos_token on it")
    last = np.maximum(tokens.starts[1:] - 1, 0)  # every rendered dialogue has at least one token
    last_turn = turn_counts - 1
    owner = tokens.turns[last]
    has_eos = (tokens.lengths() > 0) & (tokens.ids[last] == eos) & ((owner == last_turn) | (owner == -1))
    kept = last[has_eos]
    tokens.turns[kept] = last_turn[has_eos]
    tokens.headers[kept] = False
    missing = ~has_eos
    at = tokens.starts[1:][missing]
    tokens.ids = np.insert(tokens.ids, at, eos)
    tokens.turns = np.insert(tokens.turns, at, last_turn[missing])
    tokens.headers = np.insert(tokens.headers, at, False)
    tokens.starts = tokens.starts + offsets_from_lengths(missing.astype(np.int64))
    return tokens


def add_labels(tokens: TokenBatch, speakers: list[list[str]], args: DataArguments) -> TokenBatch:
    """Labels equal the ids except for tokens the tokenizer added (BOS), tokens of speakers not in
    `train_on_speakers`, and turn headers: speaker labels when `train_on_speakers` is set (the label
    is the cue), chat-template headers always (the template writes them; the model is prompted with them)."""
    wanted = set(args.train_on_speakers) if args.train_on_speakers else None
    headers_are_context = wanted is not None or args.use_chat_template
    keep = tokens.turns >= 0
    if headers_are_context:
        keep &= ~tokens.headers
    if wanted is not None:
        turn_counts = np.fromiter(map(len, speakers), np.int64, len(speakers))
        wanted_turn = np.fromiter((s in wanted for s in chain.from_iterable(speakers)), np.bool_,
                                  int(turn_counts.sum()))
        first_turn = offsets_from_lengths(turn_counts)[:-1]
        dialogue = np.repeat(np.arange(len(speakers)), tokens.lengths())
        keep &= wanted_turn[first_turn[dialogue] + np.maximum(tokens.turns, 0)]
    tokens.labels = np.where(keep, tokens.ids, IGNORE_INDEX)
    return tokens
