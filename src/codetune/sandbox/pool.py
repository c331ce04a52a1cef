"""The evaluator's side of the sandbox: limits, verdicts, the worker pool, the manifest.

Nothing here runs sample code: workers (`worker.py`, started inside bubblewrap where it can run) do.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from codetune.errors import CodetuneError

STATUSES = ("passed", "failed", "error", "timeout", "memory", "killed", "sandbox-error")
LANGUAGES = ("python", "javascript")
JUDGES = ("in-process", "values")  # where Python tests run: in the program's process, or in their own
UNSAFE_ENV = "CODETUNE_UNSAFE_ISOLATION"  # "1": run samples as root where no other isolation works
BWRAP_ENV = "CODETUNE_BWRAP"  # the bwrap binary; a path that doesn't exist simulates its absence
_WORKER_FILE = Path(__file__).with_name("worker.py")
_NOBODY = 65534  # the host uid bubblewrap runs as where the evaluator is root
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
_ENV |= {name: "1" for name in ("PYTHONDONTWRITEBYTECODE", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
_ENV |= {"MKL_NUM_THREADS": "1"}
_BOOT = (  # worker.py from its bytecode, under a name that is not in sys.modules
    "import sys, importlib.util as u\n"
    "s = u.spec_from_file_location('_codetune_sandbox_worker', sys.argv[1]); m = u.module_from_spec(s)\n"
    "s.loader.exec_module(m); m.main(sys.argv[2])\n"
)
# worker.py as this process loaded its neighbour: a worker started from a file edited (or upgraded) since
# would speak another protocol; it compares and says so
_STAMP = f"{_WORKER_FILE.stat().st_size}:{_WORKER_FILE.stat().st_mtime_ns}"
# bwrap's --die-with-parent fires when the *thread* that started it ends: every worker starts from this one
_SPAWNER = ThreadPoolExecutor(1, thread_name_prefix="codetune-sandbox-spawner")


@dataclass(frozen=True)
class Limits:
    """Resource limits for one sample. The defaults suit HumanEval-style checks."""

    timeout_s: float = 10.0  # wall clock, from fork to exit
    cpu_s: float | None = None  # RLIMIT_CPU (whole seconds, rounded up); None: timeout_s + 1 s
    memory_mb: int = 1024  # RLIMIT_AS (node: RLIMIT_DATA and the V8 heap); as root, all processes together
    file_size_mb: int = 16  # RLIMIT_FSIZE
    max_processes: int = 64  # RLIMIT_NPROC (as root, which it exempts: a pids cgroup)
    open_files: int = 256  # RLIMIT_NOFILE
    output_bytes: int = 16_384  # tail of stdout and of stderr kept, per stream
    network: bool = False  # True: the job runs on a worker that shares the host network

    def __post_init__(self) -> None:
        sizes = (self.timeout_s, 1 if self.cpu_s is None else self.cpu_s, self.memory_mb, self.file_size_mb)
        if min(*sizes, self.max_processes) <= 0 or self.open_files < 16 or self.output_bytes < 0:
            raise CodetuneError(f"sandbox limits must be positive, open_files at least 16 (got {self})")


@dataclass(frozen=True)
class Verdict:
    """The outcome of one sample. `status` is one of `STATUSES`."""

    status: str
    error_type: str | None = None  # exception class name for "failed" / "error" / "memory"
    stderr_tail: str = ""
    stdout_tail: str = ""
    duration_s: float = 0.0  # wall clock of the whole sample, fork to reap
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
    `judge` "values" runs Python tests in a process of their own, apart from the program's, seeing its
    names as proxies that carry plain values (None, bool, int, float, complex, str, bytes, list, tuple,
    set, dict) both ways: no object of the sample's reaches the tests, so it can't forge the verdict. For
    tests that check plain values (HumanEval's); "in-process" (the default) shares the program's process.
    """

    def __init__(
        self,
        workers: int | None = None,
        limits: Limits = Limits(),
        *,
        preload: Sequence[str] = (),
        isolation: str = "auto",
        unsafe_isolation: bool = False,
        judge: str = "in-process",
    ) -> None:
        count = workers if workers is not None else max(1, os.cpu_count() or 1)
        if count < 1:
            raise CodetuneError(f"SandboxPool: workers must be at least 1 (got {count})")
        if isolation not in ("auto", "bwrap", "rlimits"):
            raise CodetuneError(f"SandboxPool: isolation must be auto, bwrap or rlimits (got {isolation!r})")
        if judge not in JUDGES:
            raise CodetuneError(f"SandboxPool: judge must be one of {JUDGES} (got {judge!r})")
        mode, unsafe = _choose_mode(isolation), unsafe_isolation or os.environ.get(UNSAFE_ENV) == "1"
        self.limits, self.judge, self._spec = limits, judge, (tuple(preload), mode, unsafe, limits.memory_mb)
        self.isolation = _describe(mode, unsafe) + (
            "; tests apart from the program (values judge)" * (judge == "values")
        )
        self._workers: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _kill_workers, self._workers)
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._net: list[_Worker] = []  # the network worker, started for the first job with network=True
        self._net_lock = threading.Lock()
        try:
            self._workers += [_Worker(*self._spec) for _ in range(count)]
            for worker in self._workers:
                worker.hello()
                self._idle.put(worker)
        except BaseException:
            self.close()
            raise

    @property
    def worker_pids(self) -> tuple[int, ...]:
        return tuple(worker.proc.pid for worker in self._workers)

    def run(
        self, program: str, tests: str, limits: Limits | None = None, *, language: str = "python"
    ) -> Verdict:
        """Run one sample on the next free worker."""
        if not self._finalizer.alive:
            raise RuntimeError("SandboxPool is closed")
        if language not in LANGUAGES:
            raise CodetuneError(f"sandbox: language must be one of {LANGUAGES} (got {language!r})")
        if language != "python" and self.judge != "in-process":
            raise CodetuneError(
                f"sandbox: judge {self.judge!r} is for Python; {language} tests run in-process"
            )
        limits = limits or self.limits
        job = {"program": program, "tests": tests, "limits": asdict(limits), "language": language}
        job |= {"judge": self.judge}
        if limits.network:
            with self._net_lock:
                if not self._net:
                    self._net.append(_Worker(*self._spec, network=True))
                    self._workers.append(self._net[0])
                    self._net[0].hello()
                return self._net[0].run(job, limits)
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

        `limits` is one `Limits` for all jobs, or one per job (e.g. calibrated on reference solutions).
        """
        per_job = list(limits) if isinstance(limits, Sequence) else [limits or self.limits] * len(jobs)
        if len(per_job) != len(jobs):
            raise CodetuneError(f"SandboxPool.map: {len(jobs)} jobs but {len(per_job)} limits")
        with ThreadPoolExecutor(len(self._workers) - len(self._net)) as executor:
            runs = [
                executor.submit(self.run, *job, lim, language=language)
                for job, lim in zip(jobs, per_job, strict=True)
            ]
            return [run.result() for run in runs]

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _choose_mode(requested: str) -> str:
    """bwrap where it is installed and can start a sandbox here; else rlimits, said loudly."""
    if requested == "rlimits" or (problem := _bwrap_problem()) is None:
        return "rlimits" if requested == "rlimits" else "bwrap"
    if requested == "bwrap":
        raise CodetuneError(f"sandbox: isolation bwrap was asked for but {problem}; install bubblewrap")
    warnings.warn(
        f"SANDBOX: {problem}; generated code runs with rlimits only (no namespaces, the host file system "
        "and network). Install bubblewrap (apt-get install bubblewrap) for full isolation.",
        RuntimeWarning,
        stacklevel=3,
    )
    return "rlimits"


def _describe(mode: str, unsafe: bool) -> str:
    if mode == "bwrap":
        outside = (
            "host uid 65534" if _runs_as_nobody() else "host root's" if os.geteuid() == 0 else "your uid"
        )
        return (
            "bubblewrap: user/pid/net/mount/ipc/uts namespaces + read-only root + private /tmp, /proc, /dev, "
            f"/dev/shm, /run; /root, /home, $HOME hidden + uid 65534 ({outside} outside), no capabilities + rlimits"
        )
    if os.geteuid() == 0 and not unsafe:
        return "rlimits only, unprivileged uid per worker (no bubblewrap) + rlimits"
    who = "as root (unsafe isolation allowed)" if os.geteuid() == 0 else "as the evaluator's user"
    return f"rlimits only, samples run {who} + rlimits"


def _bwrap_binary() -> str | None:
    return os.environ.get(BWRAP_ENV) or shutil.which("bwrap")


def _bwrap_problem() -> str | None:
    return _probe_bwrap(_bwrap_binary())


@functools.cache
def _probe_bwrap(binary: str | None) -> str | None:
    if binary is None or not os.access(binary, os.X_OK):
        return f"bubblewrap is not installed ({binary or 'bwrap not on PATH'})"
    problem = _try_bwrap(binary, as_nobody=False)
    if problem is None and os.geteuid() == 0 and (unprivileged := _try_bwrap(binary, as_nobody=True)):
        warnings.warn(
            f"SANDBOX: bubblewrap can't run as uid {_NOBODY} here ({unprivileged}); it runs as root, so "
            "samples can read files only root may read (/etc/shadow) and change the host's /dev/null",
            RuntimeWarning,
            stacklevel=5,
        )
    return problem and f"bubblewrap cannot start a sandbox here ({problem})"


@functools.cache
def _try_bwrap(binary: str, as_nobody: bool) -> str | None:
    """None if bubblewrap starts this Python here (`as_nobody`: as uid 65534 of the host), else why."""
    command = [*_bwrap_command(binary, False, 1), sys.executable, "-I", "-c", f"open({str(_WORKER_FILE)!r})"]
    probe = subprocess.run(
        command, capture_output=True, timeout=60, preexec_fn=_as_nobody if as_nobody else None
    )
    return (probe.stderr.decode(errors="replace").strip() or "it failed") if probe.returncode else None


def _runs_as_nobody() -> bool:
    """As root, bubblewrap runs as uid 65534 of the host where it can (this Python and its packages are
    readable to that uid): in its user namespace the samples' uid is then no one's outside. Run by root,
    it maps to root: samples could read what only root may (/etc/shadow) and chmod the host's /dev/null."""
    binary = _bwrap_binary()
    return os.geteuid() == 0 and binary is not None and _try_bwrap(binary, as_nobody=True) is None


