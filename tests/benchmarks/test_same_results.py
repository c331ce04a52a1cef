"""HumanEval and DataFrameBench give the same per-task results through the one runner as they did through
`run_humaneval` / `run_dataframebench` (removed), on the same fixed samples.

The expected values were produced by the old code (commit 5001224, `eval/humaneval.py` and
`eval/dataframebench.py`) with the very backends and samples below, before the refactor, and are pinned
here: per task the verdict of every sample (status, error type), c and pass@k; overall pass@k, its
pass@1 interval and the status counts; and a digest of the sanitised completions.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from codetune.benchmarks import dataframebench as dfb
from codetune.benchmarks import humaneval as he
from codetune.benchmarks.base import PromptStyle
from codetune.benchmarks.runner import run_benchmark
from codetune.manifest import read_jsonl, sha256_file
from codetune.models.backends.base import Completion, SamplingSettings

IDS = ["HumanEval/0", "HumanEval/2", "HumanEval/4", "HumanEval/7", "HumanEval/12"]


def _chat(messages: list[dict[str, str]]) -> str:
    return "".join(m["content"] for m in messages)


def _base_replies(p: dict[str, Any]) -> list[str]:
    return [
        p["canonical_solution"] + "\n\ndef extra():\n    pass\n",
        "    return None\n",
        "    return (\n",
        "    raise ValueError('no')\n",
    ]


def _chat_replies(p: dict[str, Any]) -> list[str]:
    full = p["prompt"] + p["canonical_solution"]
    entry = p["entry_point"]
    return [
        full + "```\n\nExample:\n",
        f"```python\ndef {entry}(*a):\n    return 0\n\nprint({entry}(1))\n```",
        "import os\n" + full.replace("def ", "def  ", 1) + "\nassert False\n",
        "def helper(:\n",
    ]


class Fixed:
    """Replies looked up by prompt; sample j gets reply j (mod len), every third one cut at the limit."""

    name = "fixed"

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return _chat(messages)

    def generate(self, prompts: list[str], settings: SamplingSettings) -> list[list[Completion]]:
        return [
            [
                Completion(self.table[p][j % len(self.table[p])], "stop" if j % 3 else "length", 5, 3)
                for j in range(settings.n)
            ]
            for p in prompts
        ]


def _summary(out: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    rows = read_jsonl(out / "results.jsonl")
    completions = [s["completion"] for s in read_jsonl(out / "samples.jsonl")]
    keys = ("passed_samples", "statuses", "truncated", "problems", "samples")
    return {
        "metrics": {
            k: v for k, v in metrics.items() if k in keys or (k.startswith("pass@") and "ci95" not in k)
        }
        | {"pass@1_ci95": metrics["pass@1_ci95"]},
        "results": [
            {
                "task_id": r["task_id"],
                "c": r["c"],
                "pass": {k: r[k] for k in r if k.startswith("pass@")},
                "verdicts": [[v["status"], v["error_type"]] for v in r["verdicts"]],
            }
            for r in rows
        ],
        "completions": hashlib.sha256(json.dumps(completions).encode()).hexdigest()[:16],
    }


BASE_VERDICTS = [
    ["passed", None],
    ["failed", "AssertionError"],
    ["error", "SyntaxError"],
    ["error", "ValueError"],
]
CHAT_VERDICTS = [["passed", None], ["failed", "AssertionError"], ["passed", None], ["error", "SyntaxError"]]
OLD_HUMANEVAL = {
    "base": {
        "metrics": {
            "pass@1": 0.25,
            "pass@2": 0.5,
            "pass@1_ci95": [0.25, 0.25],
            "problems": 5,
            "samples": 20,
            "passed_samples": 5,
            "statuses": {"error": 11, "failed": 4, "passed": 5},
            "truncated": 10,
        },
        "results": [
            {
                "task_id": tid,
                "c": 1,
                "pass": {"pass@1": 0.25, "pass@2": 0.5},
                "verdicts": [BASE_VERDICTS[0], ["error", "TypeError"], *BASE_VERDICTS[2:]]
                if tid == "HumanEval/4"
                else BASE_VERDICTS,
            }
            for tid in IDS
        ],
        "completions": "83009c738739938c",
    },
    "chat": {
        "metrics": {
            "pass@1": 0.5,
            "pass@2": 0.8333333333333333,
            "pass@1_ci95": [0.5, 0.5],
            "problems": 5,
            "samples": 20,
            "passed_samples": 10,
            "statuses": {"error": 5, "failed": 5, "passed": 10},
            "truncated": 10,
        },
        "results": [
            {
                "task_id": tid,
                "c": 2,
                "pass": {"pass@1": 0.5, "pass@2": 0.8333333333333333},
                "verdicts": CHAT_VERDICTS,
            }
            for tid in IDS
        ],
        "completions": "30309a1919b88095",
    },
}


@pytest.mark.parametrize("style", ["base", "chat"])
def test_humaneval_per_task_results_are_those_of_the_old_pipeline(style: str, tmp_path: Path) -> None:
    problems = [p for p in he.load_problems() if p["task_id"] in IDS]
    replies = _base_replies if style == "base" else _chat_replies
    prompt_style = PromptStyle(name=style, chat_prompt=_chat)  # type: ignore[arg-type]
    table = {he.build_prompt(p, style, _chat): replies(p) for p in problems}  # type: ignore[arg-type]
    bench = he.HumanEval(problems)
    metrics = run_benchmark(
        bench,
        bench.load("test"),
        Fixed(table),  # type: ignore[arg-type]
        SamplingSettings(temperature=0.8, n=4),
        style=prompt_style,
        out_dir=tmp_path / style,
        ks=(1, 2, 10),
        workers=2,
    )
    assert _summary(tmp_path / style, metrics) == OLD_HUMANEVAL[style]


OLD_DATAFRAMEBENCH = {
    "metrics": {
        "pass@1": 0.49999999999999994,
        "pass@1_ci95": [0.33333333333333326, 0.6666666666666666],
        "problems": 2,
        "samples": 6,
        "passed_samples": 3,
        "statuses": {"error": 2, "failed": 1, "passed": 3},
        "truncated": 0,
    },
    "results": [
        {
            "task_id": "DFB/B0001",
            "c": 1,
            "pass": {"pass@1": 0.33333333333333326},
            "verdicts": [["passed", None], ["failed", "AssertionError"], ["error", "IndexError"]],
        },
        {
            "task_id": "DFB/B0002",
            "c": 2,
            "pass": {"pass@1": 0.6666666666666666},
            "verdicts": [["error", "SyntaxError"], ["passed", None], ["passed", None]],
        },
    ],
    "completions": "c3aa047d94747dbf",
}

GOOD = (
    '```python\nimport pandas as pd\n\ndef task_func(records, column="x"):\n'
    "    return float(pd.DataFrame(records)[column].sum()) if records else 0.0\n```\nExample usage: ..."
)
WRONG = 'def task_func(records, column="x"):\n    return 1.0\n\nprint(task_func([]))\n'
CRASH = "```python\ndef task_func(records, column='x'):\n    return records[0][column] / 0\n```"
SYNTAX = "```python\ndef task_func(records, column='x'\n    return 0\n```"
SUMS = "def task_func(records, column='x'):\n    return 0.0 if not records else sum(r[column] for r in records)\n"
DFB_REPLIES = {"DFB/B0001": [GOOD, WRONG, CRASH], "DFB/B0002": [SYNTAX, SUMS, GOOD]}


def test_dataframebench_per_task_results_are_those_of_the_old_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.eval.test_dataframebench import REFERENCE_TEST, _task

    cache = tmp_path / "cache"
    wheel = cache / "dataframebench" / dfb.WHEEL_NAME
    wheel.parent.mkdir(parents=True)
    rows = [_task("DFB/B0001", "s4", REFERENCE_TEST), _task("DFB/B0002", "s5", REFERENCE_TEST)]
    with zipfile.ZipFile(wheel, "w") as z:
        for split in ("train", "val", "test"):
            z.writestr(f"dataframebench/data/{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("CODETUNE_CACHE", str(cache))
    monkeypatch.setattr(dfb, "WHEEL_SHA256", sha256_file(wheel))
    monkeypatch.setattr(dfb, "SPLIT_SIZES", {"train": 2, "val": 2, "test": 2})

    class ByTask(Fixed):
        def generate(self, prompts: list[str], settings: SamplingSettings) -> list[list[Completion]]:
            out = []
            for p in prompts:
                tid = next(t for t in DFB_REPLIES if f"({t})" in p)
                out.append([Completion(DFB_REPLIES[tid][j % 3], "stop", 5, 3) for j in range(settings.n)])
            return out

    bench = dfb.DataFrameBench()
    metrics = run_benchmark(
        bench,
        bench.load("test"),
        ByTask({}),  # type: ignore[arg-type]
        SamplingSettings(temperature=0.8, n=3),
        style=PromptStyle(name="chat"),
        out_dir=tmp_path / "dfb",
        workers=2,
    )
    assert _summary(tmp_path / "dfb", metrics) == OLD_DATAFRAMEBENCH
    assert [r["category"] for r in read_jsonl(tmp_path / "dfb" / "results.jsonl")] == ["aggregation"] * 2
