"""Evaluation by execution during training on the prepared valid split's own tests (a file source's
`tests_field`), through the benchmark runner's scoring: no built-in benchmark needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from codetune.benchmarks.user_tasks import UserTasks
from codetune.errors import CodetuneError
from codetune.manifest import read_jsonl
from codetune.training.exec_eval import resolve_eval_benchmark
from tests.conftest import make_pairs, tiny_config, write_jsonl


def _pairs_with_tests(tmp_path: Path) -> Path:
    rows = []
    for row in make_pairs():
        name = row["code"].split("(")[0].removeprefix("def ")
        rows.append({**row, "tests": f"assert callable({name})\n"})
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


def test_training_scores_pass_at_1_on_the_prepared_valid_splits_tests(tmp_path: Path) -> None:
    from codetune.data.prepare import prepare
    from codetune.training.loop import train

    source = _pairs_with_tests(tmp_path)
    cfg = tiny_config(
        tmp_path,
        source,
        train={
            "max_steps": 2,
            "eval_every": 2,
            "eval_benchmark": "valid",
            "eval_tasks": 3,
            "eval_max_new_tokens": 8,
        },
    )
    cfg.data.sources[0].tests_field = "tests"
    data = prepare(cfg)
    bench, split = resolve_eval_benchmark("valid", data)
    assert isinstance(bench, UserTasks) and split == "valid"
    valid_ids = [r["id"] for r in read_jsonl(data / "valid.jsonl")][:3]
    out = train(cfg)
    (row,) = [r for r in read_jsonl(out / "metrics.jsonl") if "valid_loss" in r]
    assert row["valid_tasks"] == 3 and 0 <= row["valid_passed"] <= 3 and row["valid_bleu"] is not None
    evals = read_jsonl(out / "evals" / "step-000002.jsonl")
    assert [e["task_id"] for e in evals] == valid_ids
    # a random tiny model writes no valid function; the verdicts are the sandbox's, never skipped
    assert all(e["status"] in ("passed", "failed", "error", "timeout") for e in evals)


def test_an_unknown_eval_benchmark_is_an_error_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(
        CodetuneError, match=r"train.eval_benchmark 'nope': not a benchmark .* not a prepared split"
    ):
        resolve_eval_benchmark("nope", tmp_path)
