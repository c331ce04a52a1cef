"""`kind: hf` sources: a dataset built here with `datasets`, read offline through the prepare stage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from codetune.config import config_from_dict, config_to_dict
from codetune.data.prepare import prepare
from codetune.errors import CodetuneError
from codetune.manifest import read_jsonl
from tests.conftest import make_pairs, tiny_config

datasets = pytest.importorskip("datasets", reason="kind: hf needs `datasets` (pip install -e '.[hf]')")


def _columns(bad_at: int | None = None) -> dict[str, list[Any]]:
    """make_pairs() under hub-style column names; tests as a list of asserts; one null solution."""
    rows = make_pairs()
    cols: dict[str, list[Any]] = {
        "task_id": [r["uid"] for r in rows],
        "prompt": [r["docstring"] for r in rows],
        "solution": [r["code"] for r in rows],
        "repo": [r["repo"] for r in rows],
        "test_list": [[f"assert {r['uid'].split('-')[0]} is not None", "assert True"] for r in rows],
    }
    if bad_at is not None:
        for name in cols:
            cols[name].insert(bad_at, "odd-one" if name == "task_id" else None)
    return cols


def _hf_config(tmp_path: Path, path: Path | str, **source: Any):
    cfg = tiny_config(tmp_path, Path("unused"))
    raw = config_to_dict(cfg)
    raw["data"]["sources"] = [
        {
            "kind": "hf",
            "path": str(path),
            "nl_field": "prompt",
            "code_field": "solution",
            "id_field": "task_id",
            "group_field": "repo",
            "tests_field": "test_list",
            **source,
        }
    ]
    return config_from_dict(raw, "test")


def test_a_saved_dataset_with_field_mapping_a_bad_record_and_manifest_counts(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    datasets.Dataset.from_dict(_columns(bad_at=5)).save_to_disk(str(folder))

    with pytest.raises(CodetuneError, match=r"hf:.*ds\[train\] index 5: field 'prompt' must be a string"):
        prepare(_hf_config(tmp_path / "strict", folder))

    cfg = _hf_config(tmp_path, folder)
    cfg.data.skip_bad = True
    out = prepare(cfg)
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["rows_read"] == 43 and m["counts"]["bad_records"] == 1
    assert m["counts"]["examples_read"] == 42 and m["counts"]["kept"] == 42
    assert sum(m["counts"]["splits"].values()) == 42
    assert m["bad_records"] == [
        {"file": str(folder), "line": 5, "reason": "field 'prompt' must be a string, got NoneType"}
    ]
    source = m["inputs"][0]
    assert (source["kind"], source["loader"], source["split"], source["rows"], source["read"]) == (
        "hf",
        "load_from_disk",
        "train",
        43,
        42,
    )
    assert source["fingerprint"] and source["datasets_version"] == datasets.__version__
    # the field mapping: task_id -> id, prompt -> nl, solution -> code, repo -> group, test_list -> tests
    rows = {r["id"]: r for n in ("train", "valid", "test") for r in read_jsonl(out / f"{n}.jsonl")}
    assert set(rows) == {r["uid"] for r in make_pairs()}
    add = rows["add-a-b"]
    assert (add["nl"], add["code"], add["group"]) == (
        "Return the sum of a and b.",
        "def add_a_b(a, b):\n    return a + b",
        "repo0",
    )
    assert add["meta"]["tests"] == "assert add is not None\nassert True"
    assert add["source"] == f"hf:{folder}[train] index 0"


def test_a_dataset_dict_split_and_a_folder_of_data_files(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "dd"
    cols = _columns()
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({k: v[:2] for k, v in cols.items()}),
            "validation": datasets.Dataset.from_dict(cols),
        }
    ).save_to_disk(str(folder))
    with pytest.raises(
        CodetuneError, match=r"no split 'test' \(data.sources\[\].hf_split\); it has: train, validation"
    ):
        prepare(_hf_config(tmp_path / "a", folder, hf_split="test"))
    m = json.loads(
        (prepare(_hf_config(tmp_path / "b", folder, hf_split="validation")) / "manifest.json").read_text()
    )
    assert m["counts"]["kept"] == 42 and m["inputs"][0]["split"] == "validation"

    # a plain folder of JSONL data files goes through load_dataset (no network: local files)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    files = tmp_path / "files"
    files.mkdir()
    rows = [dict(zip(cols, vals, strict=True)) for vals in zip(*cols.values(), strict=True)]
    (files / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = json.loads((prepare(_hf_config(tmp_path / "c", files)) / "manifest.json").read_text())
    assert m["counts"]["kept"] == 42 and m["inputs"][0]["loader"] == "load_dataset"

    with pytest.raises(CodetuneError, match=r"no column code_field 'code'.*columns: task_id, prompt"):
        prepare(_hf_config(tmp_path / "d", folder, hf_split="validation", code_field="code"))


def test_a_hub_name_that_cannot_be_loaded_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    # offline, the hub path fails inside datasets.load_dataset; the error names the source and what to do
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    with pytest.raises(CodetuneError, match=r"'no-such-user/no-such-dataset' \(hub dataset \(needs network"):
        prepare(_hf_config(tmp_path, "no-such-user/no-such-dataset"))


@pytest.mark.slow
def test_a_hub_dataset(tmp_path: Path) -> None:
    """Needs network access to the Hugging Face hub: HumanEval's 164 problems as NL/code pairs."""
    cfg = _hf_config(
        tmp_path,
        "openai/openai_humaneval",
        hf_split="test",
        code_field="canonical_solution",
        group_field=None,
        tests_field="test",
    )
    cfg.data.decontamination.eval_sets = []
    m = json.loads((prepare(cfg) / "manifest.json").read_text())
    assert m["inputs"][0]["rows"] == 164 and m["inputs"][0]["loader"] == "load_dataset"
