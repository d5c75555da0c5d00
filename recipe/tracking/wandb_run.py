"""Weights & Biases: online when possible, offline otherwise, never fatal.

W&B without an API key or network logs offline (`wandb sync` uploads it later); a W&B failure
becomes one warning and never stops training or an evaluation.
"""

from __future__ import annotations

import functools
import logging
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..common.hub import url_reachable
from ..common.run_dir import RunDir, RunDirError, read_json_file

logger = logging.getLogger(__name__)

DEFAULT_WANDB_PROJECT = "dialogue-finetune"
# scripts/evaluate.py logs under its own names: eval/ holds the Trainer's figures (over the trained speakers'
# tokens, under the run's precision); a post-hoc evaluation may measure another quantity on other data.
POSTHOC_EVAL_PREFIX = "posthoc_eval"
DEFAULT_WANDB_URL = "https://api.wandb.ai"


def run_mode(use_lora: bool) -> str:
    """The name both W&B (group, tag) and the reports use for a run's mode."""
    return "lora" if use_lora else "full"


def comparison_fields(config: dict[str, Any], environment: dict[str, Any],
                      parameters: tuple[int, int] | None) -> dict[str, Any]:
    """What a user filters and groups runs on in W&B, at the top level of the run's config (W&B's run table
    and filters read nested values poorly). lora_rank is None for full fine-tuning, whatever lora_r says."""
    lora = bool(config.get("use_lora"))
    trainable, total = parameters or (None, None)
    return {
        "mode": run_mode(lora),
        "lora_rank": config.get("lora_r") if lora else None,
        "learning_rate": config.get("learning_rate"),
        "base_model": config.get("model_name_or_path"),
        "data_sha256": (environment.get("data") or {}).get("data_sha256"),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_share": trainable / total if trainable and total else None,
    }


def log_data_sources(run, report: dict[str, Any]) -> None:
    """Each --data_path source's dialogues, tokens and share of the loss tokens (data_report.json's "sources"), in
    the run's config and summary, so runs on different mixtures compare in W&B's table. Never fatal."""
    try:
        run.config.update({"data_sources": report["sources"]}, allow_val_change=True)
        for source in report["sources"]:
            for split in ("train", "validation"):
                for key, value in (source.get(split) or {}).items():
                    run.summary[f"data/{source['path']}/{split}_{key}"] = value
    except Exception as error:  # noqa: BLE001 - W&B never stops training
        logger.warning("W&B: could not log the data sources (%s)", error)


def _wandb_base_url() -> str:
    return os.environ.get("WANDB_BASE_URL", DEFAULT_WANDB_URL).rstrip("/")


def _wandb_credentials_present(base_url: str) -> bool:
    """An API key in the environment or in ~/.netrc (where `wandb login` stores it) for the W&B host."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(base_url).hostname
    candidates = [os.environ["NETRC"]] if os.environ.get("NETRC") else ["~/.netrc", "~/_netrc"]
    for candidate in candidates:
        path = Path(candidate).expanduser()
        if path.is_file():
            try:
                return netrc.netrc(str(path)).authenticators(host) is not None
            except (netrc.NetrcParseError, OSError):
                return False
    return False


def choose_wandb_mode(preferred: str | None = None) -> tuple[str, str | None]:
    """(mode, why offline) for a W&B run: WANDB_MODE wins; otherwise online only when a key and the server
    are there. `preferred` "offline" keeps a resumed offline run offline (its records are synced together)."""
    env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if env_mode in {"offline", "dryrun"}:
        return "offline", "WANDB_MODE=offline"
    if env_mode == "disabled":
        return "disabled", "WANDB_MODE=disabled"
    if preferred == "offline" and env_mode != "online":
        return "offline", "the training run logged offline"
    base_url = _wandb_base_url()
    if not _wandb_credentials_present(base_url):
        return "offline", "no W&B API key (set WANDB_API_KEY or run `wandb login`)"
    if not url_reachable(base_url):
        return "offline", f"{base_url} is not reachable"
    return "online", None


def init_wandb_run(init_kwargs: dict[str, Any], preferred_mode: str | None = None):
    """Start a W&B run, online if possible, else offline (saying so in one log line); None if W&B cannot run."""
    try:
        import wandb
    except ImportError:
        logger.warning("W&B is not installed (pip install wandb); going on without it")
        return None
    mode, reason = choose_wandb_mode(preferred_mode)
    if mode == "disabled":
        logger.warning("W&B is disabled (WANDB_MODE=disabled); going on without it")
        return None
    kwargs = {"reinit": "finish_previous", **init_kwargs}  # never log into a run left open by an earlier one
    for attempt in ("online", "offline") if mode == "online" else ("offline",):
        try:
            # Offline, wandb's own banner would repeat what our one line says.
            settings = wandb.Settings(silent=attempt == "offline", init_timeout=60)
            run = wandb.init(mode=attempt, settings=settings, **kwargs)
        except Exception as error:  # noqa: BLE001 - whatever W&B raises, training goes on
            if attempt == "online":
                reason = f"wandb.init online failed: {error}"
                continue
            logger.warning("W&B could not start (%s); going on without it; local outputs are unaffected", error)
            return None
        if attempt == "offline":
            run_dir = Path(run.dir).parent
            logger.warning("W&B is offline (%s): run %s is saved in %s; upload it later with: wandb sync %s",
                           reason, run.id, run_dir, run_dir)
        return run
    return None


def wandb_run_record(run, mode: str, group: str | None = None) -> dict[str, Any]:
    return {
        "id": run.id,
        "project": run.project,
        "entity": run.entity or None,
        "mode": mode,
        "name": run.name,
        "group": group,
        "run_dir": str(Path(run.dir).parent.resolve()),
        "url": None if mode == "offline" else run.url,
    }


def read_wandb_record(model_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The W&B record of a training run directory (or of the run above one of its checkpoint-N dirs)."""
    run = RunDir.containing(model_dir) or RunDir(model_dir)
    try:
        return read_json_file(run.wandb_record)
    except RunDirError as error:
        logger.warning("%s; ignoring it", error)
        return None


