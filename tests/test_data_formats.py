"""Reading every supported input shape, and the errors for inputs that cannot be used."""

import logging
from pathlib import Path

import pytest

from conftest import ASSETS, write
from recipe.data import DialogueDataError, read_dialogues


def turns_of(dialogue):
    return list(zip(dialogue.speakers, dialogue.texts))


def test_seed_format_keeps_repeated_speakers_in_order(data_args):
    dialogues = read_dialogues(str(ASSETS / "seed_format.json"), data_args()).dialogues
    assert turns_of(dialogues[0]) == [("Alex", "Hello, how are you?"), ("Bob", "Fine, you?"), ("Alex", "Good too.")]
    # Three speakers, two of them repeating: all five turns survive, in file order.
    assert turns_of(dialogues[1]) == [
        ("Alex", "Did you see the game?"),
        ("Bob", "Yes!"),
        ("Carol", "I missed it."),
        ("Alex", "It was close."),
        ("Carol", "Who won?"),
    ]
    assert [d.format for d in dialogues] == ["speaker_map"] * 3
    assert "entry [1] (line 3)" in dialogues[1].source


def test_jsonl_mixes_every_shape_one_per_line(data_args):
    result = read_dialogues(str(ASSETS / "turns.jsonl"), data_args())
    dialogues = result.dialogues
    assert [d.format for d in dialogues] == ["turns", "turns", "speaker_map", "messages"]
    assert turns_of(dialogues[1]) == [("Bob", "A bare list of turns"), ("Alex", "is one dialogue")]
    assert turns_of(dialogues[2]) == [("Alex", "Seed format works"), ("Bob", "in JSON Lines too"),
                                      ("Alex", "with repeats")]
    assert turns_of(dialogues[3]) == [("User", "What time is it?"), ("Assistant", "Noon.")]
    assert dialogues[2].source.endswith("line 4")  # the blank line 3 is skipped, numbering is the file's


def test_messages_map_roles_and_names(data_args):
    path = str(ASSETS / "messages.json")
    dialogues = read_dialogues(path, data_args()).dialogues
    assert turns_of(dialogues[0]) == [("System", "Be brief."), ("User", "Hi"), ("Assistant", "Hello!")]
    assert dialogues[0].roles == ["system", "user", "assistant"]
    assert dialogues[1].speakers == ["Dana", "Assistant"]  # a message's name wins
    mapped = read_dialogues(path, data_args(role_to_speaker=["user=Alex", "assistant=Bob"])).dialogues
    assert mapped[0].speakers == ["System", "Alex", "Bob"]


def test_single_turn_list_file_is_one_dialogue(tmp_path, data_args):
    path = write(tmp_path / "one.json", '[{"speaker": "A", "text": "x"}, {"speaker": "B", "text": "y"}]')
    dialogues = read_dialogues(path, data_args()).dialogues
    assert len(dialogues) == 1 and turns_of(dialogues[0]) == [("A", "x"), ("B", "y")]


def test_custom_field_names(tmp_path, data_args):
    path = write(tmp_path / "c.jsonl", '{"dialog": [{"who": "A", "said": "x"}, {"who": "B", "said": "y"}]}\n')
    args = data_args(turns_field="dialog", speaker_field="who", text_field="said")
    assert turns_of(read_dialogues(path, args).dialogues[0]) == [("A", "x"), ("B", "y")]


def test_saved_dataset_directory_with_column_mapping(tmp_path, data_args):
    import datasets

    rows = {
        "conversation": [
            [{"name": "Alex", "utterance": "hi"}, {"name": "Bob", "utterance": "hey"}],
            [{"name": "Bob", "utterance": "bye"}, {"name": "Alex", "utterance": "see you"}],
        ]
    }
    validation = {"conversation": [[{"name": "Alex", "utterance": "held out"}, {"name": "Bob", "utterance": "ok"}]]}
    saved = tmp_path / "saved"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(rows), "validation": datasets.Dataset.from_dict(validation)}
    ).save_to_disk(str(saved))
    args = data_args(turns_field="conversation", speaker_field="name", text_field="utterance")
    result = read_dialogues(str(saved), args)
    assert [turns_of(d) for d in result.dialogues] == [
        [("Alex", "hi"), ("Bob", "hey")],
        [("Bob", "bye"), ("Alex", "see you")],
    ]
    assert turns_of(result.validation_dialogues[0]) == [("Alex", "held out"), ("Bob", "ok")]
    assert result.dialogues[1].source == f"{saved} row 1"
    with pytest.raises(DialogueDataError, match=r"has splits \['train', 'validation'\], not 'test'"):
        read_dialogues(str(saved), data_args(dataset_train_split="test", turns_field="conversation"))


def test_hub_dataset_name_fails_fast_offline(data_args, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="cannot download the dataset 'someone/dialogues'.*HF_HUB_OFFLINE"):
        read_dialogues("someone/dialogues", data_args())


