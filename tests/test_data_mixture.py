"""Several data sets in one run: --data_path entries, each read its own way, weighted, reported per source."""

import json

import pytest

from conftest import SAMPLE_DATA, write
from recipe.config import ConfigError, DataArguments
from recipe.config.data_sources import data_path_text, parse_source
from recipe.data import build_datasets
from recipe.data.mixture import weighted_indices


def chats(tmp_path, count, field="conversations"):
    """`count` messages-format dialogues under a non-default field name, as JSON Lines."""
    lines = [json.dumps({field: [{"role": "user", "content": f"question {i}"},
                                 {"role": "assistant", "content": f"answer {i}"}]}) for i in range(count)]
    return write(tmp_path / "chats.jsonl", "\n".join(lines) + "\n")


def test_an_entry_is_a_path_a_compact_form_a_json_object_or_a_yaml_mapping():
    assert parse_source("data/a.json", 0).path == "data/a.json"
    compact = parse_source("chats.jsonl,weight=0.5,data_format=messages,messages_field=conversations", 0)
    assert (compact.path, compact.weight, compact.options) == (
        "chats.jsonl", 0.5, {"data_format": "messages", "messages_field": "conversations"})
    assert parse_source('{"path": "chats.jsonl", "weight": 0.5, "data_format": "messages", '
                        '"messages_field": "conversations"}', 0) == compact
    assert parse_source({"path": "chats.jsonl", "weight": 0.5, "data_format": "messages",
                         "messages_field": "conversations"}, 0) == compact
    assert data_path_text([compact.text(), "b.json"]) == (
        "chats.jsonl,weight=0.5,data_format=messages,messages_field=conversations b.json")
    assert data_path_text("b.json") == "b.json"


@pytest.mark.parametrize("entry, message", [
    ("a.json,weight=0", r"data_path entry 1 a\.json: weight '0' must be a number above 0"),
    ("a.json,weight=lots", r"weight 'lots' must be a number above 0"),
    ("a.json,colour=red", r"unknown key 'colour'; a source takes path, weight and data_format"),
    ("a.json,data_format=csv", r"data_format 'csv' is not one of auto, speaker_map, turns, messages"),
    ("a.json,weight", r"'weight' is not key=value"),
    ({"weight": 2}, r"has no path"),
])
def test_a_bad_entry_is_refused_naming_it_and_the_fix(entry, message):
    with pytest.raises(ConfigError, match=message):
        DataArguments(data_path=[entry])


def test_weights_take_a_seeded_share_or_whole_copies():
    assert len(weighted_indices(10, 0.5, 0)) == 5 and len(set(weighted_indices(10, 0.5, 0))) == 5
    oversampled = weighted_indices(10, 2.5, 0)
    assert len(oversampled) == 25 and sorted(set(oversampled.tolist())) == list(range(10))
    assert (weighted_indices(10, 0.3, 1) == weighted_indices(10, 0.3, 1)).all()


def test_two_sources_in_their_own_formats_are_split_weighted_and_reported(tmp_path, data_args, tokenizer):
    conversations = chats(tmp_path, 50)
    args = data_args(data_path=[f"{SAMPLE_DATA},weight=0.25",
                                f"{conversations},weight=2,data_format=messages,messages_field=conversations"],
                     max_dialogues=100, role_to_speaker=["user=Alex", "assistant=Bob"])
    prepared = build_datasets(args, tokenizer)
    report = prepared.report
    sample, chat = report["sources"]
    # Each source split on its own (80/20), validation never weighted; training: a quarter, then each twice.
    assert (sample["dialogues_read"], sample["train"]["dialogues"], sample["validation"]["dialogues"]) == (898, 20, 20)
    assert (chat["dialogues_read"], chat["train"]["dialogues"], chat["validation"]["dialogues"]) == (50, 80, 10)
    assert report["train"]["dialogues"] == 100 and report["validation"]["dialogues"] == 30
    for split in ("train", "validation"):
        assert sum(source[split]["loss_tokens"] for source in report["sources"]) == report[split]["loss_tokens"]
        assert sum(source[split]["share_of_loss_tokens"] for source in report["sources"]) == pytest.approx(1, abs=1e-3)
    assert chat["options"] == {"data_format": "messages", "messages_field": "conversations"}
    assert report["formats"] == {"speaker_map": 898, "messages": 50}
    # Each twice: every chat training dialogue appears exactly two times.
    chat_sources = [d.source for d in prepared.train_dialogues if d.source.startswith(conversations)]
    assert len(chat_sources) == 80 and all(chat_sources.count(s) == 2 for s in chat_sources)
    assert build_datasets(args, tokenizer).report == report  # from the cache


def test_one_source_reports_as_before(data_args, tokenizer):
    report = build_datasets(data_args(data_path=str(SAMPLE_DATA), max_dialogues=20), tokenizer).report
    assert report["data_path"] == str(SAMPLE_DATA) and "sources" not in report


def test_a_yaml_list_of_sources_reaches_the_run_and_its_run_config(tmp_path):
    from recipe.config import ModelArguments, RecipeParser, resolved_config

    conversations = chats(tmp_path, 5)
    recipe = write(tmp_path / "recipe.yaml", f"data_path:\n  - {SAMPLE_DATA}\n  - path: {conversations}\n"
                                             "    weight: 3\n    data_format: messages\n"
                                             "    messages_field: conversations\n")
    model_args, data_args, _ = RecipeParser((ModelArguments, DataArguments)).parse_args_and_config(
        ["--config", recipe])
    assert [(s.path, s.weight) for s in data_args.sources] == [(str(SAMPLE_DATA), 1.0), (conversations, 3.0)]
    stored = resolved_config(data_args)["data_path"]
    assert DataArguments(data_path=stored).sources == data_args.sources
    # The command line's compact form gives the same sources.
    _, from_flags, _ = RecipeParser((ModelArguments, DataArguments)).parse_args_and_config(
        ["--data_path", str(SAMPLE_DATA),
         f"{conversations},weight=3,data_format=messages,messages_field=conversations"])
    assert from_flags.sources == data_args.sources


def test_evaluation_reports_perplexity_per_source(tmp_path, data_args, tokenizer, tiny_model):
    from recipe.data import load_dialogue_splits
    from recipe.evaluation.perplexity import perplexity_by_speaker

    conversations = chats(tmp_path, 10)
    args = data_args(data_path=[str(SAMPLE_DATA), f"{conversations},data_format=messages,"
                                "messages_field=conversations"], max_dialogues=10)
    validation = load_dialogue_splits(args).validation
    result = perplexity_by_speaker(tiny_model, tokenizer, validation, args)
    assert set(result["per_source"]) == {str(SAMPLE_DATA), conversations}
    assert sum(s["num_tokens"] for s in result["per_source"].values()) == result["num_tokens"]


def test_a_run_recorded_with_one_path_as_a_string_compares_equal_to_the_same_path_as_a_list():
    """Runs recorded before --data_path took several entries hold a string: a resume or a replay of them is not
    refused as 'data_path changed'."""
    from recipe.config.data_sources import comparable_option

    assert comparable_option("data_path", "data/a.json") == comparable_option("data_path", ["data/a.json"])
    assert comparable_option("data_path", "data/a.json") != comparable_option("data_path", ["data/a.json,weight=2"])
