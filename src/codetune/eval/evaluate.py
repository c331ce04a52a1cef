"""The `evaluate` stage: generate for a split (or a benchmark) with one or more models and score it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from codetune import progress
from codetune.config import Config, config_to_dict, save_config, validate
from codetune.data.format import build_prompt
from codetune.data.records import Example, read_split
from codetune.errors import CodetuneError
from codetune.eval.metrics import edit_similarity, text_metrics
from codetune.eval.report import rows_by
from codetune.eval.text_report import PAIRED, cut_count, paired_differences
from codetune.generation import (
    GenerationWorkers,
    answer_stops,
    extract_code,
    generate_units,
    load_backend,
    model_prompt_config,
    parse_model_spec,
    sampling_settings,
)
from codetune.manifest import make_output_dir, sha256_file, write_json, write_jsonl, write_manifest


@dataclass
class Report:
    """What `evaluate` returns: the output folder and each model's metrics, keyed by label."""

    output_dir: Path
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)


def default_models(cfg: Config) -> list[str]:
    """With no eval.models: the trained run's base (if it is a local folder) and its final model."""
    out = Path(cfg.train.output_dir)
    models = []
    if (out / "base").is_dir():
        models.append(f"base={out / 'base'}")
    elif cfg.model.name not in ("tiny", "tiny-t5"):
        models.append(f"base={cfg.model.name}")
    if (out / "final").is_dir():
        models.append(f"final={out / 'final'}")
    if not models:
        raise CodetuneError(f"no models to evaluate: set eval.models, or train first ({out}/final not found)")
    return models


def evaluate(cfg: Config, console: Console | None = None) -> Report:
    """Generate for `eval.split` of the prepared data with each of `eval.models`; write
    `{label}/predictions.jsonl`, `{label}/metrics.json`, `summary.json` and a manifest."""
    validate(cfg)  # the Python API gets the checks `load_config` makes (eval.workers, generate.n, ...)
    console = console or Console(stderr=True)
    out = make_output_dir(cfg.eval.output_dir, "eval.output_dir")
    save_config(cfg, out / "config.yaml")
    if cfg.eval.benchmark:
        return _benchmark(cfg, out, console)
    data_dir = cfg.eval_data_dir
    examples = read_split(data_dir, cfg.eval.split)
    if cfg.eval.max_examples is not None:
        examples = examples[: cfg.eval.max_examples]
    if not examples:
        raise CodetuneError(f"{data_dir}/{cfg.eval.split}.jsonl has no examples to evaluate")
    report = Report(out)
    for spec in cfg.eval.models or default_models(cfg):
        label, path = parse_model_spec(spec)
        report.models[label] = path
        report.metrics[label] = _evaluate_model(cfg, label, path, examples, out / label, console)
    paired = split_paired_differences(out, list(report.models), cfg.eval.baseline, examples[0].language)
    summary: dict[str, Any] = {"models": report.models, "metrics": report.metrics}
    write_json(out / "summary.json", {**summary, **({"paired": paired} if paired else {})})
    write_manifest(
        out,
        "evaluate",
        data={
            "file": str(data_dir / f"{cfg.eval.split}.jsonl"),
            "sha256": sha256_file(data_dir / f"{cfg.eval.split}.jsonl"),
            "examples": len(examples),
        },
        decoding=asdict(cfg.generate),
        models=report.models,
        metrics=report.metrics,
        config=config_to_dict(cfg),
    )
    _print_table(console, report)
    _print_paired(console, paired)
    if cfg.eval.report:
        _report_or_say_why(console, write_split_report, cfg, out, list(report.models.values()))
    return report


def split_paired_differences(
    out: Path, labels: list[str], baseline: str | None, language: str
) -> dict[str, Any]:
    """{label: paired differences against the baseline} for every other model of a split evaluation
    (`eval.baseline`, else "base", else the first label); {} with fewer than two models."""
    if len(labels) < 2:
        return {}
    base = baseline if baseline in labels else ("base" if "base" in labels else labels[0])
    rows = {x: rows_by(out / x / "predictions.jsonl", "id") for x in labels}
    return {
        x: {"baseline": base, **paired_differences(rows[base], rows[x], language)}
        for x in labels
        if x != base
    }


