"""Experiment tracking and publishing: Weights & Biases runs, the model card, Hugging Face Hub pushes.

`run_training` calls a `RunTracker` at three points: `configure` (before the Trainer is built: start
the W&B run, check the Hub), `attach` (after: guard the W&B callback, watch checkpoint pushes) and
`finish` (once every local file is written: model card, W&B summary, final push).

Nothing here may stop training or lose a local file. W&B without an API key or network logs offline
(`wandb sync` uploads it later); a Hub that cannot be reached, or that refuses the token, turns pushes
off with one warning that says how to retry (`python scripts/push.py RUN_DIR`). Only the main process
starts W&B runs, writes the model card and pushes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import netrc
import os
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml
from transformers import TrainerCallback

from .config import ConfigError, LoraArguments, TrackingArguments
from .files import atomic_write_json, atomic_write_text
from .hub import hub_endpoint, hub_offline_mode, hub_reachable, is_hub_id, url_reachable

logger = logging.getLogger(__name__)

WANDB_RECORD = "wandb_run.json"  # id, project, entity, mode and local directory of the run's W&B run
MODEL_CARD = "README.md"
CARD_TAG = "dialogue-finetune"  # marks a model card as ours (push.py regenerates ours, never a hand-written one)
DEFAULT_WANDB_PROJECT = "dialogue-finetune"
DEFAULT_WANDB_URL = "https://api.wandb.ai"
# Never pushed from a run directory: checkpoints go to their own folders (or not at all), merged/ to its own
# repo, and temporary or hidden files nowhere.
PUSH_IGNORE_PATTERNS = ["checkpoint-*", "incomplete-checkpoint-*", "merged/*", "wandb/*", "runs/*", "_*", ".*", "*.tmp"]


def run_mode(use_lora: bool) -> str:
    """The name both W&B (group, tag) and the reports use for a run's mode."""
    return "lora" if use_lora else "full"


def redact_command(argv: list[str]) -> list[str]:
    """The command line with secrets (--hub_token VALUE) masked: environment.json is pushed with the model."""
    redacted, hide_next = [], False
    for arg in argv:
        if hide_next:
            redacted.append("***")
            hide_next = False
        elif arg == "--hub_token":
            redacted.append(arg)
            hide_next = True
        elif arg.startswith("--hub_token="):
            redacted.append("--hub_token=***")
        else:
            redacted.append(arg)
    return redacted


# ----------------------------------------------------------------------------------------------
# Weights & Biases: online when possible, offline otherwise, never fatal


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
    path = Path(model_dir)
    for directory in (path, path.parent) if path.name.startswith("checkpoint-") else (path,):
        record = directory / WANDB_RECORD
        if record.is_file():
            try:
                return json.loads(record.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                logger.warning("%s is not valid JSON; ignoring it", record)
                return None
    return None


def _wandb_dir_for(record: dict[str, Any] | None) -> str | None:
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
) -> str | None:
    """Log evaluation metrics and a table of samples (prompt, reply, reference) to W&B.

    They go to the training run of `model_dir` (resumed by the id in its wandb_run.json, in the same
    online/offline mode), or to a new run when `new_run` is true or no id is stored. Returns the local
    W&B run directory, or None when W&B is unavailable: a W&B failure is a warning, never an exception.
    """
    record = None if new_run else read_wandb_record(model_dir)
    try:
        import wandb

        kwargs: dict[str, Any] = {"dir": _wandb_dir_for(record)}
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
        run.log({**metrics, "eval/samples": table})
        run.summary.update(metrics)
        run_dir = str(Path(run.dir).parent)
        run.finish()
        return run_dir
    except Exception as error:  # noqa: BLE001 - W&B failures never stop an evaluation
        logger.warning("logging the evaluation to W&B failed (%s); the results file is unaffected", error)
        return None


def _mode_of_run_dir(model_dir: str | Path) -> str | None:
    run_config = Path(model_dir) / "run_config.yaml"
    if not run_config.is_file():
        return None
    try:
        return run_mode(bool((yaml.safe_load(run_config.read_text(encoding="utf-8")) or {}).get("use_lora")))
    except yaml.YAMLError:
        return None


def _guarded_wandb_callback_class():
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


# ----------------------------------------------------------------------------------------------
# Hugging Face Hub


class HubPushError(OSError):
    """A push that cannot happen; the message says why and how to retry."""


