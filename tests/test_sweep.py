"""scripts/sweep.py: the grid over a full / LoRA recipe pair, an interrupted sweep resumed where it stopped,
every finished cell evaluated, W&B (offline) with one group per sweep and each run tagged with its cell,
failed cells kept as failed, and the report at the end."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from recipe.common.run_dir import RunDir
from recipe.comparison.sweep import grid_cells, run_sweep, train_arguments, typed_command
from recipe.config import ConfigError, SweepArguments
from test_tracking import read_offline_run

SMOKE, SMOKE_LORA = "recipe/configs/smoke.yaml", "recipe/configs/smoke-lora.yaml"


def read_json(path):
    return json.loads(Path(path).read_text())


@pytest.fixture(autouse=True)
def from_the_repository_root(monkeypatch):
    monkeypatch.chdir(REPO)  # recipes and scripts are named from there, as the README runs them


def test_the_default_grid_is_full_and_two_lora_ranks_at_three_learning_rates():
    cells = grid_cells(SweepArguments())
    assert [cell.name for cell in cells] == [
        "full-lrx0.5", "full-lrx1", "full-lrx2",
        "lora-r8-lrx0.5", "lora-r8-lrx1", "lora-r8-lrx2", "lora-r32-lrx0.5", "lora-r32-lrx1", "lora-r32-lrx2"]
    by_name = {cell.name: cell for cell in cells}
    # Each recipe's own learning rate, scaled (smoke.yaml: 6e-3, smoke-lora.yaml: 5e-3); the rank keeps alpha / r.
    assert by_name["full-lrx2"].options == {"learning_rate": "0.012"} and by_name["full-lrx2"].recipe == SMOKE
    assert by_name["lora-r32-lrx0.5"].options == {"lora_r": "32", "learning_rate": "0.0025", "lora_alpha": "64"}
    assert by_name["lora-r8-lrx1"].options["lora_alpha"] == "16" and by_name["lora-r8-lrx1"].recipe == SMOKE_LORA

    args = SweepArguments(grid=["lora_r=4", "learning_rate=1e-4,3e-4", "num_train_epochs=1"],
                          train_options=["--max_dialogues", "80"])
    cells = grid_cells(args)
    assert [cell.name for cell in cells] == [
        "full-lr1e-4-num_train_epochs1", "full-lr3e-4-num_train_epochs1",
        "lora-r4-lr1e-4-num_train_epochs1", "lora-r4-lr3e-4-num_train_epochs1"]
    assert train_arguments(args, cells[3], Path("out/c"), "s") == [
        "--config", SMOKE_LORA, "--output_dir", "out/c", "--max_dialogues", "80", "--lora_r", "4",
        "--learning_rate", "3e-4", "--num_train_epochs", "1", "--lora_alpha", "8", "--report_to", "none"]
    tracked = SweepArguments(**dict(args.__dict__, use_wandb=True))
    name = "lora-r4-lr3e-4-num_train_epochs1"
    assert train_arguments(tracked, cells[3], Path("out/c"), "s")[-12:] == [
        "--report_to", "wandb", "--wandb_group", "s", "--run_name", name, "--wandb_tags", "sweep:s", f"cell:{name}",
        "lora_r=4", "learning_rate=3e-4", "num_train_epochs=1"]


def test_grid_mistakes_are_refused_before_anything_trains(tmp_path):
    with pytest.raises(ConfigError, match="grid axis mode has \\['ful'\\]; its values are full and lora"):
        SweepArguments(grid=["mode=ful"])
    with pytest.raises(ConfigError, match="grid axis 'lora_r' is not AXIS=V1,V2"):
        SweepArguments(grid=["lora_r"])
    with pytest.raises(ConfigError, match="full_recipe recipe/configs/smoke-lora.yaml has use_lora true"):
        grid_cells(SweepArguments(full_recipe=SMOKE_LORA))
    with pytest.raises(ConfigError, match="train_options set learning_rate, an axis of the grid"):
        run_sweep(SweepArguments(sweep_dir=str(tmp_path / "s"), train_options=["--learning_rate", "1"], dry_run=True))
    with pytest.raises(ConfigError, match="cell lora-rx-lrx1: argument --lora_r: invalid int value: 'x'"):
        run_sweep(SweepArguments(sweep_dir=str(tmp_path / "s"), grid=["lora_r=x", "learning_rate_scale=1"],
                                 dry_run=True))
    with pytest.raises(ConfigError, match="(?s)cell lora-r8-lrx1-lora_dropot0: .*unknown option --lora_dropot; did you "
                                          "mean --lora_dropout"):
        run_sweep(SweepArguments(sweep_dir=str(tmp_path / "s"), grid=["lora_r=8", "learning_rate_scale=1",
                                                                       "lora_dropot=0"], dry_run=True))
    assert not (tmp_path / "s").exists()


def sweep_command(tmp_path, *extra):
    return [sys.executable, "scripts/sweep.py", "--sweep_dir", str(tmp_path / "sweep"), "--sweep_name", "smoke-test",
            "--grid", "lora_r=8", "learning_rate_scale=1", "--use_wandb", "true", "--train_script",
            "tests/faults/inject.py", "--evaluate_options=--num_samples 2 --max_new_tokens 4", *extra, "--",
            "--max_dialogues", "80", "--num_train_epochs", "2", "--per_device_train_batch_size", "2", "--bf16",
            "false", "--eval_samples", "2", "--disable_tqdm", "true", "--dataset_cache_dir", str(tmp_path / "cache")]


def run(command, tmp_path, fault):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "FAULT": fault,
           "FAULT_TARGET": "parent"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def test_an_interrupted_sweep_resumes_where_it_stopped_and_ends_in_a_report(tmp_path):
    sweep = tmp_path / "sweep"
    full, lora = sweep / "full-lrx1", sweep / "lora-r8-lrx1"
    # SIGTERM reaches the sweep at step 10 of its first cell: it passes it on, the cell saves and the sweep stops.
    stopped = run(sweep_command(tmp_path), tmp_path, "signal:SIGTERM:10")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "stopped: the sweep stopped during full-lrx1 (its last checkpoint is kept); run the same command" \
        in stopped.stderr
    assert read_json(sweep / "sweep.json")["cells"]["full-lrx1"]["status"] == "interrupted"
    resume = read_json(sweep / "sweep.json")["resume"]  # as typed, not this machine's interpreter
    assert resume.startswith(f"python scripts/sweep.py --sweep_dir {sweep} ")
    assert f"to resume: {resume}" in stopped.stderr
    assert (full / "checkpoint-10").is_dir() and not RunDir(full).is_finished() and not lora.exists()

    finished = run(sweep_command(tmp_path), tmp_path, "signal:SIGTERM:999")  # the same command, no fault this time
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert read_json(full / "train_results.json")["resumed_from"].endswith("checkpoint-10")
    assert read_json(lora / "train_results.json")["resumed_from"] is None
    manifest = read_json(sweep / "sweep.json")["cells"]
    assert {name: cell["status"] for name, cell in manifest.items()} == {"full-lrx1": "finished",
                                                                         "lora-r8-lrx1": "finished"}
    for cell in (full, lora):
        assert read_json(cell / "evaluation.json")["generation"]["num_prompts"] == 2  # each finished cell evaluated
        record = read_json(cell / "wandb_run.json")
        run_record, config, _, _ = read_offline_run(record["run_dir"])
        assert run_record.run_group == "smoke-test" and run_record.display_name == cell.name
        tags = set(run_record.tags)
        assert {f"cell:{cell.name}", "sweep:smoke-test", "learning_rate_scale=1", config["mode"]} <= tags
        assert config["lora_rank"] == (8 if cell == lora else None)

    report = (sweep / "report.md").read_text()
    assert report.startswith("# Sweep smoke-test: 2 runs") and f"with `{resume}`." in report
    ranked = [line for line in report.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    perplexities = {cell.name: read_json(cell / "eval_results.json")["eval_perplexity"] for cell in (full, lora)}
    order = sorted(perplexities, key=perplexities.get)
    assert [line.split(" | ")[1] for line in ranked] == order
    assert (sweep / "report.png").stat().st_size > 10_000 and (sweep / "report-pareto.png").stat().st_size > 10_000


def test_the_recorded_command_is_the_one_a_user_types_at_the_repository_root(tmp_path, monkeypatch):
    """`python` and paths from the repository root, not this machine's interpreter and absolute paths: the report's
    rerun command replays on another checkout (paths outside the repository stay as they are)."""
    import recipe.comparison.sweep

    secret = "hf_" + "s3cr3t" * 6
    argv = [str(REPO / "scripts" / "sweep.py"), "--sweep_dir", str(tmp_path / "s"), f"--config={REPO / 'my.yaml'}",
            "--evaluate_options", "--do_sample false", "--grid", "lora_r=8", "learning_rate_scale=1", "--",
            "--data_path", str(REPO / "data" / "sample_dialogues.json"), "--hub_token", secret]
    typed = (f"python scripts/sweep.py --sweep_dir {tmp_path / 's'} --config=my.yaml --evaluate_options "
             "'--do_sample false' --grid lora_r=8 learning_rate_scale=1 -- --data_path data/sample_dialogues.json "
             "--hub_token '***'")
    assert typed_command(argv) == typed
    # what run_sweep records by itself (sys.argv as `/abs/python /abs/repo/scripts/sweep.py ...` leaves it)
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(recipe.comparison.sweep, "run_child", lambda command: 1)
    with pytest.raises(ConfigError, match="no cell of the sweep"):
        run_sweep(SweepArguments(sweep_dir=str(tmp_path / "s"), grid=["lora_r=8", "learning_rate_scale=1"],
                                 evaluate=False))
    assert read_json(tmp_path / "s" / "sweep.json")["resume"] == typed
    # the committed SmolLM2 sweep replays from any checkout
    recorded = REPO / "benchmarks" / "results" / "sweep-smollm2-2026-12-02"
    resume = read_json(recorded / "sweep.json")["resume"]
    assert resume.startswith("python scripts/sweep.py --full_recipe recipe/configs/smollm2-full.yaml ")
    assert f"with `{resume}`." in (recorded / "report.md").read_text()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from test_training import train

    return train(tmp_path_factory.mktemp("sweep-run"), "--num_train_epochs", "1").output_dir


def test_a_failed_cell_stays_failed_until_asked_and_the_report_names_it(tmp_path, finished_run, monkeypatch):
    import recipe.comparison.sweep

    calls = []

    def child(command):
        """Stands in for the training processes: the full cell finishes, the LoRA one fails."""
        calls.append(command)
        output_dir = Path(command[command.index("--output_dir") + 1])
        if "full" in output_dir.name:
            shutil.copytree(finished_run, output_dir, dirs_exist_ok=True)
            return 0
        return 1

    monkeypatch.setattr(recipe.comparison.sweep, "run_child", child)
    secret = "hf_" + "s3cr3t" * 6
    args = SweepArguments(sweep_dir=str(tmp_path / "sweep"), grid=["lora_r=8", "learning_rate_scale=1"],
                          evaluate=False, train_options=["--hub_token", secret])
    report, failed = run_sweep(args, "python scripts/sweep.py ...")
    assert [cell.name for cell in failed] == ["lora-r8-lrx1"] and len(calls) == 2
    text = report.read_text()
    assert "Not in the tables (no finished run): lora-r8-lrx1 (exit 1)." in text and "| 1 | full-lrx1 |" in text
    assert "| 2 |" not in text
    assert secret in calls[0]  # the cell gets its token; nothing the sweep writes holds it
    for written in (report, Path(args.sweep_dir) / "sweep.json"):
        assert secret not in written.read_text() and "***" in written.read_text()  # masked, as run records mask it

    calls.clear()
    finished = Path(args.sweep_dir) / "full-lrx1" / "train_results.json"
    stamp = finished.stat().st_mtime_ns
    report, failed = run_sweep(args, "python scripts/sweep.py ...")  # a rerun keeps both: nothing runs
    assert calls == [] and [cell.name for cell in failed] == ["lora-r8-lrx1"] and finished.stat().st_mtime_ns == stamp
    run_sweep(SweepArguments(**dict(args.__dict__, retry_failed=True)), "python scripts/sweep.py ...")
    assert len(calls) == 1 and "lora-r8-lrx1" in calls[0][calls[0].index("--output_dir") + 1]

    # Other training options over the same folders are refused, naming the cell and what to do (W&B aside).
    with pytest.raises(ConfigError, match="full-lrx1 was trained by this sweep with other options .* Use another "
                                          "--sweep_dir, or delete that folder"):
        run_sweep(SweepArguments(**dict(args.__dict__, train_options=["--hub_token", secret, "--logging_steps", "5"])),
                  "...")
    calls.clear()
    run_sweep(SweepArguments(**dict(args.__dict__, use_wandb=True)), "...")
    assert len(calls) == 0
