"""Greedy Python <-> JavaScript translation of HumanEval's problems (humaneval-py2js, humaneval-js2py) with
Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M) through llama.cpp on the CPU: execution pass@1 in the target
language, BLEU and CodeBLEU against the reference translations.

    python benchmarks/translation.py                      # both directions, 43 problems each
    python benchmarks/translation.py --direction js2py --limit 5

Writes samples/results/metrics/manifest to --out/{direction} (a rerun reuses the generations).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from codetune.benchmarks.base import PromptStyle
from codetune.benchmarks.humaneval_js import HumanEvalTranslation
from codetune.benchmarks.runner import run_benchmark
from codetune.models.backends.base import SamplingSettings
from codetune.models.backends.llamacpp import LlamaCppBackend
from codetune.models.pack import fetch_model

PACK = "qwen2.5-coder-0.5b-instruct"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--direction", choices=("py2js", "js2py", "both"), default="both")
    parser.add_argument("--limit", type=int, default=None, help="only the first N problems")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/translation"))
    args = parser.parse_args()

    model = fetch_model(PACK, convert=False)
    backend = LlamaCppBackend(model.gguf_path, n_ctx=4096, n_threads=args.threads, seed=0, max_batch=8)
    settings = SamplingSettings(max_new_tokens=args.max_new_tokens, temperature=0.0)
    directions = ("py2js", "js2py") if args.direction == "both" else (args.direction,)
    for direction in directions:
        started = time.perf_counter()
        bench = HumanEvalTranslation(direction)
        metrics = run_benchmark(
            bench,
            bench.load("test")[: args.limit],
            backend,
            settings,
            style=PromptStyle("chat", chat_prompt=backend.chat_prompt),
            ks=(1,),
            out_dir=args.out / direction,
        )
        lo, hi = metrics["pass@1_ci95"]
        parts = metrics["codebleu_parts"]
        print(f"{bench.name}: {PACK} via llama.cpp, chat, greedy, max_new_tokens {args.max_new_tokens}")
        print(
            f"  pass@1 {metrics['pass@1']:.4f} ({metrics['passed_samples']}/{metrics['problems']}) "
            f"95% CI [{lo:.4f}, {hi:.4f}]  statuses {metrics['statuses']}  truncated {metrics['truncated']}"
        )
        print(
            f"  BLEU {metrics['bleu']:.2f}  CodeBLEU {metrics['codebleu']:.4f} (ngram {parts['ngram_match']:.3f}, "
            f"weighted {parts['weighted_ngram_match']:.3f}, syntax {parts['syntax_match']:.3f}, "
            f"dataflow {parts['dataflow_match']:.3f})"
        )
        print(f"  wall {time.perf_counter() - started:.0f} s  output {args.out / direction}")


if __name__ == "__main__":
    main()
