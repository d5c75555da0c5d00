"""Formatting, labels, windows, packing, batching, splits and caching of the data pipeline."""

import pytest
import torch

from conftest import ASSETS, SAMPLE_DATA, write
from recipe.data import (
    IGNORE_INDEX,
    Dialogue,
    DialogueCollator,
    DialogueDataError,
    best_fit_decreasing,
    build_datasets,
    encode_dialogue,
    read_dialogues,
    render_dialogue,
    split_dialogues,
)


def dialogue(*turns):
    speakers, texts = zip(*turns)
    return Dialogue("test", list(speakers), list(texts), [None] * len(turns), "turns")


HELLO = dialogue(("Alex", "Hello, how are you?"), ("Bob", "Fine, you?"), ("Alex", "Good too."))


def test_text_is_speaker_lines_then_eos(tokenizer, data_args):
    encoded = encode_dialogue(HELLO, tokenizer, data_args())
    (window,) = encoded.windows
    assert (tokenizer.decode(window.input_ids)
            == "Alex: Hello, how are you?\nBob: Fine, you?\nAlex: Good too.<|endoftext|>")
    assert window.input_ids[-1] == tokenizer.eos_token_id


def test_eos_carries_loss_and_only_first_token_is_unpredicted(tokenizer, data_args):
    (window,) = encode_dialogue(HELLO, tokenizer, data_args()).windows
    assert window.labels[-1] == tokenizer.eos_token_id  # the model learns to end the dialogue
    assert window.labels[0] == IGNORE_INDEX
    assert window.labels[1:] == window.input_ids[1:]


def test_template_is_configurable(tokenizer, data_args):
    args = data_args(turn_template="[{speaker}] {text}", turn_separator=" | ")
    rendered = render_dialogue(HELLO.speakers, HELLO.texts, HELLO.roles, args)
    assert rendered.text == "[Alex] Hello, how are you? | [Bob] Fine, you? | [Alex] Good too."


def test_eos_string_inside_text_stays_text(tokenizer, data_args):
    d = dialogue(("Alex", "I typed <|endoftext|> here"), ("Bob", "ok"))
    (window,) = encode_dialogue(d, tokenizer, data_args()).windows
    assert window.input_ids.count(tokenizer.eos_token_id) == 1  # only the real end


def test_padding_is_out_of_the_loss_even_though_pad_is_eos(tokenizer, data_args):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    short = encode_dialogue(dialogue(("A", "hi"), ("B", "yo")), tokenizer, data_args()).windows[0]
    long = encode_dialogue(HELLO, tokenizer, data_args()).windows[0]
    features = [{"input_ids": w.input_ids, "labels": w.labels} for w in (short, long)]
    for padding in ("longest", "max_length"):
        batch = DialogueCollator(tokenizer.pad_token_id, padding=padding, max_length=64)(features)
        width = 64 if padding == "max_length" else len(long.input_ids)
        assert batch["input_ids"].shape == (2, width)
        n = len(short.input_ids)
        assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (width - n)
        assert batch["labels"][0, n:].eq(IGNORE_INDEX).all()
        assert batch["input_ids"][0, n:].eq(tokenizer.eos_token_id).all()  # pad id == EOS id ...
        assert batch["labels"][0, n - 1] == tokenizer.eos_token_id  # ... yet the real EOS is a target


def test_train_on_speakers_masks_exactly_the_other_speakers(tokenizer, data_args):
    d = dialogue(("Alex", "Hello there"), ("Bob", "Hi Alex"), ("Carol", "Hey all"), ("Bob", "Bye now"))
    args = data_args(train_on_speakers=["Bob"])
    (window,) = encode_dialogue(d, tokenizer, args).windows
    trained = tokenizer.decode([t for t in window.labels if t != IGNORE_INDEX])
    # Bob's text and the end of his turns (the newline) carry loss; labels and others are context.
    assert trained == " Hi Alex\n Bye now<|endoftext|>"
    full = encode_dialogue(d, tokenizer, data_args()).windows[0]
    assert full.input_ids == window.input_ids  # same input: the context still conditions
    d_last_carol = dialogue(("Bob", "Hi"), ("Carol", "Bye"))
    (w,) = encode_dialogue(d_last_carol, tokenizer, args).windows
    assert w.labels[-1] == IGNORE_INDEX  # EOS after Carol's turn is not Bob's to learn


def long_dialogue(turns=30):
    return dialogue(*[("Alex" if i % 2 == 0 else "Bob", f"This is sentence number {i} of a long talk.")
                      for i in range(turns)])