def test_a_json_file_read_in_small_chunks_gives_the_same_dialogues_and_lines(tmp_path):
    """A .json file is read a chunk at a time (never whole): values and numbers cut by a chunk's end, multi-byte
    characters split between chunks, and line numbers counted across chunks come out as from one read."""
    from recipe.data.sources import json_records

    entries = ['{"Alex": "héllo wörld", "Bob": "ünïcode ✓", "Alex": "again"}', '{"turns": [{"speaker": "A", '
               '"text": "x"}], "n": 12345678}', '\n\n  {"Carol": "after blank lines"}'] * 7
    path = write(tmp_path / "d.json", "[\n" + ",\n".join(entries) + "\n]\n")
    whole = list(json_records(path, lambda values: False))
    assert len(whole) == 21 and whole[3][0] == f"{path} entry [3] (line 7)"
    for chunk_bytes in (1, 2, 3, 7, 64):
        assert list(json_records(path, lambda values: False, chunk_bytes=chunk_bytes)) == whole


@pytest.mark.parametrize("content", [
    '[{"Alex": "hi", "Bob": "yo"},\n {"Alex": "hé" "Bob": "x"}]', '[{"Alex": "hi"}', '{"Alex": "a"}\n{"Bob": "b"}\n',
    '[{"Alex": "hi"},\n\n   {"Bob": "b"} {"Carol": "c"}]', "[]", '[{"Alex": "caf\u00e9" ]'])
def test_errors_name_the_same_line_and_column_however_the_file_is_chunked(tmp_path, content):
    from recipe.data.sources import json_records

    path = write(tmp_path / "bad.json", content)
    messages = set()
    for chunk_bytes in (1, 3, 5, 1 << 20):
        with pytest.raises(DialogueDataError) as error:
            list(json_records(path, lambda values: False, chunk_bytes=chunk_bytes))
        messages.add(str(error.value))
    assert len(messages) == 1, messages


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, message",
    [
        ('[{"Alex": "hi", "Bob": "yo"},\n {"Alex": "hi" "Bob": "x"}]',
         r"bad\.json line 2 column 16: invalid JSON \(Expecting ',' delimiter\)"),
        ('[{"Alex": "hi"}', r"bad\.json line 1 column 16: invalid JSON"),
        ('{"Alex": "a"}\n{"Bob": "b"}\n', r"bad\.json line 2 column 1: invalid JSON \(Extra data\).*name it \.jsonl"),
        ("  \n", r"bad\.json is empty"),
        ("[]", r"bad\.json holds an empty array"),
    ],
)
def test_malformed_json_names_file_line_and_column(tmp_path, data_args, content, message):
    path = write(tmp_path / "bad.json", content)
    with pytest.raises(DialogueDataError, match=message):
        read_dialogues(path, data_args())


def test_malformed_jsonl_line(tmp_path, data_args):
    path = write(tmp_path / "bad.jsonl", '{"Alex": "a", "Bob": "b"}\n{"Alex": oops}\n')
    with pytest.raises(DialogueDataError, match=r"bad\.jsonl line 2: column 10: invalid JSON.*one complete JSON value"):
        read_dialogues(path, data_args())


def test_non_utf8_names_byte_offset(tmp_path, data_args):
    path = write(tmp_path / "latin.json", '[{"Alex": "caf\xe9"}]'.encode("latin-1"))
    with pytest.raises(DialogueDataError,
                       match=r"latin\.json is not valid UTF-8: byte 0xe9 at offset 14 \(line 1\).*iconv"):
        read_dialogues(path, data_args())


def test_utf16_file_is_named(tmp_path, data_args):
    path = write(tmp_path / "u16.json", '[{"Alex": "hi"}]'.encode("utf-16"))
    with pytest.raises(DialogueDataError, match=r"u16\.json is UTF-16 encoded; re-save it as UTF-8"):
        read_dialogues(path, data_args())


def test_missing_file(data_args):
    with pytest.raises(DialogueDataError, match=r"nowhere/dialogues\.json: no such file"):
        read_dialogues("nowhere/dialogues.json", data_args())


BAD_ENTRIES = [
    ("{}", r"entry \[1\] \(line 3\): empty dialogue"),
    ('{"Alex": 3}', r"entry \[1\] \(line 3\): turn 1 \(Alex\) has a value that is a number; it must be a string"),
    ('{"Alex": "hi", "Bob": "   "}', r"entry \[1\] \(line 3\): turn 2 \(Bob\) is empty"),
    ('{"turns": [{"speaker": "A", "text": "x"}, {"text": "y"}]}',
     r'entry \[1\] \(line 3\): turn 2 has no "speaker" \(keys: \[\'text\'\]\); add it, or set --speaker_field'),
    ('{"turns": [{"speaker": "A", "speaker": "B", "text": "x"}]}', r"turn 1 has the key 'speaker' twice"),
    ('{"turns": [{"speaker": "A", "words": "x"}]}', r'turn 1 \(A\) has no "text".*set --text_field'),
    ('{"messages": [{"content": "x"}]}', r'message 1 has no "role"'),
    ('{"id": 7, "dialog": [["a", "b"]]}', r"cannot tell its format: key 'dialog' holds a list.*--turns_field dialog"),
    ('"just a string"', r"cannot tell its format: it is a string"),
    ('{"turns": "not a list"}', r"'turns' holds a string; expected a list"),
]


