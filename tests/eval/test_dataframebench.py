"""DataFrameBench plumbing on a fake wheel (same layout, two tiny pandas tasks per split): loading and
placeholder filling, sha256 pinning, the training recipe (`recipes/dataframebench_train.py`: targets that
still pass their tests in the sandbox, a file `prepare` reads as an ordinary source), decontamination,
and sample-then-filter selection."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest

from codetune.benchmarks import dataframebench as dfb
from codetune.benchmarks.runner import score_codes
from codetune.config import load_config
from codetune.errors import CodetuneError
from codetune.manifest import read_jsonl, sha256_file, write_jsonl
from codetune.sandbox import run_tests
from tests.conftest import load_script

recipe = load_script("recipes/dataframebench_train.py")

STUB = '{library_import}\n\ndef task_func(records, column="x"):\n    """Sum a column."""\n'
REFERENCE = '''import pandas as pd


def task_func(records, column="x"):
    """
    Sum one column of the records.

    A long docstring, as BigCodeBench solutions have.
    """
    df = pd.DataFrame(records)
    return df, float(df[column].sum()) if len(df) else 0.0

_reference_impl = task_func

def task_func(records, column="x"):
    df, total = _reference_impl(records, column=column)
    return total
'''
TESTS = """import unittest


class TestCases(unittest.TestCase):
    def test_sum(self):
        self.assertEqual(task_func([{"x": 1}, {"x": 2.5}]), 3.5)

    def test_empty(self):
        self.assertEqual(task_func([]), 0.0)
