"""Broken inputs (tests/data/bad/) get correct handling or an error naming the file, the entry and the
fix: never a traceback, a hang or a silent drop. Properties: random dialogues keep every turn, in
order, through reading, formatting and tokenization."""

import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import write
from recipe.data import DialogueDataError, encode_dialogue, read_dialogues, render_dialogue

BAD = Path(__file__).resolve().parents[1] / "data" / "bad"
FIX = "--on_bad_dialogue skip"  # the fix every list of bad dialogues ends with

# file -> (where the error points, what it says: the problem and the fix)
ERRORS = {
    "truncated.json": ("line 2 column 11", r"Unterminated string.*cut short; restore its end"),
    "top_level_number.json": ("top_level_number.json:", r"cannot tell its format: it is a number"),
    "entry_number.json": (r"entry \[1\] \(line 2\)", r"cannot tell its format: it is a number"),
    "turns_not_list.json": (r"entry \[0\] \(line 1\)", r"'turns' holds an object; expected a list"),
    "turn_not_object.json": (r"entry \[0\] \(line 1\)", r"turn 2 is a string; expected an object"),
    "speaker_not_string.json": (r"entry \[0\] \(line 1\)",
                                r'turn 2 has an empty or non-string "speaker".*--speaker_field'),
    "text_null.json": (r"entry \[0\] \(line 1\)", r'turn 2 \(Bob\) has "text" that is null; it must be a string'),
    "text_list.json": (r"entry \[0\] \(line 1\)", r"key 'Bob' holds a list"),
    "content_object.json": (r"entry \[0\] \(line 1\)", r'turn 1 \(User\) has "content" that is an object'),
    "role_number.json": (r"entry \[0\] \(line 1\)", r'message 1 has an empty or non-string "role".*--role_field'),
    "empty_object.json": ("empty_object.json:", r"empty dialogue \(no turns\); remove it or add its turns"),
    "empty.json": ("empty.json is empty", r"expected a JSON array of dialogues"),
    "nul_byte_raw.json": ("line 1 column 14", r"raw control character.*escape it"),
    "latin1.json": (r"byte 0xe9 at offset 14 \(line 1\)", r"iconv -f latin1 -t utf-8"),
    "bad_line.jsonl": ("bad_line.jsonl line 3", r"column 19: invalid JSON.*one complete JSON value"),
    "turns_among_dialogues.json": (r"entry \[1\] \(line 2\)",
                                   r"holds one turn \(keys: \['speaker', 'text'\]\), not a dialogue"),
    "incomplete_turn.json": (r"a bare list of turns, read as one dialogue",
                             r'turn 2 \(Bob\) has no "text".*--text_field'),
    "one_turn_per_line.jsonl": ("one_turn_per_line.jsonl line 1", r"holds one turn.*one per line in a \.jsonl file"),
    "message_without_content.json": (r"a bare list of turns",
                                     r'message 2 \(assistant\) has no "content".*--content_field'),
    "text_lines.jsonl": ("text_lines.jsonl line 1", r"holds one turn \(keys: \['text'\]\), not a dialogue"),
}


def test_the_corpus_is_covered():
    assert sorted(p.name for p in BAD.iterdir()) == sorted([*ERRORS, *LOADS])


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_bad_file_is_an_error_naming_file_entry_and_fix(name, data_args):
    where, what = ERRORS[name]
    with pytest.raises(DialogueDataError) as error:
        read_dialogues(str(BAD / name), data_args())
    message = str(error.value)
    assert str(BAD / name) in message
    assert re.search(where, message), message
    assert re.search(what, message, re.DOTALL), message


# file -> the turns every dialogue must have, in order
LOADS = {
    "mixed_formats.json": [
        [("Alex", "Hi"), ("Bob", "Hello")],
        [("Alex", "Turns"), ("Bob", "work")],
        [("User", "Messages"), ("Assistant", "too")],
        [("Alex", "A bare"), ("Bob", "turn list")],
    ],
    "bom_crlf.json": [[("Alex", "Hi\u00e9"), ("Bob", "Hello")], [("Alex", "Line one"), ("Bob", "Line two")]],
    "bom_crlf.jsonl": [[("Alex", "Hi"), ("Bob", "Hello")], [("Alex", "Bye"), ("Bob", "See you")]],
    # JSON writers leave U+2028, U+2029 and U+0085 unescaped: they are not line ends in JSON Lines.
    "unicode_line_separators.jsonl": [[("Alex", "one\u2028two"), ("Bob", "three\x85four\u2029five")]],
}


@pytest.mark.parametrize("name", sorted(LOADS))
def test_good_files_in_odd_shapes_load_whole(name, data_args):
    result = read_dialogues(str(BAD / name), data_args())
    assert [list(zip(d.speakers, d.texts)) for d in result.dialogues] == LOADS[name]
    assert result.skipped == []


def test_one_bad_jsonl_line_is_skipped_and_counted_with_skip(data_args):
    result = read_dialogues(str(BAD / "bad_line.jsonl"), data_args(on_bad_dialogue="skip"))
    assert [d.texts[0] for d in result.dialogues] == ["Hi", "How are you?", "Bye"]
    assert [where for where, _ in result.skipped] == [f"{BAD / 'bad_line.jsonl'} line 3"]


