"""Run untrusted (generated) code. This is the only module in codetune that executes it.

`run_tests(program, tests, limits)` and `SandboxPool` run `program`, then `tests`, in a fresh process
and return a `Verdict`. `isolation_level()` and `sandbox_manifest()` report which layers are active;
the workers probe for the strongest of three modes and prove it with a sample before serving:

- Always: pre-started worker interpreters (`python -I`, this file loaded as a module; stdlib only plus
  optional preloads) fork one fresh process per sample, so no sample pays a Python start-up. The sample runs
  in a new session with stdin on /dev/null, stdout and stderr on pipes whose tails are kept, an
  environment from a small allow-list, rlimits on CPU time, address space, file size, process count
  and core size, and no_new_privs. The worker is a child subreaper: on timeout it SIGKILLs the sample
  and its process group, then kills and reaps everything re-parented to it until nothing is left.
- "namespaces" (root): each worker enters its own mount and network namespace once (no interface but a
  downed loopback; a read-only root; a tmpfs on /tmp; a /proc that hides other users' processes;
  directories such as /root hidden, with the Python installation bind-mounted back). Each sample is
  PID 1 of a new PID namespace (when it dies the kernel kills all it spawned, daemons included) and
  runs as an unprivileged uid of its own worker (`_SANDBOX_UID_BASE + worker pid`, and that plus
  `_SLOT_UID_STRIDE` for every other sample), so it has no capabilities, can't signal or read anything
  else, and RLIMIT_NPROC caps a fork bomb. With `fork_ahead` (when there are fewer workers than CPUs),
  a worker forks and sets up its next sample while the current one runs; that spare waits for its job
  on a pipe, on the other uid and work dir, in a PID namespace of its own.
- "userns" (not root, unprivileged user namespaces allowed): the worker enters user, mount and network
  namespaces (read-only root, private /tmp, no /proc); samples drop every capability.
- "rlimits": only the "always" layer (plus the uid drop as root, when Python stays readable).

A sample passes only when it reports completion on a private pipe, with a per-sample random token the
worker checks, after the tests ran to the end without raising and every `unittest.TestCase` they define
succeeded: printing, `sys.exit(0)`, `os._exit(0)` or closing stdout can't forge that. Between program
and tests the state that tests rely on is restored: builtins, the module-level names of every module
imported before the program (the stdlib the worker preloads: `unittest`, `math`, `re`, ...), the
Python-level classes of those modules (e.g. `unittest.TestCase`), `sys.modules` entries, import hooks,
trace/profile hooks and gc callbacks. The tests run in a copy of the program's namespace without
dunders or names that shadow builtins.

What can't be defended in-process (the sandbox still contains the code, but it can lie about its own
result): objects with an always-true `__eq__` (or other dunders) handed to the tests; patches made while
the tests call into the program; patches to modules the program imports first itself (e.g.
`numpy.testing`) or to builtin types via ctypes; threads the program leaves running; and code that
introspects the interpreter (frames, `gc`, ctypes, audit hooks, /proc/self/mem) to find the token or
rewrite the runner. In the weaker modes the sample also shares the host network, and (rlimits) the
host file system, limited only by its uid. Side effects of the namespaces mode: the sample is PID 1,
so signals it sends itself without a handler are ignored (the tests still decide its verdict), and
/dev/shm is read-only (no multiprocessing locks).
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import fcntl
import functools
import gc
import json
import linecache
import math
import operator
import os
import resource
import select
import signal
import stat
import struct
import sys
import time
import traceback
import types
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, NoReturn

STATUSES = ("passed", "failed", "error", "timeout", "memory", "killed", "sandbox-error")


@dataclass(frozen=True)
class Limits:
    """Resource limits for one sample. The defaults suit HumanEval-style checks."""

    timeout_s: float = 10.0  # wall clock, from fork to exit
    cpu_s: float | None = None  # RLIMIT_CPU (whole seconds, rounded up); None: same as timeout_s
    memory_mb: int = 1024  # RLIMIT_AS
    file_size_mb: int = 16  # RLIMIT_FSIZE; a worker's private /tmp holds max(64, 4x the pool's) MiB
    max_processes: int = 64  # RLIMIT_NPROC, counted for the sample's own uid
    output_bytes: int = 16_384  # tail of stdout and of stderr kept, per stream
    network: bool = False  # True: the host network (namespaces mode; userns mode has none to share)

    def __post_init__(self) -> None:
        problems = [
            name
            for name, value in (
                ("timeout_s", self.timeout_s),
                ("cpu_s", 1.0 if self.cpu_s is None else self.cpu_s),
                ("memory_mb", self.memory_mb),
                ("file_size_mb", self.file_size_mb),
                ("max_processes", self.max_processes),
            )
            if not value > 0
        ]
        if problems or self.output_bytes < 0:
            from codetune.errors import CodetuneError

            bad = ", ".join(problems or ["output_bytes"])
            raise CodetuneError(f"sandbox limits: {bad} must be positive (got {self})")

    @property
    def cpu_limit_s(self) -> int:
        """The RLIMIT_CPU soft limit in whole seconds."""
        return max(1, math.ceil(self.timeout_s if self.cpu_s is None else self.cpu_s))


@dataclass(frozen=True)
class Verdict:
    """The outcome of one sample. `status` is one of `STATUSES`."""

    status: str
    error_type: str | None  # exception class name for "failed" / "error" / "memory"
    stderr_tail: str
    stdout_tail: str
    duration_s: float  # wall clock of the whole sample, isolation set-up included
    exec_s: float | None = None  # time spent running program + tests inside the sandbox
    cpu_s: float = 0.0  # user + system CPU of the sample's processes that were reaped
    exit_code: int | None = None
    signal: int | None = None  # the signal that killed the sample, if any
    detail: str = ""  # one line: what happened, where

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# --------------------------------------------------------------------------------------------------
# Evaluator side: the public API. Workers are separate interpreters; this side never runs sample code.
# --------------------------------------------------------------------------------------------------

_WORKER_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
_HELLO_TIMEOUT_S = 120.0  # a worker that preloads pandas on a busy machine takes a while
_REPLY_GRACE_S = 30.0  # beyond a job's own timeout, before the evaluator gives up on a worker
_PIPELINE_BYTES = 32_768  # queued jobs this small in all fit in the worker's (64 KiB) stdin pipe
# jobs sent to a worker ahead of its replies: one queued behind the running job, so the worker doesn't
# idle between samples; forking ahead, two, so it can start one early (see _serve_ahead). No more: a
# job queued behind a long one waits even when another worker is free.
_PIPELINE_DEPTH, _PIPELINE_DEPTH_AHEAD = 2, 3
_CALIBRATION: dict[str, Any] | None = None


def run_tests(program: str, tests: str, limits: Limits = Limits()) -> Verdict:
    """Run `program`, then `tests`, in a fresh sandboxed process; return the verdict.

    Uses a shared one-worker pool started on first use; for many samples use `SandboxPool`.
    """
    return _default_pool().run(program, tests, limits)


class SandboxPool:
    """Pre-started worker interpreters; every sample still runs in its own fresh process tree.

    `preload` names modules the workers import once (e.g. "pandas") so samples don't pay for them;
    they count against each sample's address-space limit and are restored like the stdlib.
    `isolation` is "auto" (the strongest that works here) or one of "namespaces", "userns",
    "rlimits" to insist on a mode (it falls back to rlimits only if that mode fails).
    `fork_ahead` (namespaces mode): each worker forks and sets up its next sample while the current
    one runs. That uses a CPU the workers leave idle, so by default it is on only when there are
    fewer workers than CPUs (measured on 164 HumanEval checks, 2 CPUs: 1 worker +25-30 %
    executions/s; 2 workers -13 %, as the CPUs are busy and a spare costs extra work).
    """

    def __init__(
        self,
        workers: int | None = None,
        limits: Limits = Limits(),
        *,
        preload: Sequence[str] = (),
        isolation: str = "auto",
        fork_ahead: bool | None = None,
    ) -> None:
        import queue
        import weakref

        count = workers if workers is not None else max(1, os.cpu_count() or 1)
        if count < 1:
            from codetune.errors import CodetuneError

            raise CodetuneError(f"SandboxPool: workers must be at least 1 (got {count})")
        self.limits = limits
        if isolation not in ("auto", *_MODES):
            from codetune.errors import CodetuneError

            raise CodetuneError(f"SandboxPool: isolation must be auto or one of {_MODES} (got {isolation!r})")
        tmp_mb = max(64, 4 * limits.file_size_mb)
        if fork_ahead is None:
            fork_ahead = count < len(os.sched_getaffinity(0))
        self._workers = [_Worker(tuple(preload), isolation, tmp_mb, fork_ahead) for _ in range(count)]
        self._finalizer = weakref.finalize(self, _close_workers, list(self._workers))
        try:
            for worker in self._workers:
                worker.await_hello()
        except BaseException:
            self.close()
            raise
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        for worker in self._workers:
            self._idle.put(worker)

    @property
    def isolation(self) -> str:
        """The isolation level the workers detected (see `isolation_level`)."""
        return _describe_features(self._workers[0].features)

    @property
    def worker_pids(self) -> tuple[int, ...]:
        return tuple(worker.pid for worker in self._workers)

    @property
    def spare_pids(self) -> tuple[int, ...]:
        """The samples the workers forked ahead (namespaces mode), each waiting for its worker's next
        job; as of the last reply from each worker."""
        return tuple(worker.spare_pid for worker in self._workers if worker.spare_pid is not None)

    def run(self, program: str, tests: str, limits: Limits | None = None) -> Verdict:
        """Run one sample on the next free worker."""
        if not self._finalizer.alive:
            raise RuntimeError("SandboxPool is closed")
        worker = self._idle.get()
        try:
            return worker.run(program, tests, limits or self.limits)
        finally:
            self._idle.put(worker)

    def map(
        self, jobs: Sequence[tuple[str, str]], limits: Limits | Sequence[Limits] | None = None
    ) -> list[Verdict]:
        """Run `(program, tests)` jobs in parallel on all workers; verdicts come back in job order.

        `limits` is one `Limits` for all jobs, or one per job (e.g. from `calibrated_limits`).
        """
        from concurrent.futures import ThreadPoolExecutor

        if limits is None or isinstance(limits, Limits):
            per_job = [limits or self.limits] * len(jobs)
        else:
            per_job = list(limits)
        if len(per_job) != len(jobs):
            from codetune.errors import CodetuneError

            raise CodetuneError(f"SandboxPool.map: {len(jobs)} jobs but {len(per_job)} limits")
        if not self._finalizer.alive:
            raise RuntimeError("SandboxPool is closed")
        work = [(index, program, tests, per_job[index]) for index, (program, tests) in enumerate(jobs)]
        work.reverse()  # popped from the end: job order
        verdicts: list[Verdict | None] = [None] * len(jobs)
        with ThreadPoolExecutor(len(self._workers)) as executor:
            for future in [executor.submit(self._drive, work, verdicts) for _ in self._workers]:
                future.result()
        return [verdict for verdict in verdicts if verdict is not None]

    def _drive(self, work: list[tuple[int, str, str, Limits]], verdicts: list[Verdict | None]) -> None:
        """Feed one worker from `work`, keeping jobs queued in its pipe (see _PIPELINE_DEPTH) when they
        are small enough not to block there."""
        worker = self._idle.get()
        depth = _PIPELINE_DEPTH_AHEAD if worker.forks_ahead else _PIPELINE_DEPTH
        in_flight: list[tuple[int, bytes, Limits]] = []  # sent, reply pending
        ready: tuple[int, bytes, Limits] | None = None  # taken from `work`, not sent yet
        try:
            while True:
                while len(in_flight) < depth:
                    if ready is None:
                        try:
                            index, program, tests, limits = work.pop()  # atomic: no lock needed
                        except IndexError:
                            break
                        ready = (index, _encode_job(program, tests, limits), limits)
                    queued = sum(len(message) for _, message, _ in in_flight[1:]) + len(ready[1])
                    if in_flight and queued > _PIPELINE_BYTES:
                        break  # sent after a reply ahead of it: it could fill the pipe
                    worker.send(ready[1])
                    in_flight.append(ready)
                    ready = None
                if not in_flight:
                    return
                index, _, limits = in_flight.pop(0)
                verdicts[index] = worker.receive(limits)
                if not worker.alive:
                    worker.restart()  # and resend what the dead worker had queued
                    for _, message, _ in in_flight:
                        worker.send(message)
        finally:
            self._idle.put(worker)

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Worker:
    """The evaluator's handle on one worker interpreter: length-prefixed JSON over its stdin/stdout."""

    def __init__(
        self,
        preload: tuple[str, ...] = (),
        isolation: str = "auto",
        tmp_mb: int = 64,
        fork_ahead: bool = False,
    ) -> None:
        self.args = [_SOURCE_STAMP, ",".join(preload), isolation, str(tmp_mb), str(int(fork_ahead))]
        self.fork_ahead = fork_ahead
        self.mode = ""
        self.features: frozenset[str] = frozenset()
        self.spare_pid: int | None = None  # the sample it forked ahead, waiting for the next job
        self._start()

    def _start(self) -> None:
        import subprocess

        command = [sys.executable, "-I", "-c", _WORKER_BOOTSTRAP, os.path.abspath(__file__), *self.args]
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_WORKER_ENV,
            start_new_session=True,  # Ctrl-C in the evaluator's terminal is the evaluator's to handle
        )
        self.pid = self.proc.pid

    def await_hello(self) -> None:
        hello = self._receive(time.monotonic() + _HELLO_TIMEOUT_S)
        if hello is None:
            self.kill()
            raise RuntimeError(f"sandbox worker {self.pid} did not start")
        if "error" in hello:
            from codetune.errors import CodetuneError

            self.kill()
            raise CodetuneError(f"sandbox worker {self.pid}: {hello['error']}")
        self.mode, self.features = hello["mode"], frozenset(hello["features"])
        self.spare_pid = hello["spare_pid"]
        if hello["preload_errors"]:
            from codetune.errors import CodetuneError

            self.close()
            raise CodetuneError(f"SandboxPool: could not preload {'; '.join(hello['preload_errors'])}")

    def run(self, program: str, tests: str, limits: Limits) -> Verdict:
        self.send(_encode_job(program, tests, limits))
        verdict = self.receive(limits)
        if not self.alive:
            self.restart()
        return verdict

    def send(self, message: bytes) -> None:
        if self.alive:
            try:
                _write_all(self._stdin_fd, message)
            except OSError:
                self.kill()

    def receive(self, limits: Limits) -> Verdict:
        """The reply to the oldest job sent; sandbox-error (and a dead worker) if it doesn't come."""
        started = time.monotonic()
        reply = self._receive(started + limits.timeout_s + _REPLY_GRACE_S) if self.alive else None
        if reply is None:  # the worker died or hung: the sample gets sandbox-error
            self.kill()
            return _sandbox_error("the sandbox worker died or stopped answering", time.monotonic() - started)
        self.spare_pid = reply.pop("spare_pid", None)
        return Verdict(**reply)

    @property
    def forks_ahead(self) -> bool:
        return self.fork_ahead and self.mode == "namespaces"  # the only mode with spares

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def restart(self) -> None:
        self.kill()
        self._start()
        self.await_hello()

    @property
    def _stdin_fd(self) -> int:
        assert self.proc.stdin is not None
        return self.proc.stdin.fileno()

    def _receive(self, deadline: float) -> dict[str, Any] | None:
        assert self.proc.stdout is not None
        try:
            return _receive_message(self.proc.stdout.fileno(), deadline)
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            try:
                self.proc.stdin.close()  # EOF: the worker finishes its sample (if any) and exits
                self.proc.wait(timeout=5)
            except Exception:
                self.kill()
        self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            # The worker's own session; its samples die with it (parent-death signals).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _close_workers(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.close()


