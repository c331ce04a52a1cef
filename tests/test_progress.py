"""codetune.progress: plain lines without control characters off a terminal, nothing when quiet."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from codetune import progress
from tests.conftest import tiny_config


@pytest.fixture(autouse=True)
def _reset_progress(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CODETUNE_QUIET", raising=False)
    monkeypatch.delenv("CODETUNE_PROGRESS", raising=False)
    monkeypatch.setattr(progress, "_settings", progress._Settings(every_s=3600.0))


def _run(n: int = 20) -> str:
    out = io.StringIO()  # not a terminal
    with progress.task("stage: step", total=n, unit="rows", stream=out) as t:
        for _ in range(n):
            t.advance(tokens=10, loss="0.5")
        t.note("kept 18\r\x1b[31m")
    return out.getvalue()


def test_plain_lines_off_a_terminal_every_ten_percent_and_no_control_characters() -> None:
    text = _run()
    lines = text.splitlines()
    assert lines[0] == "stage: step: started (20 rows)"
    # one line per 10 % step below 100 % (2/20 ... 18/20), the note, then the final line
    steps = [ln for ln in lines if "/20 rows" in ln]
    assert [ln.split(": ")[2].split()[0] for ln in steps] == [f"{i}/20" for i in range(2, 20, 2)]
    assert lines[-2] == "stage: step: kept 18"
    assert lines[-1].startswith("stage: step: done, 20 rows in ") and "tok/s" in lines[-1]
    assert "loss 0.5" in lines[-1]
    assert "\x1b" not in text and "\r" not in text


def test_quiet_prints_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    progress.configure(quiet=True)
    assert _run() == ""
    progress.configure(quiet=False)
    monkeypatch.setenv("CODETUNE_QUIET", "1")
    assert _run() == ""


def test_callback_takes_done_and_total_and_track_counts() -> None:
    out = io.StringIO()
    with progress.task("gen", unit="prompts", stream=out) as t:
        for i in range(1, 5):
            t.callback(i, 4)
    assert out.getvalue().splitlines()[-1].startswith("gen: done, 4 prompts in ")
    assert list(progress.track([1, 2, 3], "t")) == [1, 2, 3]


def test_period_emits_lines_without_a_total(monkeypatch: pytest.MonkeyPatch) -> None:
    progress.configure(every_s=0.0)
    out = io.StringIO()
    with progress.task("read", unit="rows", stream=out) as t:
        t.advance(5)
        t.advance(5)
    lines = out.getvalue().splitlines()
    assert [ln.split(",")[0] for ln in lines] == [
        "read: started (rows)",
        "read: 5 rows",
        "read: 10 rows",
        "read: done",
    ]


def _cli(args: list[str]) -> tuple[int, str, str]:
    from typer.testing import CliRunner

    from codetune.cli import app

    result = CliRunner().invoke(app, args)
    return result.exit_code, result.stdout, result.stderr


def test_prepare_from_the_cli_logs_progress_per_source_and_step_and_quiet_silences_it(
    tmp_path: Path, pairs_file: Path
) -> None:
    """Output captured (not a terminal): progress lines for the read and every step, no control characters."""
    from codetune.config import save_config

    cfg_path = tmp_path / "cfg.yaml"
    save_config(tiny_config(tmp_path, pairs_file), cfg_path)
    code, out, err = _cli(["prepare", str(cfg_path)])
    assert code == 0, err
    assert out.strip() == str(tmp_path / "data")
    lines = [ln for ln in err.splitlines() if ln.startswith("prepare: ") and ": done, " in ln]
    assert [ln.split(": done, ")[0] for ln in lines] == [
        f"prepare: read {pairs_file}",
        "prepare: clean",
        "prepare: split",
        "prepare: decontaminate train",
        "prepare: augment train",
    ]
    assert lines[0].startswith(f"prepare: read {pairs_file}: done, 42 rows in ")
    assert ", kept 42" in lines[1] and ", train " in lines[2]
    assert "\x1b" not in err and "\r" not in err

    code, out, err = _cli(["--quiet", "prepare", str(cfg_path)])
    assert code == 0, err
    assert [ln for ln in err.splitlines() if ": started" in ln or ": done, " in ln] == []
    assert "prepare: read 42 rows" in err  # the stage's summary still prints


def test_models_fetch_prints_a_summary_not_a_repr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from codetune.models import pack

    fetched = pack.FetchedModel(
        name="p",
        gguf_path=tmp_path / "p.gguf",
        hf_path=None,
        size=2_000_000,
        sha256="ab" * 32,
        checked="hashed now",
        downloaded=True,
    )
    monkeypatch.setattr(pack, "fetch_model", lambda *a, **k: fetched)
    code, out, _ = _cli(["models", "fetch", "p", "--no-convert"])
    assert code == 0 and "FetchedModel(" not in out
    assert out.splitlines() == [
        f"p: downloaded, sha256 ok (hashed now: {'ab' * 8}...)",
        f"  GGUF file: {tmp_path / 'p.gguf'} (2.0 MB; for --backend llamacpp)",
        "  transformers folder: not converted (--no-convert)",
    ]


class _Canonical:
    """A backend that answers every HumanEval prompt with its canonical solution (7 tokens each)."""

    name = "canonical"

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return "".join(m["content"] for m in messages)

    def generate(self, prompts: list[str], settings: object) -> list[list[object]]:
        from codetune.models.backends.base import Completion

        return [[Completion(self.table[p], "stop", 5, 7)] for p in prompts]


def test_humaneval_generation_and_execution_log_progress_with_tokens_per_s(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from codetune.benchmarks import humaneval as he
    from codetune.benchmarks.base import PromptStyle
    from codetune.benchmarks.runner import run_benchmark
    from codetune.models.backends.base import SamplingSettings

    problems = he.load_problems()[:3]
    table = {he.build_prompt(p, "base", None): p["canonical_solution"] for p in problems}  # type: ignore[arg-type]
    bench = he.HumanEval(problems)
    metrics = run_benchmark(
        bench,
        bench.load("test"),
        _Canonical(table),  # type: ignore[arg-type]
        SamplingSettings(temperature=0.0, n=1),
        style=PromptStyle(name="base"),
        out_dir=tmp_path / "he",
        label="base",
        batch=1,
        workers=1,
    )
    assert metrics["passed_samples"] == 3
    err = capsys.readouterr().err
    lines = err.splitlines()
    gen = [ln for ln in lines if ln.startswith("humaneval base: generate: ")]
    assert gen[0] == "humaneval base: generate: started (3 prompts)"
    assert any(ln.startswith("humaneval base: generate: 1/3 prompts (33%)") and "tok/s" in ln for ln in gen)
    assert gen[-1].startswith("humaneval base: generate: done, 3 prompts in ") and " tok/s" in gen[-1]
    execute = [ln for ln in lines if ln.startswith("humaneval base: execute: ")]
    assert execute[0] == "humaneval base: execute: started (3 programs)"
    assert (
        execute[-1].startswith("humaneval base: execute: done, 3 programs in ") and "passed 3" in execute[-1]
    )
    assert "\x1b" not in err and "\r" not in err


class _Stepping(_Canonical):
    """Decodes all its prompts in one call, in 4 steps of 2 tokens a prompt, reporting each step."""

    def generate(self, prompts: list[str], settings: object) -> list[list[object]]:
        from codetune.models.backends.base import call_hooks

        for _ in range(4):
            time.sleep(0.01)
            hooks = call_hooks()
            if hooks.on_step is not None:
                hooks.on_step(2 * len(prompts))
        return super().generate(prompts, settings)


def test_a_long_generation_call_shows_its_tokens_per_s_before_it_ends(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from codetune.benchmarks import humaneval as he
    from codetune.benchmarks.runner import generate_cached
    from codetune.models.backends.base import SamplingSettings

    progress.configure(every_s=0.0)
    problems = he.load_problems()[:3]
    prompts = [he.build_prompt(p, "base", None) for p in problems]  # type: ignore[arg-type]
    table = {prompt: p["canonical_solution"] for prompt, p in zip(prompts, problems, strict=True)}
    generate_cached(
        prompts, [p["task_id"] for p in problems], SamplingSettings(), cache=tmp_path / "g.jsonl",
        backend=_Stepping(table), batch=3, label="he",  # type: ignore[arg-type]
    )  # fmt: skip
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("he: generate: ")]
    during = [ln for ln in lines if ln.startswith("he: generate: 0/3 prompts")]
    assert len(during) == 4 and all(ln.endswith(" tok/s") for ln in during), lines  # one per step
    assert lines[-1].startswith("he: generate: done, 3 prompts in "), lines


def test_split_evaluate_logs_generation_progress_with_tokens_per_s(
    trained_run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dataclasses import replace

    from codetune.eval.evaluate import evaluate

    cfg = replace(
        trained_run, eval=replace(trained_run.eval, output_dir=str(tmp_path / "eval"), max_examples=4)
    )
    evaluate(cfg)
    err = capsys.readouterr().err
    for label in ("base", "final"):
        lines = [ln for ln in err.splitlines() if ln.startswith(f"evaluate {label}: generate: ")]
        assert lines[0] == f"evaluate {label}: generate: started (4 prompts)"
        assert lines[-1].startswith(f"evaluate {label}: generate: done, 4 prompts in ")
        assert lines[-1].endswith(" tok/s")
    assert "\x1b" not in err and "\r" not in err
