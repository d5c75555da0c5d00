"""The label audit: what the loss sees, printed and recorded; loss masks that cannot train refused
before the first step; the KV cache refused with packing."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, write
from recipe.config import ConfigError
from recipe.data import DialogueDataError, build_datasets, format_report
from recipe.data.audit import closest_speaker, label_audit
from recipe.data.encoding import COUNT_COLUMNS
from test_training import train

# Three dialogues; Bob ends the first two, the third has no Bob at all.
DIALOGUES = (
    '[{"Alex": "Hello there", "Bob": "Hi Alex", "Alex": "How are you?", "Bob": "Fine."},'
    ' {"Alex": "Lunch?", "Bob": "Yes"},'
    ' {"Alex": "Anyone here?", "Carol": "Me"}]'
)


def test_audit_counts_loss_tokens_per_speaker_eos_and_masked_examples(tmp_path, data_args, tokenizer, caplog):
    path = write(tmp_path / "d.json", DIALOGUES)
    prepared = build_datasets(data_args(data_path=path, validation_split_ratio=0, train_on_speakers=["Bob"]), tokenizer)
    train_report = prepared.report["train"]
    # Bob's words, the end of his first turn, and the EOS after his last turn in each dialogue.
    bob_tokens = sum(len(tokenizer(text)["input_ids"]) for text in (" Hi Alex\n", " Fine.", " Yes")) + 2
    assert train_report["labels"] == {
        "loss_tokens_per_speaker": {"Bob": bob_tokens},
        "dialogues_with_eos_in_loss": 2,
        "masked_examples_left_out": 1,  # Alex and Carol only: nothing to learn from it
    }
    assert train_report["loss_tokens"] == bob_tokens
    assert train_report["turns_per_speaker"] == {"Alex": 4, "Bob": 3, "Carol": 1}
    assert train_report["dialogues"] == 3 and train_report["examples"] == 2
    assert len(prepared.train_examples) == 2  # the masked example is left out of training ...
    assert "1 of 3 examples have every label masked" in caplog.text  # ... and said so
    summary = format_report(prepared.report)
    assert (f"train loss: {bob_tokens} tokens (Bob {bob_tokens}); EOS in the loss for 2 of 3 dialogues; "
            "1 examples with every label masked, left out") in summary


def test_the_audit_is_summed_from_count_columns_alone():
    import datasets

    columns = {name: [] for name in (*COUNT_COLUMNS, "window_index")}
    rows = [  # two windows of one dialogue, then a second dialogue
        (12, 9, 0, ["Alex", "Bob"], [4, 5], ["Alex", "Bob"], [1, 2], 0),
        (6, 0, 0, [], [], [], [], 1),
        (8, 7, 1, ["Bob"], [7], ["Bob"], [1], 0),
    ]
    for row in rows:
        for name, value in zip((*COUNT_COLUMNS, "window_index"), row):
            columns[name].append(value)
    audit = label_audit(datasets.Dataset.from_dict(columns))  # no input_ids, no labels: columns only
    assert audit == {
        "dialogues": 2, "examples": 3, "loss_tokens": 16, "loss_tokens_per_speaker": {"Bob": 12, "Alex": 4},
        "eos_in_loss": 1, "masked_examples": 1, "turns_per_speaker": {"Bob": 3, "Alex": 1},
    }


@pytest.mark.parametrize("speakers, message", [
    (["bob"], r"train_on_speakers names 'bob', who never speaks in the training data \(3 dialogues\)\. Its speakers: "
              r"Alex \(4 turns\), Bob \(3 turns\), Carol \(1 turns\)\. Did you mean --train_on_speakers Bob\?"),
    (["Bob", "Carl"], r"names 'Carl', who never speaks.*Did you mean --train_on_speakers Bob Carol\?"),
    (["Bob", "Zed"], r"names 'Zed', who never speaks.*Name speakers exactly as the data writes them"),
])
def test_a_speaker_the_data_does_not_have_is_refused_with_the_closest_match(speakers, message, tmp_path, data_args,
                                                                           tokenizer):
    path = write(tmp_path / "d.json", DIALOGUES)
    with pytest.raises(DialogueDataError, match=message):
        build_datasets(data_args(data_path=path, validation_split_ratio=0, train_on_speakers=speakers), tokenizer)


def test_closest_speaker():
    assert closest_speaker("bob", ["Alex", "Bob"]) == "Bob"
    assert closest_speaker("Alx", ["Alex", "Bob"]) == "Alex"
    assert closest_speaker("Zed", ["Alex", "Bob"]) is None


def test_eos_never_in_the_loss_is_refused(tmp_path, data_args, tokenizer):
    path = write(tmp_path / "d.json", '[{"Alex": "Hi", "Bob": "Hey"}, {"Alex": "Yo", "Bob": "Bye"}]')
    with pytest.raises(DialogueDataError,
                       match=r"no dialogue's final EOS carries loss.*no dialogue ends with a turn of 'Alex'"):
        build_datasets(data_args(data_path=path, validation_split_ratio=0, train_on_speakers=["Alex"]), tokenizer)


def test_validation_with_nothing_in_the_loss_is_refused(tmp_path, data_args, tokenizer):
    train_path = write(tmp_path / "train.json", '[{"Alex": "Hi", "Bob": "Hey"}]')
    validation_path = write(tmp_path / "validation.json", '[{"Alex": "Hi", "Carol": "Hey"}]')
    args = data_args(data_path=train_path, validation_path=validation_path, train_on_speakers=["Bob"])
    with pytest.raises(DialogueDataError, match=r"no token of the validation data carries loss \('Bob' never speaks"):
        build_datasets(args, tokenizer)


def test_a_misspelt_speaker_stops_train_py_before_the_first_step(tmp_path):
    output = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "scripts/train.py", "--config", "recipe/configs/smoke.yaml", "--output_dir", str(output),
         "--train_on_speakers", "bob", "--dataset_cache_dir", str(tmp_path / "cache")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert "error: train_on_speakers names 'bob', who never speaks in the training data" in result.stderr
    assert "Did you mean --train_on_speakers Bob?" in result.stderr and "Traceback" not in result.stderr
    assert not list(output.glob("checkpoint-*")) and not (output / "trainer_state.json").exists()


def test_the_audit_is_recorded_in_data_report_json(tmp_path):
    result = train(tmp_path, "--num_train_epochs", "1", "--train_on_speakers", "Bob")
    report = json.loads((result.output_dir / "data_report.json").read_text())
    labels = report["train"]["labels"]
    assert set(labels["loss_tokens_per_speaker"]) == {"Bob"}
    assert labels["loss_tokens_per_speaker"]["Bob"] == report["train"]["loss_tokens"] > 0
    assert 0 < labels["dialogues_with_eos_in_loss"] <= report["train"]["dialogues"]


def test_use_cache_is_refused_with_packing(tmp_path):
    with pytest.raises(ConfigError, match=r"use_cache true cannot train with padding packing.*--padding longest"):
        train(tmp_path, "--use_cache", "true")
