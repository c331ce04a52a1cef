"""Compare evaluation folders over the same tasks and render one static HTML report. Pure functions, no CLI.

    load_results(folder)        results.jsonl as {task_id: row}
    bootstrap_mean_ci(values)   (mean, lo, hi): percentile bootstrap over tasks (as passk.bootstrap_ci)
    paired_bootstrap(a, b)      (mean(b) - mean(a), lo, hi): both resampled with the same task indices
    compare(eval_dir)           per-model pass@1 + CI, delta vs a baseline, fixed/broken tasks -> compare.json
    write_report(eval_dir)      report.html: tables, base64 PNG plots, regressions side by side
    training_plots(train_dir)   a training run's loss (and validation pass@1) curves as inline PNGs

Per-task pass@1 is c/n (the row's "pass@1" when present); a task is "fixed" when its pass@1 rose over the
baseline's and "broken" when it fell.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codetune.errors import CodetuneError
from codetune.eval.passk import percentile_bootstrap
from codetune.manifest import read_jsonl, write_json

ITERATIONS = 2000
CONFIDENCE = 0.95
CI_METHOD = "95% percentile bootstrap over tasks, 2000 resamples, paired for differences"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _read_rows(path: Path) -> list[dict[str, Any]]:
    try:
        return [r for r in read_jsonl(path) if isinstance(r, dict)]
    except ValueError as e:
        raise CodetuneError(f"{path}: not valid JSON lines ({e})") from e


def load_results(folder: Path) -> dict[str, dict[str, Any]]:
    """results.jsonl of one evaluation folder as {task_id: row}, in file (task) order."""
    path = Path(folder) / "results.jsonl"
    if not path.is_file():
        raise CodetuneError(f"{path}: not found; is {folder} a folder written by a codetune evaluation?")
    return rows_by(path, "task_id")


def rows_by(path: Path, key: str) -> dict[str, dict[str, Any]]:
    """The rows of a JSON-lines file as {row[key]: row}, in file order; a row without `key` is an error."""
    out: dict[str, dict[str, Any]] = {}
    for i, row in enumerate(_read_rows(path), 1):
        if key not in row:
            raise CodetuneError(f"{path} row {i}: no {key}")
        out[str(row[key])] = row
    return out


def _load_samples(folder: Path) -> dict[str, list[dict[str, Any]]]:
    path = folder / "samples.jsonl"
    grouped: dict[str, list[dict[str, Any]]] = {}
    if path.is_file():
        for row in _read_rows(path):
            grouped.setdefault(str(row.get("task_id")), []).append(row)
    return grouped


def _n_c(row: dict[str, Any]) -> tuple[int, int]:
    verdicts = row.get("verdicts") or []
    n = int(row.get("n") or len(verdicts) or 1)
    c = row.get("c")
    return n, int(c) if c is not None else sum(v.get("status") == "passed" for v in verdicts)


def task_pass1(row: dict[str, Any]) -> float:
    """One task's pass@1: the row's "pass@1" when present, else c/n."""
    value = row.get("pass@1")
    if isinstance(value, int | float):
        return float(value)
    n, c = _n_c(row)
    return c / n


def bootstrap_mean_ci(
    values: Sequence[float], iterations: int = ITERATIONS, seed: int = 0, confidence: float = CONFIDENCE
) -> tuple[float, float, float]:
    """(mean, lo, hi): percentile bootstrap of the mean, resampling values with replacement (seeded).

    Draws exactly as `passk.bootstrap_ci` does, so per-task pass@1 values reproduce metrics.json's CI."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("bootstrap_mean_ci needs at least one value")
    if iterations < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"need iterations >= 1 and 0 < confidence < 1; got {iterations}, {confidence}")
    lo, hi = percentile_bootstrap(vals, iterations, confidence, seed)
    return sum(vals) / len(vals), lo, hi


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    iterations: int = ITERATIONS,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> tuple[float, float, float]:
    """(delta, lo, hi) for mean(b) - mean(a), resampling tasks with the same indices for both lists.

    Resampling the per-task differences b[i] - a[i] is exactly that paired resampling."""
    if len(a) != len(b):
        raise ValueError(f"paired_bootstrap needs equal lengths; got {len(a)} and {len(b)}")
    return bootstrap_mean_ci(
        [float(y) - float(x) for x, y in zip(a, b, strict=True)], iterations, seed, confidence
    )