"""


REFERENCE_TEST = REFERENCE.replace(
    "    df = pd.DataFrame(records)\n    return df, float(df[column].sum()) if len(df) else 0.0",
    "    values = [float(row[column]) for row in records]\n    total = 0.0\n    for value in values:\n"
    "        total += value\n    return pd.DataFrame(records), total",
)
# a helper that returns early from inside a loop: it can't be inlined into the wrapper, so it is
# nested inside it
REFERENCE_OTHER = REFERENCE.replace(
    "    df = pd.DataFrame(records)\n",
    "    for row in records:\n        if column not in row:\n            return pd.DataFrame(), 0.0\n"
    "    df = pd.DataFrame(records)\n",
)


def _task(task_id: str, seed: str, reference: str = REFERENCE) -> dict[str, Any]:
    statement = f"Sum the column of the records ({task_id})."
    return {
        "task_id": task_id,
        "category": "aggregation",
        "entry_point": "task_func",
        "libs": ["pandas"],
        "prompt": f"Write code.\n\n{statement}\n\n{{library_instruction}}\n\n```python\n{STUB}```",
        "test_code": TESTS,
        "prompt_parts": {"statement": statement, "stub": STUB, "instruction": "{library_instruction}"},
        "ground_truth": {"pandas": reference, "polars": "import polars as pl\n"},
        "seed_id": seed,
    }


@pytest.fixture
def fake_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    wheel = cache / "dataframebench" / dfb.WHEEL_NAME
    wheel.parent.mkdir(parents=True)
    splits = {
        "train": [
            _task("DFB/T0001", "s1"),
            _task("DFB/T1001", "s1"),
            _task("DFB/T0002", "s2", REFERENCE_OTHER),
        ],
        "val": [_task("DFB/V0001", "s3")],
        "test": [_task("DFB/B0001", "s4", REFERENCE_TEST), _task("DFB/B0002", "s5", REFERENCE_TEST)],
    }
    with zipfile.ZipFile(wheel, "w") as z:
        for split, rows in splits.items():
            z.writestr(f"dataframebench/data/{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("CODETUNE_CACHE", str(cache))
    monkeypatch.setattr(dfb, "WHEEL_SHA256", sha256_file(wheel))
    monkeypatch.setattr(dfb, "SPLIT_SIZES", {k: len(v) for k, v in splits.items()})
    return wheel


def test_tasks_load_with_both_placeholders_filled(fake_wheel: Path) -> None:
    tasks = dfb.load_tasks("test")
    assert [t.id for t in tasks] == ["DFB/B0001", "DFB/B0002"]
    t = tasks[0]
    assert "{library" not in t.prompt
    assert "Use pandas as the data processing library in your solution." in t.prompt
    assert "import pandas as pd\n\ndef task_func" in t.prompt and t.stub.startswith("import pandas as pd")
    assert t.reference == REFERENCE_TEST and t.group == "s4" and t.split == "test"
    assert t.tests == TESTS and t.entry_point == "task_func" and t.category == "aggregation"
    polars = dfb.load_tasks("val", "polars")[0]
    assert "import polars as pl" in polars.prompt and "Use polars" in polars.prompt
    with pytest.raises(CodetuneError, match="split 'dev'"):
        dfb.load_tasks("dev")


def test_the_wheel_is_pinned_by_sha256(fake_wheel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dfb, "WHEEL_SHA256", "0" * 64)
    with pytest.raises(CodetuneError, match="sha256"):
        dfb.load_tasks("test")
    fake_wheel.unlink()
    with pytest.raises(CodetuneError, match="missing"):
        dfb.wheel_path(download=False)


def test_training_target_drops_the_docstring_and_inlines_the_helper() -> None:
    target, shape = recipe.shaped_target(REFERENCE)
    assert shape == "one-function" and recipe.training_target(REFERENCE) == target
    assert target == (
        "import pandas as pd\n\n\n"
        'def task_func(records, column="x"):\n'
        "    df = pd.DataFrame(records)\n"
        "    df, total = df, float(df[column].sum()) if len(df) else 0.0\n"
        "    return total\n"
    )
    wrapped = REFERENCE.replace(
        "_reference_impl = task_func\n", "_reference_impl = task_func\nimport pandas as pd\n"
    )
    assert recipe.training_target(wrapped) == target  # the adapter's own imports join the block at the top
    # a reference without the adapter idiom is one function already; what it can't rewrite is left alone
    plain = "def task_func():\n    return 1\n"
    assert recipe.shaped_target(plain) == (plain, "one-function")
    recursive = REFERENCE.replace("df = pd.DataFrame(records)", "df = pd.DataFrame(records)\n    task_func")
    assert recipe.shaped_target(recursive) == (recursive, "as-shipped")


def test_a_helper_that_returns_early_is_nested_inside_task_func() -> None:
    target, shape = recipe.shaped_target(REFERENCE_OTHER)
    assert shape == "nested-helper"
    assert "A long docstring" not in target and "_reference_impl = task_func" not in target
    assert target.startswith("import pandas as pd\n") and target.count("import pandas") == 1
    assert target.count("\ndef ") == 1 and "\n    def _reference_impl(records" in target


GUARDED = """import pandas as pd


def task_func(records, column="x", scale=1.0):
    \"\"\"The original BigCodeBench function.\"\"\"
    if not records:
        # nothing to sum
        return pd.DataFrame(), 0.0
    if scale == 0:
        return pd.DataFrame(records), None
    df = pd.DataFrame(records)

    if column not in df:
        df = df.assign(**{column: 0.0})
        return df, -1.0
    total = float(df[column].sum()) * scale
    return df, total

_reference_impl = task_func

def task_func(records, column="x", scale=1.0):
    TARGET = _reference_impl(records, column, scale)
    return TAIL
