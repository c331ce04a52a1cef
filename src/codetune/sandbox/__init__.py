"""The one place untrusted (generated) code runs: a pool of fork servers inside bubblewrap.

    from codetune.sandbox import Limits, SandboxPool, run_tests

    verdict = run_tests(program, tests)                     # one sample, on a shared one-worker pool
    with SandboxPool(workers=4, limits=Limits(timeout_s=5)) as pool:
        verdicts = pool.map([(program, tests), ...])        # in job order; `verdict.passed`, `.status`
        js = pool.run(js_program, js_tests, language="javascript")

Python: `program` runs first, then `tests` (plain asserts and/or `unittest.TestCase` classes) see its
top-level names. JavaScript (Node.js, `node` on PATH): `program` and then `tests` run as two scripts in
one context (top-level functions and `var`s of the program are visible to the tests; `require` works);
the tests run synchronously, a throw is a failure (`AssertionError`: "failed", anything else: "error"),
and the verdict is taken when the tests script returns. Both get the same isolation, limits and verdicts.

Isolation (`isolation_level()`, recorded by `sandbox_manifest()` in every evaluation manifest):
- bubblewrap (`bwrap`, Debian's `bubblewrap`): each worker runs in its own user, PID, network, IPC, UTS
  and mount namespaces with a read-only root, a fresh /dev, /dev/shm, /proc, /tmp and /run (so no host
  Unix socket is reachable), no network, as uid 65534 without capabilities; the worker is PID 1 there,
  which samples can't signal, and after each sample it kills and reaps everything else in the namespace.
- Where bubblewrap can't run, rlimits only, with a warning. As root the samples then run as an
  unprivileged uid of their worker; `unsafe_isolation=True` (or CODETUNE_UNSAFE_ISOLATION=1) runs them
  as root instead.
Every sample is forked by its worker with its own session (process group), a fresh work dir, stdin on
/dev/null and rlimits on CPU, address space, file size, processes and open files.

Verdicts are decided by the worker, outside the sample: "passed" needs exit status 0 and a completion
record carrying a per-sample random nonce that the runner writes only after the tests finished. See
`worker.py` for what is undone between program and tests. Not defended in-process: a sample that digs
through the interpreter (frames, `gc`, ctypes, /proc/self/mem) to find the nonce or the runner's state.
"""

from codetune.sandbox.pool import (
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
    "LANGUAGES",
    "STATUSES",
    "Limits",
    "SandboxPool",
    "Verdict",
    "isolation_level",
    "run_tests",
    "sandbox_manifest",
]
