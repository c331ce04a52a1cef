"""Batched generation against a loop of single-sequence calls on the same backend, on HumanEval prompts.

    .venv/bin/python benchmarks/generation_throughput.py                    # llama.cpp, Qwen2.5-Coder-0.5B
    .venv/bin/python benchmarks/generation_throughput.py --backend hf --model PATH

Workloads (base-style HumanEval prompts, base stop sequences, `--max-new-tokens` each):

- sampled: `--n` samples of each of `--prompts` prompts at temperature 0.8 with seed 0 (n greedy
  samples would all be the same). (b) `generate` on all of them at once, against (a) a loop of
  single-sequence `generate` calls, each with the seed that sample has in the batched call; the loop
  runs the first `--single` (prompt, sample) pairs, taken sample-major so every prompt is in it, and
  the texts of those are compared with their batched counterparts.
- greedy: n=1 on the same prompts, batched against one at a time: tokens/s and how many completions
  are the same text.
- llamacpp only, the anchor (c): raw batched decoding written directly on llama.cpp's low-level API at
  the backend's batch size: one prompt encoded once and copied to `--max-batch` sequences, then
  `--max-new-tokens` steps of one token per sequence (greedy sampling, no stops), with the KV cache
  both ways llama.cpp offers (one unified pool of cells, and one stream per sequence, its default and
  what its `batched` example uses); the faster of the two is the most a batch of this size gives on this
  machine; goal b/c >= 0.9 against it.

tokens/s counts completion tokens over wall time, prompt encoding included. Goals: b/a >= 1.8x on
llama.cpp, >= 3x on transformers.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from codetune.benchmarks.humaneval import build_prompt, load_problems, style_stops
from codetune.models.backends.base import Backend, Completion, SamplingSettings

PACK = "qwen2.5-coder-0.5b-instruct"


def default_model(backend: str) -> str:
    from codetune.models.pack import default_cache_dir, fetch_model

    if backend == "llamacpp":
        return str(fetch_model(PACK, convert=False).gguf_path)
    hf = default_cache_dir() / "models" / PACK / "hf"
    if not (hf / "config.json").is_file():
        raise SystemExit(f"{hf} is missing: run `codetune models fetch {PACK}` (converts it) or pass --model")
    return str(hf)


def timed(label: str, call: Callable[[], list[Completion]]) -> tuple[list[Completion], float]:
    started = time.perf_counter()
    out = call()
    seconds = time.perf_counter() - started
    tokens = sum(c.completion_tokens for c in out)
    print(
        f"  {label:<44} {len(out):>4} seqs {tokens:>6} tokens {seconds:7.1f} s {tokens / seconds:7.1f} tok/s"
    )
    return out, tokens / seconds


def one_at_a_time(
    backend: Backend, prompts: Sequence[str], s: SamplingSettings, pairs: Sequence[tuple[int, int]]
) -> list[Completion]:
    """Sample j of prompt i alone, with the seed it has in one call over all prompts."""
    return [
        backend.generate([prompts[i]], replace(s, n=1, seed=s.seed + i * s.n + j))[0][0] for i, j in pairs
    ]


def same_text(a: Sequence[Completion], b: Sequence[Completion]) -> str:
    same = sum(x.text == y.text for x, y in zip(a, b, strict=True))
    return f"{same}/{len(a)} same text"


def raw_batched(gguf: str, prompt: str, batch: int, steps: int, threads: int, unified: bool) -> float:
    """Tokens/s of `batch` sequences decoded together for `steps` steps on llama.cpp's own API, with one
    unified KV cache or a KV stream per sequence."""
    import llama_cpp as lib

    lib.llama_backend_init()
    mparams = lib.llama_model_default_params()
    model = lib.llama_model_load_from_file(gguf.encode(), mparams)
    vocab = lib.llama_model_get_vocab(model)
    text = prompt.encode()
    buf = (lib.llama_token * 4096)()
    n_prompt = lib.llama_tokenize(vocab, text, len(text), buf, 4096, True, True)
    params = lib.llama_context_default_params()
    params.n_ctx = (batch + 1) * (n_prompt + steps + 1)
    params.n_batch = params.n_ubatch = max(512, batch)
    params.n_seq_max = batch + 1
    params.kv_unified = unified
    params.n_threads = params.n_threads_batch = threads
    ctx = lib.llama_init_from_model(model, params)
    mem = lib.llama_get_memory(ctx)
    b = lib.llama_batch_init(max(512, n_prompt, batch), 0, 1)
    samplers = []
    for _ in range(batch):
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        samplers.append(chain)

    def decode(rows: list[tuple[int, int, int]], logits: bool) -> None:
        for k, (seq, token, pos) in enumerate(rows):
            b.token[k], b.pos[k], b.n_seq_id[k], b.logits[k] = token, pos, 1, logits
            b.seq_id[k][0] = seq
        b.n_tokens = len(rows)
        assert lib.llama_decode(ctx, b) == 0

    started = time.perf_counter()
    decode([(batch, buf[p], p) for p in range(n_prompt - 1)], logits=False)  # the prompt, once
    for seq in range(batch):
        # a stream per sequence: llama.cpp copies whole streams (its `batched` example does the same)
        lib.llama_memory_seq_cp(mem, batch, seq, *((0, n_prompt - 1) if unified else (-1, -1)))
    tokens = [buf[n_prompt - 1]] * batch
    for step in range(steps):
        decode([(seq, tokens[seq], n_prompt - 1 + step) for seq in range(batch)], logits=True)
        tokens = [lib.llama_sampler_sample(samplers[seq], ctx, seq) for seq in range(batch)]
    seconds = time.perf_counter() - started
    for chain in samplers:
        lib.llama_sampler_free(chain)
    lib.llama_batch_free(b)
    lib.llama_free(ctx)
    lib.llama_model_free(model)
    rate = batch * steps / seconds
    label = f"(c) raw llama.cpp, {batch} x {steps}, {'unified KV' if unified else 'KV streams'}"
    print(f"  {label:<44} {batch:>4} seqs {batch * steps:>6} tokens {seconds:7.1f} s {rate:7.1f} tok/s")
    return rate


def load(args: argparse.Namespace, batch: int) -> Any:
    if args.backend == "llamacpp":
        from codetune.models.backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(args.model, n_ctx=4096, n_threads=args.threads, max_batch=batch)
    import torch

    from codetune.models.backends.hf import HFBackend

    torch.set_num_threads(args.threads)
    return HFBackend.from_path(args.model, batch_size=batch, device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=("llamacpp", "hf"), default="llamacpp")
    parser.add_argument(
        "--model", default=None, help="GGUF (llamacpp) or model folder (hf); default: the Qwen pack"
    )
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=16, help="sequences decoded together")
    parser.add_argument("--single", type=int, default=40, help="(prompt, sample) pairs run one at a time")
    parser.add_argument("--skip", nargs="*", default=[], choices=("sampled", "greedy", "raw"))
    args = parser.parse_args()
    args.model = args.model or default_model(args.backend)

    problems = load_problems()[: args.prompts]
    prompts = [build_prompt(p, "base", lambda m: "") for p in problems]
    stops = style_stops("base")
    load_avg = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"{args.backend} {Path(args.model).name}: {len(prompts)} HumanEval prompts, {args.max_new_tokens} new "
        f"tokens, {args.threads} threads, batch {args.max_batch}; {platform.node()} {os.cpu_count()} CPUs, "
        f"load {load_avg}, {time.strftime('%Y-%m-%d %H:%M')}"
    )
    backend = load(args, args.max_batch)
    if args.backend == "llamacpp":  # make the batch context at its full size first, outside the timings
        longest = max(backend.count_tokens(p) for p in prompts) + args.max_new_tokens + 2
        backend._batch_context(args.max_batch, longest)
    backend.generate(prompts[:1], SamplingSettings(max_new_tokens=4))
    ratios: dict[str, float] = {}
    if "sampled" not in args.skip:
        s = SamplingSettings(
            max_new_tokens=args.max_new_tokens, temperature=0.8, stop=stops, n=args.n, seed=0
        )
        pairs = [(i, j) for j in range(args.n) for i in range(len(prompts))][: args.single]
        print(f"sampled: n={args.n}, temperature 0.8, seed 0")
        batched, b = timed(
            f"(b) batched, {len(prompts) * args.n} sequences",
            lambda: [c for row in backend.generate(prompts, s) for c in row],
        )
        single, a = timed("(a) one sequence per call", lambda: one_at_a_time(backend, prompts, s, pairs))
        mine = [batched[i * args.n + j] for i, j in pairs]
        print(f"  b/a {b / a:.2f}x; batched vs alone: {same_text(mine, single)}")
        ratios["sampled b"] = b
        ratios["sampled b/a"] = b / a
    if "greedy" not in args.skip:
        s = SamplingSettings(max_new_tokens=args.max_new_tokens, stop=stops)
        print("greedy: n=1")
        batched, b = timed(
            f"(b) batched, {len(prompts)} sequences", lambda: [row[0] for row in backend.generate(prompts, s)]
        )
        single, a = timed(
            "(a) one sequence per call",
            lambda: one_at_a_time(backend, prompts, s, [(i, 0) for i in range(len(prompts))]),
        )
        print(f"  b/a {b / a:.2f}x; batched vs alone: {same_text(batched, single)}")
        differ = [i for i, (x, y) in enumerate(zip(batched, single, strict=True)) if x.text != y.text]
        for i in differ:
            k = next(
                (n for n, (p, q) in enumerate(zip(batched[i].text, single[i].text, strict=False)) if p != q),
                None,
            )
            print(f"    prompt {i} ({problems[i]['task_id']}): first difference at character {k}")
    if args.backend == "llamacpp" and "raw" not in args.skip:
        close = getattr(backend, "close", None)
        if close:
            close()
        c = max(
            raw_batched(args.model, prompts[0], args.max_batch, args.max_new_tokens, args.threads, unified)
            for unified in (True, False)
        )
        if "sampled b" in ratios:
            print(f"  sampled b/c {ratios['sampled b'] / c:.2f} (goal >= 0.9)")


if __name__ == "__main__":
    main()
