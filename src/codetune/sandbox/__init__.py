"""The one place untrusted (generated) code runs: a pool of fork servers inside bubblewrap.

    from codetune.sandbox import Limits, SandboxPool, run_tests

    verdict = run_tests(program, tests)                     # one sample, on a shared one-worker pool
    with SandboxPool(workers=4, limits=Limits(timeout_s=5)) as pool:
        verdicts = pool.map([(program, tests), ...])        # in job order; `verdict.passed`, `.status`
        js = pool.run(js_program, js_tests, language="javascript")
    apart = SandboxPool(judge="values")                     # tests in their own process: plain values

Python: `program` runs first, then `tests` (asserts and/or `unittest.TestCase` classes) see its top-level
names and share its `__name__` (a test's `patch(__name__ + ".f")` reaches the program, as in BigCodeBench). JavaScript (`node` on PATH): program and tests run as two scripts in one context; a throw is a
failure (`AssertionError`: "failed", else "error"). Both get the same isolation, limits and verdicts.

Isolation (`isolation_level()`, recorded by `sandbox_manifest()` in every evaluation manifest):
- bubblewrap: each worker in its own user, PID, network, IPC, UTS and mount namespaces, a read-only root,
  fresh /dev, /dev/shm, /proc, /tmp and /run (no host Unix socket is reachable; memory-backed, /tmp and
  /dev/shm capped at the pool's memory_mb each; what a sample leaves there, and any SysV IPC object it
  made, is removed after it), no network, uid 65534
  without capabilities; the worker is PID 1 (samples can't signal it), undumpable like all it forks (a
  sample can't trace it or open its /proc files, where its verdicts travel) and kills all else after a sample.
- Where bubblewrap can't run: rlimits only, with a warning. As root, samples then run as an unprivileged
  uid of their worker; `unsafe_isolation=True` (or CODETUNE_UNSAFE_ISOLATION=1) runs them as root.
Each sample is forked with its own session, a fresh work dir, stdin on /dev/null and rlimits on CPU,
address space, file size, processes (as root: a pids cgroup) and open files; as root a memory cgroup also
holds all its processes together to `memory_mb` (RLIMIT_AS holds each alone). A sample that lowers its
worker's limits or priority (prlimit and setpriority need only the same uid) gets an error, and the
worker is replaced.

Verdicts are the worker's: "passed" needs exit status 0 and a record with a per-sample random nonce that
the tests' process writes after the tests finished. Where that process is (`judge`):
- "values" (HumanEval's, and that of task files that ask for it): the tests run in a process of their
  own, one per worker, forked before any sample and kept between them (replaced, and the sample's verdict
  an error, if a sample stopped, reniced or limited it), undumpable (the sample's uid can't trace or read
  it), the only holder of the nonce. The program's names reach them as proxies;
  arguments and results cross as plain data (None, bool, int, float, complex, str, bytes, lists, tuples,
  sets, dicts), so no object, patch or exit of the sample's can decide the verdict. For tests that check
  plain values.
- "in-process" (the default; DataFrameBench's DataFrames and Axes can't cross): program and tests share
  the sample's process; `worker.py` says what is restored between them. A sample that digs through the
  interpreter (frames, `gc`, ctypes, /proc/self/mem) can find the nonce and forge a record (pinned by an
  xfail test); modules first imported by the program are not restored for the tests. Self-training does
  not learn from a passing Python sample that uses such means (`selftraining.tamper_signs`).
"""

from codetune.sandbox.pool import (
    JUDGES,
    LANGUAGES,
    STATUSES,
    Limits,
    SandboxPool,
    Verdict,
    isolation_level,
    run_tests,
    sandbox_manifest,
)

__all__ = [
    "JUDGES",
    "LANGUAGES",
    "STATUSES",
    "Limits",
    "SandboxPool",
    "Verdict",
    "isolation_level",
    "run_tests",
    "sandbox_manifest",
]
