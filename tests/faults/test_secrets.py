"""No secret given by flag or environment (--hub_token, HF_TOKEN, WANDB_API_KEY) appears in any byte a run
writes: the output directory with its checkpoints and pickles, the W&B run directory, the logs."""

import os
import uuid
from pathlib import Path

import torch

from fault_runs import train


def files_under(root: Path):
    """Every file below root, following symbolic links (W&B links its core log from elsewhere)."""
    for folder, _, names in os.walk(root, followlinks=True):
        for name in names:
            path = Path(folder) / name
            if path.is_file():
                yield path


def test_no_secret_reaches_any_file_log_or_wandb_record(tmp_path):
    markers = {name: f"{name}-{uuid.uuid4().hex}" for name in ("hub_token", "HF_TOKEN", "WANDB_API_KEY")}
    out = tmp_path / "run"
    result = train(
        out, "--num_train_epochs", "2", "--report_to", "wandb", "--push_to_hub", "true", "--hub_model_id", "me/run",
        "--hub_token", markers["hub_token"],
        env={"HF_TOKEN": markers["HF_TOKEN"], "WANDB_API_KEY": markers["WANDB_API_KEY"], "WANDB_MODE": None,
             "WANDB_DIR": str(tmp_path / "wandb"), "WANDB_BASE_URL": "http://127.0.0.1:9"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "W&B is offline (http://127.0.0.1:9 is not reachable)" in result.stderr  # the key was seen and used
    written = list(files_under(tmp_path))
    names = {p.name for p in written}
    assert any(n.endswith(".wandb") for n in names) and "output.log" in names, sorted(names)
    assert len([p for p in written if p.name == "training_args.bin"]) == 3  # output dir and both checkpoints
    for path in written:
        content = path.read_bytes()
        for name, marker in markers.items():
            assert marker.encode() not in content, f"{name} found in {path}"
    for name, marker in markers.items():
        assert marker not in result.stdout and marker not in result.stderr, f"{name} found in the run's output"
    # The pickled arguments hold no token (the run had one in memory for the Hub client).
    assert torch.load(out / "training_args.bin", weights_only=False).hub_token is None