def _print_paired(console: Console, paired: dict[str, Any]) -> None:
    """Each model minus the baseline per example, with its paired 95% bootstrap interval."""
    for label, diff in paired.items():
        table = Table(
            title=f"{label} - {diff['baseline']}: paired over {diff['examples']} examples, 95% bootstrap CI"
        )
        for column in ("metric", "difference", "95% CI"):
            table.add_column(column, justify="left" if column == "metric" else "right", no_wrap=True)
        for key in (k for k in PAIRED if k in diff):
            d = diff[key]
            tone = "green" if d["lo"] > 0 else "red" if d["hi"] < 0 else ""
            ci = Text(f"[{d['lo']:+.2f}, {d['hi']:+.2f}]", style=tone)  # Text: brackets aren't markup
            table.add_row(key, f"{d['delta']:+.2f}", ci)
        console.print(table)


def _evaluate_model(
    cfg: Config, label: str, path: str, examples: list, folder: Path, console: Console
) -> dict[str, Any]:
    loaded = load_backend(cfg.generate, path)
    name, runtime = loaded.name, getattr(loaded, "runtime", None)
    prompt_cfg = model_prompt_config(path, cfg.prompt)
    prompts = [build_prompt(ex.nl, prompt_cfg, loaded.chat_prompt) for ex in examples]
    settings = sampling_settings(cfg.generate, answer_stops(prompt_cfg))
    n = settings.n
    workers = GenerationWorkers(cfg.generate, path, cfg.eval.workers)
    # with workers (and more than one unit for them), this copy only renders the prompts: each worker
    # loads its own
    in_workers = workers.count > 1 and len(prompts) > cfg.generate.batch_size
    backend = None if in_workers else loaded
    del loaded
    where = f" on {runtime.describe()}" if runtime is not None else ""
    processes = f" in {workers.count} processes" if in_workers else ""
    console.print(f"[bold]evaluate[/bold] {label} ({path}): {len(prompts)} examples{where}{processes}")
    started = time.perf_counter()
    with progress.task(f"evaluate {label}: generate", len(prompts), unit="prompts") as bar:
        results = generate_units(
            prompts,
            settings,
            unit_size=cfg.generate.batch_size,
            backend=backend,
            workers=workers,
            progress=bar.callback,
        )
        bar.update(len(prompts), tokens=sum(c.completion_tokens for row in results for c in row))
    seconds = time.perf_counter() - started
    samples = [[extract_code(c.text, prompt_cfg) for c in row] for row in results]
    rows = [
        {
            "id": ex.id,
            "prompt": p,
            "reference": ex.code,
            "prediction": preds[0],
            "finish_reason": row[0].finish_reason,
            **({"predictions": preds, "finish_reasons": [c.finish_reason for c in row]} if n > 1 else {}),
        }
        for ex, p, preds, row in zip(examples, prompts, samples, results, strict=True)
    ]
    write_jsonl(folder / "predictions.jsonl", rows)
    language = examples[0].language if examples else "python"
    metrics: dict[str, Any] = sample_text_metrics(samples, [ex.code for ex in examples], language)
    metrics.update(split_pass_at_k(cfg, examples, samples, folder))
    n_tokens = sum(c.completion_tokens for row in results for c in row)
    metrics.update(
        examples=len(examples),
        samples=sum(len(row) for row in results),
        truncated=cut_count(rows),  # answers cut at max_new_tokens (as a benchmark's metrics count them)
        seconds=round(seconds, 2),
        tokens_per_s=round(n_tokens / max(seconds, 1e-9), 1),
    )
    write_json(folder / "metrics.json", metrics)
    write_manifest(
        folder,
        "evaluate",
        model=path,
        backend=name,
        runtime=runtime.to_dict() if runtime is not None else None,
        workers=workers.count,
        prompt=asdict(prompt_cfg),
        decoding=asdict(settings),
        metrics=metrics,
    )
    return metrics


def sample_text_metrics(samples: list[list[str]], references: list[str], language: str) -> dict[str, Any]:
    """Text metrics of n samples per example: with n = 1 those of the one answer; with n > 1 the mean
    over the n samples (sample j of every example scored together) and `best_of_n_*`: per example the
    sample closest to the reference (edit similarity), as an upper bound of picking one."""
    n = min((len(s) for s in samples), default=1)
    if n <= 1:
        return text_metrics([s[0] for s in samples], references, language)
    per_sample = [text_metrics([s[j] for s in samples], references, language) for j in range(n)]
    out: dict[str, Any] = {k: round(sum(m[k] for m in per_sample) / n, 4) for k in per_sample[0]}
    best = [_closest(s[:n], r) for s, r in zip(samples, references, strict=True)]
    out.update({f"best_of_{n}_{k}": v for k, v in text_metrics(best, references, language).items()})
    out["n"] = n
    return out


