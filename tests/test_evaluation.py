"""Evaluation: perplexity checked by hand, per-speaker figures, stopping at turn ends, quality measures,
adapter vs merged model, results.json, and chat driven through standard input."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO
from recipe.common.files import file_sha256
from recipe.config import DataArguments, EvaluationArguments, GenerationArguments
from recipe.data import Dialogue, encode_dialogue
from recipe.evaluation.metrics import DialoguePerplexity, distinct_n, repeat_share, token_f1
from recipe.evaluation.perplexity import perplexity_by_speaker
from recipe.evaluation.run import default_output_file, evaluate_model
from recipe.models.generation import Reply, cut_reply, generate_replies, read_prompts_file
from recipe.models.trained import load_model_for_evaluation
from recipe.training.run import run_training
from test_training import parse, smoke_args


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A full run and a LoRA run (with merged model) of the smoke recipes, trained once for this module."""
    root = tmp_path_factory.mktemp("runs")
    full = run_training(*parse(*smoke_args(root, output="full")))
    lora = run_training(*parse(*smoke_args(
        root, "--config", str(REPO / "recipe/configs/smoke-lora.yaml"), "--merge_lora", "true", output="lora"
    )))
    return {"full": full.output_dir, "lora": lora.output_dir}


def dialogue(*turns):
    speakers, texts = zip(*turns)
    return Dialogue("test", list(speakers), list(texts), [None] * len(turns), "turns")


DIALOGUES = [
    dialogue(("Alex", "Hello, how are you?"), ("Bob", "Fine, you?"), ("Alex", "Good too.")),
    dialogue(("Bob", "What is the weather like today?"), ("Alex", "Rainy.")),
    dialogue(("Carol", "Lunch?"), ("Alex", "Yes please"), ("Bob", "Count me in, I am starving.")),
]


