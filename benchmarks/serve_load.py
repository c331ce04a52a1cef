"""The server under load, and its llama.cpp throughput against raw llama-cpp-python.

Starts `codetune serve` as a subprocess on loopback serving one GGUF with the llama.cpp backend, then:

1. Throughput: the same prompt, greedy, the same max tokens, the same threads, alternately through the
   server (POST /v1/completions) and through `llama_cpp.Llama.create_completion` in this process
   (the server sits idle meanwhile); tokens/s of each (median of the reps) and their ratio (goal >= 0.9).
2. Load: `--clients` concurrent clients (half of them streaming) for `--duration` seconds; a client
   turned away with 429 waits the Retry-After it was given. At the end, requests still in flight are
   cut off (the clients disconnect; the server drops their queued or streaming work). Requests/s,
   p50/p99 latency of the answered requests, counts of 200 / 429 / anything else, and the server's
   RSS before, during (max) and after.

Exits non-zero if any request failed with something other than a deliberate 429.

    .venv/bin/python benchmarks/serve_load.py [--gguf PATH] [--duration 30] [--clients 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil

PROMPT = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'
LOAD_PROMPT = "def add(a, b):\n"


def default_gguf() -> Path:
    from codetune.models.pack import fetch_model

    return fetch_model("smollm2-135m", convert=False).gguf_path


def start_server(gguf: Path, args: argparse.Namespace, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = workdir / "serve.yaml"
    config.write_text(
        "serve:\n"
        f"  models: ['bench={gguf}']\n"
        f"  max_concurrent: {args.max_concurrent}\n"
        f"  max_queue: {args.max_queue}\n"
        f"  max_tokens_limit: {max(args.max_tokens, args.load_max_tokens)}\n"
        f"  access_log: {workdir / 'access.jsonl'}\n"
        f"generate:\n  threads: {args.threads}\n"
    )
    log = open(workdir / "server.log", "wb")  # noqa: SIM115
    cmd = [sys.executable, "-m", "codetune.cli", "serve", str(config), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited:\n{(workdir / 'server.log').read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    sys.exit("the server did not start within 180 s")


# -- 1. throughput against raw llama-cpp-python ------------------------------------------------------


def raw_tokens_per_s(llm: object, max_tokens: int) -> float:
    started = time.perf_counter()
    out = llm.create_completion(  # type: ignore[attr-defined]
        PROMPT, max_tokens=max_tokens, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0
    )
    return out["usage"]["completion_tokens"] / (time.perf_counter() - started)


def server_tokens_per_s(url: str, max_tokens: int) -> float:
    body = {"model": "bench", "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0}
    started = time.perf_counter()
    r = httpx.post(url + "/v1/completions", json=body, timeout=300)
    r.raise_for_status()
    return r.json()["usage"]["completion_tokens"] / (time.perf_counter() - started)


def throughput(url: str, gguf: Path, args: argparse.Namespace) -> float:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(gguf),
        n_ctx=4096,
        n_batch=512,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    raw_tokens_per_s(llm, 8)  # warm-up both sides
    server_tokens_per_s(url, 8)
    raw, served = [], []
    for _ in range(args.reps):  # alternate, so background noise hits both sides alike
        raw.append(raw_tokens_per_s(llm, args.max_tokens))
        served.append(server_tokens_per_s(url, args.max_tokens))
    llm.close()
    r, s = statistics.median(raw), statistics.median(served)
    print(f"throughput ({args.max_tokens} tokens, greedy, {args.threads} threads, median of {args.reps}):")
    print(f"  raw llama-cpp-python  {r:7.1f} tokens/s   runs: {', '.join(f'{x:.1f}' for x in raw)}")
    print(f"  codetune serve        {s:7.1f} tokens/s   runs: {', '.join(f'{x:.1f}' for x in served)}")
    verdict = "met" if s / r >= 0.9 else "NOT met"
    print(f"  ratio server/raw      {s / r:7.3f}   (goal >= 0.9: {verdict})")
    return s / r


# -- 2. load -----------------------------------------------------------------------------------------


async def client(i: int, url: str, args: argparse.Namespace, results: list, inflight: Counter) -> None:
    """Ask again and again until cancelled; after a 429, wait the Retry-After the server gave."""
    stream = i % 2 == 1
    body = {"model": "bench", "prompt": LOAD_PROMPT, "max_tokens": args.load_max_tokens, "stream": stream}
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        while True:
            started = time.perf_counter()
            inflight["n"] += 1
            try:
                async with http.stream("POST", "/v1/completions", json=body) as r:
                    text = (await r.aread()).decode()
                    status: int | str = r.status_code
                    if status == 200 and stream and not text.rstrip().endswith("data: [DONE]"):
                        status = "unfinished stream"
                    if status == 200 and '"error"' in text:
                        status = "error event"
                    retry = float(r.headers.get("retry-after", 1))
            except httpx.HTTPError as e:
                status, retry = type(e).__name__, 1.0
            finally:
                inflight["n"] -= 1
            results.append((status, time.perf_counter() - started, stream))
            if status == 429:
                await asyncio.sleep(retry)


async def load(url: str, pid: int, args: argparse.Namespace) -> int:
    """`args.clients` clients for `args.duration` seconds; those still waiting at the end are cut off
    (they disconnect, and the server drops their queued or streaming work)."""
    proc = psutil.Process(pid)
    rss_start, samples = proc.memory_info().rss, []
    results: list = []
    inflight: Counter = Counter()
    tasks = [asyncio.create_task(client(i, url, args, results, inflight)) for i in range(args.clients)]
    started = time.monotonic()
    while time.monotonic() - started < args.duration:
        samples.append(proc.memory_info().rss)
        await asyncio.sleep(min(1.0, max(0.0, args.duration - (time.monotonic() - started))))
    cut_off = inflight["n"]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.monotonic() - started
    await asyncio.sleep(2)  # let the server settle before the last memory reading
    rss_end = proc.memory_info().rss
    async with httpx.AsyncClient(base_url=url) as http:
        health = (await http.get("/health")).json()
    print(f"after the cut-off: server running {health['running']}, waiting {health['waiting']}")
    report(results, elapsed, cut_off, (rss_start, max(samples, default=rss_end), rss_end), args)
    trace = [samples[int(f * (len(samples) - 1))] >> 20 for f in (0, 0.25, 0.5, 0.75, 1)] if samples else []
    print(f"  RSS during load at 0/25/50/75/100% of the run: {' / '.join(map(str, trace))} MiB")
    return sum(1 for status, _, _ in results if status not in (200, 429))


def report(
    results: list, elapsed: float, cut_off: int, rss: tuple[int, int, int], args: argparse.Namespace
) -> None:
    counts = Counter(status for status, _, _ in results)
    ok = sorted(latency for status, latency, _ in results if status == 200)
    other = {k: v for k, v in counts.items() if k not in (200, 429)}
    mb = 1 / 2**20
    print(f"load: {args.clients} clients (half streaming) for {elapsed:.1f} s, max_tokens {args.load_max_tokens}, "
          f"max_concurrent {args.max_concurrent}, max_queue {args.max_queue}")  # fmt: skip
    print(f"  answered        {len(ok) / elapsed:7.2f} requests/s ({len(ok)} in {elapsed:.1f} s)")
    if ok:
        p99 = ok[min(len(ok) - 1, int(0.99 * len(ok)))]
        print(f"  latency (200)   p50 {statistics.median(ok) * 1000:7.0f} ms   p99 {p99 * 1000:7.0f} ms")
    print(f"  status counts   200: {counts.get(200, 0)}   429: {counts.get(429, 0)}   "
          f"other: {sum(other.values())} {other if other else ''}  (in flight when cut off at the end: {cut_off})")  # fmt: skip
    print(f"  server RSS      start {rss[0] * mb:.0f} MiB   max {rss[1] * mb:.0f} MiB   end {rss[2] * mb:.0f} MiB"
          f"   ({(rss[2] - rss[0]) * mb:+.0f} MiB)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gguf", type=Path, help="GGUF file (default: the smollm2-135m model pack)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--max-concurrent", type=int, default=1)
    parser.add_argument("--max-queue", type=int, default=8)
    parser.add_argument("--load-max-tokens", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per throughput run")
    parser.add_argument("--reps", type=int, default=5, help="throughput runs per side")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    gguf = args.gguf or default_gguf()
    print(f"model: {gguf} ({gguf.stat().st_size / 2**20:.0f} MiB), CPUs: {len(os.sched_getaffinity(0))}")
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        proc, url = start_server(gguf, args, Path(tmp))
        try:
            throughput(url, gguf, args)
            failures = asyncio.run(load(url, proc.pid, args))
        finally:
            proc.terminate()
            proc.wait(30)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
