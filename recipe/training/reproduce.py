"""Re-check a recorded run: what differs between this install and the run's records, then a replay of its first steps
whose logged losses are held to the run's own (scripts/reproduce.py).

What is compared, from the run directory:
- the installed packages against requirements.lock.txt (environment.json's main packages for runs older than it);
- each data file's SHA-256 against environment.json's;
- the device (type, name, CPU capability) and the code (git commit);
- after the replay, every option as the replay used it against the run's (environment.json `options`; automatic
  precision settled on each machine, so a machine without fast bf16 shows `bf16` here).

The replay trains the run's run_config.yaml into a temporary folder with the run's own launcher (python, or the
`accelerate launch` / `torchrun` line that started it), stopping after N steps with the whole run's learning-rate
schedule (--stop_after_steps; max_steps would shorten the schedule), without W&B or a Hub push. Same machine, same
versions, same code: every logged loss is equal to the last digit on a CPU, one process or several over gloo (the
seeds, the data order and the CPU kernels are deterministic). Where that cannot hold: GPU kernels that accumulate
with atomics (some cuBLAS and scatter kernels) differ in the last digits between two runs unless the run set
--full_determinism true; pass --tolerance for those.
"""

from __future__ import annotations

import math
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.errors import UserError
from ..common.files import file_sha256
from ..common.packages import installed_packages, read_pins, version_differences
from ..common.run_dir import RunDir, read_json_file, recorded_data_files
from ..config.data_sources import comparable_option
from .environment import cpu_name, git_commit

# Options a replay sets itself: where it writes, and no W&B run or Hub push of its own. None changes a step.
REPLAY_OPTIONS = {"output_dir": None, "stop_after_steps": None, "report_to": "none", "push_to_hub": False}
LOGGED_LOSSES_BY_DEFAULT = 3  # without --steps: replay up to the run's third logged loss


class ReproduceError(UserError):
    """A run that cannot be re-checked (not a run, no records, nothing logged in the steps asked)."""


@dataclass
class Reproduction:
    """What `reproduce` found: whether the run reproduced, the reason when not, what differs."""

    differences: list[str] = field(default_factory=list)  # a name each: "transformers", "data_path", "learning_rate"
    reproduced: bool = True
    reason: str = ""
    replay_dir: Path | None = None


def reproduce(run_path: str | os.PathLike, steps: int | None, train_script: str | os.PathLike,
              tolerance: float = 0.0, echo=None) -> Reproduction:
    """Compare RUN's records with this install, then replay its first `steps` steps (None: up to its third logged
    loss; 0: no replay) and compare the losses. `echo(line)` is called with each line as it is found."""
    say = echo or (lambda line: None)
    run = RunDir(run_path)
    environment, history = _read_records(run)
    result = Reproduction()
    say(f"reproduce {run}")
    for name, line in environment_differences(run, environment):
        result.differences.append(name)
        say(f"  {line}")
    say(f"  {_compared_line(run, environment)}")
    resumes = read_json_file(run.resumes) or []
    if any(entry.get("changed") for entry in resumes):
        say(f"  note: the run was resumed with other options ({run.resumes.name}): the replay runs its last options "
            "from the start, so losses after the first resume can differ")
    logged = _logged_losses(history)
    if not logged:
        raise ReproduceError(f"{run} logged no training loss ({run.trainer_state.name}): nothing to compare")
    steps = logged[min(LOGGED_LOSSES_BY_DEFAULT, len(logged)) - 1][0] if steps is None else steps
    if steps == 0:
        result.reproduced = not result.differences
        result.reason = "" if result.reproduced else f"{len(result.differences)} differences from the records: " \
            + ", ".join(result.differences)
        return result
    compared = {step: loss for step, loss in logged if step <= steps}
    if not compared:
        raise ReproduceError(f"{run} logged no loss in its first {steps} steps (its first at step {logged[0][0]}): "
                             f"use --steps {logged[0][0]} or more")

    workdir = Path(tempfile.mkdtemp(prefix="reproduce-"))
    result.replay_dir = workdir / "run"
    command = replay_command(run, environment, train_script, result.replay_dir, steps)
    say(f"replaying steps 1-{steps}: {shlex.join(command)}")
    say(f"  (log: {workdir / 'replay.log'})")
    code = _run_logged(command, workdir / "replay.log")
    if code != 0:
        result.reproduced = False
        result.reason = f"the replay stopped with exit status {code}: {_last_error(workdir / 'replay.log')}"
        return result

    replayed = RunDir(result.replay_dir)
    replay_environment = read_json_file(replayed.environment) or {}
    options = option_differences(environment.get("options"), replay_environment.get("options"))
    for name, line in options:
        result.differences.append(name)
        say(f"  {line}")
    if not options:
        say(f"  options: the replay used the run's {len(environment['options'])} options")
    replay_losses = dict(_logged_losses((read_json_file(replayed.trainer_state) or {}).get("log_history") or []))
    verdict = compare_losses(compared, replay_losses, tolerance)
    say(f"  losses: {verdict.summary}")
    result.reproduced = verdict.equal
    if not verdict.equal:
        result.reason = verdict.summary + (f"; what differs: {', '.join(result.differences)}" if result.differences
                                           else "; nothing recorded differs")
    return result