"""


@pytest.mark.parametrize(
    ("target", "tail"),
    [("df, total", "[total, len(df), len(records)]"), ("out", "[out[1], len(out[0]), len(records)]")],
)
def test_a_helper_with_guard_clauses_becomes_branches_of_one_function(target: str, tail: str) -> None:
    reference = GUARDED.replace("TARGET", target).replace("TAIL", tail)
    shaped, shape = recipe.shaped_target(reference)
    assert shape == "one-function" and "_reference_impl" not in shaped, shaped
    # each guard's return assigns what the wrapper assigns the call to; a guard right after another
    # is its `elif`; the rest sits under the last `else:` (no blank line after it)
    first_branch = f"    if not records:\n        # nothing to sum\n        {target} = pd.DataFrame(), 0.0\n"
    assert first_branch in shaped
    assert (
        f"    elif scale == 0:\n        {target} = pd.DataFrame(records), None\n    else:\n        df = "
        in shaped
    )
    assert f"            {target} = df, -1.0\n        else:\n" in shaped
    assert shaped.count("return") == 1  # one exit: the wrapper's
    if target == "df, total":
        assert "df, total = df, total" not in shaped and "            total = " in shaped
    cases = [
        ("[]", "'x'", "1.0", [0.0, 0, 0]),
        ("[{'x': 1}, {'x': 2}]", "'x'", "0", [None, 2, 2]),
        ("[{'x': 1}, {'x': 2}]", "'y'", "1.0", [-1.0, 2, 2]),
        ("[{'x': 1}, {'x': 2}]", "'x'", "2.0", [6.0, 2, 2]),
    ]
    check = "".join(f"assert task_func({r}, {c}, {k}) == {e!r}\n" for r, c, k, e in cases)
    for program in (reference, shaped):
        verdict = run_tests(program, check)
        assert verdict.passed, verdict.detail + verdict.stderr_tail


def test_guard_clauses_of_a_helper_whose_call_is_returned_assign_a_fresh_result() -> None:
    reference = GUARDED.replace(
        "    TARGET = _reference_impl(records, column, scale)\n    return TAIL",
        "    return _reference_impl(records, column, scale)",
    )
    shaped, shape = recipe.shaped_target(reference)
    assert shape == "one-function" and "        result = pd.DataFrame(), 0.0\n" in shaped, shaped
    assert shaped.rstrip().endswith("\n    return result")
    taken = reference.replace('scale=1.0):\n    """', 'scale=1.0):\n    result = _result = 0\n    """')
    assert recipe.shaped_target(taken)[1] == "nested-helper"  # no free name for it: nested instead
    check = "assert task_func([{'x': 1}], 'y', 1.0)[1] == -1.0\nassert task_func([], 'x', 1.0)[1] == 0.0\n"
    for program in (reference, shaped):
        verdict = run_tests(program, check)
        assert verdict.passed, verdict.detail + verdict.stderr_tail


def test_a_wrapper_variable_named_like_a_global_the_helper_reads_keeps_two_functions() -> None:
    reference = (
        'import pandas as pd\n\nLIMIT = 3\n\n\ndef task_func(records):\n    """Doc."""\n'
        "    if not records:\n        return LIMIT\n    return [len(records) + LIMIT for _ in records][0]\n\n"
        "_reference_impl = task_func\n\ndef task_func(records):\n"
        "    LIMIT = _reference_impl(records)\n    return LIMIT\n"
    )
    # inlined or nested, the helper's `LIMIT` would be the wrapper's, still unbound when it is read
    shaped, shape = recipe.shaped_target(reference)
    assert shape == "two-functions", shaped
    verdict = run_tests(shaped, "assert task_func([]) == 3\nassert task_func([1, 2]) == 5\n")
    assert verdict.passed, verdict.detail + verdict.stderr_tail


ADAPTED = """import pandas as pd


def task_func(df, n=2, label="top"):
    \"\"\"The original BigCodeBench function.\"\"\"
    out = df.head(n)
    out = out.assign(tag=label)
    return out

_reference_impl = task_func

def task_func(records, n=2):
    frame = pd.DataFrame(records)
    out = _reference_impl(frame, label="first")
    return out.to_dict("records")
