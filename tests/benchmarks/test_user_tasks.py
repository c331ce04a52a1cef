"""The user's own problems with tests through the one pipeline: task files and folders (errors that name
the line and field), `eval.benchmark: PATH` with pass@k, sample-then-filter on any benchmark (HumanEval
included), a prepared split's tests scoring all n samples, and the shipped example's references."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from codetune.benchmarks.base import PromptStyle, get_benchmark
from codetune.benchmarks.runner import score_codes
from codetune.benchmarks.user_tasks import UserTasks
from codetune.config import load_config
from codetune.errors import CodetuneError
from codetune.eval import evaluate as ev
from codetune.manifest import read_jsonl
from codetune.manifest import write_jsonl as _write_jsonl
from codetune.models.backends.base import Completion, SamplingSettings

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "tasks" / "example.jsonl"

TASKS = [
    {
        "id": "add",
        "prompt": "Write add(a, b).\n>>> add(1, 2)\n3\n",
        "tests": "assert add(1, 2) == 3\n",
        "entry_point": "add",
    },
    {
        "id": "neg",
        "prompt": "Write neg(x).",
        "tests": "assert neg(2) == -2\n",
        "reference": "def neg(x):\n    return -x\n",
    },
]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    _write_jsonl(path, rows)
    return path


class Scripted:
    """Replies by a key found in the prompt; sample j of a prompt gets reply j."""

    name = "scripted"

    def __init__(self, replies: dict[str, list[str]]) -> None:
        self.replies = replies

    def generate(self, prompts: Sequence[str], settings: SamplingSettings) -> list[list[Completion]]:
        out = []
        for prompt in prompts:
            key = next(k for k in self.replies if k in prompt)
            out.append([Completion(r, "stop", 5, 5) for r in self.replies[key][: settings.n]])
        return out

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> str:
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


def test_the_shipped_example_references_pass_and_wrong_answers_fail() -> None:
    bench = get_benchmark(str(EXAMPLE))
    tasks = bench.load("test")
    assert len(tasks) == 8 and all(t.reference and t.entry_point for t in tasks)
    wrong = [f"def {t.entry_point}(*args):\n    return None\n" for t in tasks]
    scored = score_codes(
        bench, tasks, [c for t, w in zip(tasks, wrong, strict=True) for c in (t.reference or "", w)]
    )
    assert [v.status for v in scored.verdicts] == ["passed", "failed"] * 8, [
        v.detail for v in scored.verdicts
    ]


def test_task_files_and_folders(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "tasks.jsonl", [*TASKS, {**TASKS[0], "id": "add2", "split": "train"}])
    bench = UserTasks(path)
    assert bench.splits == ("test", "train") and bench.name == "tasks"
    assert [t.id for t in bench.load("test")] == ["add", "neg"] and [t.id for t in bench.load("train")] == [
        "add2"
    ]
    # a reply that opens its code block after a sentence is not cut at the opening fence
    assert "\n```" not in bench.stops(PromptStyle("chat", stops=("\n```",)))
    folder = tmp_path / "mine"
    write_jsonl(folder / "valid.jsonl", TASKS[:1])
    write_jsonl(folder / "test.jsonl", TASKS)
    mine = get_benchmark(str(folder))
    assert mine.splits == ("test", "valid") and [t.split for t in mine.load("valid")] == ["valid"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "a", "prompt": "p"}', r"bad\.jsonl:2: field 'tests' is missing"),
        ('{"prompt": "p", "tests": "assert 1"}', r"bad\.jsonl:2: field 'id' is missing"),
        ('{"id": "a", "tests": "assert 1"}', r"bad\.jsonl:2: task a: field 'prompt' is missing"),
        ('{"id": "a", "prompt": "p", "tests": "t", "test": "x"}', r"bad\.jsonl:2: unknown field\(s\) test"),
        (
            '{"id": "a", "prompt": "p", "tests": ["t"]}',
            r"bad\.jsonl:2: task a: field 'tests' must be a string",
        ),
        ("{not json", r"bad\.jsonl:2: not valid JSON"),
        (
            '{"id": "a", "prompt": "p", "tests": "t", "judge": "remote"}',
            r"bad\.jsonl:2: task a: field 'judge' is 'remote'; use one of in-process, values",
        ),
        (
            '{"id": "a", "prompt": "p", "tests": "t", "judge": "values", "language": "javascript"}',
            r"bad\.jsonl:2: task a: field 'judge' is 'values'; .*\(values for Python tasks only\)",
        ),
        (
            '{"id": "a", "prompt": "p", "tests": "t", "judge": "values"}',
            r"bad\.jsonl:2: judge 'values', but .*bad\.jsonl:1 says 'in-process': the tasks of one file",
        ),
    ],
)
def test_a_bad_task_file_names_the_line_and_field(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(TASKS[0]) + "\n" + line + "\n")
    with pytest.raises(CodetuneError, match=message):
        UserTasks(path).load("test")


def test_a_task_file_can_have_its_tests_judged_apart_from_the_answers(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "tasks.jsonl", [{**t, "judge": "values"} for t in TASKS])
    bench = UserTasks(path)
    tasks = bench.load("test")
    forged = "import sys\nclass Any:\n    def __eq__(self, other):\n        return True\n"
    forged += "def add(a, b):\n    return Any()\ndef neg(x):\n    frame = sys._getframe()\n    return frame and None\n"
    honest = ["def add(a, b):\n    return a + b\n", "def neg(x):\n    return -x\n"]
    scored = score_codes(bench, tasks, [honest[0], forged, honest[1], forged])
    assert scored.isolation.endswith("(values judge)")
    assert [v.status for v in scored.verdicts] == ["passed", "error", "passed", "failed"]
    assert "add() returned a __sandbox__.Any" in scored.verdicts[1].detail
    assert UserTasks(write_jsonl(tmp_path / "plain.jsonl", TASKS)).sandbox().judge == "in-process"


def test_an_unknown_benchmark_says_what_it_takes() -> None:
    with pytest.raises(CodetuneError, match="neither a known benchmark .*humaneval.* nor a task file"):
        get_benchmark("humaneva")
    with pytest.raises(CodetuneError, match="does not exist"):
        get_benchmark("no/such/tasks.jsonl")


def _config(tmp_path: Path, **eval_: Any) -> Any:
    raw = {
        "prompt": {"style": "chat", "template": "{nl}", "answer_template": "```python\n{code}\n```"},
        "train": {"output_dir": str(tmp_path / "train")},
        "generate": {"n": 2, "temperature": 0.8},
        "eval": {"output_dir": str(tmp_path / "eval"), "report": False, **eval_},
    }
    return load_config(None, raw)


def test_evaluate_scores_a_task_file_with_pass_at_k_and_filters_its_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`eval.benchmark: PATH` goes through the runner; `eval.select_from` adds the filter row."""
    path = write_jsonl(tmp_path / "tasks.jsonl", TASKS)
    replies = {
        "base-model": {
            "add(a, b)": [
                "```python\ndef add(a, b):\n    return a - b\n```",
                "def add(a, b):\n    return a + b\n",
            ],
            "neg(x)": ["def neg(x):\n    return x\n", "def neg(x):\n    return x\n"],
        },
        "tuned-model": {
            "add(a, b)": [
                "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n",
                "def add(a, b):\n    retur\n",
            ],
            "neg(x)": ["def neg(x):\n    return -x\n", "def neg(x):\n    return 0 - x\n"],
        },
    }
    monkeypatch.setattr(ev, "load_backend", lambda generate, model: Scripted(replies[model]))
    cfg = _config(
        tmp_path,
        benchmark=str(path),
        models=["base=base-model", "tuned=tuned-model"],
        select_from=["base", "tuned"],
    )
    report = ev.evaluate(cfg)
    base, tuned, chosen = report.metrics["base"], report.metrics["tuned"], report.metrics["filter"]
    assert (base["pass@1"], base["pass@2"]) == (0.25, 0.5)
    assert (tuned["pass@1"], tuned["pass@2"]) == (0.75, 1.0)
    assert base["pass@1_ci95"] == [0.0, 0.5] and tuned["pass@2_ci95"] == [1.0, 1.0]
    rows = read_jsonl(tmp_path / "eval" / "tuned" / "results.jsonl")
    assert [[v["status"] for v in r["verdicts"]] for r in rows] == [["passed", "error"], ["passed", "passed"]]
    # the example usage the tuned model appended is sanitised away
    assert read_jsonl(tmp_path / "eval" / "tuned" / "samples.jsonl")[0]["completion"] == (
        "def add(a, b):\n    return a + b\n"
    )
    # add: the prompt's example rejects base's first answer, its second (right) one is chosen; neg: no
    # examples, so the first answer that runs is chosen (base's wrong one)
    assert chosen["pass@1"] == 0.5 and chosen["candidates"] == 4 and chosen["oracle"] == 1.0
    assert chosen["visible_checks"] == {"examples": 1, "smoke": 1}
    picked = [r["chosen"] for r in read_jsonl(tmp_path / "eval" / "filter" / "results.jsonl")]
    assert picked == [
        {"label": "base", "index": 1, "visible": "passed"},
        {"label": "base", "index": 0, "visible": "passed"},
    ]
    manifest = json.loads((tmp_path / "eval" / "base" / "manifest.json").read_text())
    assert manifest["benchmark"] == "tasks" and manifest["data"]["file"] == str(path)
    # a rerun takes every answer from the generation cache
    again = ev.evaluate(cfg)
    assert again.metrics["tuned"]["reused_generations"] == 2 and again.metrics["tuned"]["pass@1"] == 0.75