def test_a_speaker_named_like_a_turn_key_loads_when_the_format_is_named(data_args):
    result = read_dialogues(str(BAD / "text_lines.jsonl"), data_args(data_format="speaker_map"))
    assert result.dialogues[0].speakers == ["text"]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_json_nested_10000_deep_is_an_error_not_a_recursion_error(tmp_path, data_args, suffix):
    deep = "[" * 10_000 + "]" * 10_000
    path = write(tmp_path / f"deep{suffix}", '{"Alex": "fine", "Bob": "ok"}\n' + deep + "\n")
    if suffix == ".json":
        path = write(tmp_path / "deep.json", "[" + deep + "]")
    with pytest.raises(DialogueDataError, match=r"nested too deeply") as error:
        read_dialogues(path, data_args())
    where = r"deep\.json entry \[0\] \(line 1\)" if suffix == ".json" else r"deep\.jsonl line 2"
    assert error.match(where)
    deep_object = write(tmp_path / "object.json", '{"a": ' * 10_000 + "1" + "}" * 10_000)
    with pytest.raises(DialogueDataError, match=r"object\.json: JSON nested too deeply"):
        read_dialogues(deep_object, data_args())


def test_a_10_mb_turn_is_kept_whole(tmp_path, data_args):
    text = ("all work and no play " * 500_000)[:10_000_000].strip()
    path = write(tmp_path / "big.json", json.dumps([{"Alex": text, "Bob": "ok"}]))
    (dialogue,) = read_dialogues(path, data_args()).dialogues
    assert dialogue.texts == [text, "ok"] and len(text) > 9_999_000


def test_a_10_mb_turn_is_tokenized_and_trained(tmp_path):
    """Not only read: the turn is cut into windows that fit max_length (its speaker label repeated as context),
    every token of it is counted, and training steps run on its rows."""
    from fault_runs import train

    text = ("all work and no play makes jack a dull boy " * 240_000)[:10_000_000].strip()
    data = write(tmp_path / "big.json", json.dumps([{"Alex": text, "Bob": "ok"}, {"Alex": "hi", "Bob": "hello"}]))
    out = tmp_path / "run"
    result = train(out, "--data_path", data, "--validation_split_ratio", "0", "--max_steps", "2",
                   "--save_strategy", "no", "--load_best_model_at_end", "false")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "data_report.json").read_text())["train"]
    assert report["dialogues"] == 2 and report["truncation"]["tokens_dropped"] == 0
    assert report["windows"]["turns_split_inside"] == 1
    assert report["windows"]["windows_created"] > 10_000_000 // (8 * 128)  # a few characters a token, 128 a window
    assert report["tokens"] > 10_000_000 // 8
    assert json.loads((out / "train_results.json").read_text())["global_step"] == 2


# --- properties ----------------------------------------------------------------------------------

# Any printable text, letters of every script, and characters that look like blanks but are not
# whitespace to str.strip (zero-width space, word joiner); no lone surrogates (not valid UTF-8).
LOOKS_BLANK = "\u200b\u2060\u200d"
characters = st.characters(blacklist_categories=("Cs",))
turn_text = st.one_of(
    st.text(characters, min_size=1, max_size=80),
    st.text(st.sampled_from(LOOKS_BLANK + " \t"), min_size=1, max_size=5),
    st.text(characters, min_size=2000, max_size=4000),  # a long turn, split across windows
).filter(lambda text: text.strip())
speaker = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=8).map(
    lambda name: f"{name}:x" if len(name) % 2 else name  # colons inside speaker names
).filter(lambda name: name.strip())
dialogues = st.lists(st.tuples(speaker, turn_text), min_size=1, max_size=6)
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                           HealthCheck.too_slow])


@PROPERTY
@given(turns=dialogues)
def test_every_turn_survives_reading_in_order(tmp_path, data_args, turns):
    line = json.dumps({"turns": [{"speaker": s, "text": t} for s, t in turns]}, ensure_ascii=False)
    path = write(tmp_path / "random.jsonl", line + "\n")
    (dialogue,) = read_dialogues(path, data_args()).dialogues
    assert list(zip(dialogue.speakers, dialogue.texts)) == [(s.strip(), t.strip()) for s, t in turns]


@PROPERTY
@given(turns=dialogues, max_length=st.sampled_from([64, 100_000]))
def test_every_turn_survives_formatting_and_tokenization_in_order(tokenizer, data_args, turns, max_length):
    from recipe.data import parse_dialogue

    dialogue = parse_dialogue({"turns": [{"speaker": s, "text": t} for s, t in turns]}, "random", data_args())
    args = data_args(max_length=max_length)
    rendered = render_dialogue(dialogue.speakers, dialogue.texts, dialogue.roles, args)
    assert rendered.text == "\n".join(f"{s}: {t}" for s, t in zip(dialogue.speakers, dialogue.texts))
    encoded = encode_dialogue(dialogue, tokenizer, args)
    # Every token of the dialogue lands in one window, in order (repeated labels are marked -1)...
    kept = [(token, turn) for w in encoded.windows for token, turn in zip(w.input_ids, w.token_turns) if turn >= 0]
    assert len(kept) == encoded.num_tokens
    assert all(len(w.input_ids) <= max_length for w in encoded.windows)
    ids = [token for token, _ in kept]
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[:-1], clean_up_tokenization_spaces=False) == rendered.text
    # ... and each turn's tokens spell that turn: its label, its text, the line break that ends it.
    for number, (name, text) in enumerate(zip(dialogue.speakers, dialogue.texts)):
        own = [token for token, turn in kept[:-1] if turn == number]
        separator = "\n" if number < len(dialogue.speakers) - 1 else ""
        assert tokenizer.decode(own, clean_up_tokenization_spaces=False) == f"{name}: {text}{separator}"
