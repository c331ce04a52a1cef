"""Evaluation by execution during training: generate for a fixed benchmark subset, run it in the sandbox.

`train.eval_benchmark: dataframebench/val` (with `train.eval_tasks` to take the first N tasks) makes every
validation also generate greedily for those tasks with the model as it is at that step, score the code
against the tasks' unittest suites in the sandbox (timeouts calibrated once on the reference solutions),
and compute BLEU against the references. The numbers go to metrics.jsonl and TensorBoard, and decide
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

from codetune.config import Config, GenerateConfig
from codetune.data.format import build_prompt
from codetune.errors import CodetuneError
from codetune.manifest import write_jsonl


@dataclass
class ExecEval:
    benchmark: str
    tasks: list[Any]
    references: list[str]
    limits: list[Any] | None = None  # calibrated on the first evaluation


def make_exec_eval(cfg: Config) -> ExecEval | None:
    """The evaluation subset named by `train.eval_benchmark`, or None when it is unset."""
    name = cfg.train.eval_benchmark
    if not name:
        return None
    bench, _, split = name.partition("/")
    if bench != "dataframebench" or not split:
        raise CodetuneError(f"train.eval_benchmark {name!r}: use dataframebench/val (or dataframebench/test)")
    from codetune.eval import dataframebench as dfb

    dfb.ensure_environment()
    tasks = dfb.load_tasks(split)
    if cfg.train.eval_tasks is not None:
        tasks = tasks[: cfg.train.eval_tasks]
    if not tasks:
        raise CodetuneError(
            f"train.eval_benchmark {name!r}: no tasks (train.eval_tasks={cfg.train.eval_tasks})"
        )
    return ExecEval(name, tasks, [dfb.training_target(t.reference, t.entry_point) for t in tasks])


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
    """Generate and score the subset with the model as it is now; returns the metrics row."""
    from codetune.eval import dataframebench as dfb
    from codetune.eval.metrics import sacre_bleu
    from codetune.generation import answer_stops
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
        stops = (*answer_stops(cfg.prompt), *dfb.REPLY_STOPS)
        settings = SamplingSettings(max_new_tokens=cfg.train.eval_max_new_tokens, temperature=0.0, stop=stops)
        prompts = [build_prompt(t.prompt, cfg.prompt, backend.chat_prompt) for t in ev.tasks]
        replies = [row[0] for row in backend.generate(prompts, settings)]
        del backend
    finally:
        if was_training:
            model.train()
        torch.set_rng_state(rng[0])
        random.setstate(rng[1])
        np.random.set_state(rng[2])
    gen_s = time.perf_counter() - started
    codes = [dfb.extract_solution(r.text, t.entry_point) for r, t in zip(replies, ev.tasks, strict=True)]
    with dfb.open_pool(workers=None) as pool:
        if ev.limits is None:
            ev.limits = dfb.task_limits(pool, ev.tasks)
        verdicts = dfb.score(pool, ev.tasks, codes, ev.limits)
    passed = sum(v.passed for v in verdicts)
    row = {
        "step": step,
        "valid_pass@1": passed / len(ev.tasks),
        "valid_passed": passed,
        "valid_tasks": len(ev.tasks),
        "valid_bleu": round(sacre_bleu(codes, ev.references), 4),
        "valid_truncated": sum(r.finish_reason == "length" for r in replies),
        "eval_generation_s": round(gen_s, 2),
        "eval_s": round(time.perf_counter() - started, 2),
    }
    write_jsonl(
        out / "evals" / f"step-{step:06d}.jsonl",
        [
            {"task_id": t.task_id, "status": v.status, "error_type": v.error_type, "code": c, "raw": r.text}
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