def retry_command(run_dir: str | os.PathLike, repo_id: str | None, merged_repo_id: str | None = None) -> str:
    command = ["python", "scripts/push.py", str(run_dir)]
    if repo_id:
        command += ["--hub_model_id", repo_id]
    if merged_repo_id:
        command += ["--hub_merged_model_id", merged_repo_id]
    return shlex.join(command)


def hub_unreachable_reason() -> str | None:
    """Why the Hub cannot be used from here, or None when it can (checked in seconds, not after retries)."""
    if hub_offline_mode():
        return "HF_HUB_OFFLINE is set"
    if not hub_reachable():
        return f"{hub_endpoint()} is not reachable"
    return None


def _hub_api():
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub_endpoint())  # HF_ENDPOINT as it is now, not as it was at import


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
                job.add_done_callback(functools.partial(self._check, f"checkpoint-{state.global_step}"))

    def _check(self, checkpoint: str, job) -> None:
        error = None if job.cancelled() else job.exception()
        if error is not None and checkpoint not in self.failures:  # one warning per checkpoint, not per upload
            self.failures.append(checkpoint)
            logger.warning("pushing %s to the Hub failed (%s); the local checkpoint is intact; the final push "
                           "retries; or later: %s", checkpoint, _short_error(error), self.retry)

    def on_train_end(self, args, state, control, **kwargs):
        # Trainer.save_model would otherwise push at once (and write the Trainer's own model card over ours);
        # RunTracker.finish pushes instead, after every local file and our model card are written.
        args.push_to_hub = False


