"""--streaming true: the training dialogues read, shuffled, tokenized and packed while training, and a stopped run
resumed at the same place in the stream."""

import json
from collections import Counter

import pytest

from conftest import SAMPLE_DATA, write
from recipe.data import DialogueDataError, build_datasets


def streaming_split_files(tmp_path):
    """The first 60 sample dialogues to train on (JSON Lines) and the next 20 to validate on (a JSON array)."""
    dialogues = json.loads(SAMPLE_DATA.read_text(encoding="utf-8"))  # repeated keys collapse: fine for this
    train = write(tmp_path / "train.jsonl", "\n".join(json.dumps(d) for d in dialogues[:60]) + "\n")
    validation = write(tmp_path / "validation.json", json.dumps(dialogues[60:80]))
    return train, validation


@pytest.fixture
def split_files(tmp_path):
    return streaming_split_files(tmp_path)


def streamed(prepared, pass_number=0):
    return list(prepared.train_dataset.rows(pass_number, with_sources=True))


def test_an_epoch_of_the_stream_trains_every_dialogue_once_as_the_map_path_does(split_files, data_args, tokenizer):
    train, validation = split_files
    args = dict(data_path=train, validation_path=validation, max_length=64, shuffle_buffer_size=16)
    mapped = build_datasets(data_args(**args), tokenizer)
    stream = build_datasets(data_args(**args, streaming=True), tokenizer)
    rows = streamed(stream)
    windows = Counter(source for row in rows for source in row["sources"])
    expected = Counter(mapped.train_examples["source"])  # one entry per window with a target
    assert windows == expected  # every window of every dialogue once: none skipped, none twice
    assert sum(len(row["input_ids"]) for row in rows) == mapped.report["train"]["tokens"]
    assert all(len(row["input_ids"]) <= 64 for row in rows)
    # Another pass: the same dialogues in another order; the same pass again: the same order.
    again, next_epoch = streamed(stream), streamed(stream, 1)
    assert [row["sources"] for row in again] == [row["sources"] for row in rows]
    assert Counter(s for row in next_epoch for s in row["sources"]) == windows
    assert [row["sources"] for row in next_epoch] != [row["sources"] for row in rows]
    assert stream.report["streaming"] and stream.report["validation"] == mapped.report["validation"]


def test_streaming_refuses_what_it_cannot_do_in_one_line(data_args):
    from types import SimpleNamespace

    from recipe.data.streaming import check_streaming

    by_epoch = SimpleNamespace(max_steps=0, eval_strategy="epoch", save_strategy="steps")
    with pytest.raises(DialogueDataError, match=r"needs --max_steps N: .*; --eval_strategy epoch never comes.*"
                                                 r"give --validation_path FILE"):
        check_streaming(data_args(streaming=True), by_epoch)
    by_steps = SimpleNamespace(max_steps=10, eval_strategy="steps", save_strategy="steps")
    with pytest.raises(DialogueDataError, match="whole weights only"):
        check_streaming(data_args(data_path=[f"{SAMPLE_DATA},weight=0.5"], validation_split_ratio=0), by_steps)


def test_a_bad_dialogue_in_the_stream_names_its_line(tmp_path, data_args, tokenizer):
    data = write(tmp_path / "d.jsonl", '{"Alex": "hi", "Bob": "yo"}\n{"Alex": 3}\n')
    prepared = build_datasets(data_args(data_path=data, validation_split_ratio=0, streaming=True), tokenizer)
    with pytest.raises(DialogueDataError, match=r"d\.jsonl line 2: turn 1 \(Alex\) has a value that is a number"):
        next(iter(prepared.train_dataset))


def test_several_sources_are_interleaved_by_weight_each_dialogue_weight_times(split_files, tmp_path, data_args,
                                                                              tokenizer):
    train, validation = split_files
    chats = write(tmp_path / "chats.jsonl", "".join(
        json.dumps({"conversations": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]})
        + "\n" for i in range(30)))
    args = data_args(data_path=[train, f"{chats},weight=2,data_format=messages,messages_field=conversations"],
                     validation_path=validation, max_length=64, shuffle_buffer_size=1, streaming=True)
    rows = streamed(build_datasets(args, tokenizer))
    sources = [source for row in rows for source in row["sources"]]
    chat_windows = [s for s in sources if s.startswith(chats)]
    assert len(chat_windows) == 60 and set(Counter(chat_windows).values()) == {2}
    assert Counter(s for s in sources if s.startswith(train)) == Counter(
        build_datasets(data_args(data_path=train, validation_path=validation, max_length=64), tokenizer)
        .train_examples["source"])
    # Interleaved: the chats are spread over the pass, not all after the other source.
    import numpy as np

    from recipe.data.streaming import streamed_dialogues

    order = [d.source for d in streamed_dialogues(args, np.random.default_rng(0))]
    first_quarter = Counter(source.startswith(chats) for source in order[:30])
    assert len(order) == 120 and first_quarter[True] > 10 and first_quarter[False] > 5  # 2:1 by weight
