"""One runner for every benchmark: generate -> sanitise -> run in the sandbox -> pass@k -> report.

`run_benchmark(bench, tasks, backend, settings, ...)` writes one model's folder:

    generations.jsonl   raw replies, appended as each unit of prompts is generated; a rerun with the same
                        prompts, decoding settings and weights takes them from here (resume)
    samples.jsonl       task_id, completion (the sanitised code), raw reply, finish_reason
    results.jsonl       one row per task: n, c, verdicts (status, error, stderr tail), pass@k
    metrics.json        pass@k for each k <= n with bootstrap 95% intervals, statuses, timings
    manifest.json       the data, prompt, decoding, backend, sandbox (and its calibration)

Everything benchmark-specific (tasks, prompts, sanitising, how a program meets its tests, sandbox
limits) comes from the `Benchmark`; nothing here knows a benchmark by name. `score_codes` is the scoring
half on its own (training's evaluation by execution and sample-then-filter use it).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from codetune.benchmarks.base import Benchmark, PromptStyle, tasks_by_id
from codetune.benchmarks.task import Task
from codetune.config import PromptConfig
from codetune.data.format import build_prompt
from codetune.errors import CodetuneError
from codetune.eval.passk import available_ks, bootstrap_ci, pass_at_k, pass_at_k_report
from codetune.generation import (
    GenerationWorkers,
    answer_stops,
    backend_runtime,
    generate_units,
    generation_units,
    settings_from,
)
from codetune.manifest import sha256_file, write_json, write_jsonl, write_manifest
from codetune.models.backends.base import Backend, Completion, SamplingSettings, generate_hooks
from codetune.models.pack import stamped_sha256
from codetune.progress import task as progress_task
from codetune.sandbox import Limits, SandboxPool, Verdict, sandbox_manifest

Progress = Callable[[int, int], None]


@dataclass
class Generated:
    """`n` completions per prompt, and where they came from."""

    outputs: list[list[Completion]]
    reused: int  # prompts whose completions came from the cache
    fresh_tokens: int  # tokens generated in this run
    seconds: float


@dataclass
class Scored:
    """Verdicts in sample order, the per-task limits they ran under, and the isolation used."""

    verdicts: list[Verdict]
    limits: list[Limits]
    isolation: str


def prompt_style(chat_prompt: Callable[[list[dict[str, str]]], str], prompt: PromptConfig) -> PromptStyle:
    """How a model is prompted for a benchmark: its chat template for an instruct model (prompt.style
    chat), plain completion otherwise; an instruction rendered as in training (`build_prompt`), and the
    answer template's closing stop."""
    return PromptStyle(
        name="chat" if prompt.style == "chat" else "base",
        render=lambda text: build_prompt(text, prompt, chat_prompt),
        chat_prompt=chat_prompt,
        stops=answer_stops(prompt),
    )


# --- generation with a cache -----------------------------------------------------------------------


HASHED_BELOW = 256 * 2**20  # model files smaller than this are hashed for the fingerprint


def model_fingerprint(backend: Any) -> dict[str, Any]:
    """What identifies the weights behind a backend: file paths plus the sha256 of adapters (small) and
    of model packs (from their verification stamp), and the size and mtime of any other large file."""
    out: dict[str, Any] = {"backend": getattr(backend, "name", "?")}
    for attr in ("gguf_path", "lora_path", "label"):  # as before the one runner: old caches stay valid
        value = getattr(backend, attr, None)
        if not value:
            continue
        path = Path(str(value))
        files = [path] if path.is_file() else sorted(path.glob("*.safetensors")) if path.is_dir() else []
        out[attr] = {
            str(f): sha256_file(f)
            if f.stat().st_size < HASHED_BELOW
            else stamped_sha256(f) or [f.stat().st_size, f.stat().st_mtime]
            for f in files
        } or str(value)
    return out


def generation_keys(prompts: Sequence[str], settings: SamplingSettings, fingerprint: Any) -> list[str]:
    """A cache key per prompt: a cached reply is reused only for the same prompt, decoding and weights."""
    decoding = json.dumps({**asdict(settings), "model": fingerprint}, sort_keys=True)
    return [hashlib.sha256((p + decoding).encode()).hexdigest()[:16] for p in prompts]