def non_special(window):
    return [t for t, turn in zip(window.input_ids, window.token_turns) if turn >= 0]


def test_long_dialogue_splits_at_turn_boundaries_keeping_every_token(tokenizer, data_args):
    d = long_dialogue()
    whole = encode_dialogue(d, tokenizer, data_args(max_length=4096)).windows[0]
    encoded = encode_dialogue(d, tokenizer, data_args(max_length=64))
    assert len(encoded.windows) > 3
    assert all(len(w.input_ids) <= 64 for w in encoded.windows)
    assert [t for w in encoded.windows for t in w.input_ids] == whole.input_ids  # nothing lost, nothing added
    for w in encoded.windows:
        assert tokenizer.decode(w.input_ids).startswith(("Alex:", "Bob:"))  # windows start at a turn, label kept
    assert encoded.windows[-1].input_ids[-1] == tokenizer.eos_token_id
    assert all(w.input_ids[-1] != tokenizer.eos_token_id for w in encoded.windows[:-1])
    assert encoded.tokens_dropped == 0 and encoded.num_tokens == len(whole.input_ids)


def test_turn_longer_than_a_window_is_chunked_with_its_label_repeated(tokenizer, data_args):
    d = dialogue(("Alex", "short"), ("Bob", " ".join(["word"] * 80)), ("Alex", "ok"))
    whole = encode_dialogue(d, tokenizer, data_args(max_length=4096)).windows[0]
    encoded = encode_dialogue(d, tokenizer, data_args(max_length=32))
    assert encoded.turns_split_inside == 1
    assert all(len(w.input_ids) <= 32 for w in encoded.windows)
    assert [t for w in encoded.windows for t in non_special(w)] == whole.input_ids
    continuation = encoded.windows[2]
    assert tokenizer.decode(continuation.input_ids).startswith("Bob: word")
    label_tokens = len(tokenizer("Bob:")["input_ids"])
    assert continuation.labels[:label_tokens] == [IGNORE_INDEX] * label_tokens  # repeated label: context only


def test_truncate_reports_dropped_tokens(tokenizer, data_args):
    d = long_dialogue()
    whole = encode_dialogue(d, tokenizer, data_args(max_length=4096)).windows[0]
    encoded = encode_dialogue(d, tokenizer, data_args(max_length=64, overflow_strategy="truncate"))
    (window,) = encoded.windows
    assert window.input_ids == whole.input_ids[:64]
    assert encoded.tokens_dropped == len(whole.input_ids) - 64


def test_split_is_deterministic_and_disjoint():
    dialogues = [dialogue(("A", f"text {i}"), ("B", "reply")) for i in range(50)]
    train, validation = split_dialogues(dialogues, 0.2, seed=3)
    again_train, again_validation = split_dialogues(dialogues, 0.2, seed=3)
    assert [d.texts for d in validation] == [d.texts for d in again_validation]
    assert len(validation) == 10 and len(train) == 40
    ids = lambda ds: {d.texts[0] for d in ds}  # noqa: E731
    assert ids(train).isdisjoint(ids(validation)) and ids(train) | ids(validation) == ids(dialogues)
    _, other = split_dialogues(dialogues, 0.2, seed=4)
    assert ids(other) != ids(validation)


def test_too_few_dialogues_for_a_split(tmp_path, data_args, tokenizer, caplog):
    path = write(tmp_path / "one.json", '[{"Alex": "hi", "Bob": "hello"}]')
    with pytest.raises(DialogueDataError, match=r"one\.json has 1 valid dialogue: too few for a 20% validation "
                                                r"split.*--validation_split_ratio 0"):
        build_datasets(data_args(data_path=path), tokenizer)
    prepared = build_datasets(data_args(data_path=path, validation_split_ratio=0), tokenizer)
    assert len(prepared.train_examples) == 1 and prepared.validation_dataset is None
    assert "training on all 1 dialogues, with no evaluation" in caplog.text


def test_windows_of_a_dialogue_stay_on_one_side_of_the_split(tokenizer, data_args):
    prepared = build_datasets(data_args(data_path=str(SAMPLE_DATA), max_length=48), tokenizer)
    train_sources = set(prepared.train_examples["source"])
    validation_sources = set(prepared.validation_examples["source"])
    assert train_sources.isdisjoint(validation_sources)
    assert prepared.report["train"]["windows"]["windows_created"] > 0
    total_dialogues = prepared.report["train"]["dialogues"] + prepared.report["validation"]["dialogues"]
    assert len(train_sources) + len(validation_sources) == total_dialogues == 898