def test_perplexity_matches_a_hand_computation(tiny_model, tokenizer, data_args):
    args = data_args()
    figures = perplexity_by_speaker(tiny_model, tokenizer, DIALOGUES, args, batch_size=2)
    total_nll, total_tokens, per_speaker = 0.0, 0, {}
    for d in DIALOGUES:
        (window,) = encode_dialogue(d, tokenizer, args).windows
        with torch.no_grad():
            log_probs = torch.log_softmax(tiny_model(torch.tensor([window.input_ids])).logits[0].double(), dim=-1)
        for position in range(1, len(window.input_ids)):
            nll = -log_probs[position - 1, window.input_ids[position]].item()
            total_nll += nll
            total_tokens += 1
            owner = d.speakers[window.token_turns[position]]
            per_speaker[owner] = (per_speaker.get(owner, (0.0, 0))[0] + nll, per_speaker.get(owner, (0.0, 0))[1] + 1)
    assert figures["num_tokens"] == total_tokens
    assert figures["perplexity"] == pytest.approx(math.exp(total_nll / total_tokens), rel=1e-5)
    assert figures["bits_per_token"] == pytest.approx(total_nll / total_tokens / math.log(2), rel=1e-5)
    assert set(figures["per_speaker"]) == {"Alex", "Bob", "Carol"}
    for speaker, (nll, count) in per_speaker.items():
        assert figures["per_speaker"][speaker]["num_tokens"] == count
        assert figures["per_speaker"][speaker]["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_eos_is_counted_and_padding_is_not(tiny_model, tokenizer, data_args):
    args = data_args()
    alone = [perplexity_by_speaker(tiny_model, tokenizer, [d], args)["num_tokens"] for d in DIALOGUES]
    batched = perplexity_by_speaker(tiny_model, tokenizer, DIALOGUES, args, batch_size=3)  # padded together
    lengths = [len(encode_dialogue(d, tokenizer, args).windows[0].input_ids) for d in DIALOGUES]
    assert alone == [n - 1 for n in lengths]  # every token but the first, EOS included
    assert batched["num_tokens"] == sum(alone)


def test_perplexity_metric_sums_over_batches():
    metric = DialoguePerplexity()
    metric.add_batch(nll_sum=[1.0, 2.0], num_tokens=[1, 1])  # a batch of short sequences
    metric.add_batch(nll_sum=[30.0], num_tokens=[30])  # one long sequence
    result = metric.compute()
    assert result["num_tokens"] == 32
    assert result["token_loss"] == pytest.approx(33 / 32)  # not the mean of batch means (1.5 + 1.0) / 2
    assert result["perplexity"] == pytest.approx(math.exp(33 / 32))
    with pytest.raises(ValueError, match="no predicted tokens"):
        DialoguePerplexity().compute(nll_sum=[0.0], num_tokens=[0])


def test_sliding_window_predicts_every_token_once(tiny_model, tokenizer, data_args):
    long = dialogue(*[("Alex" if i % 2 == 0 else "Bob", f"Sentence number {i} of a long talk.") for i in range(20)])
    args = data_args(max_length=48)
    whole = len(encode_dialogue(long, tokenizer, data_args(max_length=4096)).windows[0].input_ids)
    windows = encode_dialogue(long, tokenizer, args).windows
    training_windows = perplexity_by_speaker(tiny_model, tokenizer, [long], args)
    sliding = perplexity_by_speaker(tiny_model, tokenizer, [long], args, stride=16)
    assert sliding["num_tokens"] == whole - 1
    assert training_windows["num_tokens"] == whole - len(windows)  # each window's first token has no context
    with pytest.raises(ValueError, match="stride 48 must be smaller than max_length 48"):
        perplexity_by_speaker(tiny_model, tokenizer, [long], args, stride=48)


def test_reply_is_cut_at_the_turn_end_or_eos(tokenizer):
    gen = GenerationArguments()
    eos = tokenizer.eos_token_id
    ids = lambda text: tokenizer(text)["input_ids"]  # noqa: E731
    stopped = ids(" Fine thanks\n")  # generation stopped at the separator; the rest of the row is padding (EOS)
    assert cut_reply(stopped + [eos] * 3, tokenizer, "\n", gen) == Reply("Fine thanks", "turn_end", len(stopped))
    assert cut_reply(ids(" Bye") + [eos] + [eos] * 3, tokenizer, "\n", gen).ended_by == "eos"
    assert cut_reply(ids(" and on and on"), tokenizer, "\n", gen) == Reply("and on and on", "max_new_tokens", 4)
    no_stop = GenerationArguments(stop_at_turn_end=False)
    assert cut_reply(ids(" a\nb") + [eos], tokenizer, "\n", no_stop).text == "a\nb"


def test_generation_stops_at_the_speaker_boundary(tmp_path):
    """A model that learned one dialogue by heart replies with Bob's line and stops at its end."""
    data = tmp_path / "one.json"
    data.write_text('[{"Alex": "hi", "Bob": "hello there friend", "Alex": "bye now"}]')  # not json.dumps: keys repeat
    run = run_training(*parse(*smoke_args(
        tmp_path, "--data_path", str(data), "--validation_split_ratio", "0", "--num_train_epochs", "150",
        "--learning_rate", "1e-2", "--warmup_steps", "0", "--save_strategy", "no", "--load_best_model_at_end", "false",
    )))
    loaded = load_model_for_evaluation(str(run.output_dir))
    greedy = GenerationArguments(do_sample=False, max_new_tokens=30)
    (reply,), = generate_replies(loaded.model, loaded.tokenizer, ["Alex: hi\nBob:"], greedy, "\n")
    assert reply == Reply("hello there friend", "turn_end", reply.new_tokens)
    assert reply.new_tokens < 10  # stopped at the boundary, not run on to max_new_tokens
    (last,), = generate_replies(loaded.model, loaded.tokenizer, ["Alex: hi\nBob: hello there friend\nAlex:"], greedy,
                                "\n")
    assert last.text == "bye now" and last.ended_by == "eos"  # the dialogue's end is learned too


def test_distinct_n_repeats_and_f1_on_known_strings():
    assert distinct_n(["a b a b", "a c"], 1) == pytest.approx(3 / 6)
    assert distinct_n(["a b a b", "a c"], 2) == pytest.approx(3 / 4)  # (a b) (b a) (a b) (a c)
    assert distinct_n(["", ""], 2) == 0.0
    assert repeat_share(["x", "y", "x", "x"]) == pytest.approx(2 / 4)
    assert token_f1("The cat sat.", "the cat") == pytest.approx(2 * (2 / 4) * 1 / ((2 / 4) + 1))  # "." counts
    assert token_f1("dog", "cat") == 0.0


def test_adapter_and_merged_model_have_the_same_perplexity(runs):
    adapter = evaluate_model(EvaluationArguments(model_path=str(runs["lora"]), num_samples=2, wandb="off"),
                             GenerationArguments(max_new_tokens=4))
    merged = evaluate_model(EvaluationArguments(model_path=str(runs["lora"] / "merged"), num_samples=2, wandb="off"),
                            GenerationArguments(max_new_tokens=4))
    assert adapter["model"]["kind"] == "lora" and adapter["model"]["base_model"] == str(runs["lora"] / "base_model")
    assert merged["data"]["source"] == adapter["data"]["source"]  # merged/ finds its run: same split
    assert merged["perplexity"]["num_tokens"] == adapter["perplexity"]["num_tokens"]
    assert merged["perplexity"]["perplexity"] == pytest.approx(adapter["perplexity"]["perplexity"], rel=1e-5)


def test_evaluation_matches_the_training_runs_exact_eval_loss(runs):
    results = evaluate_model(EvaluationArguments(model_path=str(runs["full"]), num_samples=4, wandb="off"),
                             GenerationArguments(max_new_tokens=8))
    trained = json.loads((runs["full"] / "eval_results.json").read_text())
    assert results["perplexity"]["num_tokens"] == trained["eval_num_tokens"]
    assert results["perplexity"]["token_loss"] == pytest.approx(trained["eval_token_loss"], rel=1e-4)


def test_a_max_length_beyond_the_models_positions_is_refused_before_the_perplexity_pass(runs, tmp_path):
    from recipe.config.errors import ConfigError

    data_config = tmp_path / "data.yaml"
    data_config.write_text(f"data_path: {REPO / 'data' / 'sample_dialogues.json'}\nmax_length: 100000\n")
    with pytest.raises(ConfigError, match=r"max_length 100000 is longer than gpt2's \d+ positions; "
                                          r"set max_length: \d+ or less in .*data\.yaml$"):
        evaluate_model(EvaluationArguments(model_path=str(runs["full"]), data_config=str(data_config), wandb="off"),
                       GenerationArguments(max_new_tokens=8))


def test_results_json_schema_from_the_script(runs, tmp_path):
    output = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, "scripts/evaluate.py", "--model_path", str(runs["full"]), "--output_file", str(output),
         "--num_samples", "6", "--num_return_sequences", "2", "--max_new_tokens", "12", "--wandb", "off"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(output.read_text())
    assert set(results) >= {"model", "data", "perplexity", "generation", "quality", "samples", "seed"}
    assert results["model"]["weights_sha256"] == file_sha256(runs["full"] / "model.safetensors")
    assert results["model"]["run_config"]["max_dialogues"] == 80
    assert results["data"]["source"].startswith("validation split of") and results["data"]["data_sha256"]
    assert set(results["perplexity"]["per_speaker"]) == {"Alex", "Bob"}
    assert results["generation"]["num_return_sequences"] == 2 and results["seed"] == 42
    assert len(results["samples"]) == 12
    assert {"prompt", "reply", "reference", "ended_by"} <= set(results["samples"][0])
    assert results["samples"][0]["prompt"].endswith("\nBob:") or results["samples"][0]["prompt"].endswith("\nAlex:")
    quality = results["quality"]
    assert 0 <= quality["distinct_1"] <= 1 and 0 <= quality["clean_end_share"] <= 1
    assert sum(quality["ended_by"].values()) == 12
    assert "perplexity" in result.stdout and "distinct-1 / -2" in result.stdout


def test_same_seed_same_samples(runs):
    args = EvaluationArguments(model_path=str(runs["full"]), num_samples=4, wandb="off")
    first = evaluate_model(args, GenerationArguments(max_new_tokens=10))
    second = evaluate_model(args, GenerationArguments(max_new_tokens=10))
    assert [s["reply"] for s in first["samples"]] == [s["reply"] for s in second["samples"]]


def test_base_model_and_checkpoint_rows(runs):
    base = evaluate_model(EvaluationArguments(model_path=str(runs["lora"] / "base_model"), num_samples=2, wandb="off"),
                          GenerationArguments(max_new_tokens=4))
    assert base["model"]["kind"] == "base"
    checkpoint = evaluate_model(
        EvaluationArguments(model_path=str(runs["full"] / "checkpoint-7"), num_samples=2, wandb="off"),
        GenerationArguments(max_new_tokens=4),
    )
    assert checkpoint["model"]["kind"] == "checkpoint-full"
    assert checkpoint["data"]["num_dialogues"] == base["data"]["num_dialogues"] == 16


def test_default_output_file_of_a_run_a_folder_a_gguf_and_a_hub_id(tmp_path, monkeypatch):
    """A run (or its checkpoint) keeps its evaluation.json; anything else is ./evaluation-NAME.json, NAME without the
    path that leads to it (its slashes would otherwise become part of the name)."""
    run = tmp_path / "run"
    (run / "checkpoint-7").mkdir(parents=True)
    (run / "gguf").mkdir()
    (run / "run_config.yaml").write_text("output_dir: run\n")
    (run / "gguf" / "run.Q8_0.gguf").write_bytes(b"GGUF")
    (tmp_path / "SmolLM2-135M-Instruct").mkdir()
    (tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF")
    monkeypatch.chdir(tmp_path / "SmolLM2-135M-Instruct")
    assert default_output_file(str(run)) == run / "evaluation.json"
    assert default_output_file(str(run / "checkpoint-7")) == run / "checkpoint-7" / "evaluation.json"
    assert default_output_file(".") == Path("evaluation-SmolLM2-135M-Instruct.json")
    assert default_output_file("../SmolLM2-135M-Instruct.Q4_1.gguf") == Path(
        "evaluation-SmolLM2-135M-Instruct.Q4_1.json")
    assert default_output_file(str(run / "gguf" / "run.Q8_0.gguf")) == Path("evaluation-run.Q8_0.json")
    assert default_output_file("HuggingFaceTB/SmolLM2-135M-Instruct") == Path(
        "evaluation-HuggingFaceTB--SmolLM2-135M-Instruct.json")


def test_prompts_files(tmp_path):
    text = tmp_path / "p.txt"
    text.write_text("Alex: hi\\nBob:\n\nAlex: yo\\nBob:\n")
    assert [p.prompt for p in read_prompts_file(str(text))] == ["Alex: hi\nBob:", "Alex: yo\nBob:"]
    structured = tmp_path / "p.json"
    structured.write_text(json.dumps([{"prompt": "Alex: hi\nBob:", "reference": "hello"}, "Alex: x\nBob:"]))
    prompts = read_prompts_file(str(structured))
    assert prompts[0].reference == "hello" and prompts[1].prompt == "Alex: x\nBob:"
    broken = tmp_path / "b.json"
    broken.write_text('[{"prompt": 3}]')
    with pytest.raises(ValueError, match=r"b\.json entry \[0\]: expected a string"):
        read_prompts_file(str(broken))


def test_chat_through_standard_input(runs):
    session = "Hello there\nHow are you?\n/reset\nWhat is AI?\n/quit\n"
    result = subprocess.run(
        [sys.executable, "scripts/chat.py", "--model_path", str(runs["full"]), "--max_new_tokens", "8"],
        cwd=REPO, input=session, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert out.startswith(f"Chatting with {runs['full']} as Bob; you are Alex.")
    assert out.count("Bob: ") == 3  # one reply per message, none for the commands
    assert "(history cleared)" in out
    assert "Traceback" not in result.stderr


def test_chat_history_is_trimmed_to_the_context(runs):
    from recipe.config import run_data_arguments
    from recipe.models.generation import ChatSession

    loaded = load_model_for_evaluation(str(runs["full"]))
    session = ChatSession(loaded.model, loaded.tokenizer, DataArguments(), GenerationArguments(max_new_tokens=4),
                          "Bob", "Alex", max_context_tokens=24)
    for message in ["first message here", "second message here", "third message here", "fourth one"]:
        session.reply(message)
    prompt = session.prompt()
    assert len(loaded.tokenizer(prompt)["input_ids"]) <= 24
    assert "first message" not in prompt and "fourth one" in prompt and prompt.endswith("Bob:")
    assert run_data_arguments(None, None).turn_separator == "\n"


SCRIPT_NAMED_EVALUATE = """
from recipe.evaluation.metrics import DialoguePerplexity
print(DialoguePerplexity().compute(nll_sum=[2.0, 4.0], num_tokens=[2, 4])["perplexity"])
"""


def test_the_evaluate_library_is_found_whatever_folder_holds_a_script_named_evaluate(tmp_path):
    """After `pip install .` the package sits in site-packages, and scripts/evaluate.py runs from the checkout:
    the folder of a running evaluate.py must be set aside wherever it is, not only the scripts/ beside the package."""
    script = tmp_path / "elsewhere" / "evaluate.py"
    script.parent.mkdir()
    script.write_text(SCRIPT_NAMED_EVALUATE)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == repr(math.e)


def test_an_edited_data_file_is_not_called_the_same_quantity(tmp_path, data_args):
    """The run's split is rebuilt from its data file: once the file changes, the evaluation says so, by SHA-256."""
    import yaml

    from recipe.common.run_dir import RunDir
    from recipe.evaluation.run import differences_from_training_eval
    from recipe.models.trained import LoadedModel

    data = tmp_path / "dialogues.json"
    data.write_text(SAMPLE_DIALOGUES_TEXT)
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.run_config.write_text(yaml.safe_dump({"data_path": str(data), "dtype": "float32"}))
    run.environment.write_text(json.dumps({"resolved_options": {"bf16": False},
                                           "data": {"data_path": str(data), "data_sha256": file_sha256(data)}}))
    loaded = LoadedModel(None, None, "full", str(run.path), None, run, None, "float32")
    args = data_args(data_path=str(data))
    assert differences_from_training_eval(EvaluationArguments(model_path=str(run.path)), args, loaded) == []

    data.write_text(SAMPLE_DIALOGUES_TEXT.replace("Fine", "Great"))
    (reason,) = differences_from_training_eval(EvaluationArguments(model_path=str(run.path)), args, loaded)
    assert reason.startswith(f"{data} has changed since training (SHA-256 ")
    assert reason.endswith("now), so its validation split is not the one the run evaluated")

    run.environment.unlink()  # a run directory without its records cannot vouch for its data
    (reason,) = differences_from_training_eval(EvaluationArguments(model_path=str(run.path)), args, loaded)
    assert reason == (f"{data} cannot be checked against the file the run trained on (environment.json records no "
                      "SHA-256 of it)")


SAMPLE_DIALOGUES_TEXT = json.dumps([{"Alex": "Hello, how are you?", "Bob": "Fine, you?"}] * 10)


def test_a_prompt_longer_than_the_models_positions_keeps_its_end_and_is_answered(tokenizer, tiny_model, capsys):
    """A context turn longer than the position table crashed reply sampling (an index past the positions)."""
    positions = tiny_model.config.n_positions
    prompt = "Alex: " + "word " * (positions * 2) + "\nBob:"
    greedy = GenerationArguments(do_sample=False, max_new_tokens=8)
    (reply,), = generate_replies(tiny_model, tokenizer, [prompt], greedy, "\n")
    assert reply.new_tokens >= 1
    said = capsys.readouterr().err
    assert f"1 prompt(s) longer than the model's {positions:,} positions less --max_new_tokens 8" in said
