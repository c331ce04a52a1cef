"""Read NL/code pairs from JSONL, CSV or Parquet files with a configurable field mapping."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from codetune.config import SourceConfig
from codetune.data.records import BadRecord, Example
from codetune.errors import CodetuneError

_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def detect_format(src: SourceConfig) -> str:
    if src.format != "auto":
        return src.format
    fmt = _SUFFIXES.get(Path(src.path).suffix.lower())
    if fmt is None:
        raise CodetuneError(
            f"{src.path}: cannot tell the format from the extension; set format: jsonl, csv or parquet"
        )
    return fmt


def _raw_rows(path: Path, fmt: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """Yield (line number, row) or (line number, error text). Line numbers are 1-based."""
    if fmt == "jsonl":
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield lineno, f"not valid UTF-8 (byte {e.start})"
                    continue
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    yield lineno, f"bad JSON: {e.msg} at column {e.colno}"
                    continue
                if not isinstance(obj, dict):
                    yield lineno, f"expected a JSON object, got {type(obj).__name__}"
                    continue
                yield lineno, obj
    elif fmt == "csv":
        try:
            with open(path, encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f)
                for row in reader:
                    # line_num is the physical line where this record ended
                    yield reader.line_num, dict(row)
        except UnicodeDecodeError as e:
            yield 0, f"not valid UTF-8 (byte offset {e.start}); re-encode the file as UTF-8"
        except csv.Error as e:
            yield 0, f"bad CSV: {e}"
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for a bad file
            raise CodetuneError(f"{path}: cannot read as Parquet: {e}") from e
        for i, row in enumerate(table.to_pylist(), start=1):
            yield i, row
    else:
        raise CodetuneError(f"{path}: unknown format {fmt!r}")


def read_source(src: SourceConfig, skip_bad: bool) -> tuple[list[Example], list[BadRecord], int]:
    """Read one source. Returns (examples, bad records, rows read).

    A malformed row raises CodetuneError naming the file and line, unless `skip_bad` is set, in which
    case it is returned as a BadRecord to be counted and listed in the manifest.
    """
    path = Path(src.path)
    if not path.is_file():
        raise CodetuneError(f"source file {path} not found (data.sources[].path)")
    fmt = detect_format(src)
    examples: list[Example] = []
    bad: list[BadRecord] = []
    rows = 0
    for lineno, row in _raw_rows(path, fmt):
        rows += 1
        where = f"{path}:{lineno}" if fmt != "parquet" else f"{path} row {lineno}"
        problem = row if isinstance(row, str) else _check_fields(row, src)
        if problem is not None:
            if not skip_bad:
                raise CodetuneError(
                    f"{where}: {problem}. Fix the record, or pass --skip-bad to count and skip it"
                )
            bad.append(BadRecord(str(path), lineno, problem))
            continue
        assert isinstance(row, dict)
        rid = row.get(src.id_field) if src.id_field else None
        examples.append(
            Example(
                id=str(rid) if rid not in (None, "") else f"{path.stem}-{lineno}",
                nl=str(row[src.nl_field]),
                code=str(row[src.code_field]),
                language=src.language,
                group=str(row[src.group_field])
                if src.group_field and row.get(src.group_field) is not None
                else None,
                source=where,
                meta=_extra_fields(row, src),
            )
        )
    return examples, bad, rows


def _extra_fields(row: dict[str, Any], src: SourceConfig) -> dict[str, Any]:
    """Optional per-record tests (`tests_field`) and date (`date_field`), kept in `meta`."""
    meta: dict[str, Any] = {}
    if src.tests_field and row.get(src.tests_field) not in (None, ""):
        meta["tests"] = str(row[src.tests_field])
    if src.date_field and row.get(src.date_field) not in (None, ""):
        meta["date"] = str(row[src.date_field])
    return meta


def _check_fields(row: dict[str, Any], src: SourceConfig) -> str | None:
    for role, name in (("nl_field", src.nl_field), ("code_field", src.code_field)):
        if name not in row:
            keys = ", ".join(sorted(map(str, row))) or "none"
            return f"missing field {name!r} (data.sources[].{role}); fields present: {keys}"
        if not isinstance(row[name], str):
            return f"field {name!r} must be a string, got {type(row[name]).__name__}"
    if src.group_field and src.group_field not in row:
        return f"missing group field {src.group_field!r} (data.sources[].group_field)"
    return None