def test_validation_file_replaces_the_split(tokenizer, data_args):
    prepared = build_datasets(
        data_args(data_path=str(ASSETS / "seed_format.json"), validation_path=str(ASSETS / "messages.json")), tokenizer
    )
    assert len(prepared.train_dialogues) == 3 and len(prepared.validation_dialogues) == 2


def test_best_fit_decreasing_fills_bins():
    lengths = [60, 50, 40, 30, 20, 10, 90]
    bins = best_fit_decreasing(lengths, 100)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 100 for b in bins)
    assert len(bins) == 3  # 300 tokens in 3 bins of 100: optimal


def token_losses(model, input_ids, labels, **inputs):
    with torch.no_grad():
        logits = model(input_ids=input_ids, use_cache=False, **inputs).logits
    shifted = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=IGNORE_INDEX, reduction="none"
    )
    return shifted[0], labels[0, 1:] != IGNORE_INDEX


def test_packed_dialogue_has_the_same_loss_as_alone(tokenizer, data_args, tiny_model):
    """Packing must not let dialogues see each other, nor drop or add a target."""
    import datasets

    from recipe.data import pack_examples

    dialogues = [
        HELLO,
        dialogue(("Bob", "What is the weather like?"), ("Alex", "Rainy all day.")),
        dialogue(("Carol", "Anyone up for lunch?"), ("Alex", "Me!"), ("Bob", "Count me in.")),
    ]
    windows = [encode_dialogue(d, tokenizer, data_args()).windows[0] for d in dialogues]
    table = {"input_ids": [w.input_ids for w in windows], "labels": [w.labels for w in windows],
             "num_tokens": [len(w.input_ids) for w in windows]}
    packed = pack_examples(datasets.Dataset.from_dict(table), data_args(max_length=256), "train")
    assert len(packed) == 1
    batch = DialogueCollator(tokenizer.pad_token_id, padding="packing")([packed[0]])
    assert "attention_mask" not in batch
    packed_losses, packed_mask = token_losses(tiny_model, batch["input_ids"], batch["labels"],
                                              position_ids=batch["position_ids"])
    alone = []
    for w in windows:
        losses, mask = token_losses(tiny_model, torch.tensor([w.input_ids]), torch.tensor([w.labels]))
        alone.append(losses[mask])
    assert int(packed_mask.sum()) == sum(len(a) for a in alone)  # no target dropped or added
    torch.testing.assert_close(packed_losses[packed_mask], torch.cat(alone), atol=1e-5, rtol=1e-5)

    # Control: the same row with positions running on (naive concatenation) gives other losses.
    naive, _ = token_losses(tiny_model, batch["input_ids"], batch["labels"])
    assert not torch.allclose(naive[packed_mask], torch.cat(alone), atol=1e-3)


def test_packed_batch_with_padding_keeps_losses(tokenizer, data_args, tiny_model):
    windows = [encode_dialogue(d, tokenizer, data_args()).windows[0]
               for d in (HELLO, dialogue(("A", "hi"), ("B", "yo")))]
    features = [{"input_ids": w.input_ids, "labels": w.labels, "position_ids": list(range(len(w.input_ids)))}
                for w in windows]
    batch = DialogueCollator(tokenizer.pad_token_id, padding="packing", pad_to_multiple_of=8)(features)
    assert batch["input_ids"].shape[1] % 8 == 0
    short = windows[1]
    with torch.no_grad():
        padded = tiny_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                            use_cache=False).logits[1, : len(short.input_ids)]
        alone = tiny_model(input_ids=torch.tensor([short.input_ids]), use_cache=False).logits[0]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


def test_build_datasets_packs_rows_within_max_length(tokenizer, data_args):
    prepared = build_datasets(data_args(data_path=str(SAMPLE_DATA), max_length=128), tokenizer)
    rows = prepared.train_dataset
    assert set(rows.column_names) == {"input_ids", "labels", "position_ids"}
    assert max(len(r) for r in rows["input_ids"]) <= 128
    assert sum(len(r) for r in rows["input_ids"]) == prepared.report["train"]["tokens"]
    assert len(rows) < len(prepared.train_examples)


