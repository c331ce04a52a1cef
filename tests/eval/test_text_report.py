"""report.html for a split evaluation: per-example scores, CIs, the examples that moved most."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from codetune.errors import CodetuneError
from codetune.eval.text_report import cut_count, example_scores, paired_differences, write_text_report


def test_example_scores_are_edit_similarity_and_exact_match_per_example() -> None:
    rows = [
        {"id": "a", "prediction": "return x", "reference": "return  x\n"},
        {"id": "b", "prediction": "abc", "reference": "abd"},
        {"id": "c", "prediction": "", "reference": "pass"},
    ]
    scores = example_scores(rows)
    assert scores["a"][1] == 1.0 and scores["b"][1] == 0.0 and scores["c"] == (0.0, 0.0)
    assert scores["b"][0] == pytest.approx(100 * (1 - 1 / 3))
    assert scores["a"][0] == pytest.approx(100 * (1 - 2 / 10))  # exact match ignores whitespace, edits don't


def test_cut_count_counts_every_answer_stopped_by_max_new_tokens() -> None:
    rows = [
        {"id": "a", "finish_reason": "length"},
        {"id": "b", "finish_reason": "stop"},
        {"id": "c", "finish_reason": "length", "finish_reasons": ["length", "length", "stop"]},
        {"id": "d"},
    ]
    assert cut_count(rows) == 3
    assert cut_count([]) == 0


def _rows(predictions: dict[str, str]) -> dict[str, dict[str, str]]:
    return {
        i: {"id": i, "prediction": p, "reference": "def f(x):\n    return x + 1\n"}
        for i, p in predictions.items()
    }


def test_paired_differences_resample_examples_in_pairs() -> None:
    right, wrong = "def f(x):\n    return x + 1\n", "def f(x):\n    return x +"
    base = _rows({f"e{i}": wrong for i in range(20)})
    tuned = _rows({f"e{i}": right if i < 15 else wrong for i in range(20)})
    tuned["extra"] = {"id": "extra", "prediction": "", "reference": "x"}  # not in base: left out
    diff = paired_differences(base, tuned, seed=0)
    assert diff["examples"] == 20 and diff["iterations"] == 2000
    # syntax: 15 of 20 become valid (0 -> 100 each): +75 points; bootstrap of 15 ones in 20 draws
    assert diff["syntax_validity"]["delta"] == 75.0
    assert 50.0 <= diff["syntax_validity"]["lo"] < 75.0 < diff["syntax_validity"]["hi"] <= 95.0
    assert diff["exact_match"]["delta"] == 75.0
    # edit similarity: the wrong answer is 3 characters short of 27 -> 88.89 per example
    assert diff["edit_similarity"]["delta"] == pytest.approx(0.75 * 100 * 3 / 27, abs=1e-3)
    assert diff["edit_similarity"]["lo"] > 0
    assert paired_differences(base, tuned, seed=0) == diff  # seeded
    # equal answers: a zero difference with a zero-width interval
    same = paired_differences(base, base)
    assert same["edit_similarity"] == {"delta": 0.0, "lo": 0.0, "hi": 0.0}
    assert "syntax_validity" not in paired_differences(base, tuned, language="javascript")
    with pytest.raises(CodetuneError, match="share none"):
        paired_differences(base, _rows({"z": right}))


def _folder(root: Path, label: str, predictions: dict[str, str], model: str, prompt: str = "task") -> None:
    folder = root / label
    folder.mkdir(parents=True)
    refs = {
        "e1": "def f():\n    return 1\n",
        "e2": "def g(x):\n    return x < 2\n",
        "e3": "x = 3\n",
        "e9": "y",
    }
    rows = [
        {"id": i, "prompt": f"{prompt} {i}", "reference": refs[i], "prediction": p, "finish_reason": "stop"}
        for i, p in predictions.items()
    ]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "metrics.json").write_text(json.dumps({"bleu": 12.5, "seconds": 30.0, "tokens_per_s": 4.0}))
    (folder / "manifest.json").write_text(json.dumps({"model": model}))


def test_the_report_ranks_the_examples_that_moved_and_escapes_code(tmp_path: Path) -> None:
    _folder(
        tmp_path,
        "base",
        {"e1": "def f():\n    return 1\n", "e2": "def g(x):\n    pass\n", "e3": "x = 3\n"},
        "base-model",
    )
    _folder(
        tmp_path,
        "tuned",
        {"e1": "def f():\n    return 2\n", "e2": "def g(x):\n    return x < 2\n", "e3": "x = 3\n", "e9": "?"},
        "runs/x/final",
        prompt="### task",
    )
    html = write_text_report(tmp_path, title="t").read_text()
    assert "3 examples (1 left out: not evaluated by every model)" in html
    assert "as each model measured them, over all of its own examples" in html
    assert "edit similarity fell on 1 examples, rose on 1, was equal on 1" in html
    drops = html[html.index("Largest drops") : html.index("Largest gains")]
    gains = html[html.index("Largest gains") :]
    assert "<code>e1</code>" in drops and "e2" not in drops and "<code>e2</code>" in gains
    assert "return x &lt; 2" in gains and "return x < 2" not in html  # code is escaped
    # 1 - 12 edits / 27 characters; 1 - 1 / 22
    assert "base: edit similarity 55.6" in gains and "tuned: edit similarity 100.0" in gains
    assert "base: edit similarity 100.0" in drops and "tuned: edit similarity 95.5" in drops
    # exact matches: base 2/3 (e1, e3), tuned 2/3 (e2, e3); the row of the tuned model has a delta with a CI
    assert re.search(
        r"<td>tuned</td><td class=\"n\">[\d.]+ \[[\d.]+, [\d.]+\]</td><td class=\"n\">"
        r"<span class=\"[a-z]*\">[+-][\d.]+ \[[+-][\d.]+, [+-][\d.]+\]</span></td>"
        r"<td class=\"n\">2/3</td>",
        html,
    )
    # nothing was cut; the paired differences of every per-example metric, with their intervals
    assert html.count('<td class="n">0/3</td>') == 2
    assert "tuned − base, paired over 3 examples" in html
    # syntax validity only where the split is Python (metrics.json has it; these have BLEU alone)
    assert "<td>syntax valid %</td>" not in html
    for name in ("edit similarity", "exact match %", "sentence BLEU"):
        assert re.search(rf"<td>{re.escape(name)}</td><td class=\"n\">[+-][\d.]+</td>", html)
    # the models were prompted differently: the prompt shown is said to be the baseline's
    assert 'prompt (base&#x27;s)</div><pre class="short">task e1</pre>' in html
    assert "<code>runs/x/final</code>" in html and "generated in 30 s at 4.0 tokens/s" in html


def test_the_report_refuses_a_folder_without_predictions(tmp_path: Path) -> None:
    with pytest.raises(CodetuneError, match="no sub-folder holds a predictions.jsonl"):
        write_text_report(tmp_path)
