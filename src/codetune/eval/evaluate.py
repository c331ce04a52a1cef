"""The `evaluate` stage: generate for a split (or a benchmark) with one or more models and score it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from codetune.config import Config, config_to_dict, save_config
from codetune.data.format import build_prompt
from codetune.errors import CodetuneError
from codetune.eval.metrics import text_metrics
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
from codetune.manifest import sha256_file, write_json, write_jsonl, write_manifest
from codetune.training.loop import read_split


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
    console = console or Console(stderr=True)
    if cfg.eval.workers < 1:
        raise CodetuneError(
            f"eval.workers={cfg.eval.workers}: the number of generation processes must be at least 1"
        )
    out = Path(cfg.eval.output_dir)
    out.mkdir(parents=True, exist_ok=True)
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
    write_json(out / "summary.json", {"models": report.models, "metrics": report.metrics})
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
    if cfg.eval.report:
        _report_or_say_why(console, write_split_report, cfg, out, list(report.models.values()))
    return report


def _evaluate_model(
    cfg: Config, label: str, path: str, examples: list, folder: Path, console: Console
) -> dict[str, Any]:
    loaded = load_backend(cfg.generate, path)
    name, runtime = loaded.name, getattr(loaded, "runtime", None)
    prompt_cfg = model_prompt_config(path, cfg.prompt)
    prompts = [build_prompt(ex.nl, prompt_cfg, loaded.chat_prompt) for ex in examples]
    settings = sampling_settings(cfg.generate, answer_stops(prompt_cfg))
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
    results = generate_units(
        prompts, settings, unit_size=cfg.generate.batch_size, backend=backend, workers=workers
    )
    seconds = time.perf_counter() - started
    predictions = [extract_code(row[0].text, prompt_cfg) for row in results]
    rows = [
        {
            "id": ex.id,
            "prompt": p,
            "reference": ex.code,
            "prediction": pred,
            "finish_reason": row[0].finish_reason,
        }
        for ex, p, pred, row in zip(examples, prompts, predictions, results, strict=True)
    ]
    write_jsonl(folder / "predictions.jsonl", rows)
    language = examples[0].language if examples else "python"
    metrics: dict[str, Any] = text_metrics(predictions, [ex.code for ex in examples], language)
    n_tokens = sum(row[0].completion_tokens for row in results)
    metrics.update(
        examples=len(examples),
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


def _benchmark(cfg: Config, out: Path, console: Console) -> Report:
    name = cfg.eval.benchmark
    if name == "dataframebench":
        return _dataframebench(cfg, out, console)
    if name != "humaneval":
        raise CodetuneError(f"eval.benchmark {name!r} is not known; available: humaneval, dataframebench")
    from codetune.eval import humaneval

    report = Report(out)
    specs = cfg.eval.models or ([cfg.generate.model] if cfg.generate.model else [])
    if not specs:
        raise CodetuneError("eval.benchmark needs a model: set eval.models or generate.model")
    for spec in specs:
        label, path = parse_model_spec(spec)
        backend = load_backend(cfg.generate, path)
        # instruct models get their chat template and code-block extraction; base models plain completion
        style: Literal["base", "chat"] = "chat" if cfg.prompt.style == "chat" else "base"
        metrics = humaneval.run_humaneval(
            backend,
            sampling_settings(cfg.generate),
            style=style,
            n=cfg.generate.n,
            ks=(1, 10, 100),
            out_dir=out / label,
            limit=cfg.eval.max_examples,
            batch=cfg.generate.batch_size,
            generation_workers=GenerationWorkers(cfg.generate, path, cfg.eval.workers),
        )
        report.models[label] = path
        report.metrics[label] = metrics
    write_json(out / "summary.json", {"models": report.models, "metrics": report.metrics})
    _print_table(console, report)
    if cfg.eval.report:
        _report_or_say_why(console, write_benchmark_report, cfg, out, list(report.models.values()))
    return report


def _dataframebench(cfg: Config, out: Path, console: Console) -> Report:
    from codetune.eval import dataframebench as dfb

    dfb.ensure_environment()
    if cfg.eval.workers > 1:
        console.print(
            f"[yellow]note[/yellow]: eval.workers={cfg.eval.workers} is not used by dataframebench; "
            "it generates in this process"
        )
    specs = cfg.eval.models or default_models(cfg)
    split = cfg.eval.split if cfg.eval.split in dfb.SPLIT_SIZES else "test"
    report = Report(out)
    for spec in specs:
        label, path = parse_model_spec(spec)
        backend = load_backend(cfg.generate, path)
        prompt_cfg = model_prompt_config(path, cfg.prompt)
        # The closing fence, and example usage at top level (dropped by the sanitiser anyway).
        settings = sampling_settings(cfg.generate, (*answer_stops(prompt_cfg), *dfb.REPLY_STOPS))
        console.print(f"[bold]dataframebench[/bold] {split}: {label} ({path})")

        def progress(done: int, total: int, label: str = label) -> None:
            if done % 10 == 0 or done == total:
                console.print(f"  {label}: generated {done}/{total}")

        metrics = dfb.run_dataframebench(
            backend,
            settings,
            prompt_for=lambda text, p=prompt_cfg, b=backend: build_prompt(text, p, b.chat_prompt),
            out_dir=out / label,
            split=split,
            limit=cfg.eval.max_examples,
            progress=progress,
            label=label,
        )
        del backend
        report.models[label] = path
        report.metrics[label] = metrics
    if cfg.eval.select_from:
        from codetune.eval.select import select

        tasks = dfb.load_tasks(split)[: cfg.eval.max_examples]
        label = "filter"
        report.metrics[label] = select(out, cfg.eval.select_from, tasks, label, program_for=dfb.program_for)
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
