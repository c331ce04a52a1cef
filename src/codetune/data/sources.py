"""Read NL/code pairs from JSONL, CSV or Parquet files, or a Hugging Face dataset (`kind: hf`, see
sources_hf.py), with a configurable field mapping."""

from __future__ import annotations

import csv
import io
import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from codetune import progress
from codetune.config import SourceConfig
from codetune.data.records import BadRecord, Example
from codetune.data.translation import read_translation_source
from codetune.errors import CodetuneError
from codetune.manifest import sha256_file

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
        yield from _csv_rows(path)
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for a bad file
            raise CodetuneError(f"{path}: cannot read as Parquet: {e}") from e
        yield from enumerate(table.to_pylist(), start=1)
    else:
        raise CodetuneError(f"{path}: unknown format {fmt!r}")


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """CSV records one at a time, so that one bad record costs only itself.

    A record is the physical lines from where it starts up to the line where its quotes balance (a quoted
    field may hold newlines). A record that can't be read (a byte that isn't UTF-8, a quote that never
    closes or that closes rows later, a field count other than the header's) is yielded as an error at the
    line it starts on, and reading resumes on the next line. Good records carry the line they end on (as
    csv.DictReader's line_num did, so ids made from it are unchanged).
    """
    with open(path, "rb") as f:
        yield from _csv_records(path, _Lines(f))


def _csv_records(path: Path, lines: _Lines) -> Iterator[tuple[int, dict[str, Any] | str]]:
    header: list[str] | None = None
    i = 0
    while lines.get(i) is not None:
        lines.forget_before(i)
        text, end, problem = _csv_record(lines, i)
        if problem is None and not text.strip():
            i = end  # blank line: not a record (as csv.DictReader)
            continue
        fields: list[str] = []
        if problem is None:
            try:
                parsed = list(csv.reader(io.StringIO(text)))
            except csv.Error as e:
                problem = f"bad CSV: {e}"
            else:
                fields = parsed[0] if len(parsed) == 1 else []
                if len(parsed) != 1:
                    problem = f"bad CSV: {len(parsed)} records where one was expected (a stray quote?)"
        if header is None:
            if problem is not None:
                raise CodetuneError(f"{path}:{i + 1}: cannot read the CSV header: {problem}")
            header = [h.lstrip("\ufeff") if k == 0 else h for k, h in enumerate(fields)]
            i = end
            continue
        if problem is None and len(fields) != len(header):
            problem = f"bad CSV: {len(fields)} fields where the header has {len(header)}" + (
                f" (the record runs to line {end}: a quote left open?)" if end > i + 1 else ""
            )
        if problem is not None:
            yield i + 1, problem
            i += 1  # resynchronise on the next physical line
            continue
        yield end, dict(zip(header, fields, strict=True))
        i = end


class _Lines:
    """A file's physical lines by 0-based index, read as far as asked and kept from the current record
    on, so reading can go back to the line after a bad record without holding the whole file."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.first, self.kept = f, 0, deque[bytes]()

    def get(self, j: int) -> bytes | None:
        while j >= self.first + len(self.kept):
            line = self.f.readline()
            if not line:
                return None
            self.kept.append(line)
        return self.kept[j - self.first]

    def forget_before(self, i: int) -> None:
        while self.first < i and self.kept:
            self.kept.popleft()
            self.first += 1


def _csv_record(lines: _Lines, start: int) -> tuple[str, int, str | None]:
    """The text of the CSV record starting at line index `start`, the index after its last line, and
    what is wrong with it (None: nothing)."""
    parts: list[str] = []
    quotes = 0
    j = start
    while (raw := lines.get(j)) is not None:
        j += 1
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            where = f" (line {j})" if j > start + 1 else ""
            return "", j, f"not valid UTF-8 at byte {e.start}{where}; re-encode the file as UTF-8"
        parts.append(line)
        quotes += line.count('"')
        if quotes % 2 == 0:  # "" inside a quoted field counts twice, so the parity says open or closed
            return "".join(parts), j, None
    return "", j, "bad CSV: a quote opened here is never closed"


def read_source(src: SourceConfig, skip_bad: bool) -> tuple[list[Example], list[BadRecord], dict[str, Any]]:
    """Read one file source (JSONL, CSV, Parquet) or `kind: hf` source (Hugging Face `datasets`).

    Returns (examples, bad records, the source's manifest entry: where it came from, its hash or
    fingerprint, rows read and examples kept). A malformed row raises CodetuneError naming the file and
    line (hf: the index and field), unless `skip_bad` is set, in which case it is returned as a BadRecord
    to be counted and listed in the manifest.
    """
    if src.kind == "translation":
        return read_translation_source(src, skip_bad, read_source)
    if src.kind == "hf":
        from codetune.data.sources_hf import open_hf_source

        hf = open_hf_source(src)
        examples, bad = _read_rows(
            src, hf.rows(), hf.total, skip_bad, where=lambda i: f"{hf.label} index {i}", stem=hf.stem
        )
        return examples, bad, {**hf.info, "rows": len(examples) + len(bad), "read": len(examples)}
    path = Path(src.path)
    if not path.is_file():
        raise CodetuneError(f"source file {path} not found (data.sources[].path)")
    fmt = detect_format(src)
    examples, bad = _read_rows(
        src,
        _raw_rows(path, fmt),
        None,
        skip_bad,
        where=(lambda n: f"{path}:{n}") if fmt != "parquet" else (lambda n: f"{path} row {n}"),
        stem=path.stem,
    )
    info = {"path": src.path, "sha256": sha256_file(path), "rows": len(examples) + len(bad)}
    return examples, bad, {**info, "read": len(examples)}


def _read_rows(
    src: SourceConfig,
    rows: Iterable[tuple[int, dict[str, Any] | str]],
    total: int | None,
    skip_bad: bool,
    where: Callable[[int], str],
    stem: str,
) -> tuple[list[Example], list[BadRecord]]:
    """(position, row or error text) -> Examples with the source's field mapping, and the bad records."""
    examples: list[Example] = []
    bad: list[BadRecord] = []
    with progress.task(f"prepare: read {src.path}", total, unit="rows") as bar:
        for pos, row in rows:
            bar.advance()
            problem = row if isinstance(row, str) else _check_fields(row, src)
            if problem is not None:
                if not skip_bad:
                    raise CodetuneError(
                        f"{where(pos)}: {problem}. Fix the record, or pass --skip-bad to count and skip it"
                    )
                bad.append(BadRecord(src.path, pos, problem))
                continue
            assert isinstance(row, dict)
            rid = row.get(src.id_field) if src.id_field else None
            examples.append(
                Example(
                    id=str(rid) if rid not in (None, "") else f"{stem}-{pos}",
                    nl=str(row[src.nl_field]),
                    code=str(row[src.code_field]),
                    language=src.language,
                    group=str(row[src.group_field])
                    if src.group_field and row.get(src.group_field) is not None
                    else None,
                    source=where(pos),
                    meta=_extra_fields(row, src),
                )
            )
        bar.note(f"{len(examples)} examples, {len(bad)} bad records")
    return examples, bad


def _extra_fields(row: dict[str, Any], src: SourceConfig) -> dict[str, Any]:
    """Optional per-record tests (`tests_field`) and date (`date_field`), kept in `meta`."""
    meta: dict[str, Any] = {}
    tests = row.get(src.tests_field) if src.tests_field else None
    if isinstance(tests, list | tuple):  # e.g. a list of assert lines, as hub datasets often hold them
        tests = "\n".join(map(str, tests))
    if tests not in (None, ""):
        meta["tests"] = str(tests)
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
