"""The evaluator's side of the sandbox: limits, verdicts, the worker pool, calibration, the manifest.

Nothing here runs sample code: workers (`worker.py`, started inside bubblewrap where it can run) do.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import json
import os
import queue
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from codetune.errors import CodetuneError

STATUSES = ("passed", "failed", "error", "timeout", "memory", "killed", "sandbox-error")
LANGUAGES = ("python", "javascript")
MODES = ("bwrap", "rlimits")
UNSAFE_ENV = "CODETUNE_UNSAFE_ISOLATION"  # "1": run samples as root where no other isolation works
BWRAP_ENV = "CODETUNE_BWRAP"  # the bwrap binary; a path that doesn't exist simulates its absence
SANDBOX_UID = 65534  # nobody: the uid inside bubblewrap
FALLBACK_UID_BASE = 1_000_000_000  # + worker pid: the rlimit-only level's per-worker uid (as root)
_WORKER_FILE = Path(__file__).with_name("worker.py")
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
_ENV |= {"PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
_ENV |= {"MKL_NUM_THREADS": "1"}
_BOOT = (
    "import sys, importlib.util as u\n"
    "s = u.spec_from_file_location('_codetune_sandbox_worker', sys.argv[1]); m = u.module_from_spec(s)\n"
    "s.loader.exec_module(m); m.main(sys.argv[2])\n"
)
_HELLO_TIMEOUT_S, _REPLY_GRACE_S = 120.0, 30.0
# worker.py as this process loaded its neighbour: a worker started from a file edited (or upgraded) since
# would speak another protocol; it compares and says so
_STAMP = f"{_WORKER_FILE.stat().st_size}:{_WORKER_FILE.stat().st_mtime_ns}"
_CALIBRATION: dict[str, Any] | None = None
_CGROUP_IDS = itertools.count()
_SPAWNER = ThreadPoolExecutor(1, thread_name_prefix="codetune-sandbox-spawner")


@dataclass(frozen=True)
class Limits:
    """Resource limits for one sample. The defaults suit HumanEval-style checks."""

    timeout_s: float = 10.0  # wall clock, from fork to exit
    cpu_s: float | None = None  # RLIMIT_CPU (whole seconds, rounded up); None: timeout_s + 1 s
    memory_mb: int = 1024  # RLIMIT_AS
    file_size_mb: int = 16  # RLIMIT_FSIZE
    max_processes: int = 64  # RLIMIT_NPROC
    open_files: int = 256  # RLIMIT_NOFILE
    output_bytes: int = 16_384  # tail of stdout and of stderr kept, per stream
    network: bool = False  # True: the job runs on a worker that shares the host network

    def __post_init__(self) -> None:
        cpu = 1.0 if self.cpu_s is None else self.cpu_s
        numbers = {"timeout_s": self.timeout_s, "cpu_s": cpu, "memory_mb": self.memory_mb}
        numbers |= {"file_size_mb": self.file_size_mb, "max_processes": self.max_processes}
        problems = [name for name, value in numbers.items() if not value > 0]
        problems += ["open_files"] * (self.open_files < 16) + ["output_bytes"] * (self.output_bytes < 0)
        if problems:
            raise CodetuneError(f"sandbox limits: {', '.join(problems)} must be positive (got {self})")

    @property
    def cpu_limit_s(self) -> int:
        """The RLIMIT_CPU soft limit in whole seconds."""
        if self.cpu_s is None:  # a backstop past the wall clock, which decides (worker._cpu_limit)
            return max(1, -int(-self.timeout_s // 1)) + 1
        return max(1, -int(-self.cpu_s // 1))


@dataclass(frozen=True)
class Verdict:
    """The outcome of one sample. `status` is one of `STATUSES`."""

    status: str
    error_type: str | None  # exception class name for "failed" / "error" / "memory"
    stderr_tail: str
    stdout_tail: str
    duration_s: float  # wall clock of the whole sample, fork to reap
    exec_s: float | None = None  # time spent running program + tests inside the sample
    cpu_s: float = 0.0  # user + system CPU of the sample's processes that were reaped
    exit_code: int | None = None
    signal: int | None = None  # the signal that killed the sample, if any
    detail: str = ""  # one line: what happened, where

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_tests(program: str, tests: str, limits: Limits = Limits(), language: str = "python") -> Verdict:
    """Run `program`, then `tests`, in a fresh sandboxed process; return the verdict.

    Uses a shared one-worker pool started on first use; for many samples use `SandboxPool`.
    """
    return _default_pool().run(program, tests, limits, language=language)


class SandboxPool:
    """Pre-started workers (fork servers); every sample still runs in its own fresh process.

    `preload` names modules the Python workers import once (e.g. "pandas") so samples don't pay for
    them. `isolation` is "auto" (bubblewrap where it runs, else rlimits only, with a warning), "bwrap"
    (fail without it) or "rlimits". `unsafe_isolation` (or CODETUNE_UNSAFE_ISOLATION=1) allows the
    rlimit-only level to run samples as root where dropping to an unprivileged uid does not work.
    """

    def __init__(
        self,
        workers: int | None = None,
        limits: Limits = Limits(),
        *,
        preload: Sequence[str] = (),
        isolation: str = "auto",
        unsafe_isolation: bool = False,
    ) -> None:
        count = workers if workers is not None else max(1, os.cpu_count() or 1)
        if count < 1:
            raise CodetuneError(f"SandboxPool: workers must be at least 1 (got {count})")
        if isolation not in ("auto", *MODES):
            raise CodetuneError(f"SandboxPool: isolation must be auto or one of {MODES} (got {isolation!r})")
        self.limits = limits
        unsafe = unsafe_isolation or os.environ.get(UNSAFE_ENV) == "1"
        self._spec = (tuple(preload), _choose_mode(isolation), unsafe)
        self._workers: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _close_workers, self._workers)
        self._net: _Worker | None = None  # started for the first job with network=True
        self._net_lock = threading.Lock()
        try:
            self._workers += [_Worker(*self._spec) for _ in range(count)]
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
        """The isolation level of the workers (see `isolation_level`)."""
        return self._workers[0].isolation

    @property
    def worker_pids(self) -> tuple[int, ...]:
        return tuple(worker.pid for worker in self._workers)

    def run(
        self, program: str, tests: str, limits: Limits | None = None, *, language: str = "python"
    ) -> Verdict:
        """Run one sample on the next free worker."""
        if not self._finalizer.alive:
            raise RuntimeError("SandboxPool is closed")
        limits = limits or self.limits
        job = _encode({"program": program, "tests": tests, "limits": asdict(limits), "language": language})
        if language not in LANGUAGES:
            raise CodetuneError(f"sandbox: language must be one of {LANGUAGES} (got {language!r})")
        if limits.network:
            with self._net_lock:
                if self._net is None:
                    self._net = _Worker(*self._spec, network=True)
                    self._workers.append(self._net)
                    self._net.await_hello()
                return self._net.run(job, limits)
        worker = self._idle.get()
        try:
            return worker.run(job, limits)
        finally:
            self._idle.put(worker)

    def map(
        self,
        jobs: Sequence[tuple[str, str]],
        limits: Limits | Sequence[Limits] | None = None,
        *,
        language: str = "python",
    ) -> list[Verdict]:
        """Run `(program, tests)` jobs in parallel on all workers; verdicts come back in job order.

        `limits` is one `Limits` for all jobs, or one per job (e.g. from `calibrated_limits`).
        """
        per_job = [limits or self.limits] * len(jobs) if not isinstance(limits, Sequence) else list(limits)
        if len(per_job) != len(jobs):
            raise CodetuneError(f"SandboxPool.map: {len(jobs)} jobs but {len(per_job)} limits")
        count = sum(worker is not self._net for worker in self._workers)
        with ThreadPoolExecutor(count) as executor:
            if any(job_limits.network for job_limits in per_job):
                futures = [
                    executor.submit(self.run, program, tests, job_limits, language=language)
                    for (program, tests), job_limits in zip(jobs, per_job, strict=True)
                ]
                return [future.result() for future in futures]
            work = [
                (index, _encode({"program": p, "tests": t, "limits": asdict(lim), "language": language}), lim)
                for index, ((p, t), lim) in reversed(list(enumerate(zip(jobs, per_job, strict=True))))
            ]
            verdicts: list[Verdict] = [None] * len(jobs)  # type: ignore[list-item]
            for future in [executor.submit(self._drive, work, verdicts) for _ in range(count)]:
                future.result()
            return verdicts

    def _drive(self, work: list[tuple[int, bytes, Limits]], verdicts: list[Verdict]) -> None:
        """Feed one worker from `work` with one job queued behind the running one (so it never waits for
        the evaluator between samples) when that job is small enough to sit in the worker's stdin pipe."""
        worker = self._idle.get()
        pending: list[tuple[int, bytes, Limits]] = []
        try:
            while True:
                while len(pending) < 2:
                    try:
                        job = work.pop()  # atomic: no lock needed
                    except IndexError:
                        break
                    if pending and len(job[1]) > 32_768:
                        work.append(job)  # sent once nothing is queued: it could fill the pipe
                        break
                    worker.send(job[1], job[2])
                    pending.append(job)
                if not pending:
                    return
                index, _, limits = pending.pop(0)
                pid = worker.pid
                verdicts[index] = worker.receive(limits)
                for _, message, job_limits in pending if worker.pid != pid else ():
                    worker.send(message, job_limits)  # what the dead worker had queued, to its successor
        finally:
            self._idle.put(worker)

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _choose_mode(requested: str) -> str:
    """bwrap where it is installed and can start a sandbox here; else rlimits, said loudly."""
    if requested == "rlimits":
        return requested
    problem = _bwrap_problem()
    if problem is None:
        return "bwrap"
    if requested == "bwrap":
        raise CodetuneError(f"sandbox: isolation bwrap was asked for but {problem}; install bubblewrap")
    warnings.warn(
        f"SANDBOX: {problem}; generated code runs with rlimits only (no namespaces, the host file system "
        "and network). Install bubblewrap (apt-get install bubblewrap) for full isolation.",
        RuntimeWarning,
        stacklevel=3,
    )
    return "rlimits"


