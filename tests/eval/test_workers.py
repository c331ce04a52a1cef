"""Generation in worker processes (eval.workers): 1, 2 or 4 workers give the same rows, byte for byte."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from codetune.benchmarks import humaneval as he
from codetune.benchmarks.base import PromptStyle
from codetune.benchmarks.runner import run_benchmark
from codetune.config import Config, GenerateConfig
from codetune.errors import CodetuneError
from codetune.eval.evaluate import evaluate
from codetune.generation import GenerationWorkers, load_backend
from codetune.models.backends.base import SamplingSettings

WORKER_COUNTS = (1, 2, 4)


@pytest.fixture(scope="module")
def model(trained_run: Config) -> str:
    return str(Path(trained_run.train.output_dir) / "final")


def test_split_evaluation_gives_the_same_predictions_with_1_2_or_4_workers(
    trained_run: Config, model: str, tmp_path: Path
) -> None:
    predictions = {}
    for workers in WORKER_COUNTS:
        out = tmp_path / f"w{workers}"
        cfg = dataclasses.replace(
            trained_run,
            # 12 prompts in units of 3: 4 units, left-padded batches, one unit per process at 4 workers
            generate=dataclasses.replace(trained_run.generate, batch_size=3),
            eval=dataclasses.replace(
                trained_run.eval,
                output_dir=str(out),
                split="train",
                max_examples=12,
                models=[f"final={model}"],
                report=False,
                workers=workers,
            ),
        )
        evaluate(cfg)
        predictions[workers] = (out / "final" / "predictions.jsonl").read_bytes()
        manifest = json.loads((out / "final" / "manifest.json").read_text())
        assert manifest["workers"] == workers
        assert manifest["runtime"]["device"] == "cpu" and manifest["runtime"]["precision"] == "fp32"
    rows = [json.loads(line) for line in predictions[1].splitlines()]
    assert len(rows) == 12 and any(r["prediction"].strip() for r in rows)
    assert predictions[2] == predictions[1]
    assert predictions[4] == predictions[1]


def _results_without_timings(path: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        for verdict in row["verdicts"]:
            verdict.pop("duration_s")
    return rows


def test_humaneval_samples_and_results_are_the_same_with_1_2_or_4_workers(model: str, tmp_path: Path) -> None:
    g = GenerateConfig(max_new_tokens=24, batch_size=1)
    backend = load_backend(g, model)  # renders the prompts here; generation goes to the workers
    settings = SamplingSettings(max_new_tokens=24, temperature=0.8, seed=11, n=2)
    bench = he.HumanEval()
    samples, results = {}, {}
    for workers in WORKER_COUNTS:
        out = tmp_path / f"w{workers}"
        run_benchmark(
            bench,
            bench.load("test")[:5],
            backend,
            settings,
            style=PromptStyle("base", chat_prompt=backend.chat_prompt),
            ks=(1, 2),
            out_dir=out,
            workers=2,
            batch=1,
            generation_workers=GenerationWorkers(g, model, workers),
        )
        samples[workers] = (out / "samples.jsonl").read_bytes()
        results[workers] = _results_without_timings(out / "results.jsonl")
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["generation_workers"] == workers and manifest["runtime"]["device"] == "cpu"
    rows = [json.loads(line) for line in samples[1].splitlines()]
    assert len(rows) == 10 and len(results[1]) == 5
    # really sampled: a problem's two samples differ, so a seed that moved with the worker count shows
    assert any(a["raw"] != b["raw"] for a, b in zip(rows[::2], rows[1::2], strict=True))
    for workers in WORKER_COUNTS[1:]:
        assert samples[workers] == samples[1], workers
        assert results[workers] == results[1], workers


def test_eval_workers_below_one_is_an_error_naming_the_key(trained_run: Config, tmp_path: Path) -> None:
    cfg = dataclasses.replace(
        trained_run, eval=dataclasses.replace(trained_run.eval, output_dir=str(tmp_path), workers=0)
    )
    with pytest.raises(CodetuneError, match=r"eval\.workers=0"):
        evaluate(cfg)