def _common_tasks(
    eval_dir: Path, results: dict[str, dict[str, Any]], allow_subset: bool
) -> tuple[list[str], int]:
    sets = {label: set(rows) for label, rows in results.items()}
    union: set[str] = set().union(*sets.values())
    common = set.intersection(*sets.values())
    if common != union and (not allow_subset or not common):
        detail = []
        for label, ids in sets.items():
            lacks = sorted(union - ids)
            eg = f", lacks {len(lacks)} (e.g. {', '.join(lacks[:3])})" if lacks else ""
            detail.append(f"{eval_dir / label}/ has {len(ids)} tasks{eg}")
        hint = f"allow_subset=True compares the {len(common)} common tasks" if common else "no task is common"
        raise CodetuneError(f"task sets differ between the compared folders: {'; '.join(detail)}; {hint}")
    first = next(iter(results.values()))
    return [t for t in first if t in common], len(union) - len(common)


def _summarise(
    folder: Path, rows: dict[str, dict[str, Any]], task_ids: list[str], seed: int
) -> dict[str, Any]:
    metrics = _read_json(folder / "metrics.json")
    scores = [task_pass1(rows[t]) for t in task_ids]
    mean, lo, hi = bootstrap_mean_ci(scores, seed=seed)
    statuses: Counter[str] = Counter()
    categories: dict[str, list[float]] = {}
    for t, score in zip(task_ids, scores, strict=True):
        statuses.update(str(v.get("status", "unknown")) for v in rows[t].get("verdicts") or [])
        if rows[t].get("category"):
            categories.setdefault(str(rows[t]["category"]), []).append(score)
    counts = [_n_c(rows[t]) for t in task_ids]
    if not statuses and isinstance(metrics.get("statuses"), dict):
        statuses.update({str(k): int(v) for k, v in metrics["statuses"].items()})
    samples = _load_samples(folder)
    keep = set(task_ids)
    truncated = sum(s.get("finish_reason") == "length" for t, rs in samples.items() if t in keep for s in rs)
    return {
        "folder": str(folder),
        "pass@1": mean,
        "ci95": [lo, hi],
        "passed": sum(c for _, c in counts),
        "total": sum(n for n, _ in counts),
        "tasks_solved": sum(c > 0 for _, c in counts),
        "statuses": dict(statuses.most_common()),
        "categories": {
            k: {"pass@1": sum(v) / len(v), "tasks": len(v)} for k, v in sorted(categories.items())
        },
        "truncated": truncated if samples else metrics.get("truncated"),
        "model": _evaluated_model(_read_json(folder / "manifest.json")),
        **{
            k: metrics.get(k)
            for k in ("selection", "candidates", "generation_s", "tokens_per_s", "reused_generations")
        },
    }


def _evaluated_model(manifest: dict[str, Any]) -> str | None:
    """What a folder's answers came from, as its manifest records it: the model file (and the LoRA
    adapter applied to it), or the models a sample-then-filter row chose among."""
    if manifest.get("candidates_from"):
        return "chosen among the answers of " + ", ".join(map(str, manifest["candidates_from"]))
    backend = manifest.get("backend")
    model = backend.get("model") if isinstance(backend, dict) else manifest.get("model")
    if not model:
        return None
    lora = backend.get("lora") if isinstance(backend, dict) else None
    return f"{model} + LoRA {lora}" if lora else str(model)


