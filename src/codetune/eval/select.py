"""Sample-then-filter and ensembling: pick one answer per task from several candidates, without the
hidden tests.

Candidates are every sample of one or several evaluated models (`{label}/samples.jsonl`, n per task, in
task order): greedy answers of a base and a tuned model make a two-model ensemble; n sampled answers of
one model make sample-then-filter. Each candidate runs in the sandbox against checks a user could run
before trusting an answer, never the benchmark's tests:

1. the task's visible examples, when it has them (doctest `>>>` lines in a HumanEval-style prompt);
2. otherwise a smoke call: the module runs and defines the entry point, which is called with its
   default arguments when every parameter has one (DataFrameBench tasks mostly do).

The chosen answer is the first candidate (models in the order given, samples in order) in the best tier:
visible checks pass > the code runs > the code parses > anything. Its hidden-test verdict is the one its
own model already got for that exact code, so no answer is re-scored; `{out}/` gets results, samples and
metrics shaped like any model's folder (metrics has `selection: filter` and `candidates`), plus the
oracle rate (a task counts when any candidate passed) as the ceiling of the method.
"""

from __future__ import annotations

import ast
import doctest
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codetune.benchmarks.base import Benchmark
from codetune.benchmarks.task import Task
from codetune.errors import CodetuneError
from codetune.manifest import read_jsonl, write_json, write_jsonl, write_manifest
from codetune.pyparse import python_syntax_error

SMOKE_TEMPLATE = """
import inspect as _inspect
_params = _inspect.signature({entry}).parameters.values()
if all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in _params):
    {entry}()
"""


def visible_checks(prompt: str, entry_point: str) -> tuple[str, str]:
    """(kind, test code) a candidate must pass: the prompt's doctest examples, else a smoke call."""
    try:
        examples = doctest.DocTestParser().get_examples(prompt)
    except ValueError:
        examples = []
    asserts = []
    for ex in examples:
        # the docstring's closing quotes follow the last example's output without a blank line
        lines = []
        for line in ex.want.splitlines():
            if line.strip().startswith(('"""', "'''")):
                break
            lines.append(line)
        want = "\n".join(lines).strip()
        if not want or "Traceback" in want:
            continue
        try:
            ast.literal_eval(want)
        except (ValueError, SyntaxError):
            continue  # only literal outputs are checked (no reprs of objects)
        asserts.append(f"assert ({ex.source.strip()}) == {want}")
    if asserts:
        return "examples", "\n".join(asserts) + "\n"
    if not entry_point:  # a task that names no function: the module runs
        return "smoke", "pass\n"
    return "smoke", SMOKE_TEMPLATE.format(entry=entry_point)


