"""Evaluation by execution during training: generate for a fixed set of tasks, run it in the sandbox.

`train.eval_benchmark` names the tasks, as `eval.benchmark` does: a benchmark split (`dataframebench/val`,
`humaneval`), the user's own task file or folder, or a split of the prepared data whose examples carry
tests (`valid`: `data.output_dir/valid.jsonl`, tests from a file source's `tests_field`). With
`train.eval_tasks` only the first N tasks. Every validation also generates greedily for those tasks with
the model as it is at that step, scores the code in the sandbox through the benchmark runner's scoring
(`codetune.benchmarks.runner.score_codes`; timeouts calibrated once on the references where the
benchmark asks for it), and computes BLEU against the references (where the tasks have them). The numbers go to metrics.jsonl and TensorBoard, and decide
`best/` (highest pass@1, ties: lower validation loss) and early stopping.

Generation uses llama.cpp when the base model came from a GGUF model pack and LoRA is on (the adapter
is exported to a LoRA GGUF: ~6x faster than transformers on a CPU), else the in-memory model through
the transformers backend. The sampling RNG state is saved and restored around it, so an evaluation
never changes the training trajectory (exact resume holds with or without it).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codetune.benchmarks.base import Benchmark
from codetune.benchmarks.task import Task
from codetune.config import Config, GenerateConfig
from codetune.errors import CodetuneError
from codetune.manifest import write_jsonl


@dataclass
class ExecEval:
    benchmark: str
    bench: Benchmark
    tasks: list[Task]
    limits: list[Any] | None = None  # calibrated on the first evaluation


def resolve_eval_benchmark(spec: str, data_dir: Path) -> tuple[Benchmark, str]:
    """The benchmark and split that `train.eval_benchmark` names: a registered benchmark (`NAME/SPLIT`,
    or its default split), a prepared split (`valid` -> `data_dir/valid.jsonl`), or a task file/folder."""
    from codetune.benchmarks.base import available, get_benchmark, resolve_split, split_spec
    from codetune.benchmarks.user_tasks import UserTasks

    name, split = split_spec(spec)
    if name in available():
        bench = get_benchmark(name)
        return bench, split or resolve_split(bench, None)
    prepared = data_dir / f"{spec}.jsonl"
    if "/" not in spec and prepared.is_file():
        return UserTasks(prepared), spec
    if not Path(spec).exists():
        raise CodetuneError(
            f"train.eval_benchmark {spec!r}: not a benchmark ({', '.join(available())}), not a prepared "
            f"split ({prepared} not found) and not a task file or folder"
        )
    bench = get_benchmark(spec)
    return bench, bench.splits[0]


def make_exec_eval(cfg: Config) -> ExecEval | None:
    """The evaluation tasks named by `train.eval_benchmark`, or None when it is unset."""
    name = cfg.train.eval_benchmark
    if not name:
        return None
    bench, split = resolve_eval_benchmark(name, cfg.train_data_dir)
    tasks = bench.load(split)
    if cfg.train.eval_tasks is not None:
        tasks = tasks[: cfg.train.eval_tasks]
    if not tasks:
        raise CodetuneError(
            f"train.eval_benchmark {name!r}: no tasks (train.eval_tasks={cfg.train.eval_tasks})"
        )
    return ExecEval(name, bench, tasks)


def use_llamacpp(cfg: Config, base_ref: str) -> bool:
    from codetune.models.export import base_gguf_of

    choice = cfg.train.eval_backend
    if choice == "hf":
        return False
    ok = cfg.train.lora.enabled and base_gguf_of({"base_model": base_ref}) is not None
    if choice == "llamacpp" and not ok:
        raise CodetuneError(
            "train.eval_backend=llamacpp needs LoRA on a base model from a GGUF model pack; use auto or hf"
        )
    return ok


def run_exec_eval(
    ev: ExecEval,
    step: int,
    model: Any,
    tokenizer: Any,
    kind: str,
    cfg: Config,
    out: Path,
    export: Any,
    meta: dict[str, Any],
    base_ref: str,
) -> dict[str, Any]:
    """Generate and score the tasks with the model as it is now; returns the metrics row."""
    from codetune.benchmarks.runner import prompt_style, score_codes
    from codetune.eval.metrics import sacre_bleu
    from codetune.models.backends.base import SamplingSettings

    started = time.perf_counter()
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state())
    was_training = model.training
    model.eval()
    try:
        backend: Any
        if use_llamacpp(cfg, base_ref):
            from codetune.generation import load_backend

            folder = out / "eval-model"
            export(model, tokenizer, folder, meta)
            g = GenerateConfig(backend="llamacpp", threads=cfg.generate.threads, seed=cfg.generate.seed)
            backend = load_backend(g, str(folder))
        else:
            from codetune.models.backends.hf import HFBackend

            backend = HFBackend(model, tokenizer, kind, batch_size=cfg.generate.batch_size, label="training")
        style = prompt_style(backend.chat_prompt, cfg.prompt)
        stops = ev.bench.stops(style)
        settings = SamplingSettings(max_new_tokens=cfg.train.eval_max_new_tokens, temperature=0.0, stop=stops)
        prompts = [ev.bench.build_prompt(t, style) for t in ev.tasks]
        replies = [row[0] for row in backend.generate(prompts, settings)]
        del backend
    finally:
        if was_training:
            model.train()
        torch.set_rng_state(rng[0])
        random.setstate(rng[1])
        np.random.set_state(rng[2])
    gen_s = time.perf_counter() - started
    codes = [ev.bench.sanitise(t, r.text, style) for r, t in zip(replies, ev.tasks, strict=True)]
    scored = score_codes(ev.bench, ev.tasks, codes, limits=ev.limits)
    ev.limits, verdicts = scored.limits, scored.verdicts
    passed = sum(v.passed for v in verdicts)
    with_reference = [
        (c, t.reference) for c, t in zip(codes, ev.tasks, strict=True) if t.reference is not None
    ]
    row = {
        "step": step,
        "valid_pass@1": passed / len(ev.tasks),
        "valid_passed": passed,
        "valid_tasks": len(ev.tasks),
        "valid_bleu": round(sacre_bleu([c for c, _ in with_reference], [r for _, r in with_reference]), 4)
        if with_reference
        else None,
        "valid_truncated": sum(r.finish_reason == "length" for r in replies),
        "eval_generation_s": round(gen_s, 2),
        "eval_s": round(time.perf_counter() - started, 2),
    }
    write_jsonl(
        out / "evals" / f"step-{step:06d}.jsonl",
        [
            {"task_id": t.id, "status": v.status, "error_type": v.error_type, "code": c, "raw": r.text}
            for t, v, c, r in zip(ev.tasks, verdicts, codes, replies, strict=True)
        ],
    )
    return row


def better(candidate: dict[str, Any], best: dict[str, Any] | None, select_by: str) -> bool:
    """Is `candidate` ({"pass@1"?, "valid_loss"}) better than `best`? pass@1 first (ties: lower loss)."""
    if best is None:
        return True
    if select_by == "pass@1":
        a, b = candidate.get("pass@1"), best.get("pass@1")
        if a is not None and b is not None and a != b:
            return bool(a > b)
    return bool(candidate["valid_loss"] < best["valid_loss"])
