"""The record every data source produces and every later stage reads (one JSON object per line)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