"""


@pytest.mark.parametrize(
    ("wrapper_tail", "shape"),
    [
        ("", "one-function"),
        # the helper binds `out` and `n`: if the wrapper reads them after the call, inlining would change it
        ('\n    out = _reference_impl(frame, label="first")\n    return n', "nested-helper"),
        # a parameter's value may not read another parameter the prelude has already rebound
        ("\n    df = frame\n    out = _reference_impl(frame, n=df)\n    return out", "nested-helper"),
        # called once per row: the body can't stand in for the call outside the loop
        (
            "\n    rows = []\n    for r in records:\n        rows.append(_reference_impl(pd.DataFrame([r])))\n"
            "    return rows",
            "nested-helper",
        ),
    ],
)
def test_inlining_binds_arguments_and_refuses_what_would_change_the_meaning(
    wrapper_tail: str, shape: str
) -> None:
    reference = ADAPTED
    if wrapper_tail:
        reference = (
            ADAPTED.split("def task_func(records, n=2):")[0]
            + "def task_func(records, n=2):\n"
            + ("    frame = pd.DataFrame(records)" + wrapper_tail + "\n")
        )
    target, got = recipe.shaped_target(reference)
    assert got == shape, target
    if shape == "one-function":
        # each argument bound to its parameter: positional (frame, a wrapper variable: the parameter
        # df is renamed to it), keyword, then default (n)
        assert '    label = "first"\n    n = 2\n    out = frame.head(n)\n' in target
        assert "df" not in target and "_reference_impl" not in target
        verdict = run_tests(
            target,
            "assert task_func([{'a': 1}, {'a': 2}, {'a': 3}]) == "
            "[{'a': 1, 'tag': 'first'}, {'a': 2, 'tag': 'first'}]\n",
        )
        assert verdict.passed, verdict.detail + verdict.stderr_tail


RENAMING = """import pandas as pd


def task_func(df):
    df = df.head(2)
    result = df.assign(size=BODY)
    return result

_reference_impl = task_func

def task_func(records):
    frame = pd.DataFrame(records)
    out = _reference_impl(frame)
    return TAIL
"""


@pytest.mark.parametrize(
    ("body", "tail", "aliases", "expected"),
    [
        # plain: `df = frame` and `out = result` become renames, no alias line is left
        ("len(df)", 'out.to_dict("records")', [], "[{'a': 1, 'size': 2}, {'a': 2, 'size': 2}]"),
        # the wrapper reads `frame` after the call: the body's `df = df.head(2)` must not rebind it
        ("len(df)", "len(frame)", ["df = frame"], "3"),
        # `df` in a lambda (it may run later) or in an f-string (not a plain name token): left alone
        ("df.a.map(lambda v: len(df))", 'out.to_dict("records")', ["df = frame"], None),
        ('f"{len(df)}"', 'out.to_dict("records")', ["df = frame"], None),
    ],
)
def test_inlining_renames_instead_of_alias_lines_where_exact(
    body: str, tail: str, aliases: list[str], expected: str | None
) -> None:
    reference = RENAMING.replace("BODY", body).replace("TAIL", tail)
    target, shape = recipe.shaped_target(reference)
    assert shape == "one-function" and "_reference_impl" not in target
    found = [line.strip() for line in target.splitlines() if re.fullmatch(r"\s*\w+ = \w+", line)]
    assert found == aliases, target
    records = "[{'a': 1}, {'a': 2}, {'a': 3}]"
    check = f"assert task_func({records}) == {expected}\n" if expected else f"task_func({records})\n"
    for program in (reference, target):
        verdict = run_tests(program, check)
        assert verdict.passed, verdict.detail + verdict.stderr_tail


def test_references_and_targets_pass_their_tests_in_the_sandbox(fake_wheel: Path) -> None:
    tasks = dfb.load_tasks("test")
    wrong = "def task_func(records, column='x'):\n    return 1.0\n"
    first, second = tasks[0].reference or "", tasks[1].reference or ""
    target = recipe.training_target(first)
    scored = score_codes(dfb.DataFrameBench(), tasks, [first, target, second, wrong], workers=1)
    verdicts = scored.verdicts
    assert [v.status for v in verdicts] == ["passed", "passed", "passed", "failed"], [
        v.detail for v in verdicts
    ]
    assert len(scored.limits) == 2 and all(lim.timeout_s >= dfb.CALIBRATION_FLOOR_S for lim in scored.limits)


def _recipe_source(path: Path) -> dict[str, Any]:
    """The file source that reads the recipe's output (as configs/dataframebench-qwen0.5b-lora.yaml does)."""
    return {"path": str(path), "id_field": "id", "group_field": "group", "tests_field": "tests"}