_DEFAULT_POOL: list[SandboxPool] = []
_DEFAULT_POOL_LOCK: Any = None


def _default_pool() -> SandboxPool:
    import threading

    global _DEFAULT_POOL_LOCK
    _DEFAULT_POOL_LOCK = _DEFAULT_POOL_LOCK or threading.Lock()  # first use is on one thread in practice
    with _DEFAULT_POOL_LOCK:
        if not _DEFAULT_POOL:
            import atexit

            _DEFAULT_POOL.append(SandboxPool(workers=1))
            atexit.register(_DEFAULT_POOL[0].close)
        return _DEFAULT_POOL[0]


def _sandbox_error(detail: str, duration_s: float = 0.0) -> Verdict:
    return Verdict("sandbox-error", None, "", "", duration_s, detail=detail)


@functools.cache
def _probed_features() -> frozenset[str]:
    worker = _Worker(())
    try:
        worker.await_hello()
        return worker.features
    finally:
        worker.close()


def isolation_level() -> str:
    """Which isolation this machine allows, e.g. "unprivileged uid per worker + pid/net/mount namespaces
    + ... + rlimits".

    Probed once per process by starting a worker, which tries the strongest set first.
    """
    return _describe_features(_probed_features())


def _describe_features(features: frozenset[str]) -> str:
    parts = []
    if "uid-drop" in features:
        parts.append("unprivileged uid per worker")
    namespaces = [name for name in ("user", "pid", "net", "mount") if f"{name}ns" in features]
    if namespaces:
        parts.append("/".join(namespaces) + " namespaces")
    if "mountns" in features:
        parts.append("read-only root + private /tmp")
    if "hidepid" in features:
        parts.append("/proc shows only the sample")
    if "noproc" in features:
        parts.append("no /proc")
    if "userns" in features or "uid-drop" in features:
        parts.append("no capabilities")
    parts.append("rlimits")
    return " + ".join(parts)