def _read_records(run: RunDir) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """environment.json and the Trainer's log history (the final trainer_state.json, else the last checkpoint's)."""
    if not run.is_recipe_run():
        raise ReproduceError(f"{run} is not a run of this recipe (no {run.run_config.name}): give a training "
                             "output directory")
    environment = read_json_file(run.environment)
    if environment is None:
        raise ReproduceError(f"{run} has no {run.environment.name}: the run's versions and data are not recorded")
    state = run.trainer_state if run.trainer_state.is_file() else None
    if state is None and run.last_complete_checkpoint():
        state = run.last_complete_checkpoint() / run.trainer_state.name
    if state is None:
        raise ReproduceError(f"{run} has no {run.trainer_state.name} (not finished, and no checkpoint): its losses "
                             "are not recorded")
    return environment, (read_json_file(state) or {}).get("log_history") or []


def environment_differences(run: RunDir, environment: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, line) for each difference between the run's records and this install: packages, data, device, code."""
    differences = []
    if run.requirements_lock.is_file():
        recorded = read_pins(run.requirements_lock)
        source = run.requirements_lock.name
    else:  # a run recorded before requirements.lock.txt: its main packages only
        recorded = {name: version for name, version in (environment.get("packages") or {}).items() if version}
        source = f"{run.environment.name} (main packages only)"
    installed = installed_packages()
    if source != run.requirements_lock.name:
        installed = {name: version for name, version in installed.items() if name in recorded}
    changes = version_differences(recorded, installed)
    for name, was, now in changes:
        if was and now:
            differences.append((name, f"package {name}: {was} recorded ({source}), {now} installed"))
    missing = [f"{name}=={was}" for name, was, now in changes if now is None]
    extra = [f"{name}=={now}" for name, was, now in changes if was is None]
    if missing:
        differences.append(("packages not installed", f"recorded, not installed: {', '.join(missing)}"))
    if extra:
        differences.append(("packages not recorded", f"installed, not recorded: {', '.join(extra)}"))
    data = environment.get("data") or {}
    for entry in recorded_data_files(data):
        option, path, sha = entry["option"], entry["path"], entry["sha256"]
        if path and sha:
            here = file_sha256(path)
            if here != sha:
                now = f"{here[:12]}… here" if here else f"no file at {path} here"
                differences.append((option, f"{option} {path}: SHA-256 {sha[:12]}… recorded, {now}"))
    recorded_device = environment.get("device") or {}
    here = device_here()
    for key in ("type", "name", "cpu_capability"):
        if recorded_device.get(key) is not None and recorded_device.get(key) != here.get(key):
            differences.append((f"device {key}", f"device {key}: {recorded_device.get(key)} recorded, "
                                                 f"{here.get(key)} here"))
    recorded_git, git = environment.get("git") or {}, git_commit() or {}
    if recorded_git.get("commit") and recorded_git.get("commit") != git.get("commit"):
        differences.append(("code", f"code: commit {recorded_git['commit'][:12]} recorded, "
                                    f"{(git.get('commit') or 'none')[:12]} here"))
    return differences


def _compared_line(run: RunDir, environment: dict[str, Any]) -> str:
    """What was found as recorded, in one line."""
    device = environment.get("device") or {}
    git = environment.get("git") or {}
    dirty = " (recorded with uncommitted changes: the code may differ)" if git.get("dirty") else ""
    return (f"compared: packages, data SHA-256, device ({device.get('type')}, {device.get('name')}, "
            f"{device.get('world_size', 1)} process(es)), code (commit {(git.get('commit') or '?')[:12]}){dirty}")


