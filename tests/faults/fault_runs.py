"""What the fault tests share: training launched as users launch it, with a fault injected (inject.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, free_port

INJECT = Path(__file__).with_name("inject.py")  # scripts/train.py plus a fault at a chosen step


def smoke_args(output_dir: Path, *extra: str) -> list[str]:
    """The smoke recipe on 80 dialogues: 7 steps per epoch at 2 rows per step, a checkpoint per epoch."""
    return [
        "--config", "recipe/configs/smoke.yaml", "--output_dir", str(output_dir), "--max_dialogues", "80",
        "--num_train_epochs", "2", "--bf16", "false", "--logging_steps", "1", "--save_total_limit", "5",
        "--dataset_cache_dir", str(output_dir.parent / "cache"), "--disable_tqdm", "true", "--report_to", "none",
        *extra,
    ]


def train(output_dir: Path, *extra: str, fault: str | None = None, processes: int = 1, env=None, timeout=300):
    """scripts/train.py (or inject.py with FAULT set), alone or under torchrun with `processes` CPU workers;
    `env` entries set to None are removed from the environment."""
    script = str(INJECT) if fault else "scripts/train.py"
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                     "--master_port", str(free_port())]
    full_env = {**os.environ, **(env or {})}  # a variable set to None in `env` is unset
    full_env = {name: value for name, value in full_env.items() if value is not None and name != "FAULT"}
    if fault:
        full_env["FAULT"] = fault
    return subprocess.run([*launcher, script, *smoke_args(output_dir, *extra)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def step_losses(run_dir: Path) -> list[float]:
    state = json.loads((run_dir / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def eval_loss(run_dir: Path) -> float:
    return json.loads((run_dir / "eval_results.json").read_text())["eval_token_loss"]
