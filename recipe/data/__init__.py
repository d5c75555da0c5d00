"""Dialogue files -> validated dialogues -> train/validation split -> tokenized (and packed) datasets.

One module per step, each usable on its own:

- `sources`: records from JSON / JSON Lines text (line numbers, repeated keys kept), saved or Hub datasets.
- `formats`: `read_dialogues` parses those records into dialogues of (speaker, text) turns, keeping
  every turn in file order, and names the file, entry and fix of every bad one (`errors`); the dialogues go
  to an Arrow table in the data cache (`dialogues`: `DialogueTable`), never held as Python objects.
- `mixture`: several --data_path sources, each split on its own, weighted and joined.
- `streaming`: --streaming, the training rows read, shuffled, tokenized and packed while training.
- `encoding`: `encode_batch` (a `datasets.map` function) renders `Speaker: text` lines + EOS, builds
  the labels, splits long dialogues into windows at turn boundaries and counts what the loss sees;
  `tokens` tokenizes a batch at once and places every token in its turn with numpy.
- `templates`: `render_with_chat_template` renders with the tokenizer's chat template and locates each
  turn's header, content and end marker, so headers stay context.
- `audit`: `label_audit` sums what the loss sees from per-row count columns; `check_label_audit` refuses
  a loss mask that cannot train, before any step.
- `packing`: best-fit-decreasing packing into rows of `max_length` (positions restart per dialogue)
  and `DialogueCollator`, which pads and never puts padding in the loss.
- `pipeline`: `split_dialogues`, `tokenize_dialogues` (through `datasets.map`, cached by fingerprint)
  and `build_datasets`, the whole path training and evaluation use, cached whole by the files' SHA-256.
- `report`: `data_report` and its printed summary.
- `packing_check`: on the model itself, before training, that packed dialogues do not attend to each other
  (imported by training from its module: it needs torch and a model).
"""

from .encoding import (
    IGNORE_INDEX,
    EncodedDialogue,
    RenderedDialogue,
    chat_messages,
    encode_dialogue,
    render_dialogue,
    require_fast_tokenizer,
)
from .errors import DialogueDataError
from .formats import Dialogue, DialogueFile, parse_dialogue, read_dialogues
from .packing import DialogueCollator, PackedRows, best_fit_decreasing, get_data_collator, pack_layout, packed_row
from .pipeline import (
    DialogueSplits,
    PreparedData,
    build_datasets,
    check_data_paths,
    load_dialogue_splits,
    pack_examples,
    split_dialogues,
    tokenize_dialogues,
    write_prepared_data,
)
from .report import data_report, format_report
from .templates import apply_chat_template, render_with_chat_template

__all__ = [
    "Dialogue",
    "DialogueCollator",
    "DialogueDataError",
    "DialogueFile",
    "DialogueSplits",
    "EncodedDialogue",
    "IGNORE_INDEX",
    "PreparedData",
    "RenderedDialogue",
    "apply_chat_template",
    "best_fit_decreasing",
    "build_datasets",
    "chat_messages",
    "data_report",
    "encode_dialogue",
    "format_report",
    "get_data_collator",
    "check_data_paths",
    "load_dialogue_splits",
    "PackedRows",
    "pack_layout",
    "packed_row",
    "pack_examples",
    "parse_dialogue",
    "read_dialogues",
    "render_dialogue",
    "render_with_chat_template",
    "require_fast_tokenizer",
    "split_dialogues",
    "tokenize_dialogues",
    "write_prepared_data",
]
