"""Greedy HumanEval with Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M) through llama.cpp on the CPU.

    python benchmarks/humaneval.py                 # all 164 problems, chat style (~12+ min on 2 cores)
    python benchmarks/humaneval.py --limit 10      # a quick look
    python benchmarks/humaneval.py --style base    # plain completion of the prompt

Fetches the model pack on first use (cached), writes samples/results/metrics/manifest to --out, and
prints pass@1 with its bootstrap 95% CI, wall time and generation tokens/s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from codetune.benchmarks.base import PromptStyle
from codetune.benchmarks.humaneval import HumanEval
from codetune.benchmarks.runner import run_benchmark
from codetune.models.backends.base import SamplingSettings
from codetune.models.backends.llamacpp import LlamaCppBackend
from codetune.models.pack import fetch_model

PACK = "qwen2.5-coder-0.5b-instruct"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N problems")
    parser.add_argument("--style", choices=("chat", "base"), default="chat")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/humaneval"))
    parser.add_argument(
        "--batch",
        type=int,
        default=8,
        help="prompts per backend call (generate.batch_size); freed slots refill",
    )
    parser.add_argument("--max-batch", type=int, default=16, help="sequences llama.cpp decodes together")
    args = parser.parse_args()

    started = time.perf_counter()
    model = fetch_model(PACK, convert=False)
    backend = LlamaCppBackend(
        model.gguf_path, n_ctx=4096, n_threads=args.threads, seed=0, max_batch=args.max_batch
    )
    settings = SamplingSettings(max_new_tokens=args.max_new_tokens, temperature=0.0)
    out = args.out / args.style

    def progress(done: int, total: int) -> None:
        elapsed = time.perf_counter() - started
        print(f"  generated {done}/{total} ({elapsed:.0f} s)", file=sys.stderr, flush=True)

    bench = HumanEval()
    metrics = run_benchmark(
        bench,
        bench.load("test")[: args.limit],
        backend,
        settings,
        style=PromptStyle(args.style, chat_prompt=backend.chat_prompt),
        ks=(1,),
        out_dir=out,
        progress=progress,
        batch=args.batch,
    )
    lo, hi = metrics["pass@1_ci95"]
    passed, problems = metrics["passed_samples"], metrics["problems"]
    print(f"model        {PACK} ({model.gguf_path.name}) via llama.cpp, {args.threads} threads")
    print(f"style        {args.style}, greedy, max_new_tokens {args.max_new_tokens}")
    print(f"pass@1       {metrics['pass@1']:.4f}  ({passed}/{problems})  95% CI [{lo:.4f}, {hi:.4f}]")
    print(f"statuses     {metrics['statuses']}  truncated {metrics['truncated']}")
    print(
        f"wall time    {time.perf_counter() - started:.1f} s  (generation {metrics['generation_s'] or 0.0:.1f} s, "
        f"scoring {metrics['scoring_s']:.1f} s)"
    )
    if metrics["reused_generations"]:  # answers from out/generations.jsonl (a rerun resumes there)
        print(f"reused       {metrics['reused_generations']} problems' answers from {out}/generations.jsonl")
    if metrics["tokens_per_s"] is not None:
        print(
            f"tokens/s     {metrics['tokens_per_s']:.1f}  ({metrics['completion_tokens']} completion tokens)"
        )
    print(f"output       {out}")


if __name__ == "__main__":
    main()