def _closest(candidates: list[str], reference: str) -> str:
    """The first of `candidates` with the highest edit similarity to `reference`."""
    scores = [edit_similarity([c], [reference]) for c in candidates]
    return candidates[scores.index(max(scores))]


def split_pass_at_k(
    cfg: Config, examples: list[Example], samples: list[list[str]], folder: Path
) -> dict[str, Any]:
    """pass@k on the examples of a split that carry tests (a file source's `tests_field`), all n samples
    of each run in the sandbox; per-example verdicts in `exec_results.jsonl`. {} when none has tests."""
    from codetune.benchmarks.base import PromptStyle
    from codetune.benchmarks.runner import benchmark_metrics, score_codes, task_results
    from codetune.benchmarks.user_tasks import UserTasks, task_from_row

    tested = []
    for ex, preds in zip(examples, samples, strict=True):
        task = task_from_row(ex.to_dict(), f"{cfg.eval.split}.jsonl: {ex.id}", cfg.eval.split)
        if task is not None:
            tested.append((task, preds))
    if not tested:
        return {}
    bench = UserTasks(cfg.eval_data_dir / f"{cfg.eval.split}.jsonl")
    tasks = [t for t, _ in tested]
    n = min(len(p) for _, p in tested)
    codes = [bench.sanitise(t, p, PromptStyle()) for t, preds in tested for p in preds[:n]]
    started = time.perf_counter()
    with progress.task(f"evaluate {cfg.eval.split}: execute", len(codes), unit="programs") as bar:
        scored = score_codes(bench, tasks, codes)
        bar.update(len(codes), passed=sum(v.passed for v in scored.verdicts))
    results = task_results(tasks, n, bench.ks, scored.verdicts)
    write_jsonl(folder / "exec_results.jsonl", results)
    m = benchmark_metrics(results, bench.ks, scored.verdicts, [], None, time.perf_counter() - started)
    keep = [k for k in m if k.startswith("pass@")] + ["passed_samples", "statuses", "scoring_s"]
    return {
        **{k: m[k] for k in keep},
        "tested_examples": len(tasks),
        "untested_examples": len(examples) - len(tasks),
    }


def _benchmark(cfg: Config, out: Path, console: Console) -> Report:
    """Score `eval.benchmark` (a name, NAME/SPLIT, or a task file or folder) with each model through the
    one runner; then the sample-then-filter row over `eval.select_from`, if set."""
    from codetune.benchmarks.base import get_benchmark, resolve_split, split_spec
    from codetune.benchmarks.runner import prompt_style, run_benchmark

    name, named_split = split_spec(str(cfg.eval.benchmark))
    bench = get_benchmark(name)
    split = named_split or resolve_split(bench, cfg.eval.split)
    tasks = bench.load(split)[: cfg.eval.max_examples]
    specs = cfg.eval.models or ([cfg.generate.model] if cfg.generate.model else default_models(cfg))
    report = Report(out)
    for spec in specs:
        label, path = parse_model_spec(spec)
        backend = load_backend(cfg.generate, path)
        style = prompt_style(backend.chat_prompt, model_prompt_config(path, cfg.prompt))
        console.print(f"[bold]{bench.name}[/bold] {split}: {label} ({path}), {len(tasks)} tasks")
        # generation and execution progress: the runner's (codetune.progress; --quiet silences it)
        report.metrics[label] = run_benchmark(
            bench,
            tasks,
            backend,
            sampling_settings(cfg.generate),
            style=style,
            out_dir=out / label,
            split=split,
            batch=cfg.generate.batch_size,
            generation_workers=GenerationWorkers(cfg.generate, path, cfg.eval.workers),
            label=label,
        )
        report.models[label] = path
        del backend
    if cfg.eval.select_from:
        from codetune.eval.select import select

        label = "filter"
        report.metrics[label] = select(out, cfg.eval.select_from, bench, tasks, label)
        report.models[label] = "sample-then-filter over " + ", ".join(cfg.eval.select_from)
    write_json(out / "summary.json", {"models": report.models, "metrics": report.metrics})
    _print_table(console, report)
    if cfg.eval.report:
        _report_or_say_why(console, write_benchmark_report, cfg, out, list(report.models.values()))
    return report


