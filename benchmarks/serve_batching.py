"""Aggregate tokens/s of the server with 8 concurrent clients against 1 client, on one llama.cpp model.

Starts `codetune serve` on loopback (serve.max_concurrent 8), then for `--duration` seconds each:
1 client, then `--clients` concurrent clients, every one sending greedy non-streamed completions of
HumanEval prompts (a different prompt per request, `--max-tokens` each) back to back. Prints completion
tokens/s over the window, p50/p99 latency, and the ratio (goal >= 1.6). Bounded: each client stops at the
end of the window, and only 127.0.0.1 is contacted.

    .venv/bin/python benchmarks/serve_batching.py [--gguf PATH] [--clients 8] [--duration 60]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import start_server  # noqa: E402


async def run_clients(
    url: str, prompts: list[str], clients: int, args: argparse.Namespace
) -> dict[str, float]:
    latencies: list[float] = []
    tokens = 0
    end = time.monotonic() + args.duration

    async def one(i: int) -> None:
        nonlocal tokens
        async with httpx.AsyncClient(timeout=600) as http:
            k = i
            while time.monotonic() < end:
                started = time.monotonic()
                body = {"prompt": prompts[k % len(prompts)], "max_tokens": args.max_tokens, "temperature": 0}
                r = await http.post(url + "/v1/completions", json=body)
                r.raise_for_status()
                latencies.append(time.monotonic() - started)
                tokens += r.json()["usage"]["completion_tokens"]
                k += clients

    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(clients)))
    wall = time.monotonic() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "tokens_per_s": tokens / wall,
        "p50_s": statistics.median(latencies),
        "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, default=None, help="default: the Qwen2.5-Coder-0.5B model pack")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    from codetune.benchmarks.humaneval import load_problems
    from codetune.models.pack import fetch_model

    gguf = args.gguf or fetch_model("qwen2.5-coder-0.5b-instruct", convert=False).gguf_path
    prompts = [p["prompt"] for p in load_problems()]
    server_args = argparse.Namespace(
        max_concurrent=max(8, args.clients), max_queue=64, max_tokens=args.max_tokens,
        load_max_tokens=args.max_tokens, threads=args.threads,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(gguf, server_args, Path(tmp))
        try:
            asyncio.run(run_clients(url, prompts[:2], 1, argparse.Namespace(**{**vars(args), "duration": 5})))
            one = asyncio.run(run_clients(url, prompts, 1, args))
            many = asyncio.run(run_clients(url, prompts, args.clients, args))
        finally:
            proc.terminate()
            proc.wait(30)
    for name, r in (("1 client", one), (f"{args.clients} clients", many)):
        print(
            f"{name:>10}: {r['requests']:4d} requests in {r['wall_s']:.0f} s, {r['tokens_per_s']:6.1f} tok/s, "
            f"p50 {r['p50_s']:.2f} s, p99 {r['p99_s']:.2f} s"
        )
    print(f"aggregate tokens/s {args.clients} clients / 1 client: {many['tokens_per_s'] / one['tokens_per_s']:.2f}x "
          "(goal >= 1.6)")  # fmt: skip


if __name__ == "__main__":
    main()
