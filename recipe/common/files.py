"""Writing result files so that a killed process never leaves a half-written one behind."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Iterable


def atomic_write_text(path: str | os.PathLike, text: str | Iterable[str]) -> Path:
    """Write to a temporary file in the same folder, then rename it over `path` (atomic on POSIX). `text` may
    be pieces, written as they come (a file of gigabytes is never one string).

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
            stream.writelines([text] if isinstance(text, str) else text)
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
    return atomic_write_text(path, (json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def file_sha256(path: str | os.PathLike | None) -> str | None:
    """SHA-256 of a file's bytes (None when there is no such file): identifies data and weights in records.

    A large file's is remembered for the process by the file's identity (device, inode, size, modification
    time): a corpus of gigabytes is hashed once per run, not by every step that names it. (Small files are
    hashed each time: a file rewritten at the same size within the clock's granularity keeps its identity.)"""
    if path is None or not os.path.isfile(path):
        return None
    status = os.stat(path)
    if status.st_size < REMEMBERED_HASH_BYTES:
        return _sha256_of.__wrapped__(None, str(path))
    return _sha256_of((status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns), str(path))


REMEMBERED_HASH_BYTES = 64 << 20


@functools.lru_cache(maxsize=64)
def _sha256_of(identity: tuple[int, int, int, int], path: str) -> str:
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
