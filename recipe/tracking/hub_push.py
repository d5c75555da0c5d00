"""Hugging Face Hub pushes: a finished run's files, and the watch over the Trainer's checkpoint pushes.

A Hub that cannot be reached, or that refuses the token, is reported within seconds with the
command that retries (`python scripts/push.py RUN_DIR`); every local file stays intact.
"""

from __future__ import annotations

import functools
import logging
import os
import shlex
from pathlib import Path

from transformers import TrainerCallback

from ..common.hub import hub_endpoint, hub_offline_mode, hub_reachable
from ..common.run_dir import (
    CHECKPOINT_PREFIX,
    GGUF_DIR,
    GGUF_SUFFIX,
    INCOMPLETE_PREFIX,
    MERGED_DIR,
    MODEL_CARD,
    MODELFILE_SUFFIX,
    RunDir,
    modelfile_of,
)
from .model_card import CARD_TAG, write_model_card

logger = logging.getLogger(__name__)

# Never pushed from a run directory: checkpoints go to their own folders (or not at all), merged/ to its own
# repo, GGUF exports (hundreds of MB each) only when asked for, and temporary or hidden files nowhere.
PUSH_IGNORE_PATTERNS = [f"{CHECKPOINT_PREFIX}*", f"{INCOMPLETE_PREFIX}{CHECKPOINT_PREFIX}*", f"{MERGED_DIR}/*",
                        "wandb/*", "runs/*", "_*", ".*", "*.tmp", f"{GGUF_DIR}/*", f"*{GGUF_SUFFIX}",
                        f"*{MODELFILE_SUFFIX}"]

class HubPushError(OSError):
    """A push that cannot happen; the message says why and how to retry."""


def retry_command(run_dir: str | os.PathLike, repo_id: str | None, merged_repo_id: str | None = None,
                  gguf: list[Path] | None = None) -> str:
    command = ["python", "scripts/push.py", str(run_dir)]
    if repo_id:
        command += ["--hub_model_id", repo_id]
    if merged_repo_id:
        command += ["--hub_merged_model_id", merged_repo_id]
    if gguf:
        command += ["--gguf", *map(str, gguf)]
    return shlex.join(command)


def gguf_to_push(run: RunDir, asked: list[str] | None) -> list[Path]:
    """The GGUF exports to push: none when not asked (None); every one in RUN/gguf/ for an empty list;
    else the files named, each checked to be a .gguf that exists."""
    if asked is None:
        return []
    if not asked:
        found = run.gguf_files()
        if not found:
            raise HubPushError(f"--gguf: {run.gguf_dir} holds no {GGUF_SUFFIX} file; export one first: "
                               f"python scripts/export_gguf.py --model_path {run.path}")
        return found
    files = [Path(name) for name in asked]
    for path in files:
        if path.suffix != GGUF_SUFFIX or not path.is_file():
            raise HubPushError(f"--gguf {path}: no such {GGUF_SUFFIX} file; export one with python "
                               f"scripts/export_gguf.py --model_path {run.path}")
    return files


def hub_unreachable_reason() -> str | None:
    """Why the Hub cannot be used from here, or None when it can (checked in seconds, not after retries)."""
    if hub_offline_mode():
        return "HF_HUB_OFFLINE is set"
    if not hub_reachable():
        return f"{hub_endpoint()} is not reachable"
    return None


def hub_api():
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub_endpoint())  # HF_ENDPOINT as it is now, not as it was at import


def prepare_hub_repo(repo: str, private: bool | None, token: str | None,
                     create: bool = True) -> tuple[str | None, str | None]:
    """(repo id, None) once the repo exists (created when missing), or (None, why pushes cannot work):
    the Hub is unreachable, or it refused to create the repo (a wrong token, no write access)."""
    reason = hub_unreachable_reason()
    if reason or not create:
        return None, reason
    try:
        url = hub_api().create_repo(repo, private=private, token=token, exist_ok=True)
    except Exception as error:  # noqa: BLE001 - a wrong token, no write access, a Hub error
        return None, f"creating the repo {repo} failed ({short_error(error)}; check HF_TOKEN or `hf auth login`)"
    return url.repo_id, None


class HubPushMonitor(TrainerCallback):
    """Surfaces failures of the Trainer's checkpoint pushes, which run in background threads and would
    otherwise fail silently, and leaves the final push to `RunTracker.finish`."""

    def __init__(self, trainer, retry: str):
        self.trainer = trainer
        self.retry = retry
        self.failures: list[str] = []
        self._watched: set[int] = set()

    def on_save(self, args, state, control, **kwargs):
        push = getattr(self.trainer, "push_in_progress", None)
        for job in getattr(push, "jobs", None) or []:
            if id(job) not in self._watched:
                self._watched.add(id(job))
                job.add_done_callback(functools.partial(self._check, f"{CHECKPOINT_PREFIX}{state.global_step}"))

    def _check(self, checkpoint: str, job) -> None:
        error = None if job.cancelled() else job.exception()
        if error is not None and checkpoint not in self.failures:  # one warning per checkpoint, not per upload
            self.failures.append(checkpoint)
            logger.warning("pushing %s to the Hub failed (%s); the local checkpoint is intact; the final push "
                           "retries; or later: %s", checkpoint, short_error(error), self.retry)

    def on_train_end(self, args, state, control, **kwargs):
        # Trainer.save_model would otherwise push at once (and write the Trainer's own model card over ours);
        # RunTracker.finish pushes instead, after every local file and our model card are written.
        args.push_to_hub = False


