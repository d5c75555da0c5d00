"""Run records: what a reader needs to reproduce a run's numbers (package versions, device, code and
data identity, the command line with secrets masked) and the peak memory it used."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from ..common.files import file_sha256
from ..common.packages import installed_packages, pins_text
from ..common.redaction import redact_command
from ..config import DataArguments, DialogueTrainingArguments, ModelArguments
from ..config.sharding import launcher_command
from ..models.source import ModelSource, base_model_record


def cpu_name() -> str:
    """The CPU's model name (platform.processor() is empty or only the architecture on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> dict[str, Any] | None:
    root = Path(__file__).resolve().parents[2]  # the repository (recipe/training/ is two folders down)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def device_description(training_args: DialogueTrainingArguments) -> dict[str, Any]:
    device = {"type": training_args.device.type, "world_size": training_args.world_size}
    if training_args.device.type == "cuda":
        device["name"] = torch.cuda.get_device_name(training_args.device)
        device["count"] = torch.cuda.device_count()
    else:
        device["name"] = cpu_name()
        device["cpu_count"] = os.cpu_count()
        device["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    device["bf16"] = bool(training_args.bf16)
    device["fp16"] = bool(training_args.fp16)
    return device


def data_record(data_args: DataArguments) -> dict[str, Any]:
    """The data's identity: each --data_path entry's and the validation file's path and SHA-256 (None for a
    folder or a Hub dataset), and, for one source, the same under the keys older records used."""
    sources = data_args.sources
    files = [{"option": "data_path", "path": source.path, "sha256": file_sha256(source.path)} for source in sources]
    if data_args.validation_path:
        files.append({"option": "validation_path", "path": data_args.validation_path,
                      "sha256": file_sha256(data_args.validation_path)})
    return {
        "data_path": data_args.data_paths_text,
        "data_sha256": files[0]["sha256"] if len(sources) == 1 else None,
        "validation_path": data_args.validation_path,
        "validation_sha256": file_sha256(data_args.validation_path),
        "files": files,
    }


def environment_record(data_args: DataArguments, training_args: DialogueTrainingArguments,
                       model_args: ModelArguments | None = None, source: ModelSource | None = None,
                       options: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a reader needs to reproduce the numbers: versions, device, code, base model and data identity.
    `source`: where the base was read from, as the run resolved it; `options`: every option as this run used it
    (run_config.yaml has them as asked), which scripts/reproduce.py holds a replay's to."""
    from importlib.metadata import PackageNotFoundError, version

    packages = {}
    for name in ("torch", "transformers", "datasets", "accelerate", "peft", "evaluate", "wandb", "tokenizers", "gguf"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": packages,
        "device": device_description(training_args),
        "resolved_options": training_args.resolved_options(),  # run_config.yaml has them as asked
        "git": git_commit(),
        # Where the base's weights came from (a GGUF's file, SHA-256 and quantisation; a folder's provenance.json)
        "base_model": base_model_record(model_args, source) if model_args is not None else None,
        "data": data_record(data_args),
        "command": " ".join(redact_command(sys.argv)),  # no --hub_token: this file is pushed with the model
        "launcher": launcher_command(training_args.world_size),  # python, or accelerate launch / torchrun and theirs
        "options": options,
    }


def requirements_lock_text(git: dict[str, Any] | None) -> str:
    """requirements.lock.txt: every package installed for this run, pinned, with how to install them again."""
    commit = f"commit {git['commit']}{' (with uncommitted changes)' if git['dirty'] else ''}" if git else \
        "an unknown commit"
    header = "\n".join([
        f"The Python packages this run was trained with (Python {sys.version.split()[0]}, {platform.platform()}),",
        f"from a checkout of dialogue-finetune at {commit}.",
        "Install them again there with",
        "  pip install -r requirements.lock.txt && pip install --no-deps -e .",
        "or constrain another install to them with -c. `python scripts/reproduce.py RUN` lists what an install",
        "changes from them, and replays the run's first steps to compare its losses.",
    ])
    return pins_text(installed_packages(), header)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    try:
        import resource
    except ImportError:  # Windows: the peak working set (psutil comes with accelerate)
        import psutil

        memory = psutil.Process().memory_info()
        return round(getattr(memory, "peak_wset", memory.rss) / 2**20, 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / 2**20 if sys.platform == "darwin" else peak / 1024, 1)  # macOS reports bytes, Linux KiB
