"""The family matrix: the same behaviour checked on tiny models of every family in tests/families.py
(GPT-2, Llama-3, a Llama whose tokenizer appends EOS, Qwen2, Mistral, GPT-NeoX, OPT, Phi-3)."""

import json

import pytest
import torch

from conftest import SAMPLE_DATA, SMOLLM2
from families import FAMILIES, FAMILY_BY_NAME
from recipe.config import ConfigError, DataArguments, GenerationArguments, ModelArguments, run_data_arguments
from recipe.data import IGNORE_INDEX, Dialogue, DialogueDataError, build_datasets, encode_dialogue
from recipe.data.packing_check import check_packing_isolation
from recipe.evaluation.perplexity import perplexity_by_speaker
from recipe.models.generation import build_prompt, generate_replies, turn_end
from recipe.models.loading import get_model, get_tokenizer
from recipe.models.trained import load_model_for_evaluation
from recipe.training.run import run_training
from recipe.training.trainer import build_trainer
from test_training import parse, smoke_args

EVERY_FAMILY = pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
TEMPLATED = [f for f in FAMILIES if f.chat_template]
WITH_TEMPLATE = pytest.mark.parametrize("family", TEMPLATED, ids=[f.name for f in TEMPLATED])
ROLES = ["user=Alex", "assistant=Bob"]


def dialogue(*turns, source="test.json entry [0]"):
    speakers, texts = zip(*turns)
    return Dialogue(source, list(speakers), list(texts), [None] * len(turns), "turns")


def family_tokenizer(family_dir, family):
    return get_tokenizer(ModelArguments(model_name_or_path=str(family_dir(family.name))))


def family_model(family_dir, family, tokenizer):
    torch.manual_seed(0)
    model_args = ModelArguments(model_name_or_path=str(family_dir(family.name)), random_init=True)
    return get_model(model_args, tokenizer).eval()


@EVERY_FAMILY
def test_the_tokenizer_behaves_like_the_familys(family, family_dir):
    tokenizer = family_tokenizer(family_dir, family)
    ids = tokenizer("Alex: Hi")["input_ids"]
    assert (ids[0] == tokenizer.bos_token_id) == family.add_bos
    assert (ids[-1] == tokenizer.eos_token_id) == family.appends_eos
    assert tokenizer.eos_token == family.eos
    assert bool(tokenizer.chat_template) == bool(family.chat_template)


@EVERY_FAMILY
def test_eos_ends_every_dialogue_exactly_once_and_carries_loss(family, family_dir, data_args):
    tokenizer = family_tokenizer(family_dir, family)
    eos = tokenizer.eos_token_id
    dialogues = [
        dialogue(("Alex", "Hello, how are you?"), ("Bob", "Fine, you?"), ("Alex", "Good too.")),
        dialogue(("Alex", f"I typed {tokenizer.eos_token} here"), ("Bob", "ok")),  # the EOS string is text
        dialogue(("Bob", "Alone.")),
    ]
    for d in dialogues:
        (window,) = encode_dialogue(d, tokenizer, data_args()).windows
        assert window.input_ids[-1] == eos and window.labels[-1] == eos
        assert window.input_ids[1:].count(eos) == 1 and window.labels.count(eos) == 1  # once, and a target
        if family.add_bos:
            assert window.input_ids[0] == tokenizer.bos_token_id and window.labels[0] == IGNORE_INDEX  # BOS once
        assert window.labels[1:] == window.input_ids[1:]  # every token after the first is predicted
    # Over a data set: every dialogue's EOS is a target, and no predicted token is lost (on main, a
    # tokenizer that appends EOS lost it: 453 predicted tokens where 463 exist for 10 dialogues).
    prepared = build_datasets(data_args(data_path=str(SAMPLE_DATA), max_dialogues=10, validation_split_ratio=0),
                              tokenizer)
    train = prepared.report["train"]
    assert train["labels"]["dialogues_with_eos_in_loss"] == train["dialogues"] == 10
    assert train["loss_tokens"] == train["tokens"] - train["examples"]
    assert sum(labels.count(eos) for labels in prepared.train_examples["labels"]) == 10