def test_tokenization_cache_is_reused(tokenizer, data_args, monkeypatch):
    import recipe.data.encoding
    import recipe.data.pipeline

    # The tokenized splits' own cache (what a saved or Hub dataset relies on), under the whole preparation's.
    monkeypatch.setattr(recipe.data.pipeline, "load_prepared", lambda key, args, splits: None)
    args = data_args(data_path=str(ASSETS / "seed_format.json"), validation_split_ratio=0)
    first = build_datasets(args, tokenizer)

    def fail(*_, **__):
        raise AssertionError("tokenized again instead of loading the cache")

    monkeypatch.setattr(recipe.data.encoding, "tokenize_batch", fail)
    second = build_datasets(args, tokenizer)
    assert second.train_examples["input_ids"] == first.train_examples["input_ids"]
    assert second.train_examples.cache_files == first.train_examples.cache_files
    # A changed option is a different fingerprint: it must tokenize again.
    with pytest.raises(AssertionError, match="tokenized again"):
        build_datasets(data_args(data_path=str(ASSETS / "seed_format.json"), validation_split_ratio=0, max_length=100),
                       tokenizer)


def test_a_second_preparation_comes_from_the_cache_without_reading_the_file(tokenizer, data_args, tmp_path,
                                                                            monkeypatch):
    import recipe.data.encoding
    import recipe.data.formats

    def fail_parse(*_, **__):
        raise AssertionError("parsed the data file again")

    def fail_tokenize(*_, **__):
        raise AssertionError("tokenized again")

    data = tmp_path / "dialogues.json"
    data.write_text(SAMPLE_DATA.read_text(encoding="utf-8"), encoding="utf-8")
    args = data_args(data_path=str(data), max_length=64, train_on_speakers=["Bob"])  # drops Alex-only windows
    first = build_datasets(args, tokenizer)
    assert first.report["train"]["labels"]["masked_examples_left_out"] > 0
    with monkeypatch.context() as patched:
        patched.setattr(recipe.data.formats, "parse_dialogue", fail_parse)
        patched.setattr(recipe.data.encoding, "tokenize_batch", fail_tokenize)
        second = build_datasets(args, tokenizer)
    assert second.report == first.report
    for name in ("train_examples", "validation_examples", "train_dataset", "validation_dataset"):
        assert getattr(second, name)[:] == getattr(first, name)[:], name
    assert [d.texts for d in second.validation_dialogues] == [d.texts for d in first.validation_dialogues]
    # Another encoding option: the read dialogues are reused, tokenized again; other bytes: read again.
    with monkeypatch.context() as patched:
        patched.setattr(recipe.data.formats, "parse_dialogue", fail_parse)
        patched.setattr(recipe.data.encoding, "tokenize_batch", fail_tokenize)
        with pytest.raises(AssertionError, match="tokenized again"):
            build_datasets(data_args(data_path=str(data), max_length=64), tokenizer)
        data.write_text(data.read_text(encoding="utf-8").replace("AI", "A.I.", 1), encoding="utf-8")
        with pytest.raises(AssertionError, match="parsed the data file again"):
            build_datasets(args, tokenizer)


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
)


def test_chat_template_renders_messages_and_masks_by_role(tokenizer, data_args):
    templated = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    templated.pad_token = templated.eos_token
    templated.chat_template = CHAT_TEMPLATE
    d = read_dialogues(str(ASSETS / "messages.json"), data_args()).dialogues[0]
    args = data_args(use_chat_template=True, train_on_speakers=["Assistant"])
    (window,) = encode_dialogue(d, templated, args).windows
    assert templated.decode(window.input_ids) == "<|system|>Be brief.\n<|user|>Hi\n<|assistant|>Hello!\n<|endoftext|>"
    trained = templated.decode([t for t in window.labels if t != IGNORE_INDEX])
    assert trained == "Hello!\n<|endoftext|>"  # the template's header is context; content, turn end and EOS are not


def test_chat_template_needs_roles_for_speaker_data(tokenizer, data_args):
    templated = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    templated.chat_template = CHAT_TEMPLATE
    with pytest.raises(DialogueDataError, match=r"needs a role for speaker 'Alex'.*--role_to_speaker user=Alex"):
        encode_dialogue(HELLO, templated, data_args(use_chat_template=True))
    args = data_args(use_chat_template=True, role_to_speaker=["user=Alex", "assistant=Bob"])
    (window,) = encode_dialogue(HELLO, templated, args).windows
    assert templated.decode(window.input_ids).startswith("<|user|>Hello, how are you?\n<|assistant|>Fine, you?\n")
    with pytest.raises(DialogueDataError, match="has no chat template"):
        encode_dialogue(HELLO, tokenizer, data_args(use_chat_template=True))