def device_here() -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        return {"type": "cuda", "name": torch.cuda.get_device_name(0)}
    return {"type": "cpu", "name": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def replay_command(run: RunDir, environment: dict[str, Any], train_script: str | os.PathLike, output_dir: Path,
                   steps: int) -> list[str]:
    """The run's launcher, its training script and run_config.yaml, into `output_dir`, stopping after `steps`."""
    launcher = environment.get("launcher")
    world_size = (environment.get("device") or {}).get("world_size") or 1
    if not launcher:  # recorded before the launcher was
        if world_size > 1:
            raise ReproduceError(f"{run} trained on {world_size} processes and does not record its launcher: replay "
                                 f"it by hand with {run.replay_command()} under that launcher")
        launcher = ["python"]
    launcher = _with_this_interpreter(launcher)
    overrides = {**REPLAY_OPTIONS, "output_dir": str(output_dir), "stop_after_steps": steps}
    flags = [item for name, value in overrides.items() for item in (f"--{name}", _flag_value(value))]
    return [*launcher, str(train_script), "--config", str(run.run_config), *flags]


def _with_this_interpreter(launcher: list[str]) -> list[str]:
    """The launcher run by this Python (its torch, its packages), whatever PATH holds."""
    if launcher == ["python"]:
        return [sys.executable]
    if launcher[0] == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", *launcher[1:]]
    if launcher[:2] == ["accelerate", "launch"]:
        return [sys.executable, "-m", "accelerate.commands.launch", *launcher[2:]]
    return launcher


def _flag_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _run_logged(command: list[str], log: Path) -> int:
    """Run the replay, its output to the log and to stderr as it comes (the summary, the progress bars)."""
    with open(log, "wb") as stream:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for chunk in iter(lambda: process.stdout.read1(4096), b""):
            stream.write(chunk)
            sys.stderr.buffer.write(chunk)
            sys.stderr.flush()
        return process.wait()


def _last_error(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("error:", "stopped:")) or "Error" in line]
    return (errors or lines or ["no output"])[-1]


def option_differences(recorded: dict[str, Any] | None, replayed: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(name, line) for each option the replay used otherwise than the run (the replay's own aside)."""
    if recorded is None:
        return [("options not recorded", "options: not recorded by the run (recorded since requirements.lock.txt): "
                                          "not compared")]
    replayed = replayed or {}

    def differs(name: str) -> bool:
        return comparable_option(name, recorded.get(name, "absent")) != comparable_option(name, replayed.get(name,
                                                                                                         "absent"))

    return [(name, f"option {name}: {recorded.get(name, 'absent')!r} recorded, {replayed.get(name, 'absent')!r} "
                   "in the replay")
            for name in sorted(set(recorded) | set(replayed)) if name not in REPLAY_OPTIONS and differs(name)]


def _logged_losses(history: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(entry["step"], entry["loss"]) for entry in history if "loss" in entry and "step" in entry]


@dataclass
class LossComparison:
    equal: bool
    summary: str


def compare_losses(recorded: dict[int, float], replayed: dict[int, float], tolerance: float = 0.0) -> LossComparison:
    """The run's logged losses against the replay's at the same steps: equal to the last digit (or within a
    relative `tolerance`), and the largest difference where not."""
    steps = sorted(recorded)
    missing = [step for step in steps if step not in replayed]
    if missing:
        return LossComparison(False, f"the replay logged no loss at step(s) {', '.join(map(str, missing))}")
    gaps = {step: abs(recorded[step] - replayed[step]) for step in steps}
    worst = max(steps, key=lambda step: gaps[step])
    relative = gaps[worst] / abs(recorded[worst]) if recorded[worst] else math.inf if gaps[worst] else 0.0
    span = f"{len(steps)} logged in steps 1-{steps[-1]} (at {', '.join(map(str, steps))})"
    if gaps[worst] == 0:
        return LossComparison(True, f"{span}: all identical to the last digit")
    if relative <= tolerance:
        return LossComparison(True, f"{span}: within relative {tolerance:g} (largest difference {gaps[worst]:.3g} at "
                                    f"step {worst}, relative {relative:.3g})")
    return LossComparison(False, f"the loss at step {worst} differs by {gaps[worst]:.3g} (relative {relative:.3g}; "
                                 f"{recorded[worst]!r} recorded, {replayed[worst]!r} replayed), the largest of the "
                                 f"{len(steps)} logged in steps 1-{steps[-1]}")
