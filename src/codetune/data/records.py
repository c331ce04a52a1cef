"""The record every data source produces and every later stage reads (one JSON object per line)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from codetune.errors import CodetuneError
from codetune.manifest import read_jsonl


@dataclass
class Example:
    id: str
    nl: str
    code: str
    language: str = "python"
    group: str | None = None  # repo / file / any key that must not straddle splits
    source: str = ""  # where it came from: "file:line"
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Example:
        return cls(
            id=str(d["id"]),
            nl=d["nl"],
            code=d["code"],
            language=d.get("language", "python"),
            group=d.get("group"),
            source=d.get("source", ""),
            meta=d.get("meta") or {},
        )


@dataclass
class BadRecord:
    """A record that could not be read: where it is and why (listed in the manifest with --skip-bad)."""

    file: str
    line: int
    reason: str


def read_split(data_dir: Path, split: str) -> list[Example]:
    """The examples of `{data_dir}/{split}.jsonl`, as `prepare` wrote them."""
    path = data_dir / f"{split}.jsonl"
    if not path.is_file():
        raise CodetuneError(
            f"{path} not found: run `codetune prepare` first, or point train.data_dir / eval.data_dir at "
            "a prepared folder"
        )
    return [Example.from_dict(d) for d in read_jsonl(path)]