def _natural_key(label: str) -> list[Any]:
    """`tuned-v8` before `tuned-v10`: runs of digits compare as numbers."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", label)]


def compare(
    eval_dir: Path,
    labels: list[str] | None = None,
    baseline: str | None = None,
    *,
    allow_subset: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare the models under `eval_dir` (one sub-folder per label) on their common tasks.

    Returns (and writes to `eval_dir/compare.json`) per-model pass@1 with a bootstrap CI, passed/total
    samples, statuses and per-category pass@1, and for every model but the baseline the paired-bootstrap
    delta and the fixed/broken task ids. Raises CodetuneError when the folders' task sets differ, unless
    `allow_subset`, which compares the intersection and reports how many tasks were dropped."""
    eval_dir = Path(eval_dir)
    if labels is None:
        subs = sorted(eval_dir.iterdir()) if eval_dir.is_dir() else []
        labels = sorted((p.name for p in subs if (p / "results.jsonl").is_file()), key=_natural_key)
        if not labels:
            raise CodetuneError(
                f"{eval_dir}: no sub-folder holds a results.jsonl; is it an evaluation folder?"
            )
    labels = list(dict.fromkeys(labels))
    if not labels:
        raise CodetuneError("compare needs at least one label")
    baseline = baseline or ("base" if "base" in labels else labels[0])
    if baseline not in labels:
        raise CodetuneError(f"baseline {baseline!r} is not among the compared labels {labels}")
    labels = [baseline, *[x for x in labels if x != baseline]]
    results = {label: load_results(eval_dir / label) for label in labels}
    task_ids, dropped = _common_tasks(eval_dir, results, allow_subset)
    models = {label: _summarise(eval_dir / label, results[label], task_ids, seed) for label in labels}
    base = [task_pass1(results[baseline][t]) for t in task_ids]
    comparisons: dict[str, Any] = {}
    for label in labels[1:]:
        mine = [task_pass1(results[label][t]) for t in task_ids]
        delta, lo, hi = paired_bootstrap(base, mine, seed=seed)
        same = [(x, y) for x, y in zip(base, mine, strict=True) if x == y]
        comparisons[label] = {
            "baseline": baseline,
            "delta": delta,
            "ci95": [lo, hi],
            "fixed": [t for t, x, y in zip(task_ids, base, mine, strict=True) if y > x],
            "broken": [t for t, x, y in zip(task_ids, base, mine, strict=True) if y < x],
            "unchanged": len(same),
            "both_passed": sum(x == 1.0 for x, _ in same),
            "both_failed": sum(x == 0.0 for x, _ in same),
        }
    out = {
        "eval_dir": str(eval_dir),
        "baseline": baseline,
        "labels": labels,
        "tasks": len(task_ids),
        "dropped_tasks": dropped,
        "ci_method": {"bootstrap": "percentile, over tasks", "iterations": ITERATIONS, "seed": seed},
        "models": models,
        "comparisons": comparisons,
    }
    write_json(eval_dir / "compare.json", out)
    return out


# ---------------------------------------------------------------- HTML report

