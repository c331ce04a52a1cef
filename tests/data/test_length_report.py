import dataclasses
import json
from pathlib import Path

from codetune.config import FIELD_HELP, Config, SourceConfig
from codetune.data.length_report import distribution, histogram, policy_costs, statement_pieces
from codetune.data.prepare import prepare
from codetune.manifest import read_jsonl
from tests.conftest import tiny_config


def test_policy_costs_are_counted_exactly() -> None:
    prompts = [10, 10, 30, 10]
    answers = [20, 50, 10, 90]  # totals 30, 60, 40, 100 at a limit of 32
    pieces = [None, [15, 15, 20], None, [70, 20]]
    costs = policy_costs(prompts, answers, 32, pieces)
    assert costs["over_limit"] == 3
    assert costs["drop"] == {
        "examples_dropped": 3,
        "tokens_lost": 200,
        "share_of_tokens": round(200 / 230, 4),
    }
    # every prompt fits (30 < 32), so truncate keeps all three: cuts 28 + 8 + 68 tokens
    assert costs["truncate"] == {
        "examples_truncated": 3,
        "tokens_cut": 104,
        "examples_dropped": 0,
        "tokens_lost": 0,
    }
    assert (
        policy_costs([40], [5], 32, [None])["truncate"]["examples_dropped"] == 1
    )  # the prompt alone is over
    # budget for example 1 is 32 - 10 - 1 = 21: pieces 15 | 15 | 20 -> 3 pieces; example 3 has a 70 piece
    assert costs["split"] == {"examples_split": 1, "pieces": 3, "examples_dropped": 2, "tokens_lost": 140}


def test_distribution_histogram_and_statement_pieces() -> None:
    d = distribution([1, 2, 3, 4, 100])
    assert (d["count"], d["min"], d["p50"], d["max"], d["mean"]) == (5, 1, 3, 100, 22.0)
    assert histogram([1, 64, 65, 5000])["1-64"] == 2 and histogram([5000])[">4096"] == 1
    code = "def f(x):\n    a = 1\n    if a:\n        b = 2\n    return a"
    assert statement_pieces(code) == ["def f(x):\n    a = 1\n", "    if a:\n        b = 2\n", "    return a"]
    assert "".join(statement_pieces(code) or []) == code
    assert statement_pieces("def f(:") is None


def test_prepare_writes_a_length_report(tmp_path: Path, pairs_file: Path) -> None:
    cfg = tiny_config(tmp_path, pairs_file, data={"length_report": {"tokenizer": "tiny", "max_length": 24}})
    out = prepare(cfg)
    report = json.loads((out / "length_report.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["length_report"] == report and report["tokenizer"] == "tiny"
    train = report["splits"]["train"]
    assert train["prompt_tokens"]["count"] == len(read_jsonl(out / "train.jsonl"))
    pol = train["policies"]
    assert pol["max_length"] == 24 and pol["over_limit"] == pol["drop"]["examples_dropped"] > 0
    assert sum(train["histogram_total"].values()) == train["total_tokens"]["count"]


def test_every_new_config_key_has_help() -> None:
    cfg = Config()
    keys = [f"data.{f.name}" for f in dataclasses.fields(cfg.data)]
    for section in ("near_dup", "decontamination", "augmentation", "fim", "length_report"):
        keys += [f"data.{section}.{f.name}" for f in dataclasses.fields(getattr(cfg.data, section))]
    keys += [
        f"data.sources.{name}"
        for name in ("kind", "path", "tests_field", "date_field", "include", "exclude", "languages")
    ]
    assert [k for k in keys if not FIELD_HELP.get(k)] == []
    assert {f.name for f in dataclasses.fields(SourceConfig)} >= {"kind", "include", "exclude", "languages"}