def _report_or_say_why(
    console: Console, write: Callable[..., Path | None], cfg: Config, out: Path, models: list[str]
) -> None:
    """The report over every model folder in `out`; one that can't be made (e.g. an older folder there
    from another split) is said, not raised: the evaluation itself is written by then."""
    try:
        write(cfg, out, console, curves_dir(cfg, models))
    except CodetuneError as e:
        console.print(f"[yellow]report.html not written[/yellow]: {e}")
        console.print("  move the folders that don't belong aside, then run `codetune report CONFIG`")


def training_run_of(model: str) -> Path | None:
    """The training run a model folder comes from (its `best/`, `final/` or `checkpoints/step-N/`):
    the nearest folder above it with a metrics.jsonl; None for anything else (e.g. a hub id)."""
    path = Path(model)
    if not path.is_dir():
        return None
    for run in (path.parent, path.parent.parent):
        if (run / "metrics.jsonl").is_file():
            return run
    return None


def curves_dir(cfg: Config, models: list[str]) -> Path | None:
    """Where the report's training curves come from: the run the evaluated models were trained in,
    when that is one run (e.g. `-m tuned=runs/x/best`), else train.output_dir (if it has metrics)."""
    runs = {run for model in models if (run := training_run_of(model)) is not None}
    if len(runs) == 1:
        return runs.pop()
    default = Path(cfg.train.output_dir)
    return default if (default / "metrics.jsonl").is_file() else None


def write_benchmark_report(
    cfg: Config, out: Path, console: Console, train_dir: Path | None = None
) -> Path | None:
    """compare.json + report.html over every model folder in `out` (with 2+ models and a shared task
    set); the training curves from `train_dir`, by default train.output_dir (if it has metrics)."""
    from codetune.eval.report import write_report

    labels = sorted(p.parent.name for p in out.glob("*/results.jsonl"))
    if not labels:
        return None
    train_dir = train_dir if train_dir is not None else curves_dir(cfg, [])
    if train_dir is not None:
        console.print(f"  training curves from {train_dir}")
    path = write_report(
        out,
        train_dir,
        title=f"codetune: {cfg.eval.benchmark} ({cfg.eval.split})",
        baseline=cfg.eval.baseline if cfg.eval.baseline in labels else None,
        allow_subset=True,
    )
    console.print(f"  report: {path}")
    return path


def write_split_report(
    cfg: Config, out: Path, console: Console, train_dir: Path | None = None
) -> Path | None:
    """report.html over every model folder in `out` with a predictions.jsonl (a split evaluation);
    the training curves from `train_dir`, by default train.output_dir (if it has metrics)."""
    from codetune.eval.text_report import write_text_report

    if not any(out.glob("*/predictions.jsonl")):
        return None
    train_dir = train_dir if train_dir is not None else curves_dir(cfg, [])
    title = f"codetune: {cfg.eval.split} split of {cfg.eval_data_dir}"
    path = write_text_report(out, train_dir, title=title, baseline=cfg.eval.baseline)
    console.print(f"  report: {path}")
    return path


def _print_table(console: Console, report: Report) -> None:
    """One row per metric, one column per model; never a figure cut short.

    rich fits a table to the console (80 columns when the output is a file or a pipe) by ending cells
    with "…", which turned 100.00 into "100.…" in logs. The models are split over as many tables as
    it takes for each to fit, and a table that can't fit even with one model is printed at its full
    width.
    """
    keys: list[str] = []
    for m in report.metrics.values():
        keys.extend(k for k, v in m.items() if isinstance(v, int | float) and k not in keys)

    def cell(value: Any) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str("" if value is None else value)

    def build(labels: list[str], title: str | None) -> Table:
        table = Table(title=title)
        table.add_column("metric", no_wrap=True)
        for label in labels:
            table.add_column(label, justify="right", no_wrap=True)
        for k in keys:
            table.add_row(k, *[cell(report.metrics[label].get(k)) for label in labels])
        return table

    def width(table: Table) -> int:
        return Measurement.get(console, console.options.update_width(1 << 16), table).maximum

    def emit(table: Table) -> None:
        needed = width(table)
        if needed <= console.width:
            console.print(table)
        else:  # not even one model fits: print it whole and let the terminal wrap the lines
            narrow = console.width
            console.width = needed  # print(width=...) is capped at the console's own width
            try:
                console.print(table, crop=False)
            finally:
                console.width = narrow

    title: str | None = f"evaluate -> {report.output_dir}"
    chunk: list[str] = []
    for label in report.metrics:
        if chunk and width(build([*chunk, label], title)) > console.width:
            emit(build(chunk, title))
            chunk, title = [], None
        chunk.append(label)
    if chunk:
        emit(build(chunk, title))