def calibrate_timeout(
    reference_seconds: Sequence[float], factor: float = 10.0, floor_s: float = 2.0
) -> float:
    """A timeout of `factor` times the slowest reference run, and never less than `floor_s`.

    The references are run times of a known-good (canonical) solution measured on this machine, so
    the timeout scales with the machine instead of being a constant that flips verdicts under load.
    """
    slowest = max(reference_seconds, default=0.0)
    return round(max(floor_s, factor * slowest), 3)


def measure_reference_seconds(
    pool: SandboxPool, jobs: Sequence[tuple[str, str]], repeats: int = 3, limits: Limits | None = None
) -> list[list[float]]:
    """Run each known-good `(program, tests)` job `repeats` times; return its in-sandbox run times.

    A reference that doesn't pass is run once more, by itself, with 10 times the limits: a slow one on
    a busy machine (DataFrameBench's slowest took 44 s alone and over 60 s beside another job), or a
    flaky test (DataFrameBench test B0064 draws its data from an unseeded Faker).
    Raises `CodetuneError` naming the first job whose reference doesn't pass twice.
    """
    from codetune.errors import CodetuneError

    times: list[list[float]] = [[] for _ in jobs]
    base = limits or pool.limits
    for _ in range(repeats):
        verdicts = pool.map(jobs, base)
        for index, verdict in enumerate(verdicts):
            if not verdict.passed:
                generous = replace(base, timeout_s=base.timeout_s * 10)
                verdict = pool.run(*jobs[index], generous)
            if not verdict.passed:
                raise CodetuneError(
                    f"calibration: reference job {index} did not pass ({verdict.status}: {verdict.detail}); "
                    "fix the canonical solution or its tests"
                )
            times[index].append(verdict.exec_s if verdict.exec_s is not None else verdict.duration_s)
    return times


def calibrated_limits(
    pool: SandboxPool,
    jobs: Sequence[tuple[str, str]],
    base: Limits | None = None,
    factor: float = 10.0,
    floor_s: float = 2.0,
    repeats: int = 3,
) -> list[Limits]:
    """Per-job limits whose timeouts come from `calibrate_timeout` on the jobs' reference runs.

    The calibration is recorded for `sandbox_manifest()`.
    """
    global _CALIBRATION
    base = base or pool.limits
    references = measure_reference_seconds(pool, jobs, repeats, base)
    timeouts = [calibrate_timeout(seconds, factor, floor_s) for seconds in references]
    slowest = [max(seconds) for seconds in references]
    _CALIBRATION = {
        "factor": factor,
        "floor_s": floor_s,
        "repeats": repeats,
        "jobs": len(jobs),
        "reference_max_s": max(slowest, default=0.0),
        "reference_median_s": sorted(slowest)[len(slowest) // 2] if slowest else 0.0,
        "timeouts_above_floor": sum(timeout > floor_s for timeout in timeouts),
        "timeout_max_s": max(timeouts, default=floor_s),
    }
    return [replace(base, timeout_s=timeout) for timeout in timeouts]


def sandbox_manifest() -> dict[str, Any]:
    """Isolation level, default limits and the last calibration, for evaluation manifests."""
    features = _probed_features()
    return {
        "isolation": _describe_features(features),
        "isolation_features": sorted(features),
        "limits": asdict(Limits()),
        "calibration": dict(_CALIBRATION) if _CALIBRATION is not None else None,
        "python": sys.version.split()[0],
        "kernel": os.uname().release,
    }


# --------------------------------------------------------------------------------------------------
# Messages between evaluator and worker: a 4-byte big-endian length, then UTF-8 JSON.
# --------------------------------------------------------------------------------------------------


def _encode_message(message: dict[str, Any]) -> bytes:
    data = json.dumps(message).encode()
    return struct.pack(">I", len(data)) + data


def _encode_job(program: str, tests: str, limits: Limits) -> bytes:
    return _encode_message({"program": program, "tests": tests, "limits": asdict(limits)})


def _send_message(fd: int, message: dict[str, Any]) -> None:
    _write_all(fd, _encode_message(message))


def _receive_message(fd: int, deadline: float | None) -> dict[str, Any] | None:
    """The next message, or None at EOF or when `deadline` (monotonic) passes."""
    header = _read_exactly(fd, 4, deadline)
    if header is None:
        return None
    body = _read_exactly(fd, struct.unpack(">I", header)[0], deadline)
    return None if body is None else json.loads(body)


def _read_exactly(fd: int, size: int, deadline: float | None) -> bytes | None:
    chunks: list[bytes] = []
    while size:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# --------------------------------------------------------------------------------------------------
# Worker side. Runs in `python -I -c _WORKER_BOOTSTRAP` and imports nothing but the stdlib.
# --------------------------------------------------------------------------------------------------

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x1000, 0x4000, 0x40000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID = 0x1, 0x2
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (syscalls added after 5.0)
LINUX_CAPABILITY_VERSION_3 = 0x20080522

_SANDBOX_UID_BASE = 1_000_000_000  # + worker pid: a uid per live worker, so process counts are per worker
# in the sample: its completion record, set-up failures, and (a spare) its job
_RESULT_FD, _STATUS_FD, _JOB_FD = 3, 4, 5
_OUTPUTS = ("stdout", "stderr", "result", "status")  # the sample's pipes to its worker, on fds 1-4
_SLOT_UID_STRIDE = 1 << 22  # above any pid (pid_max <= 2**22): a worker's second slot gets uid + this
_RECORD_LIMIT = 65_536
_PRIVATE_WORKDIR = "/tmp/sample"
_DEVNULL_FD = -1  # the worker's /dev/null, set at start
# The worker loads this file as a module, from its cached bytecode when there is one. Run as a script, it
# was compiled afresh in every worker, which left 3.4 MB more memory there (RSS 19.2 -> 15.8 MB). Every
# fork copies the page tables of that memory; the change in executions/s was too small to measure.
_WORKER_BOOTSTRAP = """
import sys, importlib.util
spec = importlib.util.spec_from_file_location("_codetune_sandbox_worker", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
module._worker_entry(sys.argv[2:])
"""
# typing too: HumanEval-style prompts start with `from typing import List`
_WORKER_PRELOAD = (
    "unittest",
    "math",
    "re",
    "collections",
    "itertools",
    "functools",
    "string",
    "heapq",
    "typing",
)
_MODES = ("namespaces", "userns", "rlimits")  # strongest first; see _isolate_worker
_MEMORY_HINTS = ("MemoryError", "Cannot allocate memory", "out of memory", "bad_alloc")
_PROBE_TESTS = """
import os
for entry in {dirs!r}:  # what the worker can list, the sample must too (imports depend on it)
    os.listdir(entry)
with open("probe.txt", "w") as handle:
    handle.write("ok")
os.remove("probe.txt")  # an empty work dir is removed without loading shutil into the worker
"""


class _SetupError(Exception):
    """Isolation could not be set up; reported as sandbox-error and used by the probe."""


class _MountAttr(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("attr_set", "attr_clr", "propagation", "userns_fd")]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in ("effective", "permitted", "inheritable")]


@functools.cache
def _libc() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.unshare.argtypes = [ctypes.c_int]
    libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return libc


def _check(result: int, what: str) -> None:
    if result != 0:
        raise _SetupError(f"{what}: {os.strerror(ctypes.get_errno())}")


def _prctl(option: int, value: int) -> None:
    _check(_libc().prctl(option, value, 0, 0, 0), f"prctl({option})")


def _hard_limits() -> dict[int, int]:
    which = (resource.RLIMIT_CPU, resource.RLIMIT_AS, resource.RLIMIT_FSIZE, resource.RLIMIT_NPROC)
    limits = {w: resource.getrlimit(w)[1] for w in which}
    return {w: hard for w, hard in limits.items() if hard != resource.RLIM_INFINITY}


@dataclass
class _Isolation:
    """What a worker set up once, and what each of its samples does on top."""

    mode: str  # one of _MODES
    features: frozenset[str]
    proc_fd: int  # the host /proc, to find this worker's children whatever is mounted later
    uid: int | None = None  # samples run as this uid (root only)
    own_pidns_fd: int | None = None  # set: each sample gets a new PID namespace
    host_netns_fd: int | None = None  # for jobs with network=True
    private_tmp: bool = False  # /tmp is this worker's own tmpfs
    hard_limits: dict[int, int] = field(default_factory=_hard_limits)  # the worker's, to cap the samples'


@dataclass
class _Job:
    program: str
    tests: str
    limits: Limits | None  # None: a spare, which reads program, tests and limits from _JOB_FD
    token: str
    workdir: str
    worker_pid: int
    uid: int | None  # the sample's uid (see _Isolation.uid)


