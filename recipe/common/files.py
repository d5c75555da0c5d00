"""Writing result files so that a killed process never leaves a half-written one behind."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Iterable


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write to a temporary file in the same folder, then rename it over `path` (atomic on POSIX).

    The temporary file is created with mode 0666 and the kernel applies the umask, as for any new
    file: reading the umask would mean changing it, which races with other threads creating files
    (the Hub push threads, W&B).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, value: Any) -> Path:
    return atomic_write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def file_sha256(path: str | os.PathLike | None) -> str | None:
    """SHA-256 of a file's bytes (None when there is no such file): identifies data and weights in records."""
    if path is None or not os.path.isfile(path):
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def user_cache_dir() -> Path:
    """Where the recipe keeps what it can make again (outside the repository): $DIALOGUE_FINETUNE_CACHE, else
    $XDG_CACHE_HOME/dialogue-finetune, else ~/.cache/dialogue-finetune (the folder .ci/run keeps the real base in)."""
    if os.environ.get("DIALOGUE_FINETUNE_CACHE"):
        return Path(os.environ["DIALOGUE_FINETUNE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dialogue-finetune"