@pytest.mark.parametrize("entry, message", BAD_ENTRIES)
def test_bad_dialogue_errors_name_entry_and_fix(tmp_path, data_args, entry, message):
    path = write(tmp_path / "d.json", '[\n{"Alex": "ok", "Bob": "fine"},\n' + entry + "\n]")
    args = data_args()
    with pytest.raises(DialogueDataError, match=r"d\.json: 1 of 2 dialogues are invalid") as error:
        read_dialogues(path, args)
    assert error.match(message)
    assert error.match("--on_bad_dialogue skip")
    # The refused read leaves no table behind that a later read would take as complete.
    assert not [p.name for p in Path(args.dataset_cache_dir).glob("*") if "dialogues" in p.name]


def test_explicit_format_that_does_not_fit(tmp_path, data_args):
    path = write(tmp_path / "d.json", '[{"Alex": "hi", "Bob": "yo"}]')
    with pytest.raises(DialogueDataError,
                       match=r"has no 'turns' key \(keys: \['Alex', 'Bob'\]\); set --turns_field or --data_format"):
        read_dialogues(path, data_args(data_format="turns"))


def test_skip_mode_counts_and_reports(tmp_path, data_args, caplog):
    entries = ['{"Alex": "ok%d", "Bob": "fine"}' % i for i in range(3)] + ["{}", '{"Alex": 1}', "[]"]
    path = write(tmp_path / "d.jsonl", "\n".join(entries) + "\n")
    with caplog.at_level(logging.WARNING):
        result = read_dialogues(path, data_args(on_bad_dialogue="skip"))
    assert len(result.dialogues) == 3
    assert [where for where, _ in result.skipped] == [f"{path} line {n}" for n in (4, 5, 6)]
    assert "skipped 3 invalid dialogues" in caplog.text and f"{path} line 4" in caplog.text


def test_many_bad_dialogues_are_counted_not_all_listed(tmp_path, data_args):
    path = write(tmp_path / "d.jsonl", "{}\n" * 9 + '{"A": "x", "B": "y"}\n')
    with pytest.raises(DialogueDataError,
                       match=r"(?s)9 of 10 dialogues are invalid.*line 5: empty dialogue[^\n]*\n  \.\.\. and 4 more\n"):
        read_dialogues(path, data_args())


def test_all_dialogues_skipped_is_an_error(tmp_path, data_args):
    path = write(tmp_path / "d.jsonl", "{}\n{}\n")
    with pytest.raises(DialogueDataError, match="no valid dialogue left"):
        read_dialogues(path, data_args(on_bad_dialogue="skip"))


def test_a_dataset_folder_as_validation_path_never_validates_on_its_train_split(tmp_path, data_args):
    import datasets

    from recipe.data import load_dialogue_splits

    def rows(*texts):
        return datasets.Dataset.from_dict({"turns": [[{"speaker": "Alex", "text": t}, {"speaker": "Bob", "text": "ok"}]
                                                     for t in texts]})

    train_file = str(tmp_path / "train.json")
    (tmp_path / "train.json").write_text('[{"Alex": "train me", "Bob": "sure"}]')
    datasets.DatasetDict({"train": rows("a", "b"), "validation": rows("held out")}).save_to_disk(tmp_path / "with")
    datasets.DatasetDict({"train": rows("a", "b"), "test": rows("test 1", "test 2")}).save_to_disk(tmp_path / "without")
    rows("all 1", "all 2").save_to_disk(tmp_path / "single")

    def validation_texts(folder, **options):
        args = data_args(data_path=train_file, validation_path=str(tmp_path / folder), **options)
        splits = load_dialogue_splits(args)
        return [d.texts[0] for d in splits.validation]

    assert validation_texts("with") == ["held out"]  # its validation split
    assert validation_texts("without", dataset_validation_split="test") == ["test 1", "test 2"]  # the one named
    assert validation_texts("single") == ["all 1", "all 2"]  # a single Dataset has no splits: all of it
    with pytest.raises(DialogueDataError, match=r"validation_path .*without has splits \['train', 'test'\], none named "
                                                r"'validation': set --dataset_validation_split"):
        validation_texts("without")

    # data_path a dataset folder too: with validation_path set, its own validation split is not used, and
    # --dataset_validation_split names validation_path's split, not one data_path must have.
    splits = load_dialogue_splits(data_args(data_path=str(tmp_path / "with"), validation_path=str(tmp_path / "without"),
                                            dataset_validation_split="test"))
    assert [d.texts[0] for d in splits.train] == ["a", "b"] and len(splits.validation) == 2