@EVERY_FAMILY
def test_train_on_speakers_selects_that_speakers_text_turn_ends_and_final_eos(family, family_dir, data_args):
    tokenizer = family_tokenizer(family_dir, family)
    d = dialogue(("Alex", "Hello there"), ("Bob", "Hi Alex"), ("Carol", "Hey all"), ("Bob", "Bye now"))
    (window,) = encode_dialogue(d, tokenizer, data_args(train_on_speakers=["Bob"])).windows
    trained = tokenizer.decode([t for t in window.labels if t != IGNORE_INDEX])
    assert trained == " Hi Alex\n Bye now" + tokenizer.eos_token


# What a trained turn (Bob, the assistant) puts in the loss: its content and end marker, never its header.
TEMPLATE_LOSS = {
    "llama3": "Fine, you?<|eot_id|>Bye.<|eot_id|>",
    "qwen2": "Fine, you?<|im_end|>\nBye.<|im_end|>",
    "mistral": "Fine, you?</s>Bye.</s>",
    "phi3": "Fine, you?<|end|>\nBye.<|end|>\n<|endoftext|>",
}


@WITH_TEMPLATE
def test_chat_template_headers_are_context_content_and_end_marker_carry_loss(family, family_dir, data_args):
    tokenizer = family_tokenizer(family_dir, family)
    d = dialogue(("Alex", "Hello"), ("Bob", "Fine, you?"), ("Alex", "Good."), ("Bob", "Bye."))
    args = data_args(use_chat_template=True, role_to_speaker=ROLES, train_on_speakers=["Bob"])
    (window,) = encode_dialogue(d, tokenizer, args).windows
    assert tokenizer.decode(window.input_ids) == tokenizer.apply_chat_template(
        [{"role": r, "content": c} for r, c in zip(["user", "assistant"] * 2, d.texts)], tokenize=False
    ).rstrip()
    assert tokenizer.decode([t for t in window.labels if t != IGNORE_INDEX]) == TEMPLATE_LOSS[family.name]
    eos = tokenizer.eos_token_id
    assert window.input_ids[-1] == eos and window.input_ids[-2] != eos  # the template's EOS, not doubled


@pytest.mark.parametrize("family_name, speakers, roles, message", [
    ("mistral", ["Alex", "Alex"], [None, None],
     r"entry \[7\]: the tokenizer's chat template refuses this dialogue \(roles in order: user, user\): "
     r"Conversation roles must alternate.*--role_to_speaker"),
    ("mistral", ["Alex", "Bob"], ["system", None],
     r"entry \[7\]: .*refuses this dialogue \(roles in order: system, assistant\)"),
    ("phi3", ["Zed", "Bob"], ["narrator", None],
     r"entry \[7\]: the tokenizer's chat template writes nothing for message 0 \(role 'narrator'\)"),
])
def test_a_chat_template_error_names_the_dialogue(family_name, speakers, roles, message, family_dir, data_args):
    tokenizer = family_tokenizer(family_dir, FAMILY_BY_NAME[family_name])
    d = Dialogue("data.json entry [7]", speakers, ["one", "two"], roles, "messages")
    with pytest.raises(DialogueDataError, match=message):
        encode_dialogue(d, tokenizer, data_args(use_chat_template=True, role_to_speaker=ROLES))


@EVERY_FAMILY
def test_packed_dialogues_keep_their_loss_through_the_trainers_forward_or_packing_is_refused(
    family, family_dir, data_args, tmp_path
):
    from recipe.config import DialogueTrainingArguments

    tokenizer = family_tokenizer(family_dir, family)
    model = family_model(family_dir, family, tokenizer)
    args = data_args(data_path=str(SAMPLE_DATA), max_dialogues=12, validation_split_ratio=0, max_length=96)
    prepared = build_datasets(args, tokenizer)
    if not family.packs:
        with pytest.raises(ConfigError, match=r"does not keep packed dialogues apart.*use --padding longest"):
            check_packing_isolation(model, tokenizer, prepared.train_examples, args, use_cache=False)
        return
    assert check_packing_isolation(model, tokenizer, prepared.train_examples, args, use_cache=False) < 1e-3
    training_args = DialogueTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False,
                                              eval_strategy="no", save_strategy="no", load_best_model_at_end=False)
    trainer = build_trainer(model, tokenizer, prepared, args, training_args)  # sets use_cache as in training
    batch = next(iter(trainer.get_eval_dataloader(prepared.train_dataset)))
    batch.pop("num_real_tokens")
    with torch.no_grad():
        packed = torch.log_softmax(trainer.model(**batch).logits[0], dim=-1)
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
    assert len(starts) > 3  # several dialogues in the row
    for start, end in zip(starts, starts[1:]):
        with torch.no_grad():
            alone = torch.log_softmax(trainer.model(input_ids=batch["input_ids"][:, start:end]).logits[0], dim=-1)
        torch.testing.assert_close(packed[start:end], alone, atol=1e-4, rtol=1e-4)


