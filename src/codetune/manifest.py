"""Manifests: counts, hashes, versions and the resolved config written next to every stage output."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from codetune.errors import CodetuneError

_PACKAGES = ("codetune", "torch", "transformers", "peft", "accelerate", "tokenizers", "sacrebleu")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


@contextlib.contextmanager
def atomic_folder(folder: Path) -> Iterator[Path]:
    """Write a folder all at once: the block fills the folder this yields (`folder.tmp`, beside it), which
    then takes the place of `folder` (an older one is removed), so no reader ever sees a half-written
    folder under the real name. On an error the partial folder is removed and `folder` stays as it was."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a crash
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def make_output_dir(path: str | Path, key: str) -> Path:
    """Create the output folder `path` (config key `key`) and check it takes files; a folder that can't
    be made (a file on the way, a read-only mount, no permission) stops with one line naming the key."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):  # mkdir succeeds on an existing read-only folder
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise CodetuneError(
            f"{key}: cannot create or write the folder {out} ({reason}); set {key} to a writable folder"
        ) from None
    return out


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename) so a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_manifest(directory: Path, stage: str, **fields: Any) -> Path:
    """Write `manifest.json` for a stage output: stage name, time, versions, plus the given fields."""
    manifest = {
        "stage": stage,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
        **fields,
    }
    path = directory / "manifest.json"
    write_json(path, manifest)
    return path