def _bwrap_binary() -> str | None:
    return os.environ.get(BWRAP_ENV) or shutil.which("bwrap")


@functools.cache
def _bwrap_problem_for(binary: str | None) -> str | None:
    if binary is None or not os.access(binary, os.X_OK):
        return f"bubblewrap is not installed ({binary or 'bwrap not on PATH'})"
    probe = subprocess.run([*_bwrap_command(binary, False), "/bin/true"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        return f"bubblewrap cannot start a sandbox here ({probe.stderr.decode(errors='replace').strip()})"
    return None


def _bwrap_problem() -> str | None:
    return _bwrap_problem_for(_bwrap_binary())


def _bwrap_command(binary: str, network: bool) -> list[str]:
    """Namespaces (user, pid, net, ipc, uts, cgroup, mount), read-only root, fresh /dev, /dev/shm, /proc,
    /tmp, /run; uid 65534 without capabilities; the worker is PID 1, which samples can't signal."""
    command = [binary, "--unshare-all", *(["--share-net"] if network else []), "--die-with-parent"]
    command += ["--as-pid-1", "--new-session", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
    command += ["--ro-bind", "/", "/", "--dev", "/dev", "--tmpfs", "/dev/shm", "--proc", "/proc"]
    command += ["--tmpfs", "/tmp", "--tmpfs", "/run", "--tmpfs", "/root"]
    if not os.path.islink("/var/run") and os.path.isdir("/var/run"):
        command += ["--tmpfs", "/var/run"]
    for path in _python_paths():  # hidden above (a venv in /tmp, a pyenv in /root): bound back read-only
        if path.startswith(("/tmp/", "/root/", "/run/")):
            command += ["--ro-bind", path, path]
    return [*command, "--chdir", "/tmp"]


def _python_paths() -> list[str]:
    paths = {sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix, *sys.path}
    real = {os.path.realpath(path) for path in paths if path and os.path.isdir(path)}
    return sorted(p for p in real if not any(p.startswith(q + "/") for q in real))


class _Worker:
    """The evaluator's handle on one worker: length-prefixed JSON over its stdin/stdout."""

    def __init__(self, preload: tuple[str, ...], mode: str, unsafe: bool, network: bool = False) -> None:
        self.preload, self.mode, self.unsafe, self.network = preload, mode, unsafe, network
        self.isolation, self.pids_max = "", 0
        self.cgroup: str | None = None
        self._start()

    def _start(self) -> None:
        python = [sys.executable, "-I", "-c", _BOOT, str(_WORKER_FILE)]
        if self.mode == "bwrap":
            prefix = _bwrap_command(_bwrap_binary() or "bwrap", self.network)
        else:
            prefix = []
        config = {"mode": self.mode, "preload": list(self.preload), "unsafe": self.unsafe, "stamp": _STAMP}
        # As root (in bubblewrap the sandbox's uid is root outside), RLIMIT_NPROC exempts the samples: a pids
        # cgroup counts the worker's processes instead (joined before bwrap starts), and without bubblewrap
        # it also lists what the samples left behind
        self.cgroup = _pids_cgroup() if os.geteuid() == 0 else None
        config |= {"node": shutil.which("node"), "cgroup": self.cgroup}
        procs = os.path.join(self.cgroup, "cgroup.procs") if self.cgroup else None
        # bwrap's --die-with-parent fires when the *thread* that started it ends: start every worker from
        # one long-lived thread, not from whichever thread (a map's, say) found its predecessor dead
        self.proc = _SPAWNER.submit(
            subprocess.Popen,
            [*prefix, *python, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_ENV,
            start_new_session=True,  # Ctrl-C in the evaluator's terminal is the evaluator's to handle
            preexec_fn=None if procs is None else functools.partial(_write, procs, "0"),
        ).result()
        self.pid, self.pids_max = self.proc.pid, 0

    def await_hello(self) -> None:
        hello = self._receive(time.monotonic() + _HELLO_TIMEOUT_S)
        if hello is None or "error" in hello:
            self.kill()
            why = hello["error"] if hello else "it did not start"
            raise CodetuneError(f"sandbox worker {self.pid}: {why}")
        self.isolation = hello["isolation"]
        if hello["preload_errors"]:
            self.kill()
            raise CodetuneError(f"SandboxPool: could not preload {'; '.join(hello['preload_errors'])}")

    def run(self, job: bytes, limits: Limits) -> Verdict:
        self.send(job, limits)
        return self.receive(limits)

    def send(self, job: bytes, limits: Limits) -> None:
        if self.cgroup is not None and self.pids_max != limits.max_processes:
            _write(os.path.join(self.cgroup, "pids.max"), str(limits.max_processes + 2))  # + bwrap, worker
            self.pids_max = limits.max_processes
        if self.proc.poll() is None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write(job)
                self.proc.stdin.flush()

    def receive(self, limits: Limits) -> Verdict:
        """The reply to the oldest job sent; sandbox-error (and a new worker) if it doesn't come."""
        started = time.monotonic()
        try:
            reply = self._receive(started + limits.timeout_s + _REPLY_GRACE_S)
        except OSError:
            reply = None
        if reply is None:  # the worker died or hung: the sample gets sandbox-error, the worker a successor
            self.kill()
            self._start()
            self.await_hello()
            detail = "the sandbox worker died or stopped answering"
            return Verdict("sandbox-error", None, "", "", time.monotonic() - started, detail=detail)
        return Verdict(**reply)

    def _receive(self, deadline: float) -> dict[str, Any] | None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        header = _read_exactly(fd, 4, deadline)
        body = _read_exactly(fd, struct.unpack(">I", header)[0], deadline) if header else None
        return None if body is None else dict(json.loads(body))

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()  # EOF: the worker finishes and exits
                self.proc.wait(timeout=5)
        self.kill()

    def kill(self) -> None:
        # its session: bwrap, the worker and (by parent-death signal) the samples
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError, AttributeError):
                stream.close()  # type: ignore[union-attr]
        for _ in range(50):  # removable once the namespace's last process is reaped
            with contextlib.suppress(OSError, TypeError):
                os.rmdir(self.cgroup)  # type: ignore[arg-type]
                break
            time.sleep(0.01 if self.cgroup else 0)


def _pids_cgroup() -> str | None:
    """A fresh cgroup under the pids controller (cgroup v1, or v2 where pids is enabled), or None."""
    for root in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup"):
        path = os.path.join(root, f"codetune-sandbox-{os.getpid()}-{next(_CGROUP_IDS)}")
        with contextlib.suppress(OSError):
            os.mkdir(path)
            if os.path.exists(os.path.join(path, "pids.max")):
                return path
            os.rmdir(path)
    return None


def _write(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)


def _read_exactly(fd: int, size: int, deadline: float) -> bytes | None:
    import select

    chunks: list[bytes] = []
    while size:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return None
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _encode(message: dict[str, Any]) -> bytes:
    data = json.dumps(message).encode()
    return struct.pack(">I", len(data)) + data


def _close_workers(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.close()


@functools.cache
def _default_pool() -> SandboxPool:
    pool = SandboxPool(workers=1)
    atexit.register(pool.close)
    return pool


@functools.cache
def _probed_isolation() -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # said by the pool that runs samples, not by a probe
        with SandboxPool(workers=1) as pool:
            return pool.isolation


def isolation_level() -> str:
    """Which isolation this machine gives samples, e.g. "bubblewrap: ... + rlimits" or "rlimits only ...".

    Probed once per process by starting a worker."""
    return _probed_isolation()


def calibrate_timeout(
    reference_seconds: Sequence[float], factor: float = 10.0, floor_s: float = 2.0
) -> float:
    """A timeout of `factor` times the slowest reference run, and never less than `floor_s`.

    The references are run times of a known-good (canonical) solution measured on this machine, so
    the timeout scales with the machine instead of being a constant that flips verdicts under load.
    """
    return round(max(floor_s, factor * max(reference_seconds, default=0.0)), 3)


def measure_reference_seconds(
    pool: SandboxPool, jobs: Sequence[tuple[str, str]], repeats: int = 3, limits: Limits | None = None
) -> list[list[float]]:
    """Run each known-good `(program, tests)` job `repeats` times; return its in-sandbox run times.

    A reference that doesn't pass is run once more, by itself, with 10 times the limits (a slow one on
    a busy machine, or a flaky test). Raises `CodetuneError` naming the first job that fails twice.
    """
    times: list[list[float]] = [[] for _ in jobs]
    base = limits or pool.limits
    for _ in range(repeats):
        for index, verdict in enumerate(pool.map(jobs, base)):
            if not verdict.passed:
                verdict = pool.run(*jobs[index], replace(base, timeout_s=base.timeout_s * 10))
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
    """Per-job limits whose timeouts come from `calibrate_timeout` on the jobs' reference runs; the
    calibration is recorded for `sandbox_manifest()`."""
    global _CALIBRATION
    base = base or pool.limits
    references = measure_reference_seconds(pool, jobs, repeats, base)
    timeouts = [calibrate_timeout(seconds, factor, floor_s) for seconds in references]
    slowest = sorted(max(seconds) for seconds in references)
    _CALIBRATION = {"factor": factor, "floor_s": floor_s, "repeats": repeats, "jobs": len(jobs)}
    _CALIBRATION |= {
        "reference_max_s": max(slowest, default=0.0),
        "reference_median_s": slowest[len(slowest) // 2] if slowest else 0.0,
        "timeouts_above_floor": sum(timeout > floor_s for timeout in timeouts),
        "timeout_max_s": max(timeouts, default=floor_s),
    }
    return [replace(base, timeout_s=timeout) for timeout in timeouts]


def sandbox_manifest() -> dict[str, Any]:
    """Isolation level, default limits and the last calibration, for evaluation manifests."""
    level = isolation_level()
    return {
        "isolation": level,
        "isolation_mode": "bwrap" if level.startswith("bubblewrap") else "rlimits",
        "bwrap": _bwrap_binary(),
        "limits": asdict(Limits()),
        "calibration": dict(_CALIBRATION) if _CALIBRATION is not None else None,
        "python": sys.version.split()[0],
        "kernel": os.uname().release,
    }