def _short_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def push_run_to_hub(
    run_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    merged_repo_id: str | None = None,
    include_checkpoints: bool = False,
) -> list[str]:
    """Push a finished run: model or adapter, tokenizer, model card, results and records; optionally its
    checkpoint-N/ folders and its merged/ model (to `merged_repo_id`). Returns the repo URLs.

    Raises HubPushError, within seconds, when the Hub cannot be reached or the run is not finished.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "train_results.json").is_file():
        raise HubPushError(
            f"{run_dir} has no train_results.json: it is not a finished training run; finish it first "
            f"(python scripts/train.py --config {run_dir / 'run_config.yaml'} resumes it)"
        )
    merged_dir = run_dir / "merged"
    if merged_repo_id and not merged_dir.is_dir():
        raise HubPushError(f"{merged_dir} does not exist: train with --merge_lora true to push a merged model")
    reason = hub_unreachable_reason()
    if reason:
        raise HubPushError(f"cannot push {run_dir} to the Hub: {reason}. Every local file is intact; retry when "
                           f"the Hub is reachable: {retry_command(run_dir, repo_id, merged_repo_id)}")
    api = _hub_api()
    urls = []
    for folder, repo, merged in ((run_dir, repo_id, False), (merged_dir, merged_repo_id, True)):
        if not repo:
            continue
        if _card_is_ours_or_missing(folder / MODEL_CARD):
            write_model_card(run_dir, hub_model_id=repo, merged=merged)
        try:
            url = api.create_repo(repo, private=private, token=token, exist_ok=True)
            api.upload_folder(
                repo_id=url.repo_id, folder_path=folder, ignore_patterns=PUSH_IGNORE_PATTERNS, token=token,
                revision=revision, commit_message="Upload " + ("merged model" if merged else "fine-tuned model"),
            )
            if include_checkpoints and not merged:
                for checkpoint in sorted(run_dir.glob("checkpoint-*")):
                    if checkpoint.is_dir() and (checkpoint / "trainer_state.json").is_file():
                        api.upload_folder(repo_id=url.repo_id, folder_path=checkpoint, path_in_repo=checkpoint.name,
                                          token=token, revision=revision, commit_message=f"Upload {checkpoint.name}")
        except OSError as error:  # HfHubHTTPError (401, 403, 5xx...) and connection errors are OSErrors
            raise HubPushError(
                f"pushing {folder} to {repo} failed: {_short_error(error)}. Check the token (HF_TOKEN or "
                f"`hf auth login`, with write access to {repo}); every local file is intact; retry with: "
                f"{retry_command(run_dir, repo_id, merged_repo_id)}"
            ) from error
        urls.append(str(url))
        logger.info("pushed %s to %s", folder, url)
    return urls


def _card_is_ours_or_missing(path: Path) -> bool:
    if not path.is_file():
        return True
    from huggingface_hub import ModelCard

    try:
        return CARD_TAG in (ModelCard.load(path).data.tags or [])
    except Exception:  # noqa: BLE001 - an unreadable card (e.g. PEFT's draft) is not a hand-written one
        return False


# ----------------------------------------------------------------------------------------------
# Model card


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _number(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def build_model_card(run_dir: str | os.PathLike, hub_model_id: str | None = None, merged: bool = False):
    """A huggingface_hub ModelCard for a finished run, from its own files: metadata (base_model,
    library_name, tags, datasets), data summary, recipe, metrics, and how to load and evaluate it.

    `merged` describes run_dir/merged (a LoRA run's base + adapter as one full model).
    """
    from huggingface_hub import ModelCard, ModelCardData

    run_dir = Path(run_dir)
    config_path = run_dir / "run_config.yaml"
    if not config_path.is_file() or not (run_dir / "train_results.json").is_file():
        raise ConfigError(f"{run_dir} is not a finished training run (no run_config.yaml or train_results.json)")
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    train = _read_json(run_dir / "train_results.json") or {}
    evaluation = _read_json(run_dir / "eval_results.json") or {}
    report = _read_json(run_dir / "data_report.json") or {}
    quality = ((_read_json(run_dir / "evaluation.json") or {}).get("quality")) or {}
    environment = _read_json(run_dir / "environment.json") or {}
    wandb_record = read_wandb_record(run_dir) or {}

    lora = bool(config.get("use_lora")) and not merged
    base = config.get("model_name_or_path", "unknown")
    base_on_hub = is_hub_id(base) and not config.get("random_init")
    data_path = config.get("data_path", "")
    dataset_on_hub = is_hub_id(data_path)
    mode = "LoRA" if config.get("use_lora") else "full fine-tuning"
    name = (hub_model_id or run_dir.name).split("/")[-1] + ("-merged" if merged and not hub_model_id else "")
    tags = [CARD_TAG, "dialogue", "text-generation", run_mode(bool(config.get("use_lora")))]
    if lora:
        tags.append("peft")
    card_data = ModelCardData(
        base_model=base if base_on_hub else None,
        library_name="peft" if lora else "transformers",
        pipeline_tag="text-generation",
        tags=tags,
        datasets=[data_path] if dataset_on_hub else None,
        model_name=name,
    )

    if lora:
        what = (f"A LoRA adapter (r={config.get('lora_r')}, alpha={config.get('lora_alpha')}, on "
                f"{', '.join(config.get('lora_target_modules') or [])}) for `{base}`")
    elif merged:
        what = f"`{base}` with its LoRA adapter merged in (a full model)"
    else:
        what = f"`{base}`, fully fine-tuned"
    if config.get("random_init"):
        what += " (a randomly initialised model built from that config: a smoke-test model, not a useful one)"

    lines = [f"# {name}", "", f"{what}, trained on multi-speaker dialogues with the dialogue-finetune recipe "
             f"({mode}).", ""]
    lines += _data_section(report, data_path, dataset_on_hub)
    lines += _recipe_section(config, environment)
    lines += _results_section(train, evaluation, quality, run_dir)
    lines += _usage_section(run_dir, hub_model_id, base, config, report, lora, merged)
    if wandb_record.get("url"):
        lines += [f"Training curves: [Weights & Biases run]({wandb_record['url']}).", ""]
    content = f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines)
    return ModelCard(content)


def _data_section(report: dict, data_path: str, dataset_on_hub: bool) -> list[str]:
    lines = ["## Data", ""]
    if not report:
        return lines + [f"`{data_path}` (no data_report.json in the run directory).", ""]
    train, validation = report.get("train") or {}, report.get("validation") or {}
    source = f"[{data_path}](https://huggingface.co/datasets/{data_path})" if dataset_on_hub else f"`{data_path}`"
    split = report.get("split") or {}
    speakers = ", ".join(sorted(train.get("turns_per_speaker") or {})) or "n/a"
    lines += [
        f"{source}: {report.get('dialogues_used', 'n/a')} dialogues used of {report.get('dialogues_read', 'n/a')} "
        f"read ({(report.get('skipped') or {}).get('count', 0)} skipped); speakers: {speakers}.",
        "",
        "| split | dialogues | turns | tokens | tokens in the loss |",
        "|---|---|---|---|---|",
    ]
    for label, part in (("train", train), ("validation", validation)):
        if part:
            lines.append(f"| {label} | {part.get('dialogues', 'n/a')} | {part.get('turns', 'n/a')} | "
                         f"{_number(part.get('tokens'), ',')} | {_number(part.get('loss_tokens'), ',')} |")
    if report.get("validation_path"):
        lines += ["", f"Validation file: `{report['validation_path']}`."]
    elif split:
        lines += ["", f"Split by dialogue: {split.get('validation_split_ratio')} held out for validation "
                  f"(split_seed {split.get('split_seed')})."]
    return lines + [""]


def _recipe_section(config: dict, environment: dict) -> list[str]:
    world_size = ((environment.get("device") or {}).get("world_size")) or 1
    batch = (config.get("per_device_train_batch_size") or 0) * (config.get("gradient_accumulation_steps") or 1)
    precision = "bf16" if config.get("bf16") else "fp16" if config.get("fp16") else "fp32"
    rows = [
        ("mode", "LoRA" if config.get("use_lora") else "full fine-tuning"),
        ("epochs", config.get("num_train_epochs")),
        ("learning rate", f"{config.get('learning_rate')} ({config.get('lr_scheduler_type')}, warmup "
                          f"{config.get('warmup_steps')})"),
        ("batch", f"{batch * world_size} rows per step ({config.get('per_device_train_batch_size')} per device x "
                  f"{config.get('gradient_accumulation_steps')} accumulation x {world_size} processes)"),
        ("max_length / padding", f"{config.get('max_length')} tokens / {config.get('padding')}"),
        ("optimizer", f"{config.get('optim')}, weight decay {config.get('weight_decay')}"),
        ("precision", precision),
        ("turn format", f"`{config.get('turn_template')!r}`, EOS after each dialogue"),
        ("loss on", ", ".join(config.get("train_on_speakers") or []) or "every speaker"),
        ("seed", config.get("seed")),
    ]
    if config.get("use_lora"):
        rows.insert(1, ("LoRA", f"r {config.get('lora_r')}, alpha {config.get('lora_alpha')}, dropout "
                                f"{config.get('lora_dropout')}, modules {config.get('lora_target_modules')}"))
    packages = environment.get("packages") or {}
    device = environment.get("device") or {}
    lines = ["## Training recipe", "", "| option | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    lines += [
        "",
        f"Trained with transformers {packages.get('transformers', '?')}, torch {packages.get('torch', '?')}"
        + (f", peft {packages.get('peft')}" if config.get("use_lora") and packages.get("peft") else "")
        + f" on {device.get('type', '?')} ({device.get('name', '?')})."
        + " Every option is in `run_config.yaml`: `python scripts/train.py --config run_config.yaml` reproduces "
        "the run.",
        "",
    ]
    return lines


def _results_section(train: dict, evaluation: dict, quality: dict, run_dir: Path) -> list[str]:
    trainable, total = train.get("trainable_parameters"), train.get("total_parameters")
    share = f" ({trainable / total:.2%} of {total:,})" if trainable and total else ""
    rows = [
        ("eval token loss (nats/token, exact)", _number(evaluation.get("eval_token_loss"), ".4f")),
        ("eval perplexity", _number(evaluation.get("eval_perplexity"), ".2f")),
        ("eval tokens", _number(evaluation.get("eval_num_tokens"), ",")),
        ("final train loss", _number(train.get("final_train_loss"), ".4f")),
        ("train runtime (s)", _number(train.get("train_runtime"), ".1f")),
        ("train tokens/s (real tokens)", _number(train.get("train_real_tokens_per_second"), ",.0f")),
        ("peak memory (MB)", _number(train.get("peak_memory_mb"), ",.0f")),
        ("trainable parameters", f"{_number(trainable, ',')}{share}"),
    ]
    if quality:
        rows += [("distinct-1 / distinct-2 of sampled replies",
                  f"{_number(quality.get('distinct_1'), '.3f')} / {_number(quality.get('distinct_2'), '.3f')}")]
    lines = ["## Results", "", "| metric | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    lines += ["", "Eval figures are on the validation split, every predicted token counted once (EOS included, "
              "padding never)."]
    if not quality:
        lines += [f"Sample quality (distinct-n, repeats): `python scripts/evaluate.py --model_path {run_dir}`."]
    return lines + [""]


def _usage_section(run_dir, hub_model_id, base, config, report, lora, merged) -> list[str]:
    where = hub_model_id or str(run_dir) + ("/merged" if merged else "")
    speakers = list(((report.get("train") or {}).get("turns_per_speaker") or {}))[:2] or ["User", "Assistant"]
    if len(speakers) < 2:
        speakers.append("Assistant")
    prompt = f"{speakers[0]}: Hello, how are you?\\n{speakers[1]}:"
    if lora:
        if config.get("random_init"):
            base_load = (f'AutoModelForCausalLM.from_pretrained("{hub_model_id}", subfolder="base_model")'
                         if hub_model_id else f'AutoModelForCausalLM.from_pretrained("{run_dir}/base_model")')
        else:
            base_load = f'AutoModelForCausalLM.from_pretrained("{base}")'
        load = [
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f"base = {base_load}",
            f'model = PeftModel.from_pretrained(base, "{where}")  # .merge_and_unload() for a plain model',
        ]
    else:
        load = [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'model = AutoModelForCausalLM.from_pretrained("{where}")',
        ]
    load += [
        f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
        f'inputs = tokenizer("{prompt}", return_tensors="pt")',
        "reply = model.generate(**inputs, max_new_tokens=40, do_sample=True, top_p=0.95)",
        "print(tokenizer.decode(reply[0][inputs.input_ids.shape[1]:], skip_special_tokens=True))",
    ]
    local = "MODEL_DIR" if hub_model_id else str(run_dir) + ("/merged" if merged else "")
    lines = ["## How to use", "", "```python", *load, "```", "",
             "Each dialogue is written one turn per line, `Speaker: text`, and ends with EOS; generation stops "
             "at EOS (the generation config says so).", "",
             "With the recipe's scripts" + (f" (after `hf download {hub_model_id} --local-dir MODEL_DIR`)"
                                            if hub_model_id else "") + ":", "",
             "```bash", f"python scripts/chat.py --model_path {local}",
             f"python scripts/evaluate.py --model_path {local}", "```", ""]
    return lines


def write_model_card(run_dir: str | os.PathLike, hub_model_id: str | None = None, merged: bool = False) -> Path:
    """Write README.md (the model card) into the run directory, or into run_dir/merged with `merged`."""
    card = build_model_card(run_dir, hub_model_id=hub_model_id, merged=merged)
    target = Path(run_dir) / ("merged" if merged else "") / MODEL_CARD
    return atomic_write_text(target, str(card))


# ----------------------------------------------------------------------------------------------
# The hooks run_training calls


class RunTracker:
    """W&B and Hub for one training run; see the module docstring for where run_training calls it."""

    def __init__(self, tracking_args: TrackingArguments | None, lora_args: LoraArguments, output_dir: Path,
                 is_main: bool, push_to_hub: bool = False):
        self.args = tracking_args or TrackingArguments()
        self.mode = run_mode(lora_args.use_lora)
        self.output_dir = Path(output_dir)
        self.is_main = is_main
        self.wandb_run = None
        self.hub_repo_id: str | None = None
        self.push_monitor: HubPushMonitor | None = None
        self.training_args = None
        if self.args.hub_merged_model_id and not (lora_args.use_lora and lora_args.merge_lora and push_to_hub):
            raise ConfigError("hub_merged_model_id needs --use_lora true --merge_lora true --push_to_hub true "
                              "(it pushes merged/, the base with the adapter merged in)")

    # -- before the Trainer

    def configure(self, training_args, resume: Path | None = None):
        """Start the W&B run and check the Hub; return training arguments with what cannot work turned off."""
        changes: dict[str, Any] = {}
        if "wandb" in (training_args.report_to or []) and self.is_main and not self._start_wandb(training_args, resume):
            changes["report_to"] = [r for r in training_args.report_to if r != "wandb"]
        if training_args.push_to_hub:
            problem = self._check_hub(training_args)
            if problem:
                logger.warning("Hub pushes are off for this run: %s. Training goes on and every file stays in %s; "
                               "push them later with: %s", problem, self.output_dir,
                               retry_command(self.output_dir, training_args.hub_model_id, self.args.hub_merged_model_id))
                changes["push_to_hub"] = False
        if changes:
            training_args = dataclasses.replace(training_args, **changes)
        self.training_args = training_args
        return training_args

    def _start_wandb(self, training_args, resume: Path | None) -> bool:
        previous = read_wandb_record(self.output_dir) if resume else None
        group = self.args.wandb_group or self.mode
        tags = list(dict.fromkeys([self.mode, *(self.args.wandb_tags or [])]))
        config = _read_yaml(self.output_dir / "run_config.yaml")
        config.update(mode=self.mode, environment=_read_json(self.output_dir / "environment.json") or {})
        init_kwargs = {
            "project": self.args.wandb_project or os.environ.get("WANDB_PROJECT") or DEFAULT_WANDB_PROJECT,
            "entity": self.args.wandb_entity or os.environ.get("WANDB_ENTITY"),
            "group": group,
            "tags": tags,
            "name": training_args.run_name or self.output_dir.name,
            "job_type": "train",
            "config": config,
        }
        if previous and previous.get("id"):  # an interrupted run resumes its W&B run too
            init_kwargs.update(id=previous["id"], resume="allow", dir=_wandb_dir_for(previous))
        run = init_wandb_run({k: v for k, v in init_kwargs.items() if v is not None},
                             (previous or {}).get("mode"))
        if run is None:
            return False
        self.wandb_run = run
        atomic_write_json(self.output_dir / WANDB_RECORD,
                          wandb_run_record(run, "offline" if run.offline else "online", group))
        return True

    def _check_hub(self, training_args) -> str | None:
        reason = hub_unreachable_reason()
        if reason:
            return reason
        if not self.is_main:
            return None
        repo = training_args.hub_model_id or self.output_dir.absolute().name  # the Trainer's default
        try:
            url = _hub_api().create_repo(repo, private=training_args.hub_private_repo, token=training_args.hub_token,
                                         exist_ok=True)
        except Exception as error:  # noqa: BLE001 - a wrong token, no write access, a Hub error
            return f"creating the repo {repo} failed ({_short_error(error)}; check HF_TOKEN or `hf auth login`)"
        self.hub_repo_id = url.repo_id
        return None

    # -- after the Trainer is built

    def attach(self, trainer) -> None:
        if "wandb" in (trainer.args.report_to or []):
            from transformers.integrations import WandbCallback

            trainer.remove_callback(WandbCallback)  # same callback, guarded: W&B failures never stop training
            trainer.add_callback(_guarded_wandb_callback_class()())
        if trainer.args.push_to_hub:
            self.push_monitor = HubPushMonitor(trainer, self._retry())
            trainer.add_callback(self.push_monitor)

    def _retry(self) -> str:
        repo = self.hub_repo_id or (self.training_args.hub_model_id if self.training_args else None)
        return retry_command(self.output_dir, repo, self.args.hub_merged_model_id)

    # -- once every local file is written

    def finish(self, train_metrics: dict[str, Any], eval_metrics: dict[str, Any]) -> None:
        """Model card (every run), W&B summary and end of run, final Hub push. Main process only."""
        if not self.is_main:
            return
        self._finish_wandb(train_metrics, eval_metrics)
        write_model_card(self.output_dir, hub_model_id=self.hub_repo_id)
        if (self.output_dir / "merged").is_dir():
            write_model_card(self.output_dir, merged=True,
                             hub_model_id=self.args.hub_merged_model_id if self.hub_repo_id else None)
        if self.hub_repo_id:  # set only when push_to_hub is on and the Hub accepted the repo
            self._final_push()

    def _finish_wandb(self, train_metrics: dict[str, Any], eval_metrics: dict[str, Any]) -> None:
        if self.wandb_run is None:
            return
        names = {"train_runtime": "train/runtime", "train_real_tokens": "train/real_tokens",
                 "train_real_tokens_per_second": "train/real_tokens_per_second", "final_train_loss": "train/final_loss",
                 "peak_memory_mb": "train/peak_memory_mb", "trainable_parameters": "train/trainable_parameters",
                 "total_parameters": "train/total_parameters"}
        summary = {name: train_metrics[key] for key, name in names.items() if train_metrics.get(key) is not None}
        summary.update({f"eval/{key.removeprefix('eval_')}": value for key, value in eval_metrics.items()})
        try:
            self.wandb_run.summary.update(summary)
            self.wandb_run.finish()
        except Exception as error:  # noqa: BLE001
            logger.warning("finishing the W&B run failed (%s); local outputs are unaffected", error)
        self.wandb_run = None

    def _final_push(self) -> None:
        args = self.training_args
        failed = self.push_monitor.failures if self.push_monitor else []
        try:
            push_run_to_hub(
                self.output_dir, self.hub_repo_id, private=args.hub_private_repo, token=args.hub_token,
                revision=args.hub_revision, merged_repo_id=self.args.hub_merged_model_id,
                include_checkpoints=bool(failed),  # re-send what the background pushes failed to upload
            )
        except Exception as error:  # noqa: BLE001 - the run is finished and saved; a push failure is not fatal
            logger.warning("the final push to the Hub failed (%s). Every local file is intact in %s; retry with: %s",
                           _short_error(error), self.output_dir, self._retry())


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}