def test_one_function_only_skips_the_rest_and_counts_them(fake_wheel: Path, tmp_path: Path) -> None:
    from codetune.data.prepare import prepare

    written = recipe.write_training_file(tmp_path / "train-v1.jsonl", one_function_only=True)
    assert [r["id"] for r in read_jsonl(written)] == ["DFB/T0001", "DFB/T1001"]
    info = json.loads((tmp_path / "train-v1.jsonl.manifest.json").read_text())
    assert info["target_shapes"] == {"one-function": 2, "nested-helper": 1}
    assert info["skipped_not_one_function"] == 1 and info["skipped_ids"] == ["DFB/T0002"]
    assert info["recipe_version"] == recipe.RECIPE_VERSION and info["sha256"] == sha256_file(written)
    raw = {
        "data": {
            "sources": [_recipe_source(written)],
            "output_dir": str(tmp_path / "data"),
            "splits": {"train": 1.0},
        }
    }
    out = prepare(load_config(None, raw))
    assert [r["id"] for r in read_jsonl(out / "train.jsonl")] == ["DFB/T0001"]  # T1001: its duplicate


STARTER = (
    "import pandas as pd\nfrom typing import Dict, List\n\n"
    'def task_func(records: List[Dict], column: str = "x") -> float:\n    """Sum a column."""\n'
)
ANSWER = (
    "import pandas as pd\nimport numpy as np\n\n\n"
    'def task_func(\n    records,\n    column="x",\n):\n'
    "    df = pd.DataFrame(records)\n    return float(np.sum(df[column])) if len(df) else 0.0\n"
)


def test_keep_starter_begins_the_answer_as_the_starter_code_does() -> None:
    assert recipe.with_starter(ANSWER, STARTER) == (
        "import pandas as pd\nfrom typing import Dict, List\nimport numpy as np\n\n\n"
        'def task_func(records: List[Dict], column: str = "x") -> float:\n    """Sum a column."""\n'
        "    df = pd.DataFrame(records)\n    return float(np.sum(df[column])) if len(df) else 0.0\n"
    )
    # other parameters (here a default): the answer's own header stays, the docstring still comes first
    other = recipe.with_starter(ANSWER.replace('column="x"', 'column="y"'), STARTER)
    assert 'def task_func(\n    records,\n    column="y",\n):\n    """Sum a column."""\n    df =' in other
    # a function that has a docstring keeps it; one whose body is on the def line is left alone
    documented = ANSWER.replace("    df = pd", '    """Mine."""\n    df = pd')
    assert '"""Sum a column."""' not in recipe.with_starter(documented, STARTER)
    one_line = "def task_func(records, column='x'): return 0.0\n"
    assert recipe.with_starter(one_line, STARTER) == one_line


def test_keep_starter_keeps_the_answers_meaning_where_both_bind_a_name() -> None:
    starter = 'from datetime import datetime\n\ndef task_func(n: int) -> int:\n    """Year n."""\n'
    answer = "import datetime\n\n\ndef task_func(n):\n    return datetime.datetime(n, 1, 1).year\n"
    rewritten = recipe.with_starter(answer, starter)
    assert rewritten.startswith("from datetime import datetime\nimport datetime\n")
    namespace: dict[str, Any] = {}
    exec(compile(rewritten, "<answer>", "exec"), namespace)  # our own fixed text, not generated code
    assert namespace["task_func"](2020) == 2020