_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d232a;max-width:1240px;
margin:2em auto;padding:0 1.2em}h1{font-size:1.7em;margin:0 0 .1em}h2{font-size:1.3em;margin-top:2.2em;
border-bottom:1px solid #dde1e6;padding-bottom:.2em}h3{font-size:1.1em;margin-top:1.6em}h4{margin:.1em 0 .4em}
table{border-collapse:collapse;margin:.6em 0}th,td{padding:.35em .8em;border-bottom:1px solid #e4e6ea;
vertical-align:top}th{background:#f4f5f7;text-align:left;font-weight:600}.n{text-align:right;
font-variant-numeric:tabular-nums;white-space:nowrap}code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,
Consolas,monospace}pre{font-size:12.5px;line-height:1.4;background:#f7f8fa;border:1px solid #e1e3e8;
border-radius:4px;padding:.6em;max-height:26em;overflow:auto;white-space:pre;margin:.3em 0}pre.short{max-height:14em}
pre.err{background:#fff6f5;border-color:#f1d3cf;max-height:22em}.pair{display:grid;grid-template-columns:1fr 1fr;gap:.8em}
.pair>div{min-width:0}.cap{font-size:.85em;color:#556;font-weight:600}.muted{color:#667}.good{color:#17803d}
.bad{color:#b3261e}.case{border:1px solid #e4e6ea;border-radius:6px;padding:.6em .9em;margin:1em 0}
.plots{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}img{max-width:100%}
footer{margin-top:3em;color:#667;font-size:.88em;border-top:1px solid #dde1e6;padding-top:.8em}
"""


def _e(x: object) -> str:
    return html.escape(str(x))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    """Cells are HTML already; `align` has one letter per column, "r" for right-aligned numbers."""
    cls = [' class="n"' if a == "r" else "" for a in align]
    head = "".join(f"<th{c}>{_e(h)}</th>" for h, c in zip(headers, cls, strict=True))
    body = "".join(
        "<tr>" + "".join(f"<td{c}>{v}</td>" for v, c in zip(r, cls, strict=True)) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _duration(seconds: float) -> str:
    """7896.4 -> '2 h 12 min', 1270.6 -> '21 min', 48.2 -> '48 s'."""
    minutes = round(seconds / 60)
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


def _name(label: str, m: dict[str, Any]) -> str:
    if m.get("selection") == "filter":
        cand = f", {m['candidates']:g} candidates" if m.get("candidates") else ""
        return f"{label} (sample-then-filter{cand})"
    return label


def _png(fig: Any, ax: Any, ylabel: str, title: str, alt: str, xlabel: str | None = "step") -> str:
    """The figure as an inline base64 PNG <img>; the figure is closed."""
    import matplotlib.pyplot as plt

    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plots(cmp: dict[str, Any], train_dir: Path | None) -> list[str]:
    plt = _pyplot()
    labels, models = cmp["labels"], cmp["models"]
    fig, ax = plt.subplots(figsize=(max(3.5, 1.1 * len(labels) + 1.5), 3.2))
    ys = [100 * models[x]["pass@1"] for x in labels]
    err = [[max(0.0, y - 100 * models[x]["ci95"][0]) for x, y in zip(labels, ys, strict=True)]]
    err.append([max(0.0, 100 * models[x]["ci95"][1] - y) for x, y in zip(labels, ys, strict=True)])
    ax.bar(range(len(labels)), ys, yerr=err, capsize=4, color=["#9aa5b1", *["#3b7dd8"] * (len(labels) - 1)])
    ax.set_xticks(range(len(labels)), [_name(x, models[x]).replace(" (", "\n(") for x in labels], fontsize=8)
    bar = _png(fig, ax, "pass@1 (%)", "pass@1 with 95% CI", "pass@1 per model", xlabel=None)
    return [bar, *training_plots(train_dir)]


def training_plots(train_dir: Path | None) -> list[str]:
    """Training and validation loss, and validation pass@1 when it was measured, from a training run's
    metrics.jsonl (the best step marked): inline PNG <img> tags, none without a run."""
    if train_dir is None:
        return []
    plt = _pyplot()
    out = []
    rows = _read_rows(train_dir / "metrics.jsonl") if (train_dir / "metrics.jsonl").is_file() else []
    best = (_read_json(train_dir / "manifest.json").get("summary") or {}).get("best_step")

    def series(key: str) -> tuple[list[float], list[float]]:
        pts = [(float(r["step"]), float(r[key])) for r in rows if r.get(key) is not None and "step" in r]
        return [p[0] for p in pts], [p[1] for p in pts]

    (ts, tl), (vs, vl), (ps, pv) = series("loss"), series("valid_loss"), series("valid_pass@1")
    if tl or vl:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        if tl:
            w = max(1, min(50, len(tl) // 10))
            cum = [0.0]
            for v in tl:
                cum.append(cum[-1] + v)
            avg = [(cum[i + 1] - cum[max(0, i + 1 - w)]) / min(w, i + 1) for i in range(len(tl))]
            if w > 1:  # a moving average only where there are enough steps to smooth
                ax.plot(ts, tl, lw=0.6, alpha=0.35, color="#3b7dd8", label="train loss")
                ax.plot(ts, avg, lw=1.6, color="#3b7dd8", label=f"train loss ({w}-step avg)")
            else:
                ax.plot(ts, tl, "o-", lw=1.2, ms=2, color="#3b7dd8", label="train loss (per step)")
        if vl:
            ax.plot(vs, vl, "o-", lw=1.6, ms=3, color="#d8703b", label="valid loss")
        if best is not None:
            ax.axvline(float(best), ls="--", lw=0.8, color="#555", label=f"best step {best}")
        out.append(_png(fig, ax, "loss", "training and validation loss", "loss vs step"))
    if pv:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        # clip_on=False: a point at 0 % is drawn whole, not cut in half by the axis
        ax.plot(
            ps,
            [100 * v for v in pv],
            "o-",
            lw=1.6,
            ms=4,
            color="#17803d",
            label="valid pass@1",
            clip_on=False,
        )
        if best is not None and float(best) in ps:
            y = 100 * pv[ps.index(float(best))]
            ax.plot([float(best)], [y], "*", ms=14, color="#b3261e", label=f"best step {best}", clip_on=False)
        ax.set_ylim(0, min(100, max(10.0, 100 * max(pv) * 1.25)))
        ax.set_xlim(0, max(ts + ps) * 1.05 if ts else max(ps) * 1.05 + 1)
        out.append(_png(fig, ax, "pass@1 (%)", "validation pass@1", "validation pass@1 vs step"))
    return out


def _pick(row: dict[str, Any], passed: bool) -> tuple[int, dict[str, Any]]:
    """The first sample (index, verdict) that passed (or failed, when `passed` is False)."""
    verdicts = row.get("verdicts") or []
    for i, v in enumerate(verdicts):
        if (v.get("status") == "passed") == passed:
            return i, v
    return 0, verdicts[0] if verdicts else {}


Side = tuple[str, dict[str, Any], list[dict[str, Any]]]  # label, results row, that task's samples


def _case(tid: str, left: Side, right: Side, short: bool) -> str:
    """One task side by side: each side shows a sample that passed if that side scored higher, else one that
    failed; the failing verdict (status, error, stderr tail) follows."""
    parts, failing = [], None
    for (label, row, samples), (_, other, _) in ((left, right), (right, left)):
        ok = task_pass1(row) > task_pass1(other)
        i, v = _pick(row, passed=ok)
        # the sanitised code is "completion" (folders written before the one runner: DataFrameBench's "code")
        code = (
            str(samples[i].get("code", samples[i].get("completion", "")))
            if i < len(samples)
            else "(no samples.jsonl row)"
        )
        what = (
            "passed" if v.get("status") == "passed" else f"{v.get('status', '?')} {v.get('error_type') or ''}"
        )
        parts.append(
            f'<div><div class="cap">{_e(label)}: {_e(what)} (pass@1 {_pct(task_pass1(row))})</div>'
            f'<pre class="{"short" if short else ""}">{_e(code)}</pre></div>'
        )
        failing = failing if ok else v
    category = left[1].get("category") or right[1].get("category")
    out = f'<div class="case"><h4><code>{_e(tid)}</code>'
    out += f' <span class="muted">{_e(category)}</span>' if category else ""
    out += f'</h4><div class="pair">{"".join(parts)}</div>'
    if failing:
        out += (
            f"<p><b>{_e(failing.get('status', '?'))}</b> {_e(failing.get('error_type') or '')} "
            f'<span class="muted">{_e(failing.get("detail") or "")}</span></p>'
        )
        tail = "\n".join(str(failing.get("stderr_tail") or "").splitlines()[-(6 if short else 15) :])
        out += f'<pre class="err">{_e(tail)}</pre>' if tail.strip() else ""
    return out + "</div>"


def write_report(
    eval_dir: Path,
    train_dir: Path | None = None,
    out: Path | None = None,
    title: str = "codetune report",
    *,
    labels: list[str] | None = None,
    baseline: str | None = None,
    allow_subset: bool = False,
) -> Path:
    """Write one self-contained HTML report (default `eval_dir/report.html`; also writes compare.json)."""
    eval_dir, train_dir = Path(eval_dir), Path(train_dir) if train_dir is not None else None
    cmp = compare(eval_dir, labels, baseline, allow_subset=allow_subset)
    labels, base, models, comps = cmp["labels"], cmp["baseline"], cmp["models"], cmp["comparisons"]
    results = {x: load_results(eval_dir / x) for x in labels}
    samples = {x: _load_samples(eval_dir / x) for x in labels}

    def side(label: str, t: str) -> Side:
        return label, results[label][t], samples[label].get(t, [])

    h = _page_head(title)
    h.append(f'<p class="muted">generated {_e(time.strftime("%Y-%m-%d %H:%M:%S %z"))} · {cmp["tasks"]} tasks')
    h.append(f" ({cmp['dropped_tasks']} dropped: not in every folder)" if cmp["dropped_tasks"] else "")
    h.append(f" · baseline <b>{_e(base)}</b></p><ul>")
    for x in labels:
        m = models[x]
        parts = [f"<code>{_e(m['model'])}</code>"] if m.get("model") else []
        parts.append(f"answers in <code>{_e(m['folder'])}</code>")
        seconds, speed = m.get("generation_s"), m.get("tokens_per_s")
        if isinstance(seconds, int | float):
            rate = f" at {speed:.1f} tokens/s" if isinstance(speed, int | float) else ""
            parts.append(f"generated in {_e(_duration(seconds))}{rate}")
        elif m.get("reused_generations"):
            parts.append("re-scored from its saved generations (no generation time)")
        h.append(f"<li><b>{_e(_name(x, m))}</b>: {' · '.join(parts)}</li>")
    h.append("</ul><h2>Before / after</h2>")
    rows = []
    for x in labels:
        m, c = models[x], comps.get(x)
        lo, hi = m["ci95"]
        delta = "baseline"
        if c:
            tone = "good" if c["ci95"][0] > 0 else "bad" if c["ci95"][1] < 0 else ""
            d, dl, dh = (100 * v for v in (c["delta"], *c["ci95"]))
            delta = f'<span class="{tone}">{d:+.1f} pts [{dl:+.1f}, {dh:+.1f}]</span>'
        counts = [str(len(c[k])) for k in ("fixed", "broken")] if c else ["–", "–"]
        truncated = _e(m["truncated"] if m["truncated"] is not None else "–")
        ci = f"{_pct(m['pass@1'])} [{100 * lo:.1f}, {100 * hi:.1f}]"
        rows.append([_e(_name(x, m)), ci, f"{m['passed']}/{m['total']}", delta, *counts, truncated])
    heads = f"model|pass@1 [95% CI]|passed/total|Δ vs {base} [95% CI]|fixed|broken|truncated".split("|")
    h.append(_table(heads, rows, "lrrrrrr"))
    cats = sorted({k for x in labels for k in models[x]["categories"]})
    if cats:
        h.append("<h2>Per category</h2>")
        rows = []
        for k in cats:
            n = max(models[x]["categories"].get(k, {}).get("tasks", 0) for x in labels)
            cells = [models[x]["categories"].get(k) for x in labels]
            rows.append([_e(k), str(n), *[_pct(cell["pass@1"]) if cell else "–" for cell in cells]])
        h.append(_table(["category", "tasks", *labels], rows, "lr" + "r" * len(labels)))
    h.append('<h2>Plots</h2><div class="plots">' + "".join(_plots(cmp, train_dir)) + "</div>")
    if train_dir is not None:
        summary = _read_json(train_dir / "manifest.json").get("summary") or {}
        bits = [f"best step {_e(summary['best_step'])}"] if summary.get("best_step") is not None else []
        best = summary.get("best_metric")
        if isinstance(best, dict):
            shown = [f"{k} {v:.4g}" for k, v in best.items() if isinstance(v, int | float)]
            bits.append("best " + _e(", ".join(shown)))
        elif best is not None:
            bits.append(f"best metric {_e(best)}")
        if summary.get("select_by"):
            bits.append(f"selected by {_e(summary['select_by'])}")
        h.append(f'<p class="muted">training: <code>{_e(train_dir)}</code> {" · ".join(bits)}</p>')
    for x in labels[1:]:
        c = comps[x]
        by_drop = sorted(c["broken"], key=lambda t: task_pass1(results[x][t]) - task_pass1(results[base][t]))
        h.append(f"<h2>Worst regressions: {_e(x)} vs {_e(base)}</h2>")
        h.append(f'<p class="muted">{len(c["broken"])} broken, {len(c["fixed"])} fixed, {c["unchanged"]} ')
        h.append(
            f"unchanged; up to 10 broken and 5 fixed shown</p>{'' if c['broken'] else '<p>None broken.</p>'}"
        )
        for t in by_drop[:10]:
            h.append(_case(t, side(base, t), side(x, t), short=False))
        if c["fixed"]:
            h.append(f"<h3>Fixed by {_e(x)}</h3>")
        by_gain = sorted(c["fixed"], key=lambda t: task_pass1(results[base][t]) - task_pass1(results[x][t]))
        for t in by_gain[:5]:
            h.append(_case(t, side(base, t), side(x, t), short=True))
    h.append("<h2>Status breakdown</h2>")
    statuses = sorted({s for x in labels for s in models[x]["statuses"]}, key=lambda s: (s != "passed", s))
    rows = [[_e(x), *[str(models[x]["statuses"].get(s, 0)) for s in statuses]] for x in labels]
    h.append(_table(["model (samples)", *statuses], rows, "l" + "r" * len(statuses)))
    note = (
        "numbers also in compare.json. pass@1 is the mean over tasks of c/n; a task is fixed (broken) "
        f"when its pass@1 rose (fell) against {_e(base)}. Confidence intervals: {CI_METHOD}."
    )
    return _finish_page(h, eval_dir, labels, train_dir, note, out)


def _page_head(title: str) -> list[str]:
    """The start of a self-contained report page: head, style, title."""
    return [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>",
    ]


def _finish_page(
    h: list[str], eval_dir: Path, labels: list[str], train_dir: Path | None, note: str, out: Path | None
) -> Path:
    """Close the page with a footer naming its data (`note`: HTML), and write it (default
    `eval_dir/report.html`)."""
    h.append(
        f"<footer>Data: <code>{_e(eval_dir)}</code> ({', '.join(_e(x) for x in labels)})"
        + (f" and <code>{_e(train_dir)}</code>" if train_dir is not None else "")
        + f"; {note}</footer></body></html>"
    )
    path = Path(out) if out is not None else eval_dir / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(h), encoding="utf-8")
    return path
