"""report.html for an evaluation on a data split (text metrics, no execution). Pure functions, no CLI.

    example_scores(rows)     per example: edit similarity (0-100) and exact match (0/1)
    paired_differences(a, b) mean(b) - mean(a) of each per-example text metric, paired 95% bootstrap CI
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
from codetune.eval.metrics import edit_similarity, exact_match, sentence_bleu, syntax_validity
from codetune.eval.report import (
    CI_METHOD,
    ITERATIONS,
    _duration,
    _e,
    _finish_page,
    _page_head,
    _read_json,
    _table,
    bootstrap_mean_ci,
    paired_bootstrap,
    rows_by,
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


# the text metrics that are means of per-example scores (0-100), so a paired bootstrap over examples
# applies to their difference; BLEU and CodeXGLUE BLEU are corpus scores and have none
PAIRED = {
    "edit_similarity": "edit similarity",
    "syntax_validity": "syntax valid %",
    "exact_match": "exact match %",
    "sentence_bleu": "sentence BLEU",
}


def per_example_metrics(row: dict[str, Any], language: str = "python") -> dict[str, float]:
    """A predictions.jsonl row's scores (0-100) for each of PAIRED (syntax validity for Python only);
    their means over a split are the split's metrics.json values."""
    pred, ref = [str(row.get("prediction", ""))], [str(row.get("reference", ""))]
    out = {
        "edit_similarity": edit_similarity(pred, ref),
        "syntax_validity": syntax_validity(pred),
        "exact_match": exact_match(pred, ref),
        "sentence_bleu": sentence_bleu(pred, ref),
    }
    if language != "python":
        del out["syntax_validity"]
    return out


def paired_differences(
    base: dict[str, dict[str, Any]],
    other: dict[str, dict[str, Any]],
    language: str = "python",
    seed: int = 0,
) -> dict[str, Any]:
    """`other` minus `base` on the example ids both have ({id: predictions.jsonl row}): per metric of
    PAIRED the mean difference and its 95% percentile bootstrap interval, resampling examples with the
    same indices for both (seeded, so reruns give the same interval)."""
    ids = [i for i in base if i in other]
    if not ids:
        raise CodetuneError("paired differences need examples that both models answered; they share none")
    a = [per_example_metrics(base[i], language) for i in ids]
    b = [per_example_metrics(other[i], language) for i in ids]
    out: dict[str, Any] = {"examples": len(ids), "iterations": ITERATIONS, "seed": seed}
    for key in a[0]:
        delta, lo, hi = paired_bootstrap([x[key] for x in a], [y[key] for y in b], seed=seed)
        out[key] = {"delta": round(delta, 4), "lo": round(lo, 4), "hi": round(hi, 4)}
    return out


def cut_count(rows: Sequence[dict[str, Any]]) -> int:
    """How many answers stopped at max_new_tokens (finish_reason "length"), every sample counted."""
    return sum(
        sum(r == "length" for r in row.get("finish_reasons") or [row.get("finish_reason")]) for row in rows
    )


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
    preds = {x: rows_by(eval_dir / x / "predictions.jsonl", "id") for x in labels}
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
    h.append(_scores_table(labels, base, ids, scores, metrics, preds))
    language = "python" if any("syntax_validity" in m for m in metrics.values()) else "other"
    for x in labels[1:]:
        shared = {i: preds[base][i] for i in ids}
        h.append(_paired_table(x, base, paired_differences(shared, preds[x], language)))
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
    preds: dict[str, dict[str, dict[str, Any]]],
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
        cut = cut_count([preds[x][i] for i in ids])
        row = [_e(x), f"{mean:.1f} [{lo:.1f}, {hi:.1f}]", delta, f"{exact:g}/{len(ids)}", f"{cut}/{len(ids)}"]
        rows.append(row + [num(m, k) for k in corpus])
    heads = ["model", "edit similarity [95% CI]", f"Δ vs {base} [95% CI]", "exact match"]
    heads += ["cut at max_new_tokens"] + [_CORPUS[k] for k in corpus]
    return _table(heads, rows, "l" + "r" * (len(heads) - 1))


def _paired_table(label: str, base: str, diff: dict[str, Any]) -> str:
    """The per-example metrics of `label` minus `base`'s, each with its paired 95% CI."""
    rows = []
    for key, name in PAIRED.items():
        if key in diff:
            d = diff[key]
            tone = "good" if d["lo"] > 0 else "bad" if d["hi"] < 0 else ""
            ci = f'<span class="{tone}">[{d["lo"]:+.2f}, {d["hi"]:+.2f}]</span>'
            rows.append([_e(name), f"{d['delta']:+.2f}", ci])
    caption = f'<p class="muted">{_e(label)} − {_e(base)}, paired over {diff["examples"]} examples</p>'
    return caption + _table(["metric", "difference", "95% CI"], rows, "lrr")