def test_keep_starter_rewrites_and_counts(fake_wheel: Path, tmp_path: Path) -> None:
    written = recipe.write_training_file(tmp_path / "train-v1.jsonl", keep_starter=True)
    codes = {r["id"]: r["code"] for r in read_jsonl(written)}
    assert (
        'def task_func(records, column="x"):\n    """Sum a column."""\n    df = pd.DataFrame'
        in codes["DFB/T0001"]
    )
    info = json.loads((tmp_path / "train-v1.jsonl.manifest.json").read_text())
    assert info["starter_rewritten"] == 3 and info["options"]["keep_starter"] is True


def test_prepare_reads_the_recipes_file_as_an_ordinary_source(fake_wheel: Path, tmp_path: Path) -> None:
    from codetune.data.prepare import prepare

    written = recipe.write_training_file(tmp_path / "train-v1.jsonl")
    raw: dict[str, Any] = {
        "data": {
            "sources": [_recipe_source(written)],
            "output_dir": str(tmp_path / "data"),
            "splits": {"train": 1.0},
            "decontamination": {"eval_sets": ["dataframebench/test"], "ngram": 50},
        }
    }
    out = prepare(load_config(None, raw))
    rows = read_jsonl(out / "train.jsonl")
    # T0001 and T1001 are paraphrases with one solution: exact dedup keeps the first
    assert sorted(r["id"] for r in rows) == ["DFB/T0001", "DFB/T0002"]
    first = next(r for r in rows if r["id"] == "DFB/T0001")
    assert first["meta"]["tests"] == TESTS and first["group"] == "s1"
    assert first["code"].strip() == recipe.training_target(REFERENCE).strip()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["dropped"]["exact_duplicate"] == 1
    # the recipe reads only the train split; the generic source config has no benchmark-only fields left
    assert recipe.SPLIT == "train"
    for bad in (
        {"kind": "benchmark", "path": "dataframebench/train"},
        {**_recipe_source(written), "keep_starter": True},
    ):
        raw["data"]["sources"] = [bad]
        with pytest.raises(CodetuneError, match="kind|keep_starter"):
            prepare(load_config(None, raw))
    raw["data"]["sources"] = [_recipe_source(written)]
    raw["data"]["decontamination"]["eval_sets"] = ["humaneval/train"]
    with pytest.raises(CodetuneError, match="humaneval has one split"):
        prepare(load_config(None, raw))


def test_filter_selects_the_candidate_that_passes_visible_checks(fake_wheel: Path, tmp_path: Path) -> None:
    from codetune.eval.select import select, visible_checks

    tasks = dfb.load_tasks("test")
    good = recipe.training_target(REFERENCE)
    bench = dfb.DataFrameBench()
    crashes = "import pandas as pd\nDATA = pd.read_csv('missing.csv')\n\n\ndef task_func(records, column='x'):\n    return 0.0\n"
    broken_syntax = "def task_func(:\n"

    def model(label: str, codes: list[str], statuses: list[str]) -> None:
        folder = tmp_path / "eval" / label
        write_jsonl(
            folder / "samples.jsonl",
            [
                {"task_id": t.id, "completion": c, "raw": c, "finish_reason": "stop"}
                for t, c in zip(tasks, codes, strict=True)
            ],
        )
        write_jsonl(
            folder / "results.jsonl",
            [
                {"task_id": t.id, "n": 1, "c": int(s == "passed"), "verdicts": [{"status": s}]}
                for t, s in zip(tasks, statuses, strict=True)
            ],
        )

    # task 1: base crashes, tuned is right; task 2: base is right, tuned doesn't parse
    model("base", [crashes, good], ["error", "passed"])
    model("tuned", [good, broken_syntax], ["passed", "error"])
    metrics = select(tmp_path / "eval", ["base", "tuned"], bench, tasks, "filter")
    assert metrics["pass@1"] == 1.0 and metrics["oracle"] == 1.0
    assert metrics["chosen_from"] == {"base": 1, "tuned": 1}
    assert metrics["visible_checks"] == {"examples": 0, "smoke": 2}
    rows = read_jsonl(tmp_path / "eval" / "filter" / "results.jsonl")
    assert [r["chosen"]["label"] for r in rows] == ["tuned", "base"]
    # a HumanEval-style prompt with literal examples gets them as checks
    kind, checks = visible_checks('def f(x):\n    """\n    >>> f(2)\n    4\n    """\n', "f")
    assert kind == "examples" and checks.strip() == "assert (f(2)) == 4"


