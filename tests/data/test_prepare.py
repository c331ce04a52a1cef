import csv
import json
import re
from pathlib import Path

import pytest

from codetune.data.prepare import prepare
from codetune.errors import CodetuneError
from codetune.manifest import read_jsonl
from tests.conftest import make_pairs, tiny_config, write_jsonl


def test_prepare_writes_splits_and_manifest(tmp_path: Path, pairs_file: Path) -> None:
    out = prepare(tiny_config(tmp_path, pairs_file))
    manifest = json.loads((out / "manifest.json").read_text())
    splits = {name: read_jsonl(out / f"{name}.jsonl") for name in ("train", "valid", "test")}
    assert sum(len(v) for v in splits.values()) == 42 == manifest["counts"]["kept"]
    assert manifest["counts"]["splits"] == {k: len(v) for k, v in splits.items()}
    assert manifest["inputs"][0]["rows"] == 42
    assert len(manifest["inputs"][0]["sha256"]) == 64
    row = splits["train"][0]
    assert set(row) >= {"id", "nl", "code", "language", "group", "source"}
    assert (out / "config.yaml").is_file()


def test_split_is_reproducible_and_keeps_groups_together(tmp_path: Path, pairs_file: Path) -> None:
    cfg = tiny_config(tmp_path, pairs_file, data={"split_by": "group"})
    out = prepare(cfg)
    first = {n: [r["id"] for r in read_jsonl(out / f"{n}.jsonl")] for n in ("train", "valid", "test")}
    groups = {n: {r["group"] for r in read_jsonl(out / f"{n}.jsonl")} for n in ("train", "valid", "test")}
    assert not (groups["train"] & groups["test"]) and not (groups["train"] & groups["valid"])
    # input order must not matter
    shuffled = write_jsonl(tmp_path / "rev.jsonl", list(reversed(make_pairs())))
    cfg2 = tiny_config(tmp_path / "b", shuffled, data={"split_by": "group"})
    out2 = prepare(cfg2)
    second = {n: [r["id"] for r in read_jsonl(out2 / f"{n}.jsonl")] for n in ("train", "valid", "test")}
    assert {k: sorted(v) for k, v in first.items()} == {k: sorted(v) for k, v in second.items()}
    # another seed gives another split
    out3 = prepare(tiny_config(tmp_path / "c", pairs_file, data={"split_by": "group", "seed": 7}))
    third = {n: sorted(r["id"] for r in read_jsonl(out3 / f"{n}.jsonl")) for n in ("train", "valid", "test")}
    assert third != {k: sorted(v) for k, v in first.items()}


def test_cleaning_counts_every_drop(tmp_path: Path) -> None:
    rows = make_pairs()[:10]
    rows.append(
        {**rows[0], "uid": "dup", "code": rows[0]["code"].replace("    ", "  ") + "\n\n"}
    )  # same code
    rows.append({"uid": "bad-syntax", "docstring": "Broken.", "code": "def f(:\n  pass", "repo": "r"})
    rows.append({"uid": "no-doc", "docstring": "   ", "code": "x = 1", "repo": "r"})
    rows.append(
        {
            "uid": "crlf",
            "docstring": "Windows  line endings.\r\n",
            "code": "def w():\r\n    return 1   \r\n",
            "repo": "r",
        }
    )
    out = prepare(tiny_config(tmp_path, write_jsonl(tmp_path / "p.jsonl", rows)))
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["dropped"] == {"empty_nl": 1, "empty_code": 0, "syntax_error": 1, "exact_duplicate": 1}
    assert m["dropped_ids"]["syntax_error"] == ["bad-syntax"]
    assert m["counts"]["kept"] == 11
    every = [r for n in ("train", "valid", "test") for r in read_jsonl(out / f"{n}.jsonl")]
    crlf = next(r for r in every if r["id"] == "crlf")
    assert crlf["code"] == "def w():\n    return 1" and crlf["nl"] == "Windows  line endings."


def test_malformed_jsonl_line_is_named(tmp_path: Path) -> None:
    good = json.dumps(make_pairs()[0])
    path = tmp_path / "broken.jsonl"
    path.write_text(f'{good}\n{{"docstring": "x", \n{good}\n')
    with pytest.raises(CodetuneError, match=r"broken.jsonl:2: bad JSON.*--skip-bad"):
        prepare(tiny_config(tmp_path, path))


def test_missing_field_and_non_utf8_are_named(tmp_path: Path) -> None:
    path = tmp_path / "fields.jsonl"
    path.write_text(json.dumps({"uid": "1", "docstring": "d", "repo": "r"}) + "\n")
    with pytest.raises(CodetuneError, match=r"fields.jsonl:1: missing field 'code'.*code_field"):
        prepare(tiny_config(tmp_path, path))
    path2 = tmp_path / "latin1.jsonl"
    path2.write_bytes(json.dumps(make_pairs()[0]).encode() + b"\n" + b'{"docstring": "caf\xe9"}\n')
    with pytest.raises(CodetuneError, match=r"latin1.jsonl:2: not valid UTF-8"):
        prepare(tiny_config(tmp_path, path2))


