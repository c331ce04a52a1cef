"""Comparison of evaluation folders (paired bootstrap, fixed/broken tasks) and the HTML report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from codetune.errors import CodetuneError
from codetune.eval.passk import bootstrap_ci
from codetune.eval.report import bootstrap_mean_ci, compare, load_results, paired_bootstrap, write_report
from codetune.manifest import write_json, write_jsonl

TASKS = [f"DFB/B{i:04d}" for i in range(20)]
CATEGORIES = ("aggregation", "visualisation")


def make_model(
    eval_dir: Path,
    label: str,
    passed: list[int],
    n: int = 1,
    tasks: list[str] = TASKS,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """A folder like dataframebench writes: `passed[i]` of the `n` samples of task i passed (the first ones)."""
    folder = eval_dir / label
    results, samples = [], []
    for i, (task_id, c) in enumerate(zip(tasks, passed, strict=True)):
        verdicts = []
        for j in range(n):
            ok = j < c
            verdicts.append(
                {
                    "status": "passed" if ok else ("failed" if i % 2 else "error"),
                    "error_type": None if ok else ("AssertionError" if i % 2 else "KeyError"),
                    "detail": "" if ok else f"{label} sample {j} of task {i} went wrong",
                    "duration_s": 0.1,
                    "stderr_tail": "" if ok else "\n".join(f"{label} stderr line {k}" for k in range(30)),
                }
            )
            code = (
                f"# {label} {task_id} sample {j}\nresult = df.groupby('k').sum()  # {'ok' if ok else 'bad'}\n"
            )
            samples.append({"task_id": task_id, "code": code, "raw": code, "finish_reason": "stop"})
        results.append(
            {
                "task_id": task_id,
                "category": CATEGORIES[i % 2],
                "n": n,
                "c": c,
                "pass@1": c / n,
                "verdicts": verdicts,
            }
        )
    write_jsonl(folder / "results.jsonl", results)
    write_jsonl(folder / "samples.jsonl", samples)
    write_json(
        folder / "metrics.json",
        {"pass@1": sum(passed) / (n * len(tasks)), "problems": len(tasks)} | (metrics or {}),
    )
    return folder


def make_pair(eval_dir: Path) -> None:
    """base passes tasks 0-7, tuned passes 3-12: fixed 8-12, broken 0-2, unchanged 3-7 and 13-19."""
    make_model(eval_dir, "base", [int(i < 8) for i in range(20)])
    make_model(eval_dir, "tuned", [int(3 <= i <= 12) for i in range(20)])


def make_train_dir(train_dir: Path) -> None:
    rows: list[dict[str, Any]] = []
    for step in range(1, 61):
        rows.append({"step": step, "loss": 2.5 / step**0.3 + 0.05 * (step % 3), "lr": 1e-4, "grad_norm": 1.0})
        if step % 20 == 0:
            rows.append(
                {"step": step, "valid_loss": 1.5 - step / 100, "valid_pass@1": step / 100, "valid_tasks": 16}
            )
    write_jsonl(train_dir / "metrics.jsonl", rows)
    write_json(
        train_dir / "manifest.json",
        {"stage": "train", "summary": {"best_step": 40, "best_metric": "valid_loss"}},
    )


def test_paired_bootstrap_is_deterministic_and_contains_delta() -> None:
    a = [float(i % 3 == 0) for i in range(40)]
    b = [float(i % 2 == 0) for i in range(40)]
    first = paired_bootstrap(a, b, seed=7)
    assert first == paired_bootstrap(a, b, seed=7)
    assert first != paired_bootstrap(a, b, seed=8)
    delta, lo, hi = first
    assert delta == pytest.approx(sum(b) / 40 - sum(a) / 40)
    assert lo <= delta <= hi and lo < hi


def test_paired_bootstrap_constant_shift_is_degenerate() -> None:
    a = [0.1 * (i % 7) for i in range(30)]
    for shift in (0.25, 0.1):
        delta, lo, hi = paired_bootstrap(a, [x + shift for x in a])
        assert delta == pytest.approx(shift) and lo == pytest.approx(shift) and hi == pytest.approx(shift)


def test_paired_bootstrap_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        paired_bootstrap([1.0, 0.0], [1.0])
    with pytest.raises(ValueError):
        paired_bootstrap([], [])


def test_bootstrap_mean_ci_matches_passk() -> None:
    counts = [(3, i % 4) for i in range(25)]
    mean, lo, hi = bootstrap_mean_ci([c / n for n, c in counts])
    assert (lo, hi) == pytest.approx(bootstrap_ci(counts, k=1))
    assert lo <= mean <= hi


def test_compare_fixed_broken_exact(tmp_path: Path) -> None:
    make_pair(tmp_path)
    cmp = compare(tmp_path)
    assert cmp["baseline"] == "base" and cmp["labels"] == ["base", "tuned"]
    assert cmp["tasks"] == 20 and cmp["dropped_tasks"] == 0
    base, tuned = cmp["models"]["base"], cmp["models"]["tuned"]
    assert base["pass@1"] == pytest.approx(0.40) and tuned["pass@1"] == pytest.approx(0.50)
    assert (base["passed"], base["total"], tuned["passed"], tuned["total"]) == (8, 20, 10, 20)
    assert base["ci95"][0] <= 0.40 <= base["ci95"][1]
    assert base["statuses"] == {"passed": 8, "failed": 6, "error": 6}
    assert base["categories"]["aggregation"] == {"pass@1": pytest.approx(0.4), "tasks": 10}
    c = cmp["comparisons"]["tuned"]
    assert c["fixed"] == [TASKS[i] for i in (8, 9, 10, 11, 12)]
    assert c["broken"] == [TASKS[i] for i in (0, 1, 2)]
    assert (c["unchanged"], c["both_passed"], c["both_failed"]) == (12, 5, 7)
    assert c["delta"] == pytest.approx(0.10)
    assert c["ci95"][0] <= 0.10 <= c["ci95"][1]
    assert json.loads((tmp_path / "compare.json").read_text())["comparisons"]["tuned"]["fixed"] == c["fixed"]


def test_compare_labels_and_baseline(tmp_path: Path) -> None:
    make_pair(tmp_path)
    make_model(
        tmp_path,
        "filtered",
        [int(i < 12) for i in range(20)],
        metrics={"selection": "filter", "candidates": 5},
    )
    (tmp_path / "not-a-model").mkdir()
    cmp = compare(tmp_path)
    assert cmp["labels"] == ["base", "filtered", "tuned"]
    assert cmp["models"]["filtered"]["selection"] == "filter"
    cmp = compare(tmp_path, labels=["tuned", "base"], baseline="tuned")
    assert cmp["labels"] == ["tuned", "base"]
    assert cmp["comparisons"]["base"]["fixed"] == [TASKS[i] for i in (0, 1, 2)]
    with pytest.raises(CodetuneError, match="baseline"):
        compare(tmp_path, labels=["tuned"], baseline="base")
    with pytest.raises(CodetuneError, match="results.jsonl"):
        compare(tmp_path, labels=["base", "missing"])
    with pytest.raises(CodetuneError, match="no sub-folder"):
        compare(tmp_path / "not-a-model")


def test_task_set_mismatch(tmp_path: Path) -> None:
    make_model(tmp_path, "base", [1] * 20)
    make_model(tmp_path, "tuned", [1] * 18 + [0], tasks=TASKS[:18] + ["DFB/B9999"])
    with pytest.raises(CodetuneError) as err:
        compare(tmp_path)
    message = str(err.value)
    assert str(tmp_path / "base") in message and str(tmp_path / "tuned") in message
    assert "allow_subset" in message
    cmp = compare(tmp_path, allow_subset=True)
    assert cmp["tasks"] == 18 and cmp["dropped_tasks"] == 3
    assert cmp["comparisons"]["tuned"]["fixed"] == cmp["comparisons"]["tuned"]["broken"] == []


def test_compare_with_three_samples_per_task(tmp_path: Path) -> None:
    base_c = [i % 4 for i in range(20)]  # 0,1,2,3,0,1,... of 3 samples
    # tasks 0, 5, 10, 15 gain a passing sample (15 is already 3/3); 1, 6, 11, 16 lose one (16 has none)
    tuned_c = [
        min(3, c + 1) if i % 5 == 0 else c - 1 if i % 5 == 1 and c > 0 else c for i, c in enumerate(base_c)
    ]
    make_model(tmp_path, "base", base_c, n=3)
    make_model(tmp_path, "tuned", tuned_c, n=3)
    assert len(load_results(tmp_path / "tuned")[TASKS[0]]["verdicts"]) == 3
    cmp = compare(tmp_path)
    c = cmp["comparisons"]["tuned"]
    assert (
        c["fixed"]
        == [TASKS[i] for i in range(20) if tuned_c[i] > base_c[i]]
        == [TASKS[i] for i in (0, 5, 10)]
    )
    assert c["broken"] == [TASKS[i] for i in (1, 6, 11)]
    assert cmp["models"]["base"]["pass@1"] == pytest.approx(sum(base_c) / 60)
    assert (cmp["models"]["base"]["passed"], cmp["models"]["base"]["total"]) == (sum(base_c), 60)
    assert c["delta"] == pytest.approx((sum(tuned_c) - sum(base_c)) / 60)
    assert c["ci95"][0] <= c["delta"] <= c["ci95"][1]
    html = write_report(tmp_path).read_text()
    assert TASKS[11] in html and "pass@1 66.7%" in html and TASKS[16] not in html


def test_write_report(tmp_path: Path) -> None:
    eval_dir, train_dir = tmp_path / "eval", tmp_path / "train"
    make_pair(eval_dir)
    rows = [json.loads(line) for line in (eval_dir / "tuned" / "samples.jsonl").read_text().splitlines()]
    rows[1]["code"] = "<script>alert('x')</script>\nprint(1 < 2 & 3)\n"  # task 1: broken, shown in the report
    rows[2]["finish_reason"] = "length"
    write_jsonl(eval_dir / "tuned" / "samples.jsonl", rows)
    make_train_dir(train_dir)
    path = write_report(eval_dir, train_dir, title="DFB <before/after>")
    assert path == eval_dir / "report.html"
    text = path.read_text()
    assert "<script>" not in text and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert "1 &lt; 2 &amp; 3" in text and "DFB &lt;before/after&gt;" in text
    assert "base" in text and "tuned" in text
    for i in (0, 1, 2, 8, 9, 10, 11, 12):
        assert TASKS[i] in text
    assert TASKS[15] not in text  # unchanged tasks are not listed
    assert text.count('<img alt="') == 3 and '<img alt="loss vs step" src="data:image/png;base64,' in text
    assert "40.0% [" in text and "+10.0 pts [" in text and "8/20" in text and CI_TEXT in text
    assert "aggregation" in text and "visualisation" in text  # per-category table
    assert "stderr line 29" in text and "stderr line 14" not in text  # last 15 lines of the tail
    assert "1</td></tr>" in text.split("Before / after")[1].split("</table>")[0]  # one truncated sample


CI_TEXT = "95% percentile bootstrap over tasks, 2000 resamples, paired for differences"


def test_write_report_without_training_and_filter_row(tmp_path: Path) -> None:
    make_pair(tmp_path)
    make_model(
        tmp_path,
        "filtered",
        [int(i < 12) for i in range(20)],
        metrics={"selection": "filter", "candidates": 5},
    )
    (tmp_path / "base" / "samples.jsonl").unlink()  # tolerated: code shown as missing
    (tmp_path / "tuned" / "metrics.json").unlink()
    out = write_report(tmp_path, out=tmp_path / "sub" / "r.html")
    text = out.read_text()
    assert out.is_file() and text.count('<img alt="') == 1  # only the pass@1 bar chart
    assert "filtered (sample-then-filter, 5 candidates)" in text
    assert "(no samples.jsonl row)" in text
    assert "Worst regressions: filtered vs base" in text and "Worst regressions: tuned vs base" in text


def test_the_report_takes_its_curves_from_the_run_the_evaluated_model_was_trained_in(tmp_path: Path) -> None:
    from codetune.config import Config
    from codetune.eval.evaluate import curves_dir, training_run_of

    default, other = tmp_path / "train", tmp_path / "train-v2"
    make_train_dir(default)
    make_train_dir(other)
    for folder in (other / "best", other / "checkpoints" / "step-000040", default / "final"):
        folder.mkdir(parents=True)
    cfg = Config()
    cfg.train.output_dir = str(default)
    assert training_run_of(str(other / "best")) == other
    assert training_run_of(str(other / "checkpoints" / "step-000040")) == other
    assert training_run_of("Qwen/Qwen2.5-Coder-0.5B-Instruct") is None  # a hub id: no run
    # `-m tuned=.../train-v2/best` with a config whose train.output_dir is another run: that run's curves
    assert curves_dir(cfg, ["Qwen/Qwen2.5-Coder-0.5B-Instruct", str(other / "best")]) == other
    assert curves_dir(cfg, [str(default / "final")]) == default
    assert curves_dir(cfg, []) == default
    # models from two runs: no single run to show, so the configured one
    assert curves_dir(cfg, [str(other / "best"), str(default / "final")]) == default
    cfg.train.output_dir = str(tmp_path / "nothing-trained")
    assert curves_dir(cfg, []) is None


def test_the_report_names_what_each_row_evaluated_in_natural_order(tmp_path: Path) -> None:
    from codetune.manifest import write_manifest

    make_model(
        tmp_path,
        "base",
        [int(i < 8) for i in range(20)],
        metrics={"generation_s": 7896.4, "tokens_per_s": 3.48},
    )
    for label in ("tuned-v10", "tuned-v8", "tuned-v9"):
        make_model(tmp_path, label, [int(3 <= i <= 12) for i in range(20)])
    make_model(
        tmp_path, "filter", [int(i < 12) for i in range(20)], metrics={"selection": "filter", "candidates": 2}
    )
    write_json(tmp_path / "tuned-v10" / "metrics.json", {"reused_generations": 20, "generation_s": None})
    write_json(
        tmp_path / "tuned-v8" / "metrics.json", {"generation_s": "?", "tokens_per_s": "fast"}
    )  # not numbers
    write_manifest(
        tmp_path / "base", "evaluate-dataframebench", backend={"name": "llamacpp", "model": "/m/q4.gguf"}
    )
    write_manifest(
        tmp_path / "tuned-v9",
        "evaluate-dataframebench",
        backend={"name": "llamacpp", "model": "/m/q4.gguf", "lora": "runs/x/best/adapter.gguf"},
    )
    write_manifest(tmp_path / "filter", "select", candidates_from=["base", "tuned-v9"])
    assert compare(tmp_path)["labels"] == ["base", "filter", "tuned-v8", "tuned-v9", "tuned-v10"]
    text = write_report(tmp_path).read_text()
    models = text.split("<h2>Before / after</h2>")[0]
    assert "<code>/m/q4.gguf</code> · answers in" in models
    assert "generated in 2 h 12 min at 3.5 tokens/s" in models
    assert "<code>/m/q4.gguf + LoRA runs/x/best/adapter.gguf</code>" in models
    assert "chosen among the answers of base, tuned-v9" in models
    assert "re-scored from its saved generations" in models.split("<b>tuned-v10</b>")[1].split("</li>")[0]
    assert "generated in" not in models.split("<b>tuned-v8</b>")[1].split("</li>")[0]
    table = text.split("<h2>Before / after</h2>")[1].split("</table>")[0]
    assert table.index(">tuned-v8<") < table.index(">tuned-v9<") < table.index(">tuned-v10<")