def test_training_evaluates_pass_at_1_by_execution(
    fake_wheel: Path, tmp_path: Path, pairs_file: Path
) -> None:
    """Every validation also generates for the benchmark subset and scores it in the sandbox; the rows
    land in metrics.jsonl, TensorBoard and evals/; best/ follows pass@1 (ties: lower valid loss)."""
    from codetune.data.prepare import prepare
    from codetune.training.loop import train
    from tests.conftest import tiny_config

    cfg = tiny_config(
        tmp_path,
        pairs_file,
        train={
            "max_steps": 4,
            "eval_every": 2,
            "eval_benchmark": "dataframebench/test",
            "eval_tasks": 1,
            "eval_max_new_tokens": 8,
            "tensorboard": True,
        },
    )
    prepare(cfg)
    out = train(cfg)
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if "valid_loss" in r]
    assert [r["step"] for r in rows] == [2, 4]
    for r in rows:
        assert r["valid_tasks"] == 1 and r["valid_passed"] == 0 and r["valid_pass@1"] == 0.0  # random model
        assert "valid_bleu" in r and r["eval_s"] > 0
    assert [p.name for p in sorted((out / "evals").iterdir())] == ["step-000002.jsonl", "step-000004.jsonl"]
    assert read_jsonl(out / "evals" / "step-000002.jsonl")[0]["task_id"] == "DFB/B0001"
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    manifest = json.loads((out / "manifest.json").read_text())
    best = min(rows, key=lambda r: r["valid_loss"])  # pass@1 ties at 0: the lower loss wins
    assert manifest["summary"]["select_by"] == "pass@1"
    assert manifest["summary"]["best_step"] == best["step"]


def test_selection_prefers_pass_at_1_then_lower_loss() -> None:
    from codetune.training.exec_eval import better

    assert better({"valid_loss": 2.0, "pass@1": 0.5}, {"valid_loss": 1.0, "pass@1": 0.25}, "pass@1")
    assert not better({"valid_loss": 1.0, "pass@1": 0.25}, {"valid_loss": 2.0, "pass@1": 0.5}, "pass@1")
    assert better({"valid_loss": 0.9, "pass@1": 0.5}, {"valid_loss": 1.0, "pass@1": 0.5}, "pass@1")
    assert not better({"valid_loss": 2.0, "pass@1": 0.5}, {"valid_loss": 1.0, "pass@1": 0.25}, "valid_loss")
    assert better({"valid_loss": 2.0, "pass@1": None}, None, "pass@1")


def test_a_re_score_from_cached_generations_reports_no_generation_speed(
    fake_wheel: Path, tmp_path: Path
) -> None:
    from codetune.generation import SamplingSettings
    from codetune.models.backends.base import Completion

    class Fixed:
        name = "fixed"

        def generate(self, prompts: list[str], settings: SamplingSettings) -> list[list[Completion]]:
            return [[Completion("def task_func():\n    return 1\n", "stop", 10, 7)] for _ in prompts]

    def run() -> dict:
        from codetune.benchmarks.base import PromptStyle
        from codetune.benchmarks.runner import run_benchmark

        bench = dfb.DataFrameBench()
        return run_benchmark(
            bench,
            bench.load("test")[:2],
            Fixed(),  # type: ignore[arg-type]
            SamplingSettings(),
            style=PromptStyle("chat"),
            out_dir=tmp_path / "out",
            workers=1,
        )

    first = run()
    assert (
        first["reused_generations"] == 0 and first["tokens_per_s"] > 0 and first["generation_s"] is not None
    )
    again = run()  # every answer from generations.jsonl: a tokens/s over ~0 s would be nonsense
    assert again["reused_generations"] == 2
    assert again["generation_s"] is None and again["tokens_per_s"] is None
