"""The memory plan: within 25% of the peak measured by counting tensors on the tiny model (full, LoRA, QLoRA,
with and without gradient checkpointing), printed at start-up and by --dry_run, and a plan that does not fit
stops the run before the model loads, naming options whose plans fit."""

import gc
import json
import sys

import pytest
import torch

from conftest import OFFLINE_MODEL, REPO
from recipe.config import ConfigError
from recipe.memory.measured import TensorMemoryMeter
from recipe.memory.plan import MIB, plan_memory
from recipe.training.run import run_training
from test_training import parse, smoke_args

sys.path.insert(0, str(REPO / "benchmarks"))
SMOKE = REPO / "recipe" / "configs" / "smoke.yaml"


def test_the_meter_counts_each_live_storage_once():
    weight = torch.randn(1000, 1000, requires_grad=True)  # 4 MB, there before the meter
    with TensorMemoryMeter(baseline_bytes=4_000_000) as meter:
        x = torch.randn(256, 1000)  # 1,024,000 bytes
        h = torch.tanh(x @ weight)  # the product is freed at once; tanh's output is kept for backward
        view = h[:10]  # shares h's storage
        assert meter.current == 4_000_000 + 2 * 1_024_000
        (h * h).sum().backward()  # weight.grad: 4 MB more
        del h, view, x
        gc.collect()
        assert meter.current == 8_000_000
        assert meter.peak > 8_000_000 + 1_024_000  # the backward's temporaries were counted while they lived


def test_views_and_in_place_updates_of_the_weights_are_not_counted_again():
    """A float32 linear layer on a 3D input saves its weight's transpose (a view) for backward, and an optimizer
    updates the weights in place: neither holds a byte more than the weights the baseline already counts."""
    layer = torch.nn.Linear(1000, 1000, bias=False)  # 4 MB, there before the meter
    with TensorMemoryMeter(existing=list(layer.parameters())) as meter:
        x = torch.randn(8, 32, 1000, requires_grad=True)  # 1,024,000 bytes; a later layer's input needs its grad
        y = layer(x)  # t(weight) and mm: the product, 1,024,000 bytes, and the transpose kept for x's gradient
        assert meter.current == 4_000_000 + 2 * 1_024_000
        with torch.no_grad():
            layer.weight.mul_(0.5)
        assert meter.current == 4_000_000 + 2 * 1_024_000
        del x, y
        gc.collect()
        assert meter.current == 4_000_000


MODES = {"full": [], "lora": ["--use_lora", "true"], "qlora": ["--use_lora", "true", "--load_in_4bit", "true"]}


@pytest.mark.parametrize("checkpointing", ["false", "true"])
@pytest.mark.parametrize("mode", list(MODES))
def test_the_plan_is_within_25_percent_of_the_measured_peak(mode, checkpointing, tmp_path):
    if mode == "qlora":
        pytest.importorskip("bitsandbytes")
    from memory import measure_row  # benchmarks/memory.py: the same rows on SmolLM2

    row = measure_row(SMOKE, [*MODES[mode], "--gradient_checkpointing", checkpointing], tmp_path / "row", steps=3,
                      extra=["--bf16", "false"])
    assert abs(row["plan_error"]) < 0.25, row


def test_dry_run_prints_the_plan_and_writes_and_loads_nothing(tmp_path, capsys, monkeypatch):
    import recipe.training.run

    monkeypatch.setattr(recipe.training.run, "get_model", lambda *a: pytest.fail("a model was loaded"))
    result = run_training(*parse(*smoke_args(tmp_path, "--dry_run", "true", "--gradient_checkpointing", "true")))
    assert result is None and not (tmp_path / "run").exists()
    printed = capsys.readouterr().out
    assert "memory plan: peak" in printed and "with gradient checkpointing" in printed
    assert "available RAM" in printed or "free on" in printed