def _as_nobody() -> None:
    os.setgroups([])
    os.setresgid(_NOBODY, _NOBODY, _NOBODY)
    os.setresuid(_NOBODY, _NOBODY, _NOBODY)


def _bwrap_command(binary: str, network: bool, memory_mb: int) -> list[str]:
    """Namespaces (user, pid, net, ipc, uts, cgroup, mount), read-only root, fresh /dev, /dev/shm, /proc,
    /tmp, /run; /root, /home and $HOME hidden; uid 65534 without capabilities; the worker is PID 1, which
    samples can't signal. Files are memory there: /tmp and /dev/shm hold `memory_mb` each at most, the
    others 1 MB (the samples' rlimits don't count them, and a sample filled 5 GB of /tmp in 8 s). What
    Python and node need from the hidden places is bound back read-only."""
    command = [binary, "--unshare-all", *(["--share-net"] if network else []), "--die-with-parent"]
    command += ["--as-pid-1", "--new-session", "--uid", "65534", "--gid", "65534", "--ro-bind", "/", "/"]
    size, small = ["--size", str(memory_mb << 20)], ["--size", str(1 << 20)]
    command += ["--dev", "/dev", *size, "--tmpfs", "/dev/shm", "--proc", "/proc", *size, "--tmpfs", "/tmp"]
    home = os.path.realpath(os.path.expanduser("~"))
    hidden = ["/tmp", "/run", "/root", "/home", *([home] if home.count("/") > 1 else []), "/var/run"]
    for place in hidden[1:]:
        if os.path.isdir(place) and not os.path.islink(place) and not place.startswith(("/home/", "/root/")):
            command += [*small, "--tmpfs", place]
    node = shutil.which("node")
    paths = {sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix, *sys.path}
    paths |= {os.path.dirname(os.path.dirname(os.path.realpath(node)))} if node else set()
    real = {os.path.realpath(path) for path in paths if path and os.path.isdir(path)}
    for path in sorted(p for p in real if not any(p.startswith(q + "/") for q in real)):
        if path.startswith(tuple(f"{place}/" for place in hidden)):  # (a venv in /tmp): bound back
            command += ["--ro-bind", path, path]
    return [*command, "--chdir", "/tmp"]