def test_skip_bad_counts_and_lists_bad_records(tmp_path: Path) -> None:
    rows = "".join(json.dumps(r) + "\n" for r in make_pairs())
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        rows.encode() + b"not json\n" + b'{"uid": "z", "docstring": "d", "repo": "r"}\n' + b"\xff\xfe\n"
    )
    cfg = tiny_config(tmp_path, path, data={"skip_bad": True})
    out = prepare(cfg)
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["bad_records"] == 3 and m["counts"]["kept"] == 42
    assert [b["line"] for b in m["bad_records"]] == [43, 44, 45]
    assert len(read_jsonl(out / "bad_records.jsonl")) == 3


def test_csv_and_parquet_sources_with_field_mapping(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = make_pairs()
    csv_path = tmp_path / "pairs.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    pq_path = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), pq_path)
    for path in (csv_path, pq_path):
        out = prepare(tiny_config(tmp_path / path.suffix[1:], path))
        m = json.loads((out / "manifest.json").read_text())
        assert m["counts"]["kept"] == 42, path
        codes = {r["code"] for n in ("train", "valid", "test") for r in read_jsonl(out / f"{n}.jsonl")}
        assert "def add_a_b(a, b):\n    return a + b" in codes


def test_other_languages_skip_the_syntax_check_and_say_so(tmp_path: Path) -> None:
    rows = [
        {"uid": str(i), "docstring": f"Log {i}.", "code": f"console.log({i});", "repo": "r"}
        for i in range(10)
    ]
    cfg = tiny_config(tmp_path, write_jsonl(tmp_path / "js.jsonl", rows))
    cfg.data.sources[0].language = "javascript"
    out = prepare(cfg)
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["kept"] == 10
    assert m["notes"] == {"syntax check skipped for language 'javascript'": 10}


def _csv_with_one_bad_row(tmp_path: Path, bad_line: bytes) -> Path:
    """make_pairs() as CSV (each record spans 3 lines: the code field holds newlines) with one bad row
    after the first 20 records, at line 62."""
    import io

    rows = make_pairs()
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows[:20])
    head = text.getvalue().encode()
    assert head.count(b"\n") == 61
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    w.writerows(rows[20:])
    path = tmp_path / "pairs.csv"
    path.write_bytes(head + bad_line + text.getvalue().encode())
    return path


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        # the open quote pairs with the next record's opening quote on line 63
        (
            b'broken-1,"Return one.,x = 1,repo0\n',
            r"bad CSV: 3 fields where the header has 4 \(the record runs to line 63: a quote left open\?\)",
        ),
        (
            b"bad-byte,Return \xff two.,x = 2,repo0\n",
            "not valid UTF-8 at byte 16; re-encode the file as UTF-8",
        ),
    ],
)
def test_a_bad_csv_row_costs_only_itself(tmp_path: Path, bad_line: bytes, reason: str) -> None:
    path = _csv_with_one_bad_row(tmp_path, bad_line)
    with pytest.raises(CodetuneError, match=rf"pairs.csv:62: {reason}\. Fix the record, or pass --skip-bad"):
        prepare(tiny_config(tmp_path / "strict", path))
    out = prepare(tiny_config(tmp_path, path, data={"skip_bad": True}))
    m = json.loads((out / "manifest.json").read_text())
    # the 22 records after the bad row survive: all 42 pairs are read, one bad record is counted
    assert m["counts"]["rows_read"] == 43 and m["counts"]["bad_records"] == 1 and m["counts"]["kept"] == 42
    assert [(b["line"], bool(re.fullmatch(reason, b["reason"]))) for b in m["bad_records"]] == [(62, True)]
    ids = {r["id"] for n in ("train", "valid", "test") for r in read_jsonl(out / f"{n}.jsonl")}
    assert ids == {r["uid"] for r in make_pairs()}


def test_a_csv_quote_in_a_plain_field_or_never_closed_is_one_bad_record(tmp_path: Path) -> None:
    path = _csv_with_one_bad_row(tmp_path, b'stray,Say "hi.,x = 3,repo0\n')
    out = prepare(tiny_config(tmp_path, path, data={"skip_bad": True}))
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["bad_records"] == 1 and m["counts"]["kept"] == 42
    assert m["bad_records"][0]["line"] == 62
    # on the last line, an open quote has nothing to pair with
    path.write_bytes(path.read_bytes().replace(b'stray,Say "hi.,x = 3,repo0\n', b"") + b'last,"Open,x,r\n')
    out = prepare(tiny_config(tmp_path / "b", path, data={"skip_bad": True}))
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["bad_records"] == 1 and m["counts"]["kept"] == 42
    assert (m["bad_records"][0]["line"], m["bad_records"][0]["reason"]) == (
        128,
        "bad CSV: a quote opened here is never closed",
    )
