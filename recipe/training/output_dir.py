"""How a run may use its output directory: one run at a time, decided once, writable, with room.

- **One run at a time**: the main process holds an exclusive OS lock (through `filelock`: `flock` on
  Linux and macOS, `msvcrt.locking` on Windows) on `OUTPUT_DIR/.run.lock` for the whole run; a second
  run on the same directory stops with a message naming the first. The OS drops the lock when its
  process dies, however it dies, so a killed run leaves none behind.
- **Decided once**: only the main process inspects the directory (fresh start, resume, refuse,
  or delete with `overwrite_output_dir`); the other processes take its decision. Were each process
  to look for itself, one could see the directory half-deleted by another and refuse, leaving the
  rest waiting at the next barrier.
- **Writable, with room**: the lock file is the write probe; free space is compared with the
  estimated need (checkpoints kept x their size + the final model) before the first step.
- **Nothing half-made left behind**: a run refused with a user error before its first step (a bad data file, a
  label audit, no disk space) removes what it made, when it made the directory or found it empty
  (`removed_on_user_error`); never anything an earlier run wrote.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable

from ..common.cli import USER_ERRORS
from ..common.errors import UserError
from ..common.run_dir import INCOMPLETE_PREFIX, RUN_HOLDER, RUN_LOCK, RunDir, checkpoint_is_complete
from ..config import ConfigError
from ..models.loading import count_parameters
from ..models.quantization import is_quantized

logger = logging.getLogger(__name__)

CHECKPOINT_OVERHEAD = 16 * 2**20  # tokenizer files, scheduler, RNG and trainer state: a few MB per checkpoint


class OutputDirError(ConfigError):
    """output_dir cannot be used as asked (in use, not ours, finished, unwritable, full); says what to do."""


# ----------------------------------------------------------------------------------------------
# One decision for every process


def decided_by_main(decide: Callable[[], Any], state) -> Any:
    """Run `decide` on the main process only and return its result on every process. A user error or an
    OSError raised there is raised on every process (as OutputDirError), so none is left waiting."""
    outcome: list[Any] = [None, None]  # [result, error message]
    if state.is_main_process:
        try:
            outcome[0] = decide()
        except UserError as error:  # OutputDirError, or a corrupt record of the previous run (RunDirError)
            outcome[1] = str(error)
        except OSError as error:
            outcome[1] = f"output_dir: {error}"
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(outcome, from_process=0)
    if outcome[1] is not None:
        raise OutputDirError(outcome[1])
    return outcome[0]


def prepare_output_dir(run: RunDir, args, state) -> Path | None:
    """Lock output_dir (`run`) for this run and decide how it is used; returns the checkpoint to resume from.

    Decided by the main process (see the module docstring):
    - empty or missing: start fresh;
    - a run of this recipe with checkpoints: resume from the last complete one;
    - a finished run: refuse unless --overwrite_output_dir (then its content is deleted);
    - anything not written by this recipe: refuse, whatever the flags (nothing is written into it);
    - in use by another run, or not writable: refuse.
    """
    resume = decided_by_main(lambda: _decide(args, run), state)
    return Path(resume) if resume else None


def _decide(args, run: RunDir) -> str | None:
    if not args.resume_from_checkpoint:
        _refuse_foreign(run)  # before the lock: never leave a lock file in someone else's folder
    RunLock.acquire(run)
    if args.resume_from_checkpoint:
        checkpoint = Path(args.resume_from_checkpoint)
        if not checkpoint_is_complete(checkpoint):
            raise OutputDirError(
                f"resume_from_checkpoint {checkpoint} is not a complete checkpoint (no trainer_state.json or weights)"
            )
        return str(checkpoint)
    if not _content(run):
        return None
    _refuse_foreign(run)
    if args.overwrite_output_dir:
        logger.warning("overwrite_output_dir: deleting the previous run in %s", run)
        for entry in _content(run, hidden=True):  # the lock stays: this run holds it
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)
        return None
    if run.is_finished():
        raise OutputDirError(
            f"output_dir {run} holds a finished run ({run.train_results.name}); pass --overwrite_output_dir true "
            "to replace it, or choose another --output_dir"
        )
    for path in run.set_aside_incomplete_checkpoints():
        logger.warning("%s was half-written (the run was interrupted while saving): set aside as %s",
                       path.name.removeprefix(INCOMPLETE_PREFIX), path)
    checkpoint = run.last_complete_checkpoint()
    return str(checkpoint) if checkpoint else None


def _content(run: RunDir, hidden: bool = False) -> list[Path]:
    """What output_dir holds, the lock and its holder aside; hidden files (atomic writes' temporaries) only when
    asked."""
    if not run.path.is_dir():
        return []
    return [p for p in run.path.iterdir()
            if p.name not in (RUN_LOCK, RUN_HOLDER) and (hidden or not p.name.startswith("."))]


def _refuse_foreign(run: RunDir) -> None:
    if _content(run) and not run.is_recipe_run():
        raise OutputDirError(
            f"output_dir {run} is not empty and was not written by this recipe (no {run.run_config.name}); "
            "choose another --output_dir"
        )


# ----------------------------------------------------------------------------------------------
# A launch that fails before its first step


@contextlib.contextmanager
def removed_on_user_error(run: RunDir, state):
    """Around a run's set-up: when it fails with a user error (or Ctrl-C) and this launch made output_dir, or found
    it holding nothing of an earlier run, the main process removes what the launch wrote there (run_config.yaml,
    environment.json, the lock), and the folders it made above it while they are empty. A half-made run directory
    blocks nothing, but it reads as a run that was started.

    Never removed: a directory that held anything (a run to resume, a finished run, another program's files); one
    whose lock this launch did not get (another run holds it); any folder above it that is not empty.
    """
    made = _made_by_this_launch(run.path) if state.is_main_process else None
    try:
        yield
    except (*USER_ERRORS, KeyboardInterrupt):
        if made is not None and RunLock.holds(run):
            RunLock.release(run)
            _remove(run.path, *made)
        raise


def _made_by_this_launch(path: Path) -> tuple[bool, Path | None] | None:
    """None when `path` holds something of an earlier run (it is never removed); else (whether it exists now,
    holding nothing but a killed run's lock; the topmost of its folders that does not exist yet, made here)."""
    if path.is_dir():
        leftover = [p for p in path.iterdir() if p.name not in (RUN_LOCK, RUN_HOLDER)]
        return None if leftover else (True, None)
    if path.exists():
        return None
    top = path.absolute()
    while not top.parent.exists():
        top = top.parent
    return False, top


def _remove(path: Path, existed: bool, top: Path | None) -> None:
    """What this launch wrote in `path`; and when it made `path`, the folder and those it made above it, from the
    run directory up to `top`, each only while it is empty (another run may have started beside it since)."""
    if path.is_dir():
        for entry in path.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    if existed or top is None:
        return
    folder = path.absolute()
    while folder != top.parent:
        try:
            folder.rmdir()
        except OSError:  # not empty, or gone
            return
        folder = folder.parent


# ----------------------------------------------------------------------------------------------
# The lock


class RunLock:
    """An exclusive lock on OUTPUT_DIR/.run.lock, held by the main process until the run ends or the process
    dies; taking it is also the check that output_dir can be written.

    `filelock` takes an OS lock (`flock` on Linux and macOS, `msvcrt.locking` on Windows), which the OS drops
    when its process dies, however it dies: a killed run leaves no stuck lock. A filesystem without such locks
    is refused rather than given a lock file that a killed run would leave behind. Who holds the lock is
    written beside it (.run.holder), since a locked file cannot be read on Windows.
    """

    _held: dict[Path, Any] = {}  # per process: a second run_training in one process (tests, notebooks) reuses it

    @classmethod
    def acquire(cls, run: RunDir) -> None:
        from filelock import Timeout

        path = run.lock.resolve()
        if path in cls._held:
            return
        try:
            run.path.mkdir(parents=True, exist_ok=True)
            lock = _os_lock(path)
            lock.acquire()
        except Timeout:
            raise OutputDirError(
                f"output_dir {run} is in use by another training run ({_holder(run)}); wait for it to finish, "
                "or choose another --output_dir"
            ) from None
        except (NotImplementedError, OSError) as error:
            raise _lock_error(run, error) from None
        try:
            run.lock_holder.write_text(
                f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n",
                encoding="utf-8",
            )
        except OSError as error:
            lock.release()
            raise OutputDirError(f"output_dir {run} cannot be written ({error.strerror}); free space or fix "
                                 "its permissions, or choose another --output_dir") from None
        cls._held[path] = lock

    @classmethod
    def holds(cls, run: RunDir) -> bool:
        """This process holds the lock of `run` (it acquired it and has not released it)."""
        return run.lock.resolve() in cls._held

    @classmethod
    def release(cls, run: RunDir) -> None:
        lock = cls._held.pop(run.lock.resolve(), None)
        if lock is not None:
            lock.release()


def _os_lock(path: Path):
    """A non-blocking filelock that is an OS lock, never filelock's soft fallback (a plain file a killed run
    would leave behind, blocking every later run)."""
    from filelock import FileLock, SoftFileLock

    if issubclass(FileLock, SoftFileLock):  # a platform with neither fcntl nor msvcrt
        raise NotImplementedError("this platform has no OS file locks")
    try:
        return FileLock(path, timeout=0, thread_local=False, fallback_to_soft=False)
    except TypeError:  # filelock 3.x has no soft fallback: without OS locks it raises NotImplementedError
        return FileLock(path, timeout=0, thread_local=False)


def _holder(run: RunDir) -> str:
    try:
        return run.lock_holder.read_text(encoding="utf-8").strip() or "another process"
    except OSError:
        return "another process"


def _lock_error(run: RunDir, error: Exception) -> OutputDirError:
    if isinstance(error, NotImplementedError) or getattr(error, "errno", None) == errno.ENOSYS:
        return OutputDirError(
            f"output_dir {run}: its filesystem does not support file locks ({error}), so a second run could write "
            "into it at the same time; choose an --output_dir on a local disk"
        )
    return OutputDirError(
        f"output_dir {run} cannot be written ({error.strerror}: {error.filename}); fix its permissions, "
        "free space, or choose another --output_dir"
    )


# ----------------------------------------------------------------------------------------------
# Disk space


def estimated_bytes(run: RunDir, model, args, lora_args, total_steps: int, resume: Path | None) -> dict[str, int]:
    """What the run will write: one checkpoint (weights or adapter, AdamW's two moments per trainable
    weight, a few MB of the rest), how many exist at once, and the final model (with merged/)."""
    def stored(p) -> int:  # a ZeRO-3 partitioned parameter is an empty tensor; ds_numel is its size
        return (getattr(p, "ds_numel", None) or p.numel()) * p.element_size()

    weights = sum(stored(p) for p in model.parameters())
    trainable = sum(stored(p) for p in model.parameters() if p.requires_grad)
    saved_weights = trainable if lora_args.use_lora else weights
    checkpoint = saved_weights + 2 * trainable + CHECKPOINT_OVERHEAD
    final = saved_weights + CHECKPOINT_OVERHEAD
    if lora_args.use_lora and lora_args.merge_lora:  # a k-bit base is merged at full precision (float32)
        final += count_parameters(model)[1] * 4 if is_quantized(model) else weights
    kept = checkpoints_on_disk(args, total_steps)
    if resume is not None and kept:  # those already written will be rotated away, not added to
        kept = max(1, kept - len(run.complete_checkpoints()))
    return {"checkpoint": checkpoint, "checkpoints": kept, "final": final, "total": kept * checkpoint + final}


def checkpoints_on_disk(args, total_steps: int) -> int:
    """The most checkpoints on disk at once: save_total_limit, plus the one written before the oldest is
    deleted (and the best, kept beside a limit of 1); without a limit, every save."""
    if args.save_strategy == "no":
        return 0
    if args.save_strategy == "epoch":
        saves = math.ceil(args.num_train_epochs) if args.max_steps <= 0 else total_steps
    else:
        every = args.save_steps if args.save_steps >= 1 else math.ceil(args.save_steps * total_steps)
        saves = math.ceil(total_steps / max(1, every))
    if args.save_total_limit:
        limit = args.save_total_limit + 1 + (1 if args.save_total_limit == 1 and args.load_best_model_at_end else 0)
        return min(saves, limit)
    return saves


def check_disk_space(run: RunDir, model, args, lora_args, total_steps: int, resume: Path | None, state) -> None:
    """Refuse to start, on every process, when output_dir's disk has less free space than the run needs."""
    need = estimated_bytes(run, model, args, lora_args, total_steps, resume)

    def check() -> None:
        free = shutil.disk_usage(run.path).free
        if free < need["total"]:
            raise OutputDirError(
                f"not enough disk space for output_dir {run}: {_size(free)} free, the run needs about "
                f"{_size(need['total'])} ({need['checkpoints']} checkpoints of {_size(need['checkpoint'])} at once "
                f"with save_total_limit {args.save_total_limit}, and a final model of {_size(need['final'])}); "
                "free space, lower --save_total_limit, or choose another --output_dir"
            )

    decided_by_main(check, state)


def _size(count: float) -> str:
    for unit in ("bytes", "KB", "MB"):
        if count < 1024:
            return f"{count:,.0f} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1024
    return f"{count:,.1f} GB"