class _Snapshot:
    """Interpreter state taken in the worker before any sample, restored in the sample between program and tests.

    `namespaces` holds (owner, real dict, saved copy): the owner is the dict itself for modules and the
    class for classes (restored with setattr). Whether a dict changed is read from its version tag.
    """

    def __init__(self) -> None:
        self.modules = {name: m for name, m in sys.modules.items() if isinstance(m, types.ModuleType)}
        first = [builtins, sys.modules[__name__]]  # restored first: the restore itself looks names up there
        owners: dict[int, Any] = {id(m.__dict__): m.__dict__ for m in [*first, *self.modules.values()]}
        for module in self.modules.values():
            for value in list(module.__dict__.values()):
                if isinstance(value, type) and not value.__flags__ & (1 << 8):  # not Py_TPFLAGS_IMMUTABLETYPE
                    owners.setdefault(id(value), value)
        self.namespaces: list[tuple[Any, dict[Any, Any], dict[Any, Any]]] = []
        for owner in owners.values():
            real = owner if isinstance(owner, dict) else gc.get_referents(owner.__dict__)[0]
            self.namespaces.append((owner, real, dict(real)))
        # Version tags are read from flat arrays, so checking them in the forked sample reads a few pages
        # instead of touching (and copying) hundreds of objects. The last slot is sys.modules.
        self.tagged = _dict_versions_usable()
        dicts = [real for _, real, _ in self.namespaces] + [sys.modules]
        self.slots = [(id(d) + _DICT_VERSION_OFFSET) >> 3 for d in dicts]
        self._gather = operator.itemgetter(*self.slots)  # reads them all in one C call
        self.versions = self._read_versions()
        self.builtin_names = frozenset(builtins.__dict__)
        self.lists: list[tuple[list[Any], list[Any]]] = [
            (lst, list(lst)) for lst in (sys.path, sys.meta_path, sys.path_hooks, gc.callbacks)
        ]
        self.recursion_limit = sys.getrecursionlimit()

    def _read_versions(self) -> tuple[int, ...]:
        return self._gather(_machine_words()) if self.tagged else (0,) * len(self.slots)

    def changed(self) -> list[int]:
        """Indexes of the dicts whose version tag moved (all of them without version tags); the index
        `len(namespaces)` stands for sys.modules."""
        if not self.tagged:
            return list(range(len(self.slots)))
        current, saved = self._read_versions(), self.versions
        return [] if current == saved else [i for i in range(len(saved)) if current[i] != saved[i]]

    def accept_modules(self) -> None:
        """Accept the current sys.modules (the sample just registered its two modules).

        Nothing else changes between the snapshot and the program: samples are forked without Python's
        after-fork hooks (see _fork_sample).
        """
        if self.tagged:
            self.versions = (*self.versions[:-1], _machine_words()[self.slots[-1]])


_DICT_VERSION_OFFSET = 3 * ctypes.sizeof(ctypes.c_ssize_t)  # PyObject_HEAD, then ma_used, then ma_version_tag
_MISSING = object()


@functools.cache
def _machine_words() -> Any:
    """All memory as 64-bit words: reads a dict's version tag by address without touching the dict."""
    return (ctypes.c_uint64 * (1 << 59)).from_address(0)


def _dict_versions_usable() -> bool:
    """Whether this CPython keeps PEP 509 dict version tags where `_DICT_VERSION_OFFSET` says.

    Why: comparing ~10k entries by identity in the forked sample touches every object's refcount and
    so copies thousands of pages (20-40 ms a sample); a version tag says "unchanged" without touching
    the values. The self-test checks that the tag moves on every mutation, and only then.
    """
    if sys.implementation.name != "cpython" or sys.version_info >= (3, 14):
        return False
    words = _machine_words()
    probe: dict[str, int] = {}
    other: dict[str, int] = {"x": 0}
    slot, other_slot = ((id(d) + _DICT_VERSION_OFFSET) >> 3 for d in (probe, other))
    steady = words[other_slot]
    seen = [words[slot]]
    for mutate in (lambda: probe.update(a=1), lambda: probe.update(a=2), lambda: probe.pop("a")):
        mutate()
        seen.append(words[slot])
    return words[other_slot] == steady and len(set(seen)) == len(seen)


def _restore_interpreter(
    snap: _Snapshot,
    _list: Any = list,
    _setattr: Any = setattr,
    _delattr: Any = delattr,
    _missing: Any = _MISSING,
    _changed: Any = _Snapshot.changed,
) -> None:
    """Undo the program's changes to builtins, preloaded modules and their classes.

    Builtins and this module's globals are restored first, with names bound at definition time, so
    a program that rebinds `list` or this module's helpers can't stop it.
    """
    changed = _changed(snap)
    for index in changed:
        if index == len(snap.namespaces):
            continue  # sys.modules, below
        owner, real, saved = snap.namespaces[index]
        for key in _list(real):
            if key not in saved:
                if owner is real:
                    del real[key]
                else:
                    _delattr(owner, key)
        for key, value in saved.items():
            if real.get(key, _missing) is not value:
                if owner is real:
                    real[key] = value
                else:
                    _setattr(owner, key, value)
    if len(snap.namespaces) in changed:  # the program imported something
        _restore_modules(snap.modules)
        sys.path_importer_cache.clear()
    for current_list, saved_list in snap.lists:
        current_list[:] = saved_list
    sys.settrace(None)
    sys.setprofile(None)
    sys.setrecursionlimit(snap.recursion_limit)


def _restore_modules(saved: dict[str, types.ModuleType]) -> None:
    """Put preloaded modules back in sys.modules, and keep submodules the program imported reachable
    from their (restored) parent packages, as `import a.b` won't set `a.b` again."""
    modules = sys.modules
    for name, module in saved.items():
        if modules.get(name) is not module:
            modules[name] = module
    for name in list(modules):
        parent, _, child = name.rpartition(".")
        if name not in saved and parent in saved and child not in saved[parent].__dict__:
            saved[parent].__dict__[child] = modules[name]


def _worker_main(preload: Sequence[str], requested: str, tmp_mb: int, fork_ahead: bool = False) -> None:
    """Serve jobs from stdin until EOF. Never runs sample code itself: every job is forked."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of samples come back to us, to be killed and reaped
    sys.dont_write_bytecode = True
    proc_fd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
    global _DEVNULL_FD
    _DEVNULL_FD = os.open(os.devnull, os.O_RDWR)
    while _DEVNULL_FD < 6:  # fds 3-5 stay taken, so the pipes for a sample never land on 3, 4 or 5
        _DEVNULL_FD = os.open(os.devnull, os.O_RDWR)
    failed = []
    for name in (*_WORKER_PRELOAD, *preload):
        try:
            __import__(name)
        except Exception as exc:
            failed.append(f"{name} ({type(exc).__name__}: {exc})")
    sys.argv = [""]
    snapshot = _Snapshot()
    gc.freeze()  # collections in the samples then skip the worker's objects instead of copying their pages
    os.environ.clear()  # the evaluator passed only _WORKER_ENV; the samples get exactly that
    os.environ.update(_WORKER_ENV, HOME=_PRIVATE_WORKDIR, TMPDIR=_PRIVATE_WORKDIR)
    isolation = _isolate_worker(requested, tmp_mb, proc_fd, snapshot)
    for _ in range(64):  # specialise the restore's bytecode here once, instead of in every forked sample
        _restore_interpreter(snapshot)
    ahead = _Ahead(isolation, snapshot) if fork_ahead and isolation.own_pidns_fd is not None else None
    if ahead is not None:
        ahead.try_refill()
    hello = {"mode": isolation.mode, "features": sorted(isolation.features), "preload_errors": failed}
    _send_message(1, {**hello, "spare_pid": ahead.spare_pid if ahead is not None else None})
    if ahead is None:
        while (message := _receive_message(0, None)) is not None:
            _send_message(
                1, {**_answer(functools.partial(_execute, message, isolation, snapshot)), "spare_pid": None}
            )
    else:
        _serve_ahead(isolation, snapshot, ahead)
        ahead.close()


def _answer(run: Any) -> dict[str, Any]:
    """`run()`'s verdict dict, or sandbox-error: the worker must answer, whatever happened."""
    started = time.monotonic()
    try:
        return dict(run())
    except Exception as exc:
        return _worker_error(exc, started)


def _worker_error(exc: Exception, started: float) -> dict[str, Any]:
    return asdict(_sandbox_error(f"worker: {type(exc).__name__}: {exc}", time.monotonic() - started))