def select(
    eval_dir: Path,
    labels: Sequence[str],
    bench: Benchmark,
    tasks: Sequence[Task],
    out_label: str,
    *,
    workers: int | None = None,
) -> dict[str, Any]:
    """Choose one candidate per task from `labels`' samples; write `eval_dir/out_label/`; return metrics.

    A candidate's program is what the benchmark assembles for it (`bench.assemble`: e.g. HumanEval's
    prompt before the completion, DataFrameBench's matplotlib Agg header); the visible checks replace
    the hidden tests."""
    from codetune.benchmarks.runner import open_pool
    from codetune.eval.passk import bootstrap_ci

    if not labels:
        raise CodetuneError("select: name at least one evaluated model to take candidates from")
    per_label = []
    for label in labels:
        folder = eval_dir / label
        if not (folder / "samples.jsonl").is_file() or not (folder / "results.jsonl").is_file():
            raise CodetuneError(
                f"select: {folder} has no samples.jsonl/results.jsonl; evaluate {label} first"
            )
        samples: dict[str, list[dict[str, Any]]] = {}
        for row in read_jsonl(folder / "samples.jsonl"):
            samples.setdefault(row["task_id"], []).append(row)
        results = {r["task_id"]: r for r in read_jsonl(folder / "results.jsonl")}
        per_label.append((label, samples, results))

    candidates: list[list[dict[str, Any]]] = []
    jobs: list[tuple[str, str]] = []
    kinds: dict[str, str] = {}
    for task in tasks:
        kind, checks = visible_checks(task.prompt, task.entry_point)
        kinds[task.task_id] = kind
        mine = []
        for label, samples, results in per_label:
            if task.task_id not in samples or task.task_id not in results:
                raise CodetuneError(f"select: {label} has no answer for {task.task_id}")
            for index, sample in enumerate(samples[task.task_id]):
                verdict = results[task.task_id]["verdicts"][index]
                mine.append({"label": label, "index": index, "sample": sample, "hidden": verdict})
                jobs.append((bench.assemble(task, _code(sample)).code, checks))
        candidates.append(mine)

    with open_pool(bench, workers) as pool:
        verdicts = pool.map(jobs)
    cursor = 0
    rows: list[dict[str, Any]] = []
    chosen_samples: list[dict[str, Any]] = []
    counts: list[tuple[int, int]] = []
    tiers = {"visible": 0, "runs": 0, "parses": 0, "none": 0}
    oracle = 0
    for task, mine in zip(tasks, candidates, strict=True):
        for cand in mine:
            v = verdicts[cursor]
            cursor += 1
            if v.passed:
                cand["tier"] = 0
            elif v.status in ("failed",) and kinds[task.task_id] == "examples":
                cand["tier"] = 1 if _ran_to_checks(v) else 2
            else:
                cand["tier"] = 2 if python_syntax_error(_code(cand["sample"])) is None else 3
            cand["visible"] = v.status
        best = min(mine, key=lambda c: c["tier"])  # min is stable: the first of the best tier
        tiers[("visible", "runs", "parses", "none")[best["tier"]]] += 1
        passed = best["hidden"]["status"] == "passed"
        oracle += any(c["hidden"]["status"] == "passed" for c in mine)
        counts.append((1, int(passed)))
        rows.append(
            {
                "task_id": task.task_id,
                "category": task.category or None,
                "n": 1,
                "c": int(passed),
                "pass@1": float(passed),
                "verdicts": [best["hidden"]],
                "chosen": {"label": best["label"], "index": best["index"], "visible": best["visible"]},
                "candidates": [
                    {
                        "label": c["label"],
                        "index": c["index"],
                        "visible": c["visible"],
                        "hidden": c["hidden"]["status"],
                    }
                    for c in mine
                ],
            }
        )
        chosen_samples.append(
            {
                "task_id": task.task_id,
                "completion": _code(best["sample"]),
                **{k: best["sample"][k] for k in ("raw", "finish_reason") if k in best["sample"]},
            }
        )
    out = eval_dir / out_label
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "results.jsonl", rows)
    write_jsonl(out / "samples.jsonl", chosen_samples)
    lo, hi = bootstrap_ci(counts, k=1)
    n_cand = sum(len(m) for m in candidates) / max(len(candidates), 1)
    metrics = {
        "pass@1": sum(c for _, c in counts) / len(counts),
        "pass@1_ci95": [lo, hi],
        "problems": len(tasks),
        "selection": "filter",
        "candidates": round(n_cand, 2),
        "from": list(labels),
        "oracle": oracle / len(tasks),
        "chosen_tier": tiers,
        "chosen_from": {label: sum(r["chosen"]["label"] == label for r in rows) for label in labels},
        "visible_checks": {k: sum(v == k for v in kinds.values()) for k in ("examples", "smoke")},
        "statuses": _status_counts([r["verdicts"][0]["status"] for r in rows]),
        "truncated": sum(s.get("finish_reason") == "length" for s in chosen_samples),
    }
    write_json(out / "metrics.json", metrics)
    write_manifest(out, "select", selection="filter", candidates_from=list(labels), metrics=metrics)
    return metrics


def _code(sample: dict[str, Any]) -> str:
    """A sample's sanitised code ("code" in folders written before the one runner)."""
    return str(sample.get("completion", sample.get("code", "")))


def _ran_to_checks(verdict: Any) -> bool:
    """A visible-example failure that is an assertion (the code ran and answered wrongly)."""
    return verdict.error_type == "AssertionError"


def _status_counts(statuses: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s] = counts.get(s, 0) + 1
    return dict(sorted(counts.items()))