def test_sample_then_filter_works_for_humaneval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HumanEval used to ignore eval.select_from without a word; now it gets the filter row too."""
    right = "def has_close_elements(numbers, threshold):\n    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1 :])\n"
    wrong = "def has_close_elements(numbers, threshold):\n    return True\n"
    replies = {"m": {"def has_close_elements": [wrong, right]}}
    monkeypatch.setattr(ev, "load_backend", lambda generate, model: Scripted(replies[model]))
    cfg = _config(
        tmp_path, benchmark="humaneval", models=["sampled=m"], select_from=["sampled"], max_examples=1
    )
    report = ev.evaluate(cfg)
    assert report.metrics["sampled"]["pass@1"] == 0.5
    # the prompt's doctest examples are the visible checks: the wrong answer fails them
    assert report.metrics["filter"]["pass@1"] == 1.0
    assert report.metrics["filter"]["visible_checks"] == {"examples": 1, "smoke": 0}
    (row,) = read_jsonl(tmp_path / "eval" / "filter" / "results.jsonl")
    assert row["chosen"] == {"label": "sampled", "index": 1, "visible": "passed"}


def test_a_split_with_tests_scores_every_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """generate.n > 1 on a prepared split: pass@k over all n samples where examples have tests; the
    mean and best-of-n text metrics over all of them."""
    data = tmp_path / "data"
    rows = [
        {
            "id": "add",
            "nl": "Write add(a, b).",
            "code": "def add(a, b):\n    return a + b",
            "meta": {"tests": "assert add(1, 2) == 3"},
        },
        {"id": "neg", "nl": "Write neg(x).", "code": "def neg(x):\n    return -x", "meta": {}},
    ]
    write_jsonl(data / "test.jsonl", rows)
    replies = {
        "m": {
            "add(a, b)": [
                "```python\ndef add(a, b):\n    return a - b\n```",
                "```python\ndef add(a, b):\n    return a + b\n```",
            ],
            "neg(x)": [
                "```python\ndef neg(x):\n    return x\n```",
                "```python\ndef neg(x):\n    return -x\n```",
            ],
        }
    }
    monkeypatch.setattr(ev, "load_backend", lambda generate, model: Scripted(replies[model]))
    cfg = _config(tmp_path, models=["m=m"], data_dir=str(data))
    metrics = ev.evaluate(cfg).metrics["m"]
    assert (metrics["pass@1"], metrics["pass@2"]) == (0.5, 1.0)
    assert metrics["tested_examples"] == 1 and metrics["untested_examples"] == 1
    assert metrics["samples"] == 4 and metrics["n"] == 2
    assert metrics["exact_match"] == 50.0  # sample 0 matches no reference, sample 1 both: the mean
    assert metrics["best_of_2_exact_match"] == 100.0
    (result,) = read_jsonl(tmp_path / "eval" / "m" / "exec_results.jsonl")
    assert result["task_id"] == "add" and [v["status"] for v in result["verdicts"]] == ["failed", "passed"]
    predictions = read_jsonl(tmp_path / "eval" / "m" / "predictions.jsonl")
    assert predictions[0]["prediction"] == "def add(a, b):\n    return a - b"
    assert len(predictions[0]["predictions"]) == 2
    with pytest.raises(CodetuneError, match="generate.n=2 .*greedy samples"):
        ev.evaluate(load_config(None, {**cfg_dict(cfg), "generate": {"n": 2, "temperature": 0.0}}))


def cfg_dict(cfg: Any) -> dict[str, Any]:
    from codetune.config import config_to_dict

    return config_to_dict(cfg)