def wandb_dir_for(record: dict[str, Any] | None) -> str | None:
    """Where a resumed run's files go: next to the training run's (…/wandb/offline-run-X → …)."""
    if os.environ.get("WANDB_DIR") or not record or not record.get("run_dir"):
        return None
    root = Path(record["run_dir"]).parent.parent
    return str(root) if root.is_dir() else None


def log_evaluation_to_wandb(
    model_dir: str | Path,
    metrics: dict[str, float],
    samples: list[dict],
    new_run: bool = False,
    project: str | None = None,
    source: dict[str, Any] | None = None,
) -> str | None:
    """Log evaluation metrics, a table of samples (prompt, reply, reference) under posthoc_eval/samples, and
    what was measured (`source`: model, data, how it differs from the training eval) as the run's
    config["posthoc_eval"] and summary["posthoc_eval/source"].

    They go to the training run of `model_dir` (resumed by the id in its wandb_run.json, in the same
    online/offline mode), or to a new run when `new_run` is true or no id is stored. Returns the local
    W&B run directory, or None when W&B is unavailable: a W&B failure is a warning, never an exception.
    """
    record = None if new_run else read_wandb_record(model_dir)
    try:
        import wandb

        kwargs: dict[str, Any] = {"dir": wandb_dir_for(record)}
        if record and record.get("id"):
            kwargs.update(id=record["id"], resume="allow", project=project or record.get("project"),
                          entity=record.get("entity"))
            preferred = record.get("mode")
        else:
            mode_group = _mode_of_run_dir(model_dir)
            kwargs.update(
                project=project or os.environ.get("WANDB_PROJECT") or DEFAULT_WANDB_PROJECT,
                job_type="evaluation",
                name=f"eval-{Path(model_dir).name}",
                group=mode_group,
                tags=["evaluation", *([mode_group] if mode_group else [])],
                config={"model_dir": str(model_dir)},
            )
            preferred = None
        run = init_wandb_run({k: v for k, v in kwargs.items() if v is not None}, preferred)
        if run is None:
            return None
        table = wandb.Table(columns=["prompt", "reply", "reference"])
        for sample in samples:
            table.add_data(sample.get("prompt"), sample.get("reply"), sample.get("reference"))
        run.log({**metrics, f"{POSTHOC_EVAL_PREFIX}/samples": table})
        run.summary.update(metrics)
        if source is not None:
            run.config.update({POSTHOC_EVAL_PREFIX: source}, allow_val_change=True)
            run.summary.update({f"{POSTHOC_EVAL_PREFIX}/source": source})
        run_dir = str(Path(run.dir).parent)
        run.finish()
        return run_dir
    except Exception as error:  # noqa: BLE001 - W&B failures never stop an evaluation
        logger.warning("logging the evaluation to W&B failed (%s); the results file is unaffected", error)
        return None


def _mode_of_run_dir(model_dir: str | Path) -> str | None:
    run = RunDir(model_dir)
    if not run.is_recipe_run():
        return None
    try:
        return run_mode(bool(run.read_config().get("use_lora")))
    except RunDirError:
        return None


def guarded_wandb_callback_class():
    from transformers.integrations import WandbCallback

    class SafeWandbCallback(WandbCallback):
        """transformers' WandbCallback (same run, metric names and env vars), except that a W&B failure
        becomes one warning and turns W&B off for the rest of the run instead of stopping training."""

    def guard(name):
        method = getattr(WandbCallback, name)

        @functools.wraps(method)
        def guarded(self, *args, **kwargs):
            if self._wandb is None:
                return None
            try:
                return method(self, *args, **kwargs)
            except Exception as error:  # noqa: BLE001
                self._wandb = None  # every hook returns at once from now on: this warning is the only one
                logger.warning("W&B logging failed (%s) and is off for the rest of this run; training goes on "
                               "and local outputs are unaffected", error)
                return None

        return guarded

    for name in ("setup", "on_train_begin", "on_train_end", "on_log", "on_save", "on_predict"):
        setattr(SafeWandbCallback, name, guard(name))
    return SafeWandbCallback


