"""Options of the model, the data and LoRA: each defined once, as a dataclass field with its help."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Literal

from .data_sources import DataSource, data_path_text, parse_source
from .errors import raise_all


@dataclass
class ModelArguments:
    """Which model and tokenizer to start from."""

    help_group = "Model"  # the --help heading (recipe/config/command_line.py), and those of some of its fields:
    help_subgroups = (("Quantized base (QLoRA)", ("load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type",
                                                  "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype",
                                                  "bnb_4bit_quant_storage"),
                       "A base loaded in 4 or 8 bits through bitsandbytes, for LoRA runs only "
                       "(recipe/models/quantization.py)."),)

    model_name_or_path: str = field(
        default="distilgpt2",
        metadata={"help": "Hub model id, local directory (config, weights, tokenizer), or a .gguf file "
                  "(dequantized once to a float folder: see gguf_cache_dir)."},
    )
    gguf_file: str | None = field(
        default=None,
        metadata={"help": "A GGUF file inside the model_name_or_path folder or Hub repo, used as the base "
                  "(needs the gguf package: pip install -e '.[gguf]')."},
    )
    gguf_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where a GGUF base is kept dequantized, under its SHA-256 "
                  "(default: $HF_HOME/dialogue_finetune/gguf)."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to use, when it differs from model_name_or_path."}
    )
    random_init: bool = field(
        default=False,
        metadata={
            "help": "Build the model from its config with random weights instead of loading weights. "
            "Used by the offline smoke recipes, whose model directory holds only a config and a tokenizer."
        },
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = field(
        default="float32",
        metadata={
            "help": "dtype of the loaded weights. float32 keeps full-precision master weights; bf16 mixed "
            "precision is set by --bf16, not here."
        },
    )
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of a Hub model."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the Hub repository."})
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention kernel: sdpa, eager or flash_attention_2 (default: the model's)."}
    )
    # --- k-bit bases through bitsandbytes (recipe/models/quantization.py); LoRA runs only ---
    load_in_4bit: bool = field(
        default=False,
        metadata={"help": "Load the base's linear layers in 4 bits (QLoRA, with --use_lora true): about an eighth "
                          "of fp32 weight memory. Needs bitsandbytes: pip install -e '.[qlora]'."},
    )
    load_in_8bit: bool = field(
        default=False,
        metadata={"help": "Load the base's linear layers in 8 bits (LLM.int8(), with --use_lora true)."},
    )
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = field(
        default="nf4", metadata={"help": "4-bit data type: nf4 (normal float, QLoRA's) or fp4."}
    )
    bnb_4bit_use_double_quant: bool = field(
        default=True,
        metadata={"help": "Quantize the 4-bit blocks' scales too (about 0.4 bits per weight less)."},
    )
    bnb_4bit_compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="auto",
        metadata={"help": "dtype the 4-bit weights are dequantized to for each matmul. auto: the run's precision "
                          "(bfloat16 under --bf16, float16 under --fp16, else float32)."},
    )
    bnb_4bit_quant_storage: Literal["auto", "uint8", "float32", "bfloat16", "float16"] = field(
        default="auto",
        metadata={"help": "dtype the packed 4-bit weights are stored in; numbers are the same either way. auto: the "
                          "compute dtype under FSDP (so the 4-bit weights are sharded with the rest: FSDP-QLoRA), "
                          "else uint8."},
    )

    def __post_init__(self) -> None:
        errors = []
        if self.load_in_4bit and self.load_in_8bit:
            errors.append("load_in_4bit and load_in_8bit are both true; choose one (4-bit takes half the memory)")
        defaults = {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "auto",
                    "bnb_4bit_quant_storage": "auto"}
        for name, default in defaults.items():
            if not self.load_in_4bit and getattr(self, name) != default:
                errors.append(f"{name} is set ({getattr(self, name)!r}) but load_in_4bit is false; add --load_in_4bit "
                              f"true, or leave {name} out")
        raise_all(errors)

    @property
    def quantized(self) -> bool:
        return self.load_in_4bit or self.load_in_8bit


@dataclass
class DataArguments:
    """Where the dialogues come from, how they become text, and how that text is batched."""

    help_group = "Data"

    data_path: list[str] = field(
        default_factory=lambda: ["data/sample_dialogues.json"],
        metadata={
            "help": "Dialogue file (.json or .jsonl), a directory written by datasets' save_to_disk, "
            "or a Hub dataset name; several mix them: PATH,weight=0.5,data_format=messages,... each "
            "(weight: the share of its dialogues trained on; docs/data.md: Several data sets)."
        },
    )
    data_format: Literal["auto", "speaker_map", "turns", "messages"] = field(
        default="auto",
        metadata={
            "help": "Shape of each dialogue: speaker_map ({'Alex': ..., 'Bob': ..., 'Alex': ...}), "
            "turns ({'turns': [{'speaker', 'text'}]}), messages ({'messages': [{'role', 'content'}]}); "
            "auto detects it per dialogue."
        },
    )
    validation_path: str | None = field(
        default=None, metadata={"help": "Separate validation file; when set, validation_split_ratio is ignored."}
    )
    validation_split_ratio: float = field(
        default=0.2,
        metadata={"help": "Share of dialogues held out for validation; 0 trains on all of them (no evaluation)."},
    )
    split_seed: int = field(
        default=42, metadata={"help": "Seed of the train/validation split, kept apart from the training seed."}
    )
    max_dialogues: int | None = field(
        default=None, metadata={"help": "Use only the first N valid dialogues of the file (quick experiments)."}
    )
    on_bad_dialogue: Literal["error", "skip"] = field(
        default="error",
        metadata={"help": "error: stop at invalid dialogues; skip: leave them out, counted in data_report.json."},
    )
    # 128: rows of 128 tokens make twice the optimizer steps per epoch of rows of 256 (which learned less per
    # epoch than a plain loop), and trained a distilgpt2-shaped model faster per token (README Performance).
    max_length: int = field(
        default=128, metadata={"help": "Longest training example in tokens; also the row length when packing."}
    )
    overflow_strategy: Literal["split", "truncate"] = field(
        default="split",
        metadata={
            "help": "A dialogue longer than max_length: split it at turn boundaries into windows that fit, "
            "or truncate it (the dropped token count is reported)."
        },
    )
    padding: Literal["packing", "longest", "max_length"] = field(
        default="packing",
        metadata={
            "help": "packing: best-fit dialogues into rows of max_length, each attending only to itself; "
            "longest: pad each batch to its longest example; max_length: pad every example to max_length."
        },
    )
    pad_to_multiple_of: int | None = field(
        default=None, metadata={"help": "Round padded lengths up to a multiple of this (8 suits tensor cores)."}
    )
    turn_template: str = field(
        default="{speaker}: {text}", metadata={"help": "How one turn is written; must contain {speaker} and {text}."}
    )
    turn_separator: str = field(default="\n", metadata={"help": "Text between two turns."})
    train_on_speakers: list[str] | None = field(
        default=None,
        metadata={
            "help": "Only these speakers' turns (text, turn end and EOS) carry loss; the other turns still "
            "condition the model. Names as the data writes them (case matters): a name that never speaks stops "
            "the run before training, with the closest match. Default: every token of the dialogue carries loss."
        },
    )
    use_chat_template: bool = field(
        default=False,
        metadata={"help": "Render dialogues with the tokenizer's chat template instead of turn_template."},
    )
    role_to_speaker: list[str] | None = field(
        default=None,
        metadata={
            "help": "For messages data: role=Speaker pairs, e.g. user=Alex assistant=Bob. Unmapped roles are "
            "capitalised (user -> User); a message's 'name' field wins over both."
        },
    )
    speaker_field: str = field(default="speaker", metadata={"help": "Key of the speaker inside a turn."})
    text_field: str = field(default="text", metadata={"help": "Key of the text inside a turn."})
    turns_field: str = field(default="turns", metadata={"help": "Key of the turn list inside a dialogue."})
    messages_field: str = field(default="messages", metadata={"help": "Key of the message list inside a dialogue."})
    role_field: str = field(default="role", metadata={"help": "Key of the role inside a message."})
    content_field: str = field(default="content", metadata={"help": "Key of the content inside a message."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Config name of a Hub dataset."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split of a Hub/saved dataset to train on."})
    dataset_validation_split: str | None = field(
        default=None, metadata={"help": "Split of a Hub/saved dataset to validate on (default: split the train one)."}
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for tokenization (datasets.map num_proc)."}
    )
    packing_batch_size: int = field(
        default=1000, metadata={"help": "Examples considered together by the best-fit packer."}
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "Read, shuffle, tokenize and pack the training dialogues while training, writing nothing "
                  "(a corpus larger than the disk cache); needs --max_steps, and --validation_path or "
                  "--validation_split_ratio 0 (docs/data.md: Streaming)."},
    )
    shuffle_buffer_size: int = field(
        default=10_000,
        metadata={"help": "With --streaming: dialogues held to shuffle from (memory: that many dialogues)."},
    )
    dataset_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where tokenized splits are cached (default: the datasets cache, dialogue_finetune/)."},
    )

    def __post_init__(self) -> None:
        errors = []
        if isinstance(self.data_path, (str, dict)):  # one source, as code and older run_config.yaml files give it
            self.data_path = [self.data_path]
        self.data_path = list(self.data_path)
        for position, entry in enumerate(self.data_path):
            try:
                parse_source(entry, position)
            except ValueError as error:
                errors.append(str(error))
        if not self.data_path:
            errors.append("data_path is empty; give a dialogue file, a saved dataset folder or a Hub dataset name")
        for placeholder in ("{speaker}", "{text}"):
            if self.turn_template.count(placeholder) != 1:
                errors.append(f"turn_template {self.turn_template!r} must contain {placeholder} exactly once")
        if not 0 <= self.validation_split_ratio < 1:
            errors.append(f"validation_split_ratio is {self.validation_split_ratio}; use a value in [0, 1)")
        if self.max_length < 8:
            errors.append(f"max_length is {self.max_length}; use at least 8 tokens")
        if self.max_dialogues is not None and self.max_dialogues < 1:
            errors.append(f"max_dialogues is {self.max_dialogues}; use a positive number or leave it unset")
        for pair in self.role_to_speaker or []:
            if pair.count("=") != 1 or not all(part.strip() for part in pair.split("=")):
                errors.append(f"role_to_speaker entry {pair!r} must look like role=Speaker, e.g. user=Alex")
        if self.shuffle_buffer_size < 1:
            errors.append(f"shuffle_buffer_size is {self.shuffle_buffer_size}; use 1 (no shuffling) or more")
        if self.packing_batch_size < 1:
            errors.append(f"packing_batch_size is {self.packing_batch_size}; use 1 or more (1000 packs well)")
        for name in ("pad_to_multiple_of", "preprocessing_num_workers"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                errors.append(f"{name} is {getattr(self, name)}; use 1 or more, or leave it unset")
        raise_all(errors)

    @property
    def sources(self) -> list[DataSource]:
        """The --data_path entries, parsed."""
        return [parse_source(entry, position) for position, entry in enumerate(self.data_path)]

    @property
    def data_paths_text(self) -> str:
        """The data as a user wrote it: one path, or the sources in their compact form."""
        return data_path_text(self.data_path)

    @property
    def role_speaker_map(self) -> dict[str, str]:
        return dict(pair.split("=", 1) for pair in self.role_to_speaker or [])


@dataclass
class LoraArguments:
    """Low-rank adaptation through PEFT: train small adapters, leave the base weights untouched."""

    help_group = "LoRA"

    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of every weight."})
    lora_r: int = field(default=16, metadata={"help": "Rank of the adapter matrices."})
    lora_alpha: int = field(default=32, metadata={"help": "Adapter scaling; usually 2 x lora_r."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the adapter input."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Modules that get adapters, by name (e.g. q_proj v_proj), or 'all-linear' (every linear layer "
            "but the output head). Default: GPT-2's c_attn c_proj c_fc where the model has them all, else all-linear."
        },
    )
    merge_lora: bool = field(
        default=False, metadata={"help": "At the end, also write base+adapter merged into a full model (merged/)."}
    )

    def __post_init__(self) -> None:
        errors = []
        if self.lora_r < 1:
            errors.append(f"lora_r is {self.lora_r}; use a positive rank such as 8 or 16")
        if self.lora_alpha <= 0:
            errors.append(f"lora_alpha is {self.lora_alpha}; use a positive scaling, usually 2 x lora_r")
        if not 0 <= self.lora_dropout < 1:
            errors.append(f"lora_dropout is {self.lora_dropout}; use a value in [0, 1)")
        if not self.use_lora:  # silently ignored otherwise: a "LoRA" run that fine-tunes every weight
            defaults = {f.name: f.default if f.default_factory is MISSING else f.default_factory()
                        for f in fields(self)}
            for name in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "merge_lora"):
                if getattr(self, name) != defaults[name]:
                    errors.append(f"{name} is set ({getattr(self, name)!r}) but use_lora is false; add --use_lora "
                                  f"true, or leave {name} out")
        raise_all(errors)
