"""Under a chat template, only the template's own markup is special: a message that spells a special token
(`<|im_end|>`, `<|eot_id|>`, `</s>`) keeps it as text.

The template's text has to be tokenized with special tokens parsed (its markup is made of them), and the
tokenizer cannot parse them in some places only. So a dialogue whose content spells a special token is
tokenized again, piece by piece: the template's special tokens by id, the text between them with special
tokens split, as the turn-template path does for every dialogue. Otherwise that string would end the turn
early, move the loss mask, and teach the model to emit a control token.

A tokenizer first cuts its input at special tokens and tokenizes the pieces between them on their own, so
tokenizing those pieces separately gives the tokens of a whole call. That is checked for each such
dialogue (cut at every special token, the pieces must give the whole call's ids): a tokenizer whose
pieces depend on their position in the text (a Metaspace `prepend_scheme: first`) is refused for that
dialogue, with the fix, rather than tokenized in a way training would not reproduce.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import chain

import numpy as np

from .errors import DialogueDataError
from .templates import RenderedDialogue


class PieceEncoding:
    """The parts of a `tokenizers.Encoding` that placing tokens in turns reads, for a dialogue tokenized in
    pieces: its ids, and the token that holds a character of the whole text."""

    def __init__(self, ids: list[int], spans: list[tuple[int, int]]):
        self.ids = ids
        self._starts = np.fromiter((s for s, _ in spans), np.int64, len(spans))
        self._ends = np.fromiter((e for _, e in spans), np.int64, len(spans))

    def char_to_token(self, char: int) -> int | None:
        held = np.flatnonzero((self._starts <= char) & (char < self._ends))
        return int(held[0]) if len(held) else None


def special_token_ids(tokenizer) -> np.ndarray:
    """The ids of the added tokens marked special: what `split_special_tokens` keeps as text."""
    return np.fromiter((i for i, t in tokenizer.added_tokens_decoder.items() if t.special), np.int64)


def keep_content_specials_as_text(rendered: list[RenderedDialogue], ids: np.ndarray, starts: np.ndarray,
                                  encodings: list, tokenizer, sources: list[str] | None) -> dict[int, PieceEncoding]:
    """Re-tokenize every dialogue whose message content holds a special token; returns {dialogue: encoding}
    for those (usually none: a scan of the batch's ids finds the special tokens, most of them the template's)."""
    hits = np.flatnonzero(np.isin(ids, special_token_ids(tokenizer)))
    if not len(hits):
        return {}
    dialogues = np.searchsorted(starts, hits, side="right") - 1
    spans: dict[int, list[tuple[int, int, int]]] = {}  # dialogue -> (char start, char end, id) of its specials
    affected = set()
    for position, d in zip(hits.tolist(), dialogues.tolist()):
        start, end = encodings[d].token_to_chars(position - int(starts[d]))
        spans.setdefault(d, []).append((start, end, int(ids[position])))
        r = rendered[d]
        k = bisect_right(r.content_starts, start) - 1
        if k >= 0 and start < r.content_ends[k]:
            affected.add(d)
    return {d: _encode_in_pieces(rendered[d], spans[d], ids[starts[d]:starts[d + 1]].tolist(), tokenizer,
                                 sources[d] if sources else "a dialogue")
            for d in sorted(affected)}


def _encode_in_pieces(rendered: RenderedDialogue, specials: list[tuple[int, int, int]], whole_ids: list[int],
                      tokenizer, source: str) -> PieceEncoding:
    text = rendered.text
    in_content = [_inside_content(rendered, start) for start, _, _ in specials]
    # Cut at every special token, the pieces must give back the whole call: tokenizing in pieces is exact here.
    if _pieces(text, specials, tokenizer, split=False)[0] != whole_ids:
        spelled = next(text[s:e] for (s, e, _), inside in zip(specials, in_content) if inside)
        raise DialogueDataError(
            f"{source}: a message contains {spelled!r}, a special token of this tokenizer, which the chat template "
            "would read as a control token, and this tokenizer cannot keep it as text inside a template exactly "
            "(its tokens depend on their place in the text). Remove it from the data, or unset "
            "--use_chat_template to write turns with --turn_template (special-token strings stay text there)"
        )
    markup = [span for span, inside in zip(specials, in_content) if not inside]
    new_ids, new_spans = _pieces(text, markup, tokenizer, split=True)
    return PieceEncoding(new_ids, new_spans)


def _inside_content(rendered: RenderedDialogue, char: int) -> bool:
    k = bisect_right(rendered.content_starts, char) - 1
    return k >= 0 and char < rendered.content_ends[k]


def _pieces(text: str, specials: list[tuple[int, int, int]], tokenizer, split: bool):
    """(ids, character spans) of `text` tokenized between `specials`, which keep their ids; with `split`,
    special-token strings in the pieces are text."""
    bounds = [0, *chain.from_iterable((s, e) for s, e, _ in specials), len(text)]
    pieces = [(bounds[i], bounds[i + 1]) for i in range(0, len(bounds), 2)]
    encoded = tokenizer([text[a:b] for a, b in pieces], add_special_tokens=False, split_special_tokens=split,
                        return_attention_mask=False, return_token_type_ids=False, verbose=False)
    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    for k, ((a, _), encoding) in enumerate(zip(pieces, encoded.encodings)):
        ids += encoding.ids
        spans += [(a + s, a + e) for s, e in encoding.offsets]
        if k < len(specials):
            start, end, special = specials[k]
            ids.append(special)
            spans.append((start, end))
    return ids, spans
