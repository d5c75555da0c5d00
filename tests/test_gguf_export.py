"""GGUF export (recipe/export/gguf_export.py): one file per model that transformers' GGUF reader loads back to the run's
logits and perplexity, with the tokenizer, the special tokens and the run's dialogue format (its chat template, or
a Jinja template writing `Speaker: text` turns as training did), an Ollama Modelfile beside it, and the families
it does not write refused in one line.

llama.cpp itself is not run here: the round trip goes through transformers' GGUF reader, which undoes llama.cpp's
layout (permuted q/k rows, transposed GPT-2 weights) the way llama.cpp expects it written.

Tolerances, measured on these tiny random models (logits up to ~0.6 in size): f16 moves a logit by at most ~2e-4,
bf16 by ~1.4e-3, q8_0 by ~7e-3; the tests allow 1e-3, 1e-2 and 2e-2. Perplexity: within 1% (f16) and 3% (q8_0) of
the run's.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO
from families import FAMILY_BY_NAME
from recipe.common.run_dir import modelfile_of
from recipe.config import ConfigError, DataArguments, EvaluationArguments, ModelArguments
from recipe.export.dialogue_format import dialogue_format, go_template
from recipe.export.gguf_export import GGUFExportArguments, export_gguf
from recipe.models.generation import build_prompt
from recipe.models.loading import get_model, get_tokenizer
from recipe.training.run import run_training
from test_training import parse, smoke_args

gguf = pytest.importorskip("gguf")

SMOKE_LORA = REPO / "recipe" / "configs" / "smoke-lora.yaml"
ROLES = ["user=Alex", "assistant=Bob"]
TEXT = "Alex: Hello there, how are you?\nBob: Fine, 123 thanks!\nAlex: Good."
LOGIT_TOLERANCE = {"f16": 1e-3, "bf16": 1e-2, "q8_0": 2e-2}
PERPLEXITY_TOLERANCE = {"f16": 0.01, "q8_0": 0.03}
EXPORTED = ["gpt2", "llama3", "llama-appends-eos", "qwen2", "mistral"]


def model_folder(family_dir, tmp_path, name):
    """A tiny random model of the family, saved as a full model folder."""
    args = ModelArguments(model_name_or_path=str(family_dir(name)), random_init=True)
    tokenizer = get_tokenizer(args)
    torch.manual_seed(0)
    model = get_model(args, tokenizer).eval()
    folder = tmp_path / f"tiny-{name}"  # not "mistral": transformers reads a GGUF named exactly that as its own arch
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer


def export(model_path, outtype="f16", folder=None, **options):
    """Export, into its own folder when `folder` is given (transformers would read the model folder's tokenizer.json
    before the GGUF's own vocabulary)."""
    output = str(Path(folder) / f"model.{outtype}.gguf") if folder else None
    return export_gguf(GGUFExportArguments(model_path=str(model_path), outtype=outtype, output=output, **options))


def read_gguf(path):
    reader = gguf.GGUFReader(str(path))
    return reader, {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}


def load_gguf(path):
    """The file as transformers loads it: model (float32) and tokenizer from the GGUF alone.

    transformers 5.24 reads GPT-2's context length into `n_ctx`, not `n_positions`, so a GPT-2 whose position table
    is not the default 1,024 rows is loaded with its size given (llama.cpp reads the key as written)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, fields = read_gguf(path)
    extra = {"n_positions": fields["gpt2.context_length"]} if fields["general.architecture"] == "gpt2" else {}
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32, **extra)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if tokenizer.pad_token is None:  # as get_tokenizer does: padding is masked by position, never by id
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


# ----------------------------------------------------------------------------------------------
# Every exported family: weights, tokenizer and template round trip


@pytest.mark.parametrize("name", EXPORTED)
@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
def test_each_family_loads_back_with_its_logits_and_its_tokenizer(family_dir, tmp_path, name, outtype):
    folder, model, tokenizer = model_folder(family_dir, tmp_path, name)
    result = export(folder, outtype, tmp_path / "gguf")
    reader, fields = read_gguf(result.path)
    assert fields["general.architecture"] == ("gpt2" if name == "gpt2" else "qwen2" if name == "qwen2" else "llama")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert all(kind == "F32" for tensor, kind in types.items() if tensor.endswith(("_norm.weight", ".bias")))
    assert types["token_embd.weight"] == outtype.upper()
    assert fields["tokenizer.ggml.model"] == "gpt2"  # byte-level BPE, split as the family's tokenizer splits text:
    assert fields["tokenizer.ggml.pre"] == ("qwen2" if name == "qwen2" else "gpt-2")  # Qwen2Tokenizer has its own regex
    assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    assert fields["tokenizer.ggml.add_bos_token"] == FAMILY_BY_NAME[name].add_bos
    assert fields["tokenizer.ggml.add_eos_token"] is False  # never an EOS after a prompt
    if name == "gpt2":  # llama.cpp sizes the position table from the context length
        assert fields["gpt2.context_length"] == model.config.n_positions

    loaded, loaded_tokenizer = load_gguf(result.path)
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert loaded_tokenizer(TEXT, add_special_tokens=False)["input_ids"] == ids
    assert loaded_tokenizer.eos_token == tokenizer.eos_token and loaded_tokenizer.bos_token == tokenizer.bos_token
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids), atol=LOGIT_TOLERANCE[outtype], rtol=0)


def test_a_llama_is_written_in_llama_cpps_layout(family_dir, tmp_path):
    """q and k rows permuted as llama.cpp's converter writes them (tests/gguf_fixture.py permutes the same way),
    v not; the tied output layer is not written twice."""
    from gguf_fixture import _llama_cpp_permute

    folder, model, _ = model_folder(family_dir, tmp_path, "llama3")
    reader, _ = read_gguf(export(folder, "f16", tmp_path / "gguf").path)
    tensors = {t.name: t for t in reader.tensors}
    q = model.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    written = tensors["blk.0.attn_q.weight"].data.astype("float32").reshape(q.shape)
    assert abs(written - _llama_cpp_permute(q, model.config.num_attention_heads)).max() < 1e-3
    assert abs(written - q).max() > 1e-2
    assert ("output.weight" in tensors) != model.config.tie_word_embeddings


@pytest.mark.parametrize("name", ["gpt2", "llama3"])
def test_the_template_writes_speaker_turns_as_training_does(family_dir, tmp_path, name):
    """A run without a chat template: the file's template gives the prompt the recipe's own chat builds."""
    folder, _, tokenizer = model_folder(family_dir, tmp_path, name)
    _, loaded_tokenizer = load_gguf(export(folder, "f16", tmp_path / "gguf").path)
    args = DataArguments()
    bos = tokenizer.bos_token if FAMILY_BY_NAME[name].add_bos else ""
    conversations = [
        [("user", "Hello there"), ("assistant", "Hi!"), ("user", "How are you?")],
        [("user", "One line only")],
        [("system", "Be brief."), ("user", "Hi")],
    ]
    for turns in conversations:
        messages = [{"role": role, "content": text} for role, text in turns]
        speakers = [{"user": "User", "assistant": "Assistant", "system": "System"}[role] for role, _ in turns]
        expected = bos + build_prompt(speakers, [text for _, text in turns], "Assistant", args, tokenizer)
        written = loaded_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert written == expected
        fmt = dialogue_format(args, tokenizer, None)
        assert fmt.pieces.render(messages) == expected.removeprefix(bos)  # what the Modelfile's template writes
    named = [{"role": "user", "content": "hi", "name": "Carol"}]
    assert loaded_tokenizer.apply_chat_template(named, tokenize=False, add_generation_prompt=True).endswith(
        "Carol: hi\nAssistant:")


@pytest.mark.parametrize("name", ["qwen2", "llama3", "mistral", "phi3"])
def test_a_chat_template_is_carried_as_is_and_its_pieces_write_the_same_text(family_dir, name):
    """The Modelfile's Go template is `TurnPieces.render`, found by rendering the run's own chat template."""
    tokenizer = get_tokenizer(ModelArguments(model_name_or_path=str(family_dir(name))))
    fmt = dialogue_format(DataArguments(use_chat_template=True, role_to_speaker=ROLES), tokenizer, None)
    assert fmt.chat_template == tokenizer.chat_template
    conversations = [[("user", "Hello")], [("user", "Hello"), ("assistant", "Hi there"), ("user", "Bye")]]
    if name != "mistral":  # Mistral's template refuses a system turn
        conversations.append([("system", "Be brief."), ("user", "Hello"), ("assistant", "Hi"), ("user", "Bye")])
    for turns in conversations:
        messages = [{"role": role, "content": text} for role, text in turns]
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        bos = tokenizer.bos_token if FAMILY_BY_NAME[name].add_bos else ""  # Ollama adds it, as llama.cpp does
        assert fmt.pieces.render(messages) == expected.removeprefix(bos)
    turn_end = FAMILY_BY_NAME[name].turn_end
    assert fmt.turn_end_id == (tokenizer.convert_tokens_to_ids(turn_end) if turn_end else None)
    assert fmt.stops[0] == (turn_end or tokenizer.eos_token)


def test_the_modelfile_holds_the_format_as_a_go_template_and_stops_at_the_turn_end(family_dir, tmp_path):
    folder, _, tokenizer = model_folder(family_dir, tmp_path, "gpt2")
    result = export(folder, "q8_0")
    assert result.path == folder / "gguf" / "tiny-gpt2.Q8_0.gguf" and result.modelfile == modelfile_of(result.path)
    text = result.modelfile.read_text()
    assert "\nFROM ./tiny-gpt2.Q8_0.gguf\n" in text
    assert 'PARAMETER stop "\n"\n' in text  # Ollama takes quoted values literally: a real newline
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert template == go_template(dialogue_format(DataArguments(), tokenizer, None).pieces)
    assert '{{- if eq .Role "assistant" }}{{ "Assistant: " }}\n' in template
    assert '{{- if eq .Role "assistant" }}{{ if not $last }}{{ "\\n" }}{{ end }}\n' in template
    assert '{{- else }}{{ "\\n" }}{{ if $last }}{{ "Assistant:" }}{{ end }}{{ end }}\n' in template
    _, fields = read_gguf(result.path)
    assert fields["tokenizer.ggml.eot_token_id"] == tokenizer("\n")["input_ids"][0]  # llama.cpp stops a turn there


# ----------------------------------------------------------------------------------------------
# Runs: full, LoRA (merged in memory), QLoRA (merged on the full-precision base)


def train(root, *extra, output):
    return run_training(*parse(*smoke_args(root, "--max_dialogues", "40", "--num_train_epochs", "1",
                                           "--save_strategy", "no", "--load_best_model_at_end", "false", *extra,
                                           output=output)))


def validation_perplexity(model, tokenizer, run_dir):
    """scripts/evaluate.py's perplexity over the run's validation split, for any model and tokenizer."""
    from recipe.common.run_dir import RunDir
    from recipe.config import run_data_arguments
    from recipe.evaluation.perplexity import perplexity_by_speaker
    from recipe.evaluation.run import evaluation_dialogues

    data_args = run_data_arguments(RunDir(run_dir).read_config(), None)
    dialogues, _ = evaluation_dialogues(EvaluationArguments(model_path=str(run_dir)), data_args)
    return perplexity_by_speaker(model, tokenizer, dialogues, data_args)["perplexity"]


def check_round_trip(run_dir, tmp_path, **options):
    from recipe.export.gguf_export import load_model_for_export

    model, tokenizer, _ = load_model_for_export(str(run_dir))
    reference = validation_perplexity(model, tokenizer, run_dir)
    for outtype in ("f16", "q8_0"):
        loaded, loaded_tokenizer = load_gguf(export(run_dir, outtype, tmp_path / outtype, **options).path)
        exported = validation_perplexity(loaded, loaded_tokenizer, run_dir)
        assert exported == pytest.approx(reference, rel=PERPLEXITY_TOLERANCE[outtype]), outtype
    return model, tokenizer


def test_a_full_run_exports_into_its_directory_and_its_card_lists_the_file(tmp_path):
    run = train(tmp_path, output="full").output_dir
    check_round_trip(run, tmp_path)
    result = export(run, "q8_0")
    assert result.path == run / "gguf" / "full.Q8_0.gguf" and result.kind == "full"
    assert result.cards == [run / "README.md"]
    card = (run / "README.md").read_text()
    assert "## GGUF (llama.cpp, Ollama, LM Studio)" in card and "| `full.Q8_0.gguf` | Q8_0 |" in card
    assert f"ollama create full -f {run / 'gguf' / 'full.Q8_0.Modelfile'}" in card
    modelfile = result.modelfile.read_text()  # the run's own speakers: its first as the user, its second as the model
    assert '{{ "Alex: " }}' in modelfile and '{{ if $last }}{{ "Bob:" }}{{ end }}' in modelfile


def test_a_lora_run_with_a_chat_template_is_merged_in_memory(family_dir, tmp_path):
    run = train(tmp_path, "--config", str(SMOKE_LORA), "--model_name_or_path", str(family_dir("llama3")),
                "--use_chat_template", "true", "--role_to_speaker", *ROLES, "--lora_dropout", "0",
                "--learning_rate", "1e-2", output="lora").output_dir
    model, tokenizer = check_round_trip(run, tmp_path)
    from recipe.models.trained import load_model_for_evaluation

    adapter = load_model_for_evaluation(str(run), dtype="float32").model
    ids = tokenizer(TEXT)["input_ids"]
    torch.testing.assert_close(logits(model, ids), logits(adapter, ids), atol=1e-5, rtol=0)  # the adapter, merged
    result = export(run, "f16", tmp_path / "again")
    _, fields = read_gguf(result.path)
    assert fields["tokenizer.chat_template"] == tokenizer.chat_template
    assert not list(run.rglob("*.gguf"))  # --output elsewhere: the run directory is left as it was


def test_a_qlora_run_is_merged_on_its_full_precision_base(tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    from recipe.models.trained import load_model_for_evaluation

    run = train(tmp_path, "--config", str(SMOKE_LORA), "--load_in_4bit", "true", "--merge_lora", "true",
                output="qlora").output_dir
    model, tokenizer = check_round_trip(run, tmp_path)
    merged = AutoModelForCausalLM.from_pretrained(run / "merged").eval()  # what --merge_lora wrote: the same merge
    ids = tokenizer(TEXT)["input_ids"]
    torch.testing.assert_close(logits(model, ids), logits(merged, ids), atol=1e-5, rtol=0)
    in_4_bits = load_model_for_evaluation(str(run)).model  # the base as it trained: the merge is not onto this
    assert (logits(in_4_bits, ids) - logits(model, ids)).abs().max() > 1e-4


# ----------------------------------------------------------------------------------------------
# What is refused, and a write that fails


def test_another_family_is_refused_with_the_fix(family_dir, tmp_path):
    folder, _, _ = model_folder(family_dir, tmp_path, "gpt_neox")
    with pytest.raises(ConfigError, match=r"gpt_neox models cannot be exported to GGUF here \(supported: gpt2, llama, "
                                          r"mistral, qwen2\).*convert_hf_to_gguf.py"):
        export(folder)
    with pytest.raises(ConfigError, match=r"must end with \.gguf"):
        export_gguf(GGUFExportArguments(model_path=str(folder), output=str(tmp_path / "model.bin")))
    assert not list(folder.rglob("*.gguf"))


def test_an_interrupted_write_leaves_no_gguf_behind(family_dir, tmp_path, monkeypatch):
    folder, _, _ = model_folder(family_dir, tmp_path, "gpt2")

    def fail(self, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail)
    with pytest.raises(OSError, match="No space left"):
        export(folder)
    assert not [p for p in folder.rglob("*") if p.is_file() and "gguf" in p.name]  # neither the file nor its .tmp


def test_the_script_exports_and_refuses_in_one_line(family_dir, tmp_path):
    folder, _, _ = model_folder(family_dir, tmp_path, "gpt2")
    refused, _, _ = model_folder(family_dir, tmp_path, "opt")
    done = subprocess.run([sys.executable, "scripts/export_gguf.py", "--model_path", str(folder), "--outtype", "q8_0"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"gguf: {folder / 'gguf' / 'tiny-gpt2.Q8_0.gguf'}" in done.stdout and "ollama create NAME -f" in done.stdout
    failed = subprocess.run([sys.executable, "scripts/export_gguf.py", "--model_path", str(refused)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines()[-1].startswith(f"error: {refused}: opt models cannot be exported")
    assert json.loads((folder / "config.json").read_text())["model_type"] == "gpt2"