def train_by_heart(family, family_dir, tmp_path, *extra):
    """Full fine-tuning on one dialogue until the model knows it (the chat template where the family has one)."""
    data = tmp_path / "one.json"
    data.write_text('[{"Alex": "hi", "Bob": "hello there friend", "Alex": "bye now"}]')  # keys repeat: not json.dumps
    template = ["--use_chat_template", "true", "--role_to_speaker", *ROLES] if family.chat_template else []
    padding = [] if family.packs else ["--padding", "longest"]
    return run_training(*parse(*smoke_args(
        tmp_path, "--model_name_or_path", str(family_dir(family.name)), "--data_path", str(data),
        "--validation_split_ratio", "0", "--num_train_epochs", "150", "--learning_rate", "1e-2",
        "--warmup_steps", "0", "--save_strategy", "no", "--load_best_model_at_end", "false",
        *template, *padding, *extra,
    )))


@EVERY_FAMILY
def test_a_trained_model_stops_at_the_end_of_its_turn_and_its_perplexity_is_exact(family, family_dir, tmp_path):
    run = train_by_heart(family, family_dir, tmp_path)
    loaded = load_model_for_evaluation(str(run.output_dir))
    model, tokenizer = loaded.model, loaded.tokenizer
    args = run_data_arguments(loaded.run_dir.read_config(), None)  # the run's formatting, as evaluate.py reads it

    prompt = build_prompt(["Alex"], ["hi"], "Bob", args, tokenizer)
    separator, turn_end_ids = turn_end(args, tokenizer)
    greedy = GenerationArguments(do_sample=False, max_new_tokens=30)
    (reply,), = generate_replies(model, tokenizer, [prompt], greedy, separator,
                                 add_special_tokens=not args.use_chat_template, turn_end_ids=turn_end_ids)
    assert reply.text == "hello there friend" and reply.new_tokens < 12  # stopped, not run on
    assert reply.ended_by == ("turn_end" if family.turn_end or not family.chat_template else "eos")

    # Perplexity over every predicted token, against a computation that shares none of the recipe's code.
    dialogues = [dialogue(("Alex", "hi"), ("Bob", "hello there friend")), dialogue(("Bob", "What a day."))]
    plain = DataArguments()
    figures = perplexity_by_speaker(model, tokenizer, dialogues, plain, batch_size=2)
    total_nll, total_tokens = 0.0, 0
    for d in dialogues:
        text = "\n".join(f"{s}: {t}" for s, t in zip(d.speakers, d.texts))
        ids = tokenizer(text)["input_ids"]
        ids = ids if ids[-1] == tokenizer.eos_token_id else ids + [tokenizer.eos_token_id]
        with torch.no_grad():
            log_probs = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
        total_nll -= sum(log_probs[i - 1, ids[i]].item() for i in range(1, len(ids)))
        total_tokens += len(ids) - 1
    assert figures["num_tokens"] == total_tokens
    assert figures["perplexity"] == pytest.approx(torch.tensor(total_nll / total_tokens).exp().item(), rel=1e-4)


