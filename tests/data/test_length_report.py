import dataclasses
import json
from pathlib import Path

from codetune.config import FIELD_HELP, Config, SourceConfig
from codetune.data.length_report import POLICIES, distribution, histogram, policy_costs
from codetune.data.prepare import prepare
from codetune.manifest import read_jsonl
from tests.conftest import tiny_config


def test_policy_costs_are_counted_exactly() -> None:
    prompts = [10, 10, 30, 10]
    answers = [20, 50, 10, 90]  # totals 30, 60, 40, 100 at a limit of 32
    costs = policy_costs(prompts, answers, 32)
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
    assert policy_costs([40], [5], 32)["truncate"]["examples_dropped"] == 1  # the prompt alone is over


def test_only_the_policies_training_offers_are_priced() -> None:
    """The report once priced a `split` policy that train.length_policy did not accept."""
    assert POLICIES == ("drop", "truncate")
    costs = policy_costs([10, 10], [20, 50], 32)
    assert set(costs) - {"max_length", "examples", "over_limit"} == set(POLICIES)


def test_distribution_and_histogram() -> None:
    d = distribution([1, 2, 3, 4, 100])
    assert (d["count"], d["min"], d["p50"], d["max"], d["mean"]) == (5, 1, 3, 100, 22.0)
    assert histogram([1, 64, 65, 5000])["1-64"] == 2 and histogram([5000])[">4096"] == 1


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
    assert "split" not in pol and set(pol) >= set(POLICIES)
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
