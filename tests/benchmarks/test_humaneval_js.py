"""The Python <-> JavaScript HumanEval benchmark: its data, and every reference passing its own tests in
both languages (Python in the sandbox; JavaScript under Node.js), and failing them when it is wrong."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from codetune.benchmarks.base import PromptStyle, get_benchmark
from codetune.benchmarks.humaneval_js import (
    DATA_FILE,
    build_rows,
    js_program,
    js_reference,
    load_rows,
    parse_source,
)
from codetune.errors import CodetuneError
from codetune.sandbox import Limits, SandboxPool

NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="Node.js is not installed")


def test_shipped_jsonl_is_built_from_the_source_file():
    rows = load_rows()
    assert rows == build_rows(), f"{DATA_FILE} is stale: python -m codetune.benchmarks.humaneval_js"
    assert len(rows) == 43
    ids = [r["task_id"] for r in rows]
    assert len(set(ids)) == len(ids)
    assert "HumanEval/32" not in ids and "HumanEval/38" not in ids
    assert rows[10]["entry_point"] == "make_palindrome"  # the helper is_palindrome comes before it


def test_parse_source_names_a_broken_problem():
    with pytest.raises(CodetuneError, match="HumanEval/7"):
        parse_source("//// HumanEval/7\n//// prompt\nfunction f(x) {\n//// tests\nf(1);\n")


def test_both_directions_load_the_same_problems():
    py2js, js2py = get_benchmark("humaneval-py2js"), get_benchmark("humaneval-js2py")
    a, b = py2js.load("test"), js2py.load("test")
    assert [t.id for t in a] == [t.id for t in b]
    assert {t.language for t in a} == {"javascript"} and {t.language for t in b} == {"python"}
    assert a[0].meta["source_code"] == b[0].reference and b[0].meta["source_code"] == a[0].reference
    assert a[0].prompt.startswith("Translate this Python code to JavaScript")
    assert "def has_close_elements" in a[0].prompt and "function has_close_elements" in b[0].prompt
    # the target's signature follows: HumanEval's types (a pair is a tuple) where the target is Python
    assert b[8].prompt.endswith(
        "The Python function has this signature:\n```python\nfrom typing import List, Tuple\n\n\n"
        "def sum_product(numbers: List[int]) -> Tuple[int, int]:\n```"
    )
    assert a[8].prompt.endswith("```javascript\nfunction sum_product(numbers)\n```")


@needs_node
def test_every_javascript_reference_passes_its_tests_in_the_sandbox_and_a_wrong_one_fails():
    bench = get_benchmark("humaneval-py2js")
    tasks = bench.load("test")
    rows = {r["task_id"]: r for r in load_rows()}
    jobs = [bench.assemble(t, t.reference or "") for t in tasks]
    wrong = [bench.assemble(t, rows[t.id]["prompt"] + "  return undefined;\n}\n") for t in tasks]
    with SandboxPool(workers=2, limits=Limits(timeout_s=20.0, memory_mb=1024)) as pool:
        verdicts = pool.map(jobs + wrong, language="javascript")
    failures = [(t.id, v.status, v.detail) for t, v in zip(tasks, verdicts, strict=False) if not v.passed]
    assert failures == []
    assert [t.id for t, v in zip(tasks, verdicts[len(tasks) :], strict=True) if v.passed] == []


@needs_node
def test_the_javascript_tests_also_pass_under_plain_node():
    """The shipped tests are ordinary Node.js scripts (the references, not generated code, run here)."""
    for row in load_rows()[:5]:
        program = js_program(js_reference(row), row["tests"])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "program.js"
            path.write_text(program.code + program.tests, encoding="utf-8")
            done = subprocess.run([str(NODE), str(path)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, (row["task_id"], done.stderr[-300:])


def test_every_python_reference_passes_humaneval_tests_in_the_sandbox():
    bench = get_benchmark("humaneval-js2py")
    tasks = bench.load("test")
    jobs = [bench.assemble(t, t.reference or "") for t in tasks]
    wrong = [bench.assemble(t, f"def {t.entry_point}(*args):\n    return None\n") for t in tasks]
    with SandboxPool(workers=2, limits=Limits(timeout_s=20.0, memory_mb=1024)) as pool:
        verdicts = pool.map(jobs + wrong)
    passed = [v.passed for v in verdicts[: len(tasks)]]
    assert all(passed), [
        (t.id, v.status, v.detail) for t, v in zip(tasks, verdicts, strict=False) if not v.passed
    ]
    assert not any(v.passed for v in verdicts[len(tasks) :])


def test_sanitise_takes_the_code_from_a_reply():
    py2js, js2py = get_benchmark("humaneval-py2js"), get_benchmark("humaneval-js2py")
    task = py2js.load("test")[23]
    chat = PromptStyle(name="chat")
    reply = "function strlen(string) {\n  return string.length;\n}\n```\nThat is it."
    assert py2js.sanitise(task, reply, chat) == "function strlen(string) {\n  return string.length;\n}\n"
    base = PromptStyle(name="base")
    fenced = "Here:\n```javascript\nfunction strlen(s) { return s.length; }\n```\n"
    assert py2js.sanitise(task, fenced, base) == "function strlen(s) { return s.length; }\n"
    pytask = js2py.load("test")[23]
    reply = "def strlen(string):\n    return len(string)\n\nprint(strlen('abc'))\n```"
    assert js2py.sanitise(pytask, reply, chat) == "def strlen(string):\n    return len(string)\n"


def test_prompts_for_chat_open_a_fence_in_the_target_language():
    py2js = get_benchmark("humaneval-py2js")
    task = py2js.load("test")[0]
    style = PromptStyle(name="chat", chat_prompt=lambda m: f"<user>{m[0]['content']}</user>")
    prompt = py2js.build_prompt(task, style)
    assert prompt.startswith("<user>Translate this Python code to JavaScript") and prompt.endswith(
        "</user>```javascript\n"
    )
    base = PromptStyle(name="base", render=lambda text: f"### Instruction:\n{text}\n### Response:\n")
    assert py2js.build_prompt(task, base) == f"### Instruction:\n{task.prompt}\n### Response:\n"


def test_text_metrics_score_references_perfectly_and_others_less():
    py2js = get_benchmark("humaneval-py2js")
    tasks = py2js.load("test")[:5]
    perfect = py2js.text_metrics(tasks, [t.reference or "" for t in tasks])
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["codebleu"] == pytest.approx(1.0)
    shuffled = [t.reference or "" for t in tasks[1:] + tasks[:1]]
    other = py2js.text_metrics(tasks, shuffled)
    assert other["bleu"] < 60 and other["codebleu"] < 0.7
