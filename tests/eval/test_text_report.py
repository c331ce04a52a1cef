"""report.html for a split evaluation: per-example scores, CIs, the examples that moved most."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from codetune.errors import CodetuneError
from codetune.eval.text_report import example_scores, write_text_report


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
    # the models were prompted differently: the prompt shown is said to be the baseline's
    assert 'prompt (base&#x27;s)</div><pre class="short">task e1</pre>' in html
    assert "<code>runs/x/final</code>" in html and "generated in 30 s at 4.0 tokens/s" in html


def test_the_report_refuses_a_folder_without_predictions(tmp_path: Path) -> None:
    with pytest.raises(CodetuneError, match="no sub-folder holds a predictions.jsonl"):
        write_text_report(tmp_path)