@EVERY_FAMILY
def test_lora_defaults_fit_the_family_and_the_adapter_saves_merges_and_reloads(family, family_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    padding = [] if family.packs else ["--padding", "longest"]
    run = run_training(*parse(*smoke_args(
        tmp_path, "--model_name_or_path", str(family_dir(family.name)), "--use_lora", "true", "--lora_r", "4",
        "--merge_lora", "true", "--lora_dropout", "0", "--max_dialogues", "16", "--num_train_epochs", "1",
        "--learning_rate", "1e-2", "--warmup_steps", "0", "--save_strategy", "no", "--load_best_model_at_end", "false",
        *padding,
    )))
    out = run.output_dir
    targets = {name.split(".")[-1] for name in json.loads((out / "adapter_config.json").read_text())["target_modules"]}
    base = AutoModelForCausalLM.from_pretrained(out / "base_model")
    linear = {name.split(".")[-1] for name, module in base.named_modules()
              if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head")}
    assert targets == ({"c_attn", "c_proj", "c_fc"} if family.name == "gpt2" else linear)

    adapted = load_model_for_evaluation(str(out))  # the adapter, on the base the run kept
    assert adapted.kind == "lora"
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    inputs = torch.tensor([[5, 17, 300, 42, 9, 1000]])
    with torch.no_grad():
        torch.testing.assert_close(merged(inputs).logits, adapted.model(inputs).logits, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(adapted.model(inputs).logits, base.eval()(inputs).logits, atol=1e-4)


def test_a_model_that_mixes_packed_dialogues_is_refused_before_the_first_step(family_dir, tmp_path):
    """OPT builds a plain causal mask whatever the positions: packing would train on cross-talk."""
    with pytest.raises(ConfigError,
                       match=r"opt \(OPTForCausalLM\) does not keep packed dialogues apart.*--padding longest"):
        run_training(*parse(*smoke_args(tmp_path, "--model_name_or_path", str(family_dir("opt")))))
    assert not list((tmp_path / "run").glob("checkpoint-*")) and not (tmp_path / "run" / "trainer_state.json").exists()


@pytest.mark.parametrize("family_name", ["llama3", "phi3"])
def test_the_saved_generation_config_stops_at_eos_the_template_turn_end_and_every_base_stop(
        family_name, family_dir, tmp_path):
    """Stock `pipeline` reads generation_config.json: its stop list is EOS, the chat template's end of turn
    (Phi-3's <|end|>) and whatever the base stopped at (Llama-3 instruct lists <|end_of_text|> and <|eot_id|>),
    never the tokenizer's EOS alone."""
    import shutil

    from transformers import GenerationConfig

    family = FAMILY_BY_NAME[family_name]
    base = tmp_path / "base"
    shutil.copytree(family_dir(family.name), base)
    tokenizer = get_tokenizer(ModelArguments(model_name_or_path=str(base)))
    config = json.loads((base / "config.json").read_text())
    base_stops = [tokenizer.convert_tokens_to_ids("<|end_of_text|>"), tokenizer.eos_token_id] \
        if family_name == "llama3" else [tokenizer.eos_token_id]
    config["eos_token_id"] = base_stops
    (base / "config.json").write_text(json.dumps(config))
    run = run_training(*parse(*smoke_args(
        tmp_path, "--model_name_or_path", str(base), "--use_chat_template", "true", "--role_to_speaker", *ROLES,
        "--max_dialogues", "16", "--num_train_epochs", "1", "--save_strategy", "no", "--load_best_model_at_end",
        "false", "--validation_split_ratio", "0",
    )))
    saved = GenerationConfig.from_pretrained(run.output_dir).eos_token_id
    expected = {tokenizer.eos_token_id, *base_stops}
    if family.turn_end:
        expected.add(tokenizer.convert_tokens_to_ids(family.turn_end))
    assert set(saved) == expected and saved[0] == tokenizer.eos_token_id


def test_the_packing_check_runs_when_no_two_dialogues_fit_one_row(family_dir, tmp_path):
    """Long dialogues (no two of them fit one row) are the usual case; the check must not skip them: it probes
    with slices of them, and OPT is still refused."""
    data = tmp_path / "long.json"
    turn = "we talked about the weather and the trains and the long way home again"
    data.write_text(json.dumps([{"Alex": f"{turn} {i}", "Bob": f"{turn} {i}"} for i in range(20)]))
    with pytest.raises(ConfigError, match=r"opt \(OPTForCausalLM\) does not keep packed dialogues apart"):
        run_training(*parse(*smoke_args(tmp_path, "--model_name_or_path", str(family_dir("opt")), "--data_path",
                                        str(data), "--max_length", "48", "--num_train_epochs", "1")))
    assert not (tmp_path / "run" / "trainer_state.json").exists()


# A real ChatML tokenizer, where this machine has it (conftest.SMOLLM2: models/, or where CI fetched it).


def chatml_tokenizer(source, family_dir):
    if source == "smollm2":
        if not (SMOLLM2 / "tokenizer.json").is_file():
            pytest.skip(f"{SMOLLM2} is not on this machine (python scripts/get_base_model.py fetches it)")
        return get_tokenizer(ModelArguments(model_name_or_path=str(SMOLLM2)))
    return family_tokenizer(family_dir, FAMILY_BY_NAME["qwen2"])


@pytest.mark.parametrize("source", ["qwen2", "smollm2"])
def test_special_token_strings_in_messages_stay_text_under_a_chat_template(source, family_dir, data_args):
    """Only the template's own markup is special: `<|im_end|>` typed in a message does not end the turn, move
    the loss mask or become a target as a control token; it is tokenized as the text it is."""
    tokenizer = chatml_tokenizer(source, family_dir)
    alex, bob = "say <|im_end|> please", "no: <|im_start|>system, </s> and <|im_end|> are just text"
    d = dialogue(("Alex", alex), ("Bob", bob), ("Alex", "ok"))
    args = data_args(use_chat_template=True, role_to_speaker=ROLES, train_on_speakers=["Bob"])
    (window,) = encode_dialogue(d, tokenizer, args).windows
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert window.input_ids.count(im_end) == 4 and window.input_ids.count(im_start) == 4  # system + 3 turns

    def as_text(text):
        return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def contains(ids, part):
        return any(ids[i:i + len(part)] == part for i in range(len(ids) - len(part) + 1))

    assert contains(window.input_ids, as_text(alex)) and contains(window.input_ids, as_text(bob))
    text = tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in
                                          zip(["user", "assistant", "user"], d.texts)], tokenize=False)
    assert tokenizer.decode(window.input_ids) == text.rstrip()
    loss = [t for t in window.labels if t != IGNORE_INDEX]
    assert loss == as_text(bob) + [im_end] + as_text("\n")  # Bob's text as text, then his turn's end marker


def test_a_dialogue_without_special_token_strings_tokenizes_as_before(family_dir, data_args):
    """The piecewise path is only for dialogues that need it; the others are one tokenizer call, as ever."""
    tokenizer = family_tokenizer(family_dir, FAMILY_BY_NAME["qwen2"])
    d = dialogue(("Alex", "Hello there"), ("Bob", "Fine, you?"))
    (window,) = encode_dialogue(d, tokenizer, data_args(use_chat_template=True, role_to_speaker=ROLES)).windows
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hello there"},
                                          {"role": "assistant", "content": "Fine, you?"}], tokenize=False).rstrip()
    assert window.input_ids == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_a_tokenizer_whose_pieces_depend_on_their_place_is_refused_for_such_a_message(data_args):
    """Tokenizing between the template's special tokens is exact only where a piece's tokens do not depend on
    where it sits (a Metaspace `prepend_scheme: first` adds a word boundary at the start of the text only):
    there, a message that spells a special token is refused with the fix, never tokenized unlike training."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from families import PHI3

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    backend.decoder = decoders.Metaspace(prepend_scheme="first")
    specials = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>"]
    text = SAMPLE_DATA.read_text()[:20_000]
    backend.train_from_iterator([text[i:i + 200] for i in range(0, len(text), 200)],
                                trainers.BpeTrainer(vocab_size=500, special_tokens=specials, show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", bos_token="<s>", unk_token="<unk>")
    tokenizer.chat_template = PHI3
    args = data_args(use_chat_template=True, role_to_speaker=ROLES)
    assert encode_dialogue(dialogue(("Alex", "hi there"), ("Bob", "fine")), tokenizer, args).windows
    with pytest.raises(DialogueDataError, match=r"^x\.json entry \[3\]: a message contains '</s>', a special token of "
                                                r"this tokenizer.*unset --use_chat_template"):
        encode_dialogue(dialogue(("Alex", "hi </s> there"), ("Bob", "fine"), source="x.json entry [3]"), tokenizer,
                        args)