def read_generation_cache(path: Path) -> dict[str, list[dict[str, Any]]]:
    """key -> completions, from a generations.jsonl (empty when there is none)."""
    cached: dict[str, list[dict[str, Any]]] = {}
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    cached[row["key"]] = row["completions"]
    return cached


def generate_cached(
    prompts: Sequence[str],
    ids: Sequence[str],
    settings: SamplingSettings,
    *,
    cache: Path,
    backend: Backend | None,
    workers: GenerationWorkers | None = None,
    batch: int = 8,
    progress: Progress | None = None,
    label: str = "evaluate",
) -> Generated:
    """`settings.n` completions per prompt; those in `cache` are reused, the rest generated and appended.

    Prompts go in units of `batch` (`generate_units`), a unit's seed fixed by its place in the whole
    list, so a resumed run samples what an uninterrupted one would. In this process the cache is
    appended after every unit; with several generation workers, after each run of missing units."""
    keys = generation_keys(prompts, settings, model_fingerprint(backend))
    cached = read_generation_cache(cache)
    outputs: list[list[Completion] | None] = [
        [Completion(**c) for c in cached[k]] if k in cached else None for k in keys
    ]
    reused = sum(o is not None for o in outputs)
    todo = [u for u in generation_units(len(prompts), batch) if any(outputs[i] is None for i in u)]
    if workers is not None and workers.count > 1:
        todo = _contiguous(todo)
    started = time.perf_counter()
    fresh_tokens = 0
    cache.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(cache, "a", encoding="utf-8") as log,
        progress_task(f"{label}: generate", len(prompts), unit="prompts") as bar,
    ):
        if reused:
            bar.update(reused, reused=reused)
        for span in todo:
            with generate_hooks(on_step=lambda k: bar.advance(0, tokens=k)):  # a live tok/s in a long unit
                rows = generate_units(
                    prompts[span.start : span.stop],
                    settings_from(settings, span.start),
                    unit_size=batch,
                    backend=backend,
                    workers=workers,
                )
            for i, row in zip(span, rows, strict=True):
                if outputs[i] is not None:
                    continue  # cached: the unit was generated for its other prompts
                outputs[i] = row
                fresh_tokens += sum(c.completion_tokens for c in row)
                record = {"key": keys[i], "task_id": ids[i], "completions": [asdict(c) for c in row]}
                log.write(json.dumps(record) + "\n")
            log.flush()
            bar.update(sum(o is not None for o in outputs), tokens=fresh_tokens)
            if progress is not None:
                progress(sum(o is not None for o in outputs), len(prompts))
    done = [o for o in outputs if o is not None]
    return Generated(done, reused, fresh_tokens, time.perf_counter() - started)


def _contiguous(units: list[range]) -> list[range]:
    spans: list[range] = []
    for u in units:
        if spans and spans[-1].stop == u.start:
            spans[-1] = range(spans[-1].start, u.stop)
        else:
            spans.append(u)
    return spans


# --- calibration: timeouts from reference solutions ---------------------------------------------

_CALIBRATION: dict[str, Any] | None = None  # the last calibration, for the manifest


def calibrate_timeout(
    reference_seconds: Sequence[float], factor: float = 10.0, floor_s: float = 2.0
) -> float:
    """A timeout of `factor` times the slowest reference run, and never less than `floor_s`.

    The references are run times of a known-good (canonical) solution measured on this machine, so
    the timeout scales with the machine instead of being a constant that flips verdicts under load.
    """
    return round(max(floor_s, factor * max(reference_seconds, default=0.0)), 3)


