"""The model card (README.md of a run directory and of its merged/ model), built from the run's own files:
metadata the Hub reads (base_model, library_name, tags, datasets, model-index with the exact figures), data
summary, recipe, results per epoch, and how to load, chat with and evaluate the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..common.files import atomic_write_text
from ..common.hub import is_hub_id
from ..common.run_dir import (
    ADAPTER_CONFIG,
    BASE_MODEL_DIR,
    GGUF_DIR,
    MERGED_DIR,
    MODEL_CARD,
    REQUIREMENTS_LOCK,
    RUN_CONFIG,
    RunDir,
    modelfile_of,
    read_json_file,
)
from ..config import ConfigError
from ..config.data_sources import data_path_text
from ..models.gguf_base import describe_gguf
from ..models.quantization import bnb_config_code, describe_quantization
from .card_results import card_eval_results, epoch_table
from .wandb_run import read_wandb_record, run_mode

CARD_TAG = "dialogue-finetune"  # marks a model card as ours (push.py regenerates ours, never a hand-written one)


def _number(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def build_model_card(run: RunDir, hub_model_id: str | None = None, merged: bool = False,
                     gguf_files: list[Path] | None = None):
    """A huggingface_hub ModelCard for a finished run, from its own files: metadata (base_model,
    library_name, tags, datasets), data summary, recipe, metrics, and how to load and evaluate it.

    `merged` describes RUN/merged (a LoRA run's base + adapter as one full model). `gguf_files`: the GGUF
    exports the card lists (default: those in the run directory; a push lists those it uploads).
    """
    from huggingface_hub import ModelCard, ModelCardData

    run_dir = run.path
    if not run.is_recipe_run() or not run.is_finished():
        raise ConfigError(f"{run_dir} is not a finished training run (no {run.run_config.name} or "
                          f"{run.train_results.name})")
    config = run.read_config()
    train = read_json_file(run.train_results) or {}
    evaluation = read_json_file(run.eval_results) or {}
    report = read_json_file(run.data_report) or {}
    posthoc = read_json_file(run.evaluation) or {}
    quality = posthoc.get("quality") or {}
    environment = read_json_file(run.environment) or {}
    history = (read_json_file(run.trainer_state) or {}).get("log_history") or []
    wandb_record = read_wandb_record(run_dir) or {}
    resolved = (read_json_file(run.path / ADAPTER_CONFIG) or {}).get("target_modules")
    if resolved:  # the adapted modules as PEFT resolved them (all-linear, a family's default), not as asked
        config["lora_target_modules"] = sorted(resolved) if isinstance(resolved, list) else [resolved]

    lora = bool(config.get("use_lora")) and not merged
    base = config.get("model_name_or_path", "unknown")
    base_on_hub = is_hub_id(base) and not config.get("random_init")
    data_path = data_path_text(config.get("data_path", ""))
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
        eval_results=card_eval_results(config, environment, evaluation, posthoc) or None,
    )

    lines = [f"# {name}", "", f"{_what_it_is(config, base, lora, merged)}, trained on multi-speaker dialogues "
             f"with the dialogue-finetune recipe ({mode}).", ""]
    lines += _base_lines(environment.get("base_model") or {})
    lines += _data_section(report, data_path, dataset_on_hub)
    # The run's files (run_config.yaml among them) sit in the run directory, or in the adapter repo once pushed.
    card_run = None if merged and hub_model_id else (RunDir("MODEL_DIR") if hub_model_id else run)
    lines += _recipe_section(config, environment, card_run)
    lines += _results_section(train, evaluation, quality, run_dir)
    lines += epoch_table(history, train.get("best_checkpoint"), bool(config.get("load_best_model_at_end")))
    lines += _usage_section(run, hub_model_id, config, report, lora, merged)
    if not merged:  # GGUF exports go to the run's own repo
        lines += _gguf_section(run.gguf_files() if gguf_files is None else gguf_files, hub_model_id)
    if wandb_record.get("url"):
        lines += [f"Training curves: [Weights & Biases run]({wandb_record['url']}).", ""]
    content = f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines)
    return ModelCard(content)


def _what_it_is(config: dict, base: str, lora: bool, merged: bool) -> str:
    if lora:
        what = (f"A LoRA adapter (r={config.get('lora_r')}, alpha={config.get('lora_alpha')}, on "
                f"{_lora_targets(config)}) for `{base}`")
    elif merged:
        what = f"`{base}` with its LoRA adapter merged in (a full model)"
    else:
        what = f"`{base}`, fully fine-tuned"
    if config.get("random_init"):
        what += " (a randomly initialised model built from that config: a smoke-test model, not a useful one)"
    quantization = describe_quantization(config)
    if quantization and merged:
        what += (f"; the adapter trained on the base loaded in {quantization} and is merged onto the base's "
                 "full-precision weights, not onto their dequantized k-bit copies")
    elif quantization:
        what += f", trained on the base loaded in {quantization} (QLoRA)"
    return what


def _base_lines(record: dict) -> list[str]:
    """Where the base's weights came from, when they are not simply a Hub model's: a GGUF file, or a folder
    whose provenance.json says (scripts/get_base_model.py)."""
    gguf = record if record.get("source") == "gguf" else record.get("provenance") or {}
    if gguf.get("source") == "gguf":
        original = f" ({gguf['hub_id']})" if gguf.get("hub_id") else ""
        return [f"Base weights{original}: `{Path(gguf.get('gguf_file', '?')).name}` (GGUF, {gguf.get('quantization')}, "
                f"SHA-256 `{gguf.get('gguf_sha256')}`), dequantized to {gguf.get('dequantized_to', 'float32')}.", ""]
    if gguf.get("source") == "hub":
        return [f"Base weights: `{gguf.get('hub_id')}` at revision `{gguf.get('revision')}`.", ""]
    return []


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


def _recipe_section(config: dict, environment: dict, card_run: RunDir | None) -> list[str]:
    """The options, versions and device; with `card_run` (the run's folder as a reader has it), how to train it again
    and how to install and check its packages."""
    replay = card_run.replay_command() if card_run else None
    world_size = ((environment.get("device") or {}).get("world_size")) or 1
    batch = (config.get("per_device_train_batch_size") or 0) * (config.get("gradient_accumulation_steps") or 1)
    # run_config.yaml keeps the precision as asked (None: automatic); environment.json has what was used.
    used = environment.get("resolved_options") or environment.get("device") or config
    precision = "bf16" if used.get("bf16") else "fp16" if used.get("fp16") else "fp32"
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
                                f"{config.get('lora_dropout')}, modules {_lora_targets(config)}"))
    if describe_quantization(config):
        rows.insert(2, ("base weights", f"{describe_quantization(config)} (bitsandbytes)"))
    packages = environment.get("packages") or {}
    device = environment.get("device") or {}
    lines = ["## Training recipe", "", "| option | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    lines += [
        "",
        f"Trained with transformers {packages.get('transformers', '?')}, torch {packages.get('torch', '?')}"
        + (f", peft {packages.get('peft')}" if config.get("use_lora") and packages.get("peft") else "")
        + f" on {device.get('type', '?')} ({device.get('name', '?')})."
        + f" Every option is in `{RUN_CONFIG}`, as asked (automatic precision stays automatic)"
        + (f"; from the recipe's repository root, `{replay}` trains the run again into `NEW`." if replay
           else " of the adapter run."),
        "",
    ]
    if card_run:
        folder = card_run.path
        commit = (environment.get("git") or {}).get("commit")
        lines += [
            f"Every package it was trained with is pinned in `{REQUIREMENTS_LOCK}`: in a checkout of the recipe"
            + (f" at commit `{commit[:12]}`" if commit else "") + f", `pip install -r {folder}/{REQUIREMENTS_LOCK} && "
            f"pip install --no-deps -e .` installs them again, and `python scripts/reproduce.py {folder}` lists what "
            "an install changes from them and replays the first steps to compare the losses.",
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
        ("of which training steps (s)", _number(train.get("train_steps_runtime"), ".1f")),
        ("train tokens/s (real tokens, in the steps)", _number(train.get("train_real_tokens_per_second"), ",.0f")),
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


def _usage_section(run: RunDir, hub_model_id, config, report, lora, merged) -> list[str]:
    where = hub_model_id or str(run.path) + (f"/{MERGED_DIR}" if merged else "")
    speakers = list(((report.get("train") or {}).get("turns_per_speaker") or {}))[:2] or ["User", "Assistant"]
    if len(speakers) < 2:
        speakers.append("Assistant")
    prompt = f"{speakers[0]}: Hello, how are you?\\n{speakers[1]}:"
    remote_code = ", trust_remote_code=True" if config.get("trust_remote_code") else ""
    note: list[str] = []
    if lora:
        load, note = _adapter_loading(run, hub_model_id, config, remote_code)
    else:
        load = [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'model = AutoModelForCausalLM.from_pretrained("{where}"{remote_code})',
        ]
    load += [
        f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
        f'inputs = tokenizer("{prompt}", return_tensors="pt")',
        "reply = model.generate(**inputs, max_new_tokens=40, do_sample=True, top_p=0.95)",
        "print(tokenizer.decode(reply[0][inputs.input_ids.shape[1]:], skip_special_tokens=True))",
    ]
    if not lora:
        note = [f'Or in one line: `pipeline("text-generation", model="{where}")`.', ""]
    local = "MODEL_DIR" if hub_model_id else where
    lines = ["## How to use", "", "```python", *load, "```", "", *note,
             "Each dialogue is written one turn per line, `Speaker: text`, and ends with EOS; generation stops "
             "at EOS (the generation config says so).", "",
             "With the recipe's scripts" + (f" (after `hf download {hub_model_id} --local-dir MODEL_DIR`)"
                                            if hub_model_id else "") + ":", "",
             "```bash", f"python scripts/chat.py --model_path {local}",
             f"python scripts/evaluate.py --model_path {local}", "```", ""]
    return lines


def _gguf_section(files: list[Path], hub_model_id: str | None) -> list[str]:
    """The GGUF exports (scripts/export_gguf.py): file, type, size and SHA-256, and how to run one."""
    if not files:
        return []
    lines = ["## GGUF (llama.cpp, Ollama, LM Studio)", "", "| file | type | size | SHA-256 |", "|---|---|---|---|"]
    for path in files:
        try:
            described = describe_gguf(path)
        except (ConfigError, OSError, ValueError):  # no gguf package here, or not a file it reads
            described = {"quantization": "n/a", "gguf_sha256": "n/a"}
        lines.append(f"| `{path.name}` | {described['quantization']} | {path.stat().st_size / 1e6:,.1f} MB | "
                     f"`{described['gguf_sha256']}` |")
    example, name = files[0], Path(hub_model_id or files[0].stem.split(".")[0]).name
    if hub_model_id:  # in the repo's gguf/ folder
        folder = GGUF_DIR
        download = [f"hf download {hub_model_id} {folder}/{example.name} {folder}/{modelfile_of(example).name} "
                    "--local-dir .   # the file and its Modelfile"]
    else:
        folder, download = str(example.parent), []
    modelfile = f"{folder}/{modelfile_of(example).name}"
    return lines + [
        "", "Each file holds the merged model, its tokenizer and the dialogue format it was trained on (as the chat "
        "template, and the turn's end as a stop token); `FILE.Modelfile` beside it is its Ollama Modelfile, with the "
        "same format as a Go template and its stop strings.", "",
        "```bash", *download,
        f"ollama create {name} -f {modelfile} && ollama run {name}",
        f"llama-cli -m {folder}/{example.name} --jinja -cnv    # chat in the file's template",
        "```", "",
    ]


def _adapter_loading(run: RunDir, hub_model_id: str | None, config: dict, remote_code: str):
    """(code lines, note lines) that load the adapter on its base with stock PEFT.

    adapter_config.json names the base that training recorded (`models.lora.adapter_base_reference`): a Hub
    id, or a folder by absolute path, which AutoPeftModelForCausalLM follows as is. On the Hub a folder on
    the training machine means nothing, and PEFT cannot follow a base kept in a subfolder of the adapter
    repo (base_model/ for a random base): there the card loads the base first.
    """
    recorded = (read_json_file(run.path / ADAPTER_CONFIG) or {}).get("base_model_name_or_path")
    base = recorded or config.get("model_name_or_path", "unknown")
    base_on_hub = not config.get("random_init") and is_hub_id(base)
    if hub_model_id and not base_on_hub:
        if config.get("random_init"):
            from transformers.utils import CONFIG_NAME

            # The class itself: AutoModelForCausalLM ignores subfolder= when it looks for an adapter (transformers
            # 5.24), finds the one at the repo root and loads the base that adapter names instead.
            base_config = read_json_file(run.base_model / CONFIG_NAME) or {}
            model_class = (base_config.get("architectures") or ["AutoModelForCausalLM"])[0]
            base_load = [f"# the random base, kept in this repo's {BASE_MODEL_DIR}/ folder",
                         f'base = {model_class}.from_pretrained("{hub_model_id}", subfolder="{BASE_MODEL_DIR}")']
        else:
            model_class = "AutoModelForCausalLM"
            base_load = ["# a folder on the machine that trained the adapter",
                         f'base = {model_class}.from_pretrained("{base}"{remote_code})']
        code = ["from peft import PeftModel", f"from transformers import AutoTokenizer, {model_class}", "", *base_load,
                f'model = PeftModel.from_pretrained(base, "{hub_model_id}")  # .merge_and_unload() for a plain model']
        return code, []
    where = hub_model_id or str(run.path)
    quantization = bnb_config_code(config, read_json_file(run.environment))
    if quantization:  # the base as it trained; without quantization_config it loads at full precision
        code = ["import torch", "from peft import AutoPeftModelForCausalLM",
                "from transformers import AutoTokenizer, BitsAndBytesConfig", "", *quantization,
                f'model = AutoPeftModelForCausalLM.from_pretrained("{where}", quantization_config=quantization'
                f'{remote_code})  # base: {base}']
    else:
        code = ["from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer", "",
                f'model = AutoPeftModelForCausalLM.from_pretrained("{where}"{remote_code})  # base: {base}']
    note = []
    if quantization:
        note = ["The base loads in k bits as it trained (bitsandbytes: `pip install bitsandbytes`); leave out "
                "`quantization_config` to load it at full precision.", ""]
    if config.get("random_init"):
        note += [f"`{ADAPTER_CONFIG}` names the base saved in `{BASE_MODEL_DIR}/` by its absolute path (`{base}`), "
                "which AutoPeftModelForCausalLM follows from any directory. A copy of this folder elsewhere "
                f"(`MODEL_DIR`) loads on its own copy of the base: `PeftModel.from_pretrained(AutoModelForCausalLM."
                f'from_pretrained("MODEL_DIR/{BASE_MODEL_DIR}"), "MODEL_DIR")`.', ""]
    elif not base_on_hub:
        note += [f"`{ADAPTER_CONFIG}` names the base folder by its absolute path (`{base}`). If it moves (to "
                "`BASE_DIR`), load it first: `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("
                f'"BASE_DIR"), "{where}")`.', ""]
    return code, note


def write_model_card(run: RunDir, hub_model_id: str | None = None, merged: bool = False,
                     gguf_files: list[Path] | None = None) -> Path:
    """Write README.md (the model card) into the run directory, or into RUN/merged with `merged`."""
    card = build_model_card(run, hub_model_id=hub_model_id, merged=merged, gguf_files=gguf_files)
    target = (run.merged if merged else run.path) / MODEL_CARD
    return atomic_write_text(target, str(card))


def refresh_model_cards(run: RunDir) -> list[Path]:
    """Write the cards of a finished run again (README.md, and merged/README.md when there is one), e.g.
    once scripts/evaluate.py has added its figures; a card that is not ours is left alone. A run trained
    with push_to_hub keeps its repo in the card (scripts/push.py sends the new card)."""
    from huggingface_hub import ModelCard

    config = run.read_config()
    repo = config.get("hub_model_id") if config.get("push_to_hub") else None
    written = []
    for merged, folder in ((False, run.path), (True, run.merged)):
        card = folder / MODEL_CARD
        if merged and not folder.is_dir():
            continue
        try:
            ours = not card.is_file() or CARD_TAG in (ModelCard.load(card).data.tags or [])
        except Exception:  # noqa: BLE001 - an unreadable card is not one we wrote
            ours = False
        if ours:
            hub_id = (config.get("hub_merged_model_id") if merged else repo) if repo else None
            written.append(write_model_card(run, hub_model_id=hub_id, merged=merged))
    return written


def _lora_targets(config: dict) -> str:
    """The adapted modules as asked; unset means the recipe's default for the model."""
    targets = config.get("lora_target_modules")
    if not targets:
        return "the default modules (GPT-2's c_attn, c_proj, c_fc, else all linear layers)"
    return ", ".join(targets)
