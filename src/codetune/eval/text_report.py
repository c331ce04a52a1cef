"""report.html for an evaluation on a data split (text metrics, no execution). Pure functions, no CLI.

    example_scores(rows)     per example: edit similarity (0-100) and exact match (0/1)
    write_text_report(dir)   report.html over every model folder with a predictions.jsonl: scores with
                             bootstrap CIs, the paired difference against a baseline, training curves,
                             and the examples that moved most, side by side

BLEU is a corpus score, so it is shown as measured; the confidence intervals are over examples, for the
scores that are means of per-example values (edit similarity, exact match).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codetune.errors import CodetuneError
from codetune.eval.metrics import edit_similarity, exact_match
from codetune.eval.report import (
    CI_METHOD,
    _duration,
    _e,
    _finish_page,
    _page_head,
    _read_json,
    _rows_by,
    _table,
    bootstrap_mean_ci,
    paired_bootstrap,
    training_plots,
)

SHOWN_DROPS, SHOWN_GAINS = 8, 4
# scores of the whole set (metrics.json), shown as measured
_CORPUS = {
    "bleu": "BLEU",
    "codexglue_bleu": "CodeXGLUE BLEU",
    "sentence_bleu": "sentence BLEU",
    "syntax_validity": "syntax valid %",
}


def example_scores(rows: Sequence[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """{example id: (edit similarity 0-100, exact match 0/1)} for predictions.jsonl rows."""
    out = {}
    for row in rows:
        pred, ref = [str(row.get("prediction", ""))], [str(row.get("reference", ""))]
        out[str(row["id"])] = (edit_similarity(pred, ref), exact_match(pred, ref) / 100.0)
    return out


def _case(eid: str, rows: dict[str, dict[str, Any]], scores: dict[str, float]) -> str:
    (first_label, first), *others = rows.items()
    prompt = first.get("prompt", "")
    # each model is prompted in its own format (chat template or not): say whose prompt is shown
    whose = "" if all(r.get("prompt", "") == prompt for _, r in others) else f" ({first_label}'s)"
    out = [f'<div class="case"><h4><code>{_e(eid)}</code></h4>']
    out.append(f'<div class="cap">prompt{_e(whose)}</div><pre class="short">{_e(prompt)}</pre>')
    out.append(f'<div class="cap">reference</div><pre class="short">{_e(first.get("reference", ""))}</pre>')
    out.append('<div class="pair">')
    for label, row in rows.items():
        cut = " · cut at max_new_tokens" if row.get("finish_reason") == "length" else ""
        out.append(
            f'<div><div class="cap">{_e(label)}: edit similarity {scores[label]:.1f}{cut}</div>'
            f"<pre>{_e(row.get('prediction', ''))}</pre></div>"
        )
    return "".join(out) + "</div></div>"


def write_text_report(
    eval_dir: Path,
    train_dir: Path | None = None,
    out: Path | None = None,
    title: str = "codetune report",
    *,
    baseline: str | None = None,
) -> Path:
    """Write report.html (default `eval_dir/report.html`) over the model folders of a split evaluation,
    on the examples they all have (how many others were left out is said)."""
    eval_dir = Path(eval_dir)
    labels = sorted(p.parent.name for p in eval_dir.glob("*/predictions.jsonl"))
    if not labels:
        raise CodetuneError(f"{eval_dir}: no sub-folder holds a predictions.jsonl; evaluate first")
    base = baseline if baseline in labels else ("base" if "base" in labels else labels[0])
    labels = [base, *[x for x in labels if x != base]]
    preds = {x: _rows_by(eval_dir / x / "predictions.jsonl", "id") for x in labels}
    ids = [i for i in preds[base] if all(i in preds[x] for x in labels)]
    if not ids:
        raise CodetuneError(f"{eval_dir}: the models share no example id; were they evaluated on one split?")
    left_out = len(set().union(*(set(p) for p in preds.values()))) - len(ids)
    scores = {x: example_scores([preds[x][i] for i in ids]) for x in labels}
    metrics = {x: _read_json(eval_dir / x / "metrics.json") for x in labels}
    manifests = {x: _read_json(eval_dir / x / "manifest.json") for x in labels}

    h = _page_head(title)
    h.append(f'<p class="muted">generated {_e(time.strftime("%Y-%m-%d %H:%M:%S %z"))} · {len(ids)} examples')
    h.append(f" ({left_out} left out: not evaluated by every model)" if left_out else "")
    h.append(f" · baseline <b>{_e(base)}</b></p><ul>")
    for x in labels:
        m, model = metrics[x], manifests[x].get("model")
        parts = [f"<code>{_e(model)}</code>"] if model else []
        if isinstance(m.get("seconds"), int | float):
            speed = m.get("tokens_per_s")
            rate = f" at {speed:.1f} tokens/s" if isinstance(speed, int | float) else ""
            parts.append(f"generated in {_e(_duration(m['seconds']))}{rate}")
        h.append(f"<li><b>{_e(x)}</b>: {' · '.join(parts)}</li>")
    h.append("</ul><h2>Scores</h2>")
    h.append(_scores_table(labels, base, ids, scores, metrics))
    if left_out:
        h.append('<p class="muted">BLEU and the other corpus scores are as each model measured them, over')
        h.append(" all of its own examples; the other columns are over the shared ones.</p>")
    plots = training_plots(train_dir)
    if plots:
        h.append(f'<h2>Training</h2><div class="plots">{"".join(plots)}</div>')
        h.append(f'<p class="muted">training: <code>{_e(train_dir)}</code></p>')
    for x in labels[1:]:
        diff = {i: scores[x][i][0] - scores[base][i][0] for i in ids}
        drops = sorted((i for i in ids if diff[i] < 0), key=lambda i: diff[i])
        gains = sorted((i for i in ids if diff[i] > 0), key=lambda i: -diff[i])
        h.append(f"<h2>Largest drops: {_e(x)} vs {_e(base)}</h2>")
        h.append(f'<p class="muted">edit similarity fell on {len(drops)} examples, rose on {len(gains)}, ')
        h.append(f"was equal on {len(ids) - len(drops) - len(gains)}; up to {SHOWN_DROPS} drops and ")
        h.append(f"{SHOWN_GAINS} gains shown</p>{'' if drops else '<p>None fell.</p>'}")
        for i in drops[:SHOWN_DROPS]:
            h.append(_case(i, {y: preds[y][i] for y in (base, x)}, {y: scores[y][i][0] for y in (base, x)}))
        if gains:
            h.append(f"<h3>Largest gains of {_e(x)}</h3>")
        for i in gains[:SHOWN_GAINS]:
            h.append(_case(i, {y: preds[y][i] for y in (base, x)}, {y: scores[y][i][0] for y in (base, x)}))
    note = (
        "per-model numbers also in each folder's metrics.json. Edit similarity is 1 - Levenshtein distance"
        f" / the longer length, per example. Confidence intervals: {CI_METHOD.replace('tasks', 'examples')}."
    )
    return _finish_page(h, eval_dir, labels, train_dir if plots else None, note, out)


def _scores_table(
    labels: list[str],
    base: str,
    ids: list[str],
    scores: dict[str, dict[str, tuple[float, float]]],
    metrics: dict[str, dict[str, Any]],
) -> str:
    corpus = [k for k in _CORPUS if any(isinstance(m.get(k), int | float) for m in metrics.values())]

    def num(m: dict[str, Any], key: str) -> str:
        return f"{m[key]:.2f}" if isinstance(m.get(key), int | float) else "–"

    rows = []
    for x in labels:
        sim = [scores[x][i][0] for i in ids]
        mean, lo, hi = bootstrap_mean_ci(sim)
        delta = "baseline"
        if x != base:
            d, dl, dh = paired_bootstrap([scores[base][i][0] for i in ids], sim)
            tone = "good" if dl > 0 else "bad" if dh < 0 else ""
            delta = f'<span class="{tone}">{d:+.1f} [{dl:+.1f}, {dh:+.1f}]</span>'
        exact = sum(scores[x][i][1] for i in ids)
        m = metrics[x]
        row = [_e(x), f"{mean:.1f} [{lo:.1f}, {hi:.1f}]", delta, f"{exact:g}/{len(ids)}"]
        rows.append(row + [num(m, k) for k in corpus])
    heads = ["model", "edit similarity [95% CI]", f"Δ vs {base} [95% CI]", "exact match"]
    heads += [_CORPUS[k] for k in corpus]
    return _table(heads, rows, "l" + "r" * (len(heads) - 1))