def short_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def push_run_to_hub(
    run: RunDir,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    merged_repo_id: str | None = None,
    include_checkpoints: bool = False,
    gguf: list[Path] | None = None,
) -> list[str]:
    """Push a finished run: model or adapter, tokenizer, model card, results and records; optionally its
    checkpoint-N/ folders, its merged/ model (to `merged_repo_id`) and GGUF exports (`gguf`, each with the Modelfile
    beside it, to gguf/ in the run's repo, whose card lists them). Returns the repo URLs.

    Raises HubPushError, within seconds, when the Hub cannot be reached or the run is not finished.
    """
    run_dir = run.path
    if not run.is_finished():
        raise HubPushError(
            f"{run_dir} has no {run.train_results.name}: it is not a finished training run; finish it first "
            f"(python scripts/train.py --config {run.run_config} resumes it)"
        )
    merged_dir = run.merged
    if merged_repo_id and not merged_dir.is_dir():
        raise HubPushError(f"{merged_dir} does not exist: train with --merge_lora true to push a merged model")
    reason = hub_unreachable_reason()
    if reason:
        raise HubPushError(f"cannot push {run_dir} to the Hub: {reason}. Every local file is intact; retry when "
                           f"the Hub is reachable: {retry_command(run_dir, repo_id, merged_repo_id, gguf)}")
    api = hub_api()
    urls = []
    for folder, repo, merged in ((run_dir, repo_id, False), (merged_dir, merged_repo_id, True)):
        if not repo:
            continue
        if _card_is_ours_or_missing(folder / MODEL_CARD):
            write_model_card(run, hub_model_id=repo, merged=merged, gguf_files=list(gguf or []))
        try:
            url = api.create_repo(repo, private=private, token=token, exist_ok=True)
            api.upload_folder(
                repo_id=url.repo_id, folder_path=folder, ignore_patterns=PUSH_IGNORE_PATTERNS, token=token,
                revision=revision, commit_message="Upload " + ("merged model" if merged else "fine-tuned model"),
            )
            if include_checkpoints and not merged:
                for checkpoint in run.complete_checkpoints():
                    api.upload_folder(repo_id=url.repo_id, folder_path=checkpoint, path_in_repo=checkpoint.name,
                                      token=token, revision=revision, commit_message=f"Upload {checkpoint.name}")
            for export in ([] if merged else gguf or []):  # the file and its Modelfile, in the repo's gguf/
                api.upload_folder(repo_id=url.repo_id, folder_path=export.parent, path_in_repo=GGUF_DIR, token=token,
                                  revision=revision, allow_patterns=[export.name, modelfile_of(export).name],
                                  commit_message=f"Upload {export.name}")
        except OSError as error:  # HfHubHTTPError (401, 403, 5xx...) and connection errors are OSErrors
            raise HubPushError(
                f"pushing {folder} to {repo} failed: {short_error(error)}. Check the token (HF_TOKEN or "
                f"`hf auth login`, with write access to {repo}); every local file is intact; retry with: "
                f"{retry_command(run_dir, repo_id, merged_repo_id, gguf)}"
            ) from error
        urls.append(str(url))
        logger.info("pushed %s to %s", folder, url)
    return urls


def push_run_dir(run_dir: str | os.PathLike, repo_id: str | None = None, *, private: bool | None = None,
                 merged_repo_id: str | None = None, revision: str | None = None,
                 include_checkpoints: bool = False, gguf: list[str] | None = None) -> list[str]:
    """`push_run_to_hub` with what is not given taken from the run's own run_config.yaml (scripts/push.py);
    `gguf`: see `gguf_to_push`."""
    run = RunDir(run_dir)
    config = run.read_config()
    repo_id = repo_id or config.get("hub_model_id")
    if not repo_id:
        raise HubPushError(f"no repo to push {run_dir} to: pass --hub_model_id you/name "
                           f"({run.run_config} sets no hub_model_id)")
    return push_run_to_hub(
        run, repo_id,
        private=private if private is not None else config.get("hub_private_repo"),
        revision=revision or config.get("hub_revision"),
        merged_repo_id=merged_repo_id or config.get("hub_merged_model_id"),
        include_checkpoints=include_checkpoints, gguf=gguf_to_push(run, gguf),
    )


def _card_is_ours_or_missing(path: Path) -> bool:
    if not path.is_file():
        return True
    from huggingface_hub import ModelCard

    try:
        return CARD_TAG in (ModelCard.load(path).data.tags or [])
    except Exception:  # noqa: BLE001 - an unreadable card (e.g. PEFT's draft) is not a hand-written one
        return False