def _serve_ahead(isolation: _Isolation, snapshot: _Snapshot, ahead: _Ahead) -> None:
    """Serve jobs with a spare forked ahead, and start the next job early: once a sample has reported
    and closed its pipes, the job queued behind it goes to the spare while the kernel tears the
    finished sample down (its exit and reap took ~2 ms here) and the worker reaps it, removes its
    work dir and answers. Each verdict is still sent only after its sample was reaped; the two samples are on
    different slots, as a spare and a running sample always are (see `_Ahead`)."""
    inbox = _Inbox()
    current: _Started | None = None
    while True:
        if current is None:
            message = inbox.next()
            if message is None:
                return
            started = time.monotonic()
            try:
                current = _begin(message, isolation, snapshot, ahead)
            except Exception as exc:
                _send_message(1, {**_worker_error(exc, started), "spare_pid": ahead.spare_pid})
                continue
            ahead.try_refill()
        following: list[_Started] = []
        on_done = functools.partial(_start_early, inbox, ahead, following)
        reply = _answer(functools.partial(_finish, current, isolation, on_done))
        current = following[0] if following else None
        if current is not None:
            ahead.try_refill()  # on the slot the finished sample left
        _send_message(1, {**reply, "spare_pid": ahead.spare_pid})


class _Inbox:
    """The evaluator's jobs on stdin; one can be read ahead and kept."""

    def __init__(self) -> None:
        self.kept: dict[str, Any] | None = None
        self.closed = False  # EOF seen

    def next(self) -> dict[str, Any] | None:
        """The next job, waiting for it; None at EOF."""
        message, self.kept = self.kept, None
        if message is None and not self.closed:
            message = _receive_message(0, None)
            self.closed = message is None
        return message

    def waiting(self) -> dict[str, Any] | None:
        """The next job if the evaluator already sent it, else None (without waiting)."""
        if self.kept is not None or self.closed or not select.select([0], [], [], 0)[0]:
            return None
        return self.next()


def _start_early(inbox: _Inbox, ahead: _Ahead, following: list[_Started]) -> None:
    """Hand the job queued on stdin (if any) to the spare (if any); a job the spare can't take is kept
    and started the usual way once the slot of the sample before it is free."""
    if ahead.spare is None or (message := inbox.waiting()) is None:
        return
    try:
        taken = ahead.take(message, Limits(**message["limits"]))
    except Exception:  # a bad job: the usual way reports it
        taken = None
    if taken is None:
        inbox.kept = message
    else:
        following.append(_Started(*taken, early=True))


def _isolate_worker(requested: str, tmp_mb: int, proc_fd: int, snapshot: _Snapshot) -> _Isolation:
    """Set up the strongest mode that works here (or the requested one) and prove it with a sample.

    namespaces (root): the worker enters its own mount and network namespaces once; each sample gets a
    PID namespace and an unprivileged uid of its own. userns (not root): the worker enters a user, mount
    and network namespace; samples drop all capabilities. rlimits: nothing but limits (and the uid drop,
    as root, when the Python installation is readable without privileges).
    """
    root = os.geteuid() == 0
    for mode in _MODES:
        if requested not in ("auto", mode) or (mode == "namespaces" and not root):
            continue
        if mode == "userns" and root and requested == "auto":
            continue  # the namespaces mode is stronger, and root would be exempt from RLIMIT_NPROC here
        for uid in ([_SANDBOX_UID_BASE + os.getpid()] if root else []) + [None]:
            if uid is None and mode == "namespaces":
                continue
            try:
                isolation = _SETUPS[mode](tmp_mb, proc_fd, uid)
            except (_SetupError, OSError):
                continue
            if _probe(isolation, snapshot):
                return isolation
    return _Isolation("rlimits", frozenset(), proc_fd)


def _probe(isolation: _Isolation, snapshot: _Snapshot) -> bool:
    dirs = [entry for entry in sys.path if os.path.isdir(entry)]
    tests = _PROBE_TESTS.format(dirs=dirs)
    job = {"program": "", "tests": tests, "limits": asdict(Limits(timeout_s=30.0))}
    return _execute(job, isolation, snapshot)["status"] == "passed"


def _setup_namespaces(tmp_mb: int, proc_fd: int, uid: int | None) -> _Isolation:
    """Root: own mount + network namespace for the worker; Python's files exposed to the sandbox uid."""
    assert uid is not None
    exposures = _exposures()
    own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY)
    host_netns = os.open("/proc/self/ns/net", os.O_RDONLY)
    _check(_libc().unshare(CLONE_NEWNS | CLONE_NEWNET), "unshare")
    _mount_view(exposures, proc="hidepid", tmp_mb=tmp_mb, tmp_mode=0o711)
    features = frozenset({"uid-drop", "pidns", "netns", "mountns", "hidepid"})
    return _Isolation("namespaces", features, proc_fd, uid, own_pidns, host_netns, private_tmp=True)


def _setup_userns(tmp_mb: int, proc_fd: int, uid: int | None) -> _Isolation:
    """Unprivileged: user + mount + network namespace for the worker, mapped to its own uid."""
    real_uid, real_gid = os.getuid(), os.getgid()
    _check(_libc().unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET), "unshare")
    try:
        for path, text in (
            ("setgroups", "deny"),
            ("uid_map", f"{real_uid} {real_uid} 1"),
            ("gid_map", f"{real_gid} {real_gid} 1"),
        ):
            with open(f"/proc/self/{path}", "w") as handle:
                handle.write(text)
    except OSError as exc:
        raise _SetupError(f"user namespace id maps: {exc}") from exc
    _mount_view({}, proc="hide", tmp_mb=tmp_mb, tmp_mode=0o700)
    return _Isolation(
        "userns", frozenset({"userns", "netns", "mountns", "noproc"}), proc_fd, private_tmp=True
    )


def _setup_rlimits(tmp_mb: int, proc_fd: int, uid: int | None) -> _Isolation:
    return _Isolation("rlimits", frozenset({"uid-drop"} if uid is not None else ()), proc_fd, uid)


_SETUPS = {"namespaces": _setup_namespaces, "userns": _setup_userns, "rlimits": _setup_rlimits}


def _python_paths() -> set[str]:
    """The directories the interpreter needs: its installation, the venv and every sys.path entry."""
    return {
        os.path.realpath(path)
        for path in (sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix, *sys.path)
        if path and os.path.isdir(path)
    }


def _outermost(paths: set[str]) -> list[str]:
    return sorted(p for p in paths if not any(p.startswith(q + "/") for q in paths))


def _exposures() -> dict[str, list[str]]:
    """Directories the sandbox uid can't search (e.g. /root, mode 700) on the way to Python's own
    files, mapped to the paths under them that must stay reachable (e.g. a pyenv install)."""
    needed = _python_paths()
    hidden: dict[str, set[str]] = {}
    for path in needed:
        parts = path.split("/")
        for depth in range(2, len(parts)):  # strict ancestors: an exposed directory must be searchable
            ancestor = "/".join(parts[:depth])
            if not os.stat(ancestor).st_mode & stat.S_IXOTH:
                hidden.setdefault(ancestor, set()).add(path)
                break
    return {directory: _outermost(paths) for directory, paths in hidden.items()}


def _mount_view(exposures: dict[str, list[str]], proc: str, tmp_mb: int, tmp_mode: int) -> None:
    """In a fresh mount namespace: hide unreachable directories but keep `exposures` reachable,
    replace /proc, make everything read-only, and put a tmpfs on /tmp for the samples' work dirs."""
    libc = _libc()
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make mounts private")
    sources = {
        path: os.open(path, os.O_PATH | os.O_DIRECTORY) for paths in exposures.values() for path in paths
    }
    for directory, paths in exposures.items():
        _check(
            libc.mount(b"tmpfs", directory.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1m,mode=0755"),
            "hide",
        )
        for path in paths:
            os.makedirs(path, exist_ok=True)
            source = f"/proc/self/fd/{sources[path]}".encode()
            _check(libc.mount(source, path.encode(), None, MS_BIND | MS_REC, None), f"expose {path}")
    for fd in sources.values():
        os.close(fd)
    # The samples' private /tmp. A venv or checkout under /tmp (a CI clone, say) would vanish under it:
    # keep a handle on each such Python path and bind it back, read-only, before /proc is replaced.
    under_tmp = {
        path: os.open(path, os.O_PATH | os.O_DIRECTORY)
        for path in _outermost({p for p in _python_paths() if p.startswith("/tmp/")})
    }
    options = f"size={tmp_mb}m,nr_inodes=65536,mode={tmp_mode:o}".encode()
    _check(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV, options), "tmpfs on /tmp")
    for path, fd in under_tmp.items():
        _make_dirs_searchable(path)
        source = f"/proc/self/fd/{fd}".encode()
        _check(libc.mount(source, path.encode(), None, MS_BIND | MS_REC, None), f"expose {path}")
        os.close(fd)
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    if proc == "hidepid":  # a sample sees only its own processes (it has a uid of its own)
        _check(libc.mount(b"proc", b"/proc", b"proc", flags, b"hidepid=invisible"), "mount /proc")
    else:  # same uid as the evaluator: no /proc at all, or it could read the evaluator's environment
        _check(libc.mount(b"tmpfs", b"/proc", b"tmpfs", flags, b"size=4k,mode=0555"), "hide /proc")
    _mount_setattr(libc, "/", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, AT_RECURSIVE)
    _mount_setattr(
        libc, "/tmp", 0, MOUNT_ATTR_RDONLY, 0
    )  # the tmpfs itself stays writable, not what's bound in it