class _Worker:
    """The evaluator's handle on one worker: one JSON line per job on its stdin, one per verdict back."""

    def __init__(
        self, preload: tuple[str, ...], mode: str, unsafe: bool, memory_mb: int, network: bool = False
    ) -> None:
        self.bwrap = (network, memory_mb) if mode == "bwrap" else None  # its command's arguments
        self.as_nobody = mode == "bwrap" and _runs_as_nobody()
        self.command = [sys.executable, "-I", "-c", _BOOT, str(_WORKER_FILE)]
        self.config: dict[str, Any] = {
            "mode": mode,
            "preload": list(preload),
            "stamp": _STAMP,
            "node": shutil.which("node"),
        }
        self.config["drop_uid"] = os.geteuid() == 0 and mode == "rlimits" and not unsafe
        self._start()

    def _start(self) -> None:
        # As root (in bubblewrap the sandbox's uid is root outside), RLIMIT_NPROC exempts the samples: a pids
        # cgroup counts the worker's processes instead (joined before bwrap starts), and without bubblewrap
        # it also lists what the samples left behind. A memory cgroup holds all of a sample's processes
        # to its memory_mb together (RLIMIT_AS holds each alone: 64 processes could take 64 GB)
        self.cgroups = _cgroups() if os.geteuid() == 0 else {}
        self.cgroup, self.pids_max, self.memory_mb = self.cgroups.get("pids"), 0, 0
        oom_events = _memory_files(self.cgroups["memory"])[2] if "memory" in self.cgroups else None
        bwrap = _bwrap_command(_bwrap_binary() or "bwrap", *self.bwrap) if self.bwrap else []
        self.proc = _SPAWNER.submit(
            subprocess.Popen,
            [
                *bwrap,
                *self.command,
                json.dumps(self.config | {"cgroup": self.cgroup, "oom_events": oom_events}),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_ENV,
            start_new_session=True,  # Ctrl-C in the evaluator's terminal is the evaluator's to handle
            preexec_fn=functools.partial(_join, set(self.cgroups.values()), self.as_nobody),
        ).result()

    def hello(self) -> None:
        hello = self._receive(time.monotonic() + 120)
        if hello is None or "error" in hello or hello["preload_errors"]:
            self.kill()
            why = hello and (hello.get("error") or f"could not preload {'; '.join(hello['preload_errors'])}")
            raise CodetuneError(f"sandbox worker {self.proc.pid}: {why or 'it did not start'}")

    def run(self, job: dict[str, Any], limits: Limits) -> Verdict:
        """Send one job and return its verdict; sandbox-error (and a new worker) if it doesn't come."""
        if self.cgroup is not None and self.pids_max != limits.max_processes:
            infrastructure = 2 + (job["judge"] == "values")  # bwrap, the worker (and the tests' process)
            _write(f"{self.cgroup}/pids.max", str(limits.max_processes + infrastructure))
            self.pids_max = limits.max_processes
        # the memory cgroup: what the idle worker holds, and the sample's memory_mb more
        if "memory" in self.cgroups and self.memory_mb != limits.memory_mb:
            usage, limit, _ = _memory_files(self.cgroups["memory"])
            _write(limit, str(int(_read(usage)) + ((limits.memory_mb + 64) << 20)))
            self.memory_mb = limits.memory_mb
        started, reply = time.monotonic(), None
        with contextlib.suppress(OSError, ValueError):  # a dead worker: a broken pipe, half a reply
            self.proc.stdin.write(json.dumps(job).encode() + b"\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
            reply = self._receive(started + limits.timeout_s + 30)
        if reply is not None and reply.pop("replace", False):  # the sample disturbed its worker
            self._restart()
        if reply is not None:
            return Verdict(**reply)
        self._restart()  # the worker died or hung: the sample gets sandbox-error, the worker a successor
        detail = "the sandbox worker died or stopped answering"
        return Verdict("sandbox-error", duration_s=time.monotonic() - started, detail=detail)

    def _restart(self) -> None:
        self.kill()
        self._start()
        self.hello()

    def _receive(self, deadline: float) -> dict[str, Any] | None:
        out = self.proc.stdout
        line = out.readline() if out and select.select([out], [], [], deadline - time.monotonic())[0] else b""
        return dict(json.loads(line)) if line else None

    def kill(self) -> None:
        """Kill its session: bwrap, and by parent-death signal the worker and the samples (in bubblewrap)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError, AttributeError):
                stream.close()  # type: ignore[union-attr]
        for path in set(self.cgroups.values()):
            for _ in range(50):  # removable once the namespace's last process is reaped
                with contextlib.suppress(OSError):
                    os.rmdir(path)
                    break
                time.sleep(0.01)


def _kill_workers(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.kill()


def _cgroups() -> dict[str, str]:
    """Fresh cgroups for one worker, by controller ("pids", "memory"): one per cgroup v1 hierarchy, or
    one cgroup v2 where those controllers are enabled; {} where none can be made."""
    name, found = f"codetune-sandbox-{os.getpid()}-{os.urandom(4).hex()}", {}
    for controller, limit in (("pids", "pids.max"), ("memory", "memory.limit_in_bytes")):
        with contextlib.suppress(OSError):
            os.mkdir(path := f"/sys/fs/cgroup/{controller}/{name}")
            if os.path.exists(f"{path}/{limit}"):
                found[controller] = path
            else:
                os.rmdir(path)
    if not found:
        with contextlib.suppress(OSError):
            os.mkdir(path := f"/sys/fs/cgroup/{name}")
            found = {c: path for c in ("pids", "memory") if os.path.exists(f"{path}/{c}.max")}
            if not found:
                os.rmdir(path)
    return found


def _memory_files(path: str) -> tuple[str, str, str]:
    """A memory cgroup's usage, limit and event-count files, cgroup v1 or v2."""
    if path.startswith("/sys/fs/cgroup/memory/"):
        return f"{path}/memory.usage_in_bytes", f"{path}/memory.limit_in_bytes", f"{path}/memory.oom_control"
    return f"{path}/memory.current", f"{path}/memory.max", f"{path}/memory.events"


def _join(paths: set[str], as_nobody: bool) -> None:
    for path in paths:
        _write(f"{path}/cgroup.procs", "0")
    if as_nobody:
        _as_nobody()


def _read(path: str) -> str:
    with open(path) as handle:
        return handle.read()


def _write(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)


@functools.cache
def _default_pool() -> SandboxPool:
    pool = SandboxPool(workers=1)
    atexit.register(pool.close)
    return pool


def isolation_level() -> str:
    """Which isolation samples get here, e.g. "bubblewrap: ... + rlimits" or "rlimits only, ..."."""
    return _describe("bwrap" if _bwrap_problem() is None else "rlimits", os.environ.get(UNSAFE_ENV) == "1")


def sandbox_manifest() -> dict[str, Any]:
    """Isolation level, bwrap binary, default limits, Python and kernel, for evaluation manifests."""
    level = isolation_level()
    return {
        "isolation": level,
        "isolation_mode": "bwrap" if level.startswith("bubblewrap") else "rlimits",
        "bwrap": _bwrap_binary(),
        "limits": asdict(Limits()),
        "python": sys.version.split()[0],
        "kernel": os.uname().release,
    }