def measure_reference_seconds(
    pool: SandboxPool, jobs: Sequence[tuple[str, str]], repeats: int = 3, limits: Limits | None = None
) -> list[list[float]]:
    """Run each known-good `(program, tests)` job `repeats` times; return its in-sandbox run times.

    A reference that doesn't pass is run once more, by itself, with 10 times the limits (a slow one on
    a busy machine, or a flaky test). Raises `CodetuneError` naming the first job that fails twice.
    """
    times: list[list[float]] = [[] for _ in jobs]
    base = limits or pool.limits
    for _ in range(repeats):
        for index, verdict in enumerate(pool.map(jobs, base)):
            if not verdict.passed:
                verdict = pool.run(*jobs[index], replace(base, timeout_s=base.timeout_s * 10))
            if not verdict.passed:
                raise CodetuneError(
                    f"calibration: reference job {index} did not pass ({verdict.status}: {verdict.detail}); "
                    "fix the canonical solution or its tests"
                )
            times[index].append(verdict.exec_s if verdict.exec_s is not None else verdict.duration_s)
    return times


def calibrated_limits(
    pool: SandboxPool,
    jobs: Sequence[tuple[str, str]],
    base: Limits | None = None,
    factor: float = 10.0,
    floor_s: float = 2.0,
    repeats: int = 3,
) -> list[Limits]:
    """Per-job limits whose timeouts come from `calibrate_timeout` on the jobs' reference runs; the
    calibration is recorded for the manifest (`last_calibration`)."""
    global _CALIBRATION
    base = base or pool.limits
    references = measure_reference_seconds(pool, jobs, repeats, base)
    timeouts = [calibrate_timeout(seconds, factor, floor_s) for seconds in references]
    slowest = sorted(max(seconds) for seconds in references)
    _CALIBRATION = {"factor": factor, "floor_s": floor_s, "repeats": repeats, "jobs": len(jobs)}
    _CALIBRATION |= {
        "reference_max_s": max(slowest, default=0.0),
        "reference_median_s": slowest[len(slowest) // 2] if slowest else 0.0,
        "timeouts_above_floor": sum(timeout > floor_s for timeout in timeouts),
        "timeout_max_s": max(timeouts, default=floor_s),
    }
    return [replace(base, timeout_s=timeout) for timeout in timeouts]


def last_calibration() -> dict[str, Any] | None:
    """The last `calibrated_limits` call's factor, floor, reference times and timeouts (None: none yet)."""
    return dict(_CALIBRATION) if _CALIBRATION is not None else None


# --- scoring ---------------------------------------------------------------------------------------


def task_limits(pool: SandboxPool, bench: Benchmark, tasks: Sequence[Task], repeats: int = 1) -> list[Limits]:
    """Per-task limits: calibrated on the reference solutions where the benchmark asks for it (a reference
    that fails here is an environment problem and stops the run), else the benchmark's limits."""
    spec = bench.sandbox()
    with_reference = [t for t in tasks if t.reference is not None]
    if not spec.calibrate or not with_reference:
        return [spec.limits for _ in tasks]
    jobs = [bench.assemble(t, t.reference or "") for t in with_reference]
    calibrated = calibrated_limits(
        pool, jobs, base=spec.limits, factor=spec.factor, floor_s=spec.floor_s, repeats=repeats
    )
    by_id = {t.id: lim for t, lim in zip(with_reference, calibrated, strict=True)}
    return [by_id.get(t.id, spec.limits) for t in tasks]


def open_pool(bench: Benchmark, workers: int | None = None) -> SandboxPool:
    """A sandbox pool with the benchmark's limits, preloaded modules and judge."""
    spec = bench.sandbox()
    return SandboxPool(workers=workers, limits=spec.limits, preload=spec.preload, judge=spec.judge)


def score_codes(
    bench: Benchmark,
    tasks: Sequence[Task],
    codes: Sequence[str],
    *,
    workers: int | None = None,
    limits: Sequence[Limits] | None = None,
) -> Scored:
    """Run `len(codes) // len(tasks)` sanitised samples per task (task-major order) against the tasks'
    tests; `limits`: per-task limits from an earlier call (else calibrated or the benchmark's)."""
    if not tasks or len(codes) % len(tasks):
        raise CodetuneError(f"score_codes: {len(codes)} samples for {len(tasks)} tasks")
    n = len(codes) // len(tasks)
    languages = sorted({t.language for t in tasks})  # the sandbox runs one language per call
    if len(languages) > 1:
        raise CodetuneError(f"{bench.name}: tasks in several languages ({', '.join(languages)}); split them")
    jobs = [bench.assemble(tasks[i // n], code) for i, code in enumerate(codes)]
    with open_pool(bench, workers) as pool:
        per_task = list(limits) if limits is not None else task_limits(pool, bench, tasks)
        per_job = [lim for lim in per_task for _ in range(n)]
        verdicts = pool.map(jobs, per_job, language=languages[0])  # type: ignore[arg-type]
        return Scored(verdicts, per_task, pool.isolation)


def task_results(
    tasks: Sequence[Task], n: int, ks: Sequence[int], verdicts: Sequence[Verdict]
) -> list[dict[str, Any]]:
    """One row per task: its n samples' verdicts, c passed, pass@k for each k <= n."""
    rows = []
    for i, task in enumerate(tasks):
        mine = verdicts[i * n : (i + 1) * n]
        c = sum(v.passed for v in mine)
        row: dict[str, Any] = {"task_id": task.id, "n": n, "c": c}
        if task.category:
            row["category"] = task.category
        row["verdicts"] = [
            {
                "status": v.status,
                "error_type": v.error_type,
                "detail": v.detail,
                "duration_s": v.duration_s,
                "stderr_tail": v.stderr_tail[-1500:],
            }
            for v in mine
        ]
        row.update({f"pass@{k}": pass_at_k(n, c, k) for k in ks if k <= n})
        rows.append(row)
    return rows


def benchmark_metrics(
    results: Sequence[dict[str, Any]],
    ks: Sequence[int],
    verdicts: Sequence[Verdict],
    completions: Sequence[Completion],
    gen_s: float | None,
    score_s: float,
    generated_tokens: int | None = None,
) -> dict[str, Any]:
    """metrics.json: pass@k and its bootstrap 95% interval for each k <= n, counts, statuses, timings.

    `gen_s` is None when nothing was generated (every answer from a cache): no generation speed then.
    `generated_tokens`: the tokens generated in `gen_s`, by default all of `completions`'."""
    counts = [(r["n"], r["c"]) for r in results]
    tokens = sum(c.completion_tokens for c in completions)
    generated = tokens if generated_tokens is None else generated_tokens
    intervals = {f"pass@{k}_ci95": list(bootstrap_ci(counts, k=k)) for k in available_ks(counts, ks)}
    return {
        **pass_at_k_report(counts, ks),
        **intervals,
        "problems": len(results),
        "samples": len(completions),
        "passed_samples": sum(v.passed for v in verdicts),
        "statuses": status_counts(v.status for v in verdicts),
        "truncated": sum(c.finish_reason == "length" for c in completions),
        "generation_s": round(gen_s, 2) if gen_s is not None else None,
        "scoring_s": round(score_s, 2),
        "completion_tokens": tokens,
        "tokens_per_s": round(generated / max(gen_s, 1e-9), 2) if gen_s is not None else None,
    }


def status_counts(statuses: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s] = counts.get(s, 0) + 1
    return dict(sorted(counts.items()))


# --- the whole run ---------------------------------------------------------------------------------


def run_benchmark(
    bench: Benchmark,
    tasks: Sequence[Task],
    backend: Backend | None,
    settings: SamplingSettings,
    *,
    style: PromptStyle,
    out_dir: Path,
    split: str = "test",
    ks: Sequence[int] | None = None,
    workers: int | None = None,
    batch: int = 8,
    generation_workers: GenerationWorkers | None = None,
    progress: Progress | None = None,
    label: str | None = None,
) -> dict[str, Any]:
    """Generate `settings.n` samples per task (resuming from `out_dir/generations.jsonl`), sanitise and
    score them in the sandbox (`workers` processes), write the folder; return the metrics.

    `backend` renders the prompts (its chat template via `style`) and generates, unless
    `generation_workers.count` > 1 processes each load the model; the samples are the same either way.
    """
    started = time.perf_counter()
    n = settings.n
    if n < 1:
        raise CodetuneError(f"{bench.name}: generate.n must be at least 1 (got {n})")
    if n > 1 and settings.temperature == 0:
        raise CodetuneError(
            f"{bench.name}: n={n} greedy samples would be identical; set generate.temperature > 0 (e.g. 0.8) "
            "or generate.n=1"
        )
    if not tasks:
        raise CodetuneError(f"{bench.name} ({split}): no tasks to evaluate")
    tasks_by_id(tasks)  # ids must be unique: results are keyed by them
    ks = tuple(ks or bench.ks)
    settings = replace(settings, stop=tuple(dict.fromkeys((*settings.stop, *bench.stops(style)))))
    prompts = [bench.build_prompt(t, style) for t in tasks]
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = generate_cached(
        prompts,
        [t.id for t in tasks],
        settings,
        cache=out_dir / "generations.jsonl",
        backend=backend,
        workers=generation_workers,
        batch=batch,
        progress=progress,
        label=f"{bench.name} {label or split}",
    )
    samples = [
        (t, bench.sanitise(t, c.text, style), c)
        for t, row in zip(tasks, gen.outputs, strict=True)
        for c in row
    ]
    score_start = time.perf_counter()
    with progress_task(f"{bench.name} {label or split}: execute", len(samples), unit="programs") as bar:
        scored = score_codes(bench, tasks, [code for _, code, _ in samples], workers=workers)
        bar.update(len(samples), passed=sum(v.passed for v in scored.verdicts))
    score_s = time.perf_counter() - score_start
    write_jsonl(
        out_dir / "samples.jsonl",
        [
            {"task_id": t.id, "completion": code, "raw": c.text, "finish_reason": c.finish_reason}
            for t, code, c in samples
        ],
    )
    results = task_results(tasks, n, ks, scored.verdicts)
    write_jsonl(out_dir / "results.jsonl", results)
    fresh = gen.reused < len(tasks)
    metrics = benchmark_metrics(
        results,
        ks,
        scored.verdicts,
        [c for _, _, c in samples],
        gen.seconds if fresh else None,
        score_s,
        generated_tokens=gen.fresh_tokens,
    )
    metrics["reused_generations"] = gen.reused
    text_metrics = getattr(bench, "text_metrics", None)  # optional: BLEU/CodeBLEU against references
    if text_metrics is not None:
        metrics.update(text_metrics(tasks, [code for _, code, _ in samples]))
    metrics["wall_s"] = round(time.perf_counter() - started, 2)
    write_json(out_dir / "metrics.json", metrics)
    count = generation_workers.count if generation_workers is not None else 1
    _write_manifest(
        out_dir, bench, split, tasks, prompts, settings, style, backend, scored, metrics, label, count
    )
    return metrics


def _write_manifest(
    out_dir: Path,
    bench: Benchmark,
    split: str,
    tasks: Sequence[Task],
    prompts: Sequence[str],
    settings: SamplingSettings,
    style: PromptStyle,
    backend: Backend | None,
    scored: Scored,
    metrics: dict[str, Any],
    label: str | None,
    generation_workers: int,
) -> None:
    versions = {}
    for package in ("llama_cpp_python", "torch", "transformers", "pandas", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    spec = bench.sandbox()
    write_manifest(
        out_dir,
        f"evaluate-{bench.name}",
        benchmark=bench.name,
        label=label,
        data={**bench.describe(split), "split": split, "tasks": len(tasks)},
        style=style.name,
        example_prompt=prompts[0] if prompts else None,
        decoding=asdict(settings),
        backend={
            "name": getattr(backend, "name", None),
            "model": _backend_model(backend),
            "lora": getattr(backend, "lora_path", None),
        },
        runtime=backend_runtime(backend) if backend is not None else None,
        generation_workers=generation_workers,
        sandbox={
            **sandbox_manifest(),
            "calibration": last_calibration(),
            "isolation_used": scored.isolation,
            "limits_used": asdict(spec.limits),
            "preload": list(spec.preload),
        },
        package_versions=versions,
        metrics=metrics,
    )


def _backend_model(backend: Backend | None) -> str | None:
    for attr in ("gguf_path", "model_path", "label"):
        value = getattr(backend, attr, None)
        if value:
            return str(value)
    return None