def test_the_start_up_summary_prints_the_plan_and_the_run_records_both_peaks(tmp_path, caplog):
    with caplog.at_level("INFO", logger="recipe"):
        result = run_training(*parse(*smoke_args(tmp_path, "--num_train_epochs", "1", "--max_dialogues", "30")))
    summary = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("run summary"))
    assert "memory plan: peak" in summary and "activations" in summary and "device:" in summary
    metrics = json.loads((result.output_dir / "train_results.json").read_text())
    assert metrics["peak_tensor_memory_mb"] > 0 and metrics["memory_plan_mb"] > 0


def fake_free_memory(monkeypatch, free_bytes):
    import recipe.memory.check

    monkeypatch.setattr(recipe.memory.check, "free_memory", lambda device: (free_bytes, "free (test)"))


def test_a_plan_that_does_not_fit_stops_before_the_model_loads_and_names_options_that_fit(tmp_path, monkeypatch):
    from transformers import AutoConfig

    import recipe.training.run
    from recipe.memory.check import options_for_run, shape_from_config

    for name in ("get_model", "get_tokenizer"):
        monkeypatch.setattr(recipe.training.run, name, lambda *a, **k: pytest.fail("a model or tokenizer was loaded"))
    configs = parse(*smoke_args(tmp_path, "--bf16", "false"))
    shape = shape_from_config(AutoConfig.from_pretrained(OFFLINE_MODEL))
    options = options_for_run(*configs[:4])
    needed = plan_memory(shape, options).peak
    fake_free_memory(monkeypatch, int(needed * 0.8))  # 80%: only lighter options fit
    with pytest.raises(ConfigError, match=r"does NOT fit") as refused:
        run_training(*configs)
    assert not (tmp_path / "run").exists()
    message = str(refused.value)
    offered = message.split("options that fit: ")[1].split("; or pass --check_memory false")[0].split("; ")
    assert offered and any("--gradient_checkpointing true" in o for o in offered)
    for offer in offered:  # every option offered really fits by the same plan
        flags = offer.split(" (peak")[0].split()
        candidate = options_for_run(*parse(*smoke_args(tmp_path, "--bf16", "false", *flags))[:4])
        assert plan_memory(shape, candidate).peak <= 0.9 * needed * 0.8, offer


def test_check_memory_false_warns_and_trains(tmp_path, monkeypatch, caplog):
    fake_free_memory(monkeypatch, 1 * MIB)
    with caplog.at_level("WARNING", logger="recipe"):
        result = run_training(*parse(*smoke_args(tmp_path, "--check_memory", "false", "--num_train_epochs", "1",
                                                 "--max_dialogues", "20")))
    assert result.train_metrics["global_step"] > 0
    assert any("does NOT fit" in r.getMessage() for r in caplog.records)


def test_a_65b_gpt2_on_a_24gb_machine_is_refused_from_its_config_with_the_fixes_that_fit(tmp_path, monkeypatch):
    """The smoke recipe on the bundled config widened to 4,096 and 32 layers used to grow to 23.7 GB and be killed
    by the kernel (exit 137) with no message. The plan sees it from the config alone."""
    import shutil

    big = tmp_path / "gpt2-6.5b"
    shutil.copytree(OFFLINE_MODEL, big)
    config = json.loads((big / "config.json").read_text())
    config.update(n_embd=4096, n_layer=32, n_head=32)
    (big / "config.json").write_text(json.dumps(config))
    fake_free_memory(monkeypatch, 24 * 2**30)
    with pytest.raises(ConfigError, match=r"needs about [\d,]+ MB at its peak") as refused:
        run_training(*parse(*smoke_args(tmp_path, "--model_name_or_path", str(big))))
    message = str(refused.value)
    assert "weights 24," in message or "weights 25," in message  # 6.5B float32 weights alone
    fixes = message.split("options that fit: ")[1]
    assert "--dtype bfloat16" in fixes  # LoRA on a bf16 copy of the base fits
    assert "--load_in_4bit" not in fixes  # a random base is built at full precision before it is quantized


def test_the_documented_fit_table_is_what_the_plan_computes():
    sys.path.insert(0, str(REPO / "scripts"))
    from memory_table import memory_table

    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]  # the table lives in docs/memory.md
    assert any(memory_table() in page.read_text() for page in pages)