def _mount_setattr(libc: Any, path: str, set_attrs: int, clear_attrs: int, flags: int) -> None:
    """mount_setattr(2): change mount attributes (works in a user namespace, where a remount that
    touches locked flags would be refused)."""
    attr = _MountAttr(set_attrs, clear_attrs, 0, 0)
    result = libc.syscall(
        ctypes.c_long(SYS_MOUNT_SETATTR),
        ctypes.c_long(AT_FDCWD),
        ctypes.c_char_p(path.encode()),
        ctypes.c_long(flags),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    _check(result, f"mount attributes of {path}")


def _make_dirs_searchable(path: str) -> None:
    """Create `path` and its parents inside the private /tmp, searchable but not writable by samples."""
    parts = path.split("/")
    for depth in range(3, len(parts) + 1):  # /tmp itself exists
        directory = "/".join(parts[:depth])
        if not os.path.isdir(directory):
            os.mkdir(directory, 0o755)
        os.chmod(directory, 0o755)


@dataclass
class _Started:
    """A sample that has its job: `started` when it got it; `early` when it got it while the sample
    before it was being torn down (see `_serve_ahead`)."""

    job: _Job
    pid: int
    reads: dict[str, int]
    limits: Limits
    started: float = field(default_factory=time.monotonic)
    early: bool = False


def _execute(message: dict[str, Any], isolation: _Isolation, snapshot: _Snapshot) -> dict[str, Any]:
    """Fork one sample for the job, supervise it, clean up; the verdict as a dict (no fork ahead)."""
    return _finish(_begin(message, isolation, snapshot, None), isolation)


def _begin(
    message: dict[str, Any], isolation: _Isolation, snapshot: _Snapshot, ahead: _Ahead | None
) -> _Started:
    """Start the job: hand it to the spare, or (none, or the job needs the host network) fork it."""
    limits = Limits(**message["limits"])
    started = time.monotonic()
    spare = ahead.take(message, limits) if ahead is not None else None
    if spare is not None:
        return _Started(*spare, started=started)
    uid, workdir = ahead.next_slot() if ahead is not None else (isolation.uid, None)
    job, pid, reads, _ = _spawn(
        isolation, snapshot, uid, workdir, message["program"], message["tests"], limits
    )
    return _Started(job, pid, reads, limits, started)


def _finish(sample: _Started, isolation: _Isolation, on_done: Any = None) -> dict[str, Any]:
    """Supervise the sample to its end (or its deadline), reap it, remove its work dir; the verdict.

    `on_done` is called once, if the sample closes all its pipes while it is still alive (as it does
    right after reporting, before exiting)."""
    job, pid, reads, limits = sample.job, sample.pid, sample.reads, sample.limits
    supervised = False
    try:
        tails = {
            name: _Tail(limits.output_bytes if name in ("stdout", "stderr") else _RECORD_LIMIT)
            for name in reads
        }
        readers = {reads[name]: tails[name] for name in reads}
        # an early sample's clock runs from when it is watched: until then its output was not read
        deadline = (time.monotonic() if sample.early else sample.started) + limits.timeout_s
        sweep = isolation.own_pidns_fd is None
        timed_out, status, cpu_s = _supervise(pid, readers, deadline, isolation.proc_fd, sweep, on_done)
        duration = time.monotonic() - sample.started
        supervised = True
    finally:
        if not supervised:
            _kill_group(pid)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            if isolation.own_pidns_fd is None:
                _kill_descendants(isolation.proc_fd)
        for fd in reads.values():
            os.close(fd)
        _remove_workdir(isolation, job.workdir)
    return _decide(job, limits, tails, timed_out, status, cpu_s, duration)


def _spawn(
    isolation: _Isolation,
    snapshot: _Snapshot,
    uid: int | None,
    workdir: str | None,
    program: str,
    tests: str,
    limits: Limits | None,
) -> tuple[_Job, int, dict[str, int], int]:
    """Make the work dir (see `_make_workdir`) and start a sample there with a fresh token (a spare
    when `limits` is None); return its job and what `_start_sample` returns. No work dir is left
    behind when the fork fails."""
    workdir = _make_workdir(isolation, uid, workdir)
    job = _Job(program, tests, limits, os.urandom(16).hex(), workdir, os.getpid(), uid)
    try:
        return (job, *_start_sample(job, isolation, snapshot))
    except BaseException:
        _remove_workdir(isolation, workdir)
        raise


def _start_sample(job: _Job, isolation: _Isolation, snapshot: _Snapshot) -> tuple[int, dict[str, int], int]:
    """Fork the sample for `job`; return its pid, the read ends of its output pipes and, for a spare
    (job.limits None), the write end of its job pipe (else -1). Only the sample holds the other ends,
    so the pipes reach EOF when it is gone."""
    pipes = {name: os.pipe() for name in _OUTPUTS}
    job_read, job_write = os.pipe() if job.limits is None else (-1, -1)
    sample_ends = [w for _, w in pipes.values()] + ([job_read] if job_read >= 0 else [])
    try:
        pid = _fork_sample(isolation)
        if pid == 0:
            _sample_process(job, isolation, sample_ends, snapshot)
    except BaseException:
        for fd in [*sample_ends, *(r for r, _ in pipes.values()), job_write]:
            if fd >= 0:
                os.close(fd)
        raise
    for fd in sample_ends:
        os.close(fd)
    return pid, {name: r for name, (r, _) in pipes.items()}, job_write


class _Ahead:
    """Namespaces mode: the next sample, forked and set up (session, fds, uid, work dir, no privileges)
    while the current one runs, then waiting for its job on a pipe. Fork and set-up are most of a
    sample's overhead; this way they overlap the previous sample instead of delaying the next.

    The spare and the running sample are on different slots (uid and work dir), and each is PID 1 of
    its own PID namespace: neither can see, signal or trace the other, nor read its files, and
    RLIMIT_NPROC counts them apart. A job that needs the host network gets a fresh fork instead.
    """

    def __init__(self, isolation: _Isolation, snapshot: _Snapshot) -> None:
        assert isolation.uid is not None and isolation.own_pidns_fd is not None and isolation.private_tmp
        self.isolation, self.snapshot = isolation, snapshot
        self.slot = 0
        self.spare: tuple[_Job, int, dict[str, int], int] | None = None  # job, pid, read ends, job fd

    @property
    def spare_pid(self) -> int | None:
        return self.spare[1] if self.spare is not None else None

    def next_slot(self) -> tuple[int, str]:
        """The uid and work dir of the slot no live sample is on."""
        self.slot ^= 1
        assert self.isolation.uid is not None
        return self.isolation.uid + self.slot * _SLOT_UID_STRIDE, f"{_PRIVATE_WORKDIR}-{self.slot}"

    def refill(self) -> None:
        if self.spare is None:
            self.spare = _spawn(self.isolation, self.snapshot, *self.next_slot(), "", "", None)

    def try_refill(self) -> None:
        with contextlib.suppress(OSError, _SetupError):  # no spare then: the next job forks its own
            self.refill()

    def take(
        self, message: dict[str, Any], limits: Limits
    ) -> tuple[_Job, int, dict[str, int], Limits] | None:
        """Hand the job to the spare; None (and no spare) if there is none, the job needs the host
        network, or the spare is gone."""
        if self.spare is None:
            return None
        job, pid, reads, job_fd = self.spare
        self.spare = None
        handed = False
        if not limits.network:
            with contextlib.suppress(OSError):  # EPIPE: the spare died (its set-up failed, or it was killed)
                _send_message(job_fd, {key: message[key] for key in ("program", "tests", "limits")})
                handed = True
        os.close(job_fd)  # a spare that was not handed a job reads EOF and exits
        if handed:
            return replace(job, program=message["program"], tests=message["tests"]), pid, reads, limits
        self._discard(job, pid, reads)
        return None

    def close(self) -> None:
        if self.spare is not None:
            job, pid, reads, job_fd = self.spare
            self.spare = None
            os.close(job_fd)
            self._discard(job, pid, reads)

    def _discard(self, job: _Job, pid: int, reads: dict[str, int]) -> None:
        _kill_group(pid)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        for fd in reads.values():
            os.close(fd)
        _remove_workdir(self.isolation, job.workdir)


def _fork_sample(isolation: _Isolation) -> int:
    """fork(); with PID namespaces the child is PID 1 of a new one, and the worker's own is restored.

    libc's fork, not os.fork: the worker is single-threaded and never forks while importing, so
    Python's after-fork hooks (threading's bookkeeping; random's reseed, done in the sample instead)
    only cost time, about 1 ms a sample here; pthread_atfork handlers of C libraries still run.
    """
    libc = _libc()
    if isolation.own_pidns_fd is not None:
        _check(libc.unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")
    pid = libc.fork()
    if pid < 0:
        error = ctypes.get_errno()
    if isolation.own_pidns_fd is not None and pid != 0:
        _check(libc.setns(isolation.own_pidns_fd, CLONE_NEWPID), "setns(pid)")
    if pid < 0:
        raise OSError(error, f"fork: {os.strerror(error)}")
    return int(pid)


def _make_workdir(isolation: _Isolation, uid: int | None, workdir: str | None) -> str:
    """`workdir`, or where none is given: in the worker's own /tmp (one sample at a time) the same path
    each time, else a fresh temporary directory. Owned by the sample's uid."""
    if workdir is None and isolation.private_tmp:
        workdir = _PRIVATE_WORKDIR
    if workdir is not None:
        os.mkdir(workdir, 0o700)
    else:
        import tempfile

        workdir = tempfile.mkdtemp(prefix="codetune-sample-")
    if uid is not None:
        os.chown(workdir, uid, uid)
    return workdir


def _remove_workdir(isolation: _Isolation, workdir: str) -> None:
    """Remove the work dir; in userns mode, where the sample owns the worker's /tmp, all of /tmp."""
    try:
        os.rmdir(workdir)  # the usual case: the sample left nothing
    except OSError:
        import shutil  # only when the sample left files: not loaded in the worker (smaller forks)

        shutil.rmtree(workdir, onerror=_force_remove)
    if isolation.mode != "userns":
        return
    for entry in os.scandir("/tmp"):
        if entry.is_dir(follow_symlinks=False):
            import shutil

            shutil.rmtree(entry.path, onerror=_force_remove)
        else:
            os.unlink(entry.path)


def _force_remove(function: Any, path: str, excinfo: Any) -> None:
    """rmtree's error hook: a sample may have made its own files read-only."""
    try:
        os.chmod(os.path.dirname(path), 0o700)
        os.chmod(path, 0o700)
        function(path)
    except OSError:
        pass


class _Tail:
    """Keeps the last `limit` bytes of a stream and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.data += chunk
        if len(self.data) > 2 * self.limit:
            del self.data[: len(self.data) - self.limit]

    def text(self) -> str:
        kept = bytes(self.data[len(self.data) - self.limit :]) if self.limit else b""
        text = kept.decode("utf-8", "replace")
        dropped = self.total - len(kept)
        return f"[... {dropped} bytes truncated ...]\n{text}" if dropped else text


def _supervise(
    pid: int,
    readers: dict[int, _Tail],
    deadline: float,
    proc_fd: int,
    sweep: bool,
    on_done: Any = None,
) -> tuple[bool, int, float]:
    """Collect output until the sample exits or the deadline passes (then kill it); return
    (timed_out, its wait status, CPU seconds of it and of what it reaped). `on_done` is called once
    if every pipe reaches EOF while the sample is still alive (it reported and closed them)."""
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    for fd in (*readers, pidfd):
        poller.register(fd, select.POLLIN)
    open_pipes = len(readers)
    timed_out = False
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                _kill_group(pid)
                break
            events = poller.poll(remaining * 1000)
            if any(fd == pidfd for fd, _ in events):
                break
            for fd, _ in events:
                if not _read_into(fd, readers[fd]):
                    poller.unregister(fd)
                    open_pipes -= 1
            if not open_pipes and on_done is not None:
                on_done()
                on_done = None
    finally:
        os.close(pidfd)
    _, status, usage = os.wait4(pid, 0)
    if sweep:  # nothing outlives PID 1 of a PID namespace; without one, kill what escaped
        _kill_descendants(proc_fd)
    _drain(readers, time.monotonic() + 1.0)
    return timed_out, status, usage.ru_utime + usage.ru_stime


def _read_into(fd: int, tail: _Tail) -> bool:
    chunk = os.read(fd, 1 << 16)
    if chunk:
        tail.add(chunk)
    return bool(chunk)


def _drain(readers: dict[int, _Tail], deadline: float) -> None:
    """Read what the (now dead) sample left in the pipes, up to EOF."""
    open_fds = set(readers)
    while open_fds and (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select(list(open_fds), [], [], remaining)
        for fd in ready:
            if not _read_into(fd, readers[fd]):
                open_fds.discard(fd)


def _kill_group(pid: int) -> None:
    for kill, target in ((os.killpg, pid), (os.kill, pid)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(target, signal.SIGKILL)


def _kill_descendants(proc_fd: int, grace_s: float = 5.0) -> None:
    """SIGKILL and reap every child of this (subreaper) worker until none is left.

    Killing a process re-parents its children to us, so the loop ends when the tree is gone; the
    process-count limit bounds how many rounds a fork bomb can force.
    """
    me = os.getpid()
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        fd = os.open(f"{me}/task/{me}/children", os.O_RDONLY, dir_fd=proc_fd)
        try:
            children = [int(pid) for pid in os.read(fd, 1 << 16).split()]
        finally:
            os.close(fd)
        if not children:
            return
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        for child in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child, 0)


def _decide(
    job: _Job,
    limits: Limits,
    tails: dict[str, _Tail],
    timed_out: bool,
    raw: int,
    cpu_s: float,
    duration: float,
) -> dict[str, Any]:
    """Turn what was observed into a verdict dict (the fields of `Verdict`)."""
    stderr = tails["stderr"].text()
    record = _find_record(tails["result"].text(), job.token)
    setup = tails["status"].text().partition("setup ")[2].strip() or None
    exit_code = os.WEXITSTATUS(raw) if os.WIFEXITED(raw) else None
    sig = os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else None
    verdict: dict[str, Any] = {"error_type": None, "detail": "", "exec_s": None}
    if setup is not None:
        verdict.update(status="sandbox-error", detail=f"isolation set-up failed: {setup}")
    elif record is not None:
        verdict.update(record)
    elif timed_out or sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_s >= limits.cpu_limit_s):
        limit = f"{limits.timeout_s:g} s wall / {limits.cpu_limit_s} s CPU"
        verdict.update(status="timeout", detail=f"over the limit of {limit}")
    elif sig is not None:
        memory = any(hint in stderr for hint in _MEMORY_HINTS)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        verdict.update(status="memory" if memory else "killed", detail=f"killed by {name}")
    else:
        verdict.update(
            status="error", detail=f"the sample exited (code {exit_code}) before the tests completed"
        )
    verdict.update(
        stderr_tail=stderr,
        stdout_tail=tails["stdout"].text(),
        duration_s=round(duration, 6),
        cpu_s=round(cpu_s, 6),
        exit_code=exit_code,
        signal=sig,
    )
    return verdict


def _find_record(text: str, token: str) -> dict[str, Any] | None:
    """The completion record: the last line that starts with this sample's token."""
    prefix = token + " "
    for line in reversed(text.splitlines()):
        if line.startswith(prefix):
            try:
                record = json.loads(line[len(prefix) :])
            except ValueError:
                return None
            if record.get("status") in ("passed", "failed", "error", "memory"):
                return {key: record.get(key) for key in ("status", "error_type", "detail", "exec_s")}
    return None


def _sample_process(job: _Job, isolation: _Isolation, ends: list[int], snapshot: _Snapshot) -> NoReturn:
    """The forked sample: session, fds, uid, work dir, no privileges, clean environment, rlimits; run.

    `ends`: its ends of the stdout, stderr, result and status pipes, and a spare's job pipe. A spare
    (job.limits None) does everything but the rlimits, then waits for its job.
    """
    try:
        os.setsid()
        if "random" in sys.modules:  # what os.fork's after-fork hook would have done
            sys.modules["random"].seed()
        if job.limits is not None and job.limits.network and isolation.host_netns_fd is not None:
            _check(_libc().setns(isolation.host_netns_fd, CLONE_NEWNET), "setns(net)")
        _install_fds([_DEVNULL_FD if _DEVNULL_FD >= 0 else os.open(os.devnull, os.O_RDWR), *ends])
        if job.uid is not None:
            os.setgroups([])
            os.setresgid(job.uid, job.uid, job.uid)
            os.setresuid(job.uid, job.uid, job.uid)  # from root to non-root: no capabilities
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after the uid change, which clears it
        if os.getppid() not in (0, job.worker_pid):  # 0: the worker is outside our PID namespace
            os._exit(1)
        os.chdir(job.workdir)
        if "userns" in isolation.features:
            header, data = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
            _check(_libc().capset(ctypes.byref(header), data), "drop capabilities")
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        if os.environ.get("HOME") != job.workdir:
            os.environ.update(HOME=job.workdir, TMPDIR=job.workdir)
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        program, tests, limits = job.program, job.tests, job.limits
        if limits is None:  # a spare: its job comes now (EOF: discarded)
            message = _receive_message(_JOB_FD, None)
            if message is None:
                os._exit(0)
            os.close(_JOB_FD)
            program, tests, limits = message["program"], message["tests"], Limits(**message["limits"])
        _set_rlimits(limits, isolation)
        os.close(_STATUS_FD)
    except BaseException as exc:
        _report_setup_failure(exc)
    _run_sample(program, tests, job.token, snapshot)


def _report_setup_failure(exc: BaseException) -> NoReturn:
    try:
        message = str(exc) if isinstance(exc, _SetupError) else f"{type(exc).__name__}: {exc}"
        _write_all(_STATUS_FD, f"setup {message}\n".encode())
    finally:
        os._exit(70)


def _install_fds(sources: list[int]) -> None:
    """Make `sources` fds 0, 1, 2, ... (in order) and close every other descriptor."""
    if min(sources) < len(sources):  # move them out of the targets' way first
        sources = [fcntl.fcntl(fd, fcntl.F_DUPFD, len(sources)) for fd in sources]
    for target, fd in enumerate(sources):
        os.dup2(fd, target)
    os.closerange(len(sources), 2**31 - 1)  # one close_range(2) call


def _set_rlimits(limits: Limits, isolation: _Isolation) -> None:
    """RLIMIT_NPROC counts per uid (and user namespace): with a uid of its own, only this sample's."""
    mib = 1 << 20
    processes = limits.max_processes
    if isolation.mode == "userns":
        processes += 1  # the worker shares the sample's uid in its user namespace
    elif isolation.uid is None and os.getuid() != 0:
        processes += _count_processes(os.getuid())  # everything this user runs counts too
    for which, soft, hard in (
        (resource.RLIMIT_CPU, limits.cpu_limit_s, limits.cpu_limit_s + 1),
        (resource.RLIMIT_AS, limits.memory_mb * mib, limits.memory_mb * mib),
        (resource.RLIMIT_FSIZE, limits.file_size_mb * mib, limits.file_size_mb * mib),
        (resource.RLIMIT_NPROC, processes, processes),
        (resource.RLIMIT_CORE, 0, 0),
    ):
        cap = isolation.hard_limits.get(which, hard)  # may only be lowered
        resource.setrlimit(which, (min(soft, cap), min(hard, cap)))


def _count_processes(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == uid:
                count += 1
        except OSError:
            pass
    return count


def _run_sample(program: str, tests: str, token: str, snapshot: _Snapshot) -> NoReturn:
    """In the sample: run the program, restore the interpreter, run the tests and their TestCases.

    Everything used after the program ran is bound to a local first: the program may rebind globals.
    """
    run, build, clock, getpid, exit_now, is_instance = (
        exec,
        compile,
        time.perf_counter,
        os.getpid,
        os._exit,
        isinstance,
    )
    restore, classify, report, memory_error = _restore_interpreter, _classify, _report, MemoryError
    close_all = os.closerange
    me = getpid()
    program_ns = _module_namespace("__sandbox__", "<program>", program)
    tests_ns = _module_namespace("__sandbox_tests__", "<tests>", tests)
    snapshot.accept_modules()
    result: tuple[str, str | None, str] = ("passed", None, "")
    error: BaseException | None = None
    phase = "program"
    started = clock()
    try:
        run(build(program, "<program>", "exec"), program_ns)
        phase = "tests"
        restore(snapshot)
        _copy_program_names(program_ns, tests_ns, snapshot)
        run(build(tests, "<tests>", "exec"), tests_ns)
        phase = "unittest"
        result = _run_test_cases(tests_ns)
    except BaseException as exc:
        error = exc
    elapsed = clock() - started
    if getpid() != me:  # a fork made by the sample never reports
        exit_now(0)
    if is_instance(error, memory_error):
        error = None  # drop the traceback's frames, then the namespaces, to have memory to report with
        program_ns.clear()
        tests_ns.clear()
        result = ("memory", "MemoryError", f"{phase}: MemoryError")
    restore(snapshot)
    if error is not None:
        result = classify(error, phase)
        error = None
    report(token, result, elapsed)
    close_all(0, 2**31 - 1)  # EOF on every pipe now: the worker can start the next job (see _serve_ahead)
    exit_now(0)


def _module_namespace(name: str, filename: str, source: str) -> dict[str, Any]:
    """A real module (so pickling and dataclasses work), with its source known to tracebacks."""
    module = types.ModuleType(name)
    module.__dict__["__builtins__"] = builtins
    sys.modules[name] = module
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    return module.__dict__


def _copy_program_names(program_ns: dict[str, Any], tests_ns: dict[str, Any], snapshot: _Snapshot) -> None:
    """Give the tests the program's names, minus dunders and names that shadow builtins (a program's
    own `abs` must not answer the tests' `abs`)."""
    for key, value in list(program_ns.items()):
        if type(key) is str and not key.startswith("__") and key not in snapshot.builtin_names:
            tests_ns[key] = value


def _run_test_cases(namespace: dict[str, Any]) -> tuple[str, str | None, str]:
    """Run the unittest.TestCase classes the tests defined, if any; errors outrank failures."""
    import unittest

    cases = [
        value
        for value in list(namespace.values())
        if isinstance(value, type)
        and issubclass(value, unittest.TestCase)
        and value.__module__ == "__sandbox_tests__"
    ]
    if not cases:
        return ("passed", None, "")
    problems: dict[str, tuple[str, str | None, str]] = {}

    class Outcome(unittest.TestResult):
        def note(self, status: str, test: Any, err: Any) -> None:
            first_line = (str(err[1]).strip().splitlines() or [""])[0]
            detail = f"unittest {test}: {err[0].__name__}: {first_line}".rstrip(": ")
            problems.setdefault(status, (status, err[0].__name__, detail[:1000]))

        def addError(self, test: Any, err: Any) -> None:
            self.note("error", test, err)
            super().addError(test, err)

        def addFailure(self, test: Any, err: Any) -> None:
            self.note("failed", test, err)
            super().addFailure(test, err)

    loader = unittest.TestLoader()
    outcome = Outcome()
    unittest.TestSuite([loader.loadTestsFromTestCase(case) for case in cases]).run(outcome)
    for label, found in (("ERROR", outcome.errors), ("FAIL", outcome.failures)):
        for test, trace in found:
            sys.stderr.write(f"{label}: {test}\n{trace}\n")
    if problems:
        return problems.get("error") or problems["failed"]
    if outcome.unexpectedSuccesses:
        return ("failed", None, f"unittest: unexpected success {outcome.unexpectedSuccesses[0]}")
    if outcome.testsRun == 0:
        return ("error", None, "the tests define unittest.TestCase classes with no test methods")
    return ("passed", None, f"unittest: {outcome.testsRun} tests")


def _classify(error: BaseException, phase: str) -> tuple[str, str | None, str]:
    """failed (AssertionError) or error (anything else); print the traceback like Python would.

    Never returns "passed": an exception always means the sample did not pass.
    """
    name = type(error).__name__
    try:
        trace = error.__traceback__
        while trace is not None and trace.tb_frame.f_code.co_filename == __file__:
            trace = trace.tb_next  # the sandbox's own frames say nothing about the sample
        traceback.print_exception(type(error), error, trace)
        message = f"{phase}: {name}: {error}".rstrip(": ").replace("\n", " ")
    except BaseException:
        message = f"{phase}: {name}"
    return ("failed" if isinstance(error, AssertionError) else "error", name, message[:1000])


def _report(
    token: str,
    result: tuple[str, str | None, str],
    elapsed: float,
    _stdout: Any = sys.__stdout__,
    _stderr: Any = sys.__stderr__,
    _dumps: Any = json.dumps,
) -> None:
    """Flush the sample's output and write the completion record to the result pipe."""
    for stream in (_stdout, _stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    status, error_type, detail = result
    record = _dumps(
        {"status": status, "error_type": error_type, "detail": detail, "exec_s": round(elapsed, 6)}
    )
    with contextlib.suppress(OSError):  # the sample closed or replaced the pipe: no record, so no pass
        _write_all(_RESULT_FD, f"{token} {record}\n".encode("utf-8", "backslashreplace"))


def _source_stamp() -> str:
    """This file's size and modification time: a worker started from a file edited (or upgraded)
    after the evaluator imported it would run other code than the evaluator speaks to."""
    try:
        stat_result = os.stat(__file__)
    except OSError:  # not a plain file (e.g. inside a zip): nothing to compare
        return "unknown"
    return f"{stat_result.st_size}:{stat_result.st_mtime_ns}"


_SOURCE_STAMP = _source_stamp()  # when this process loaded the module


def _worker_entry(argv: list[str]) -> None:
    """What `_WORKER_BOOTSTRAP` calls in a fresh interpreter, with the worker's arguments (the first:
    the evaluator's `_SOURCE_STAMP`, checked before the others are read)."""
    if not argv or argv[0] != _SOURCE_STAMP:
        message = (
            f"{__file__} changed after the evaluator loaded it (e.g. edited or upgraded while a job ran):"
            " restart the evaluation"
        )
        _send_message(1, {"error": message})
        sys.exit(2)
    preload, requested, tmp_mb, fork_ahead = argv[1:]
    _worker_main([name for name in preload.split(",") if name], requested, int(tmp_mb), fork_ahead == "1")
