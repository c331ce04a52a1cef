"""Greedy output in a 16-bit type against fp32, and batched against one prompt at a time, on HumanEval
prompts with codetune's transformers backend: how many completions are the same text, and for the
others how far they agree.

    python benchmarks/precision_agreement.py --model smollm2-135m --device cpu --prompts 20
    python benchmarks/precision_agreement.py --model qwen2.5-coder-0.5b-instruct --device cuda

The model is a codetune model folder, a model pack name or a hub name. A correctness check, not a speed
figure (bf16 on most CPUs is slow).
"""

from __future__ import annotations

import argparse
import time

from codetune.benchmarks.humaneval import build_prompt, load_problems, style_stops
from codetune.models.backends.base import SamplingSettings
from codetune.models.backends.hf import HFBackend
from codetune.models.loading import resolve_source


def common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def run(
    model: str, device: str, precision: str, batch: int, prompts: list[str], s: SamplingSettings
) -> list[str]:
    backend = HFBackend.from_path(model, batch_size=batch, device=device, precision=precision)
    started = time.perf_counter()
    texts = [row[0].text for row in backend.generate(prompts, s)]
    print(f"  {precision:>4} batch {batch:>2}: {time.perf_counter() - started:6.1f} s", flush=True)
    return texts


def compare(name: str, a: list[str], b: list[str]) -> None:
    same = sum(x == y for x, y in zip(a, b, strict=True))
    differing = sorted(common_prefix(x, y) for x, y in zip(a, b, strict=True) if x != y)
    where = f"; where they differ, the first {differing} characters agree" if differing else ""
    print(f"{name}: same text for {same}/{len(a)}{where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "mps"))
    parser.add_argument("--half", default="bf16", choices=("bf16", "fp16"))
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    model = resolve_source(args.model)
    problems = load_problems()[: args.prompts]
    prompts = [build_prompt(p, "base", lambda m: "") for p in problems]
    settings = SamplingSettings(max_new_tokens=args.max_new_tokens, stop=style_stops("base"))
    print(
        f"{args.model} on {args.device}: {len(prompts)} HumanEval prompts, greedy, {args.max_new_tokens} tokens"
    )
    fp32_one = run(model, args.device, "fp32", 1, prompts, settings)
    fp32_many = run(model, args.device, "fp32", args.batch, prompts, settings)
    half_many = run(model, args.device, args.half, args.batch, prompts, settings)
    compare(f"fp32 batch {args.batch} vs fp32 one at a time", fp32_many, fp32_one)
    compare(f"{args.half} batch {args.batch} vs fp32 batch {args.batch}", half_many, fp32_many)


if __name__ == "__main__":
    main()
