"""The sandbox worker: a fork server that runs each sample in a fresh child. Standard library only.

Started by `pool.py` as `python -I -c BOOT worker.py CONFIG`, inside bubblewrap (as its PID 1, which the
samples can't signal) or, in the rlimit-only fallback, as a plain process. It reads jobs as
length-prefixed JSON on stdin and answers verdicts the same way; it never runs sample code itself.

Each sample: fork; the child starts a session, gets /dev/null, pipes for stdout/stderr/result and
nothing else, rlimits, a fresh work dir (and, in the fallback as root, the worker's own unprivileged
uid), then runs the program and the tests (Python in this interpreter; JavaScript by exec'ing node).
The verdict is the worker's: "passed" needs exit status 0 *and* a record on the result pipe that carries
a random per-sample nonce, written only after the tests ran to the end (so exiting, printing or closing
pipes early can't pass). In Python, between program and tests the sample's changes to what the tests
use are undone (see `_prepare_tests`); an audit hook refuses swaps of any function's `__code__` or
defaults; the tests get the program's functions wrapped so that a result whose class the program made
(an always-true `__eq__`, say) is an error.
"""

from __future__ import annotations

import builtins
import gc
import json
import os
import resource
import select
import signal
import struct
import sys
import time
import types
from typing import Any, NoReturn

_PRELOAD = (
    "unittest",
    "math",
    "re",
    "collections",
    "itertools",
    "functools",
    "string",
    "heapq",
    "typing",
    "traceback",
)
_MEMORY_HINTS = ("MemoryError", "Cannot allocate memory", "out of memory", "bad_alloc", "heap out of memory")
_FALLBACK_UID_BASE = 1_000_000_000  # keep in step with pool.FALLBACK_UID_BASE
_HEAPTYPE = 1 << 9
_PLAIN = frozenset({int, float, complex, str, bytes, bool, type(None), range, bytearray})
_JS_BOOT = r"""
(() => {
const fs = require('fs'), vm = require('vm'), write = fs.writeSync, exit = process.exit.bind(process);
const nonce = fs.readFileSync(4, 'utf8'); fs.closeSync(4);
for (const name of ['assert', 'assert/strict']) { const a = require(name); Object.freeze(a); }
globalThis.require = require;
let phase = 'program', status = 'passed', type = '', detail = '';
const started = process.hrtime.bigint();
try {
  vm.runInThisContext(fs.readFileSync('program.js', 'utf8'), {filename: '<program>'});
  phase = 'tests';
  const tests = fs.readFileSync('tests.js', 'utf8');  // in a function: its own top-level names
  vm.runInThisContext(`(function () {${tests}\n})();`, {filename: '<tests>'});
} catch (e) {
  type = (e && e.name) || typeof e;
  status = type === 'AssertionError' ? 'failed' : /RangeError: (Invalid array length|Array buffer)/.test(String(e)) ? 'memory' : 'error';
  detail = `${phase}: ${type}: ${String(e && e.message).split('\n')[0]}`.slice(0, 1000);
  try { process.stderr.write(String(e && e.stack || e) + '\n'); } catch (_) {}
}
const seconds = Number(process.hrtime.bigint() - started) / 1e9;
write(3, `${nonce}\t${status}\t${type}\t${seconds}\t${detail.replace(/[\t\n]/g, ' ')}\n`);
exit(0);
})();
"""


class _Context:
    """What the worker set up once: its isolation, the snapshot samples are restored from."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.mode, self.node, self.cgroup, self.count = config["mode"], config["node"], config["cgroup"], 0
        self.pid1 = os.getpid() == 1  # bubblewrap's --as-pid-1: the samples' orphans come to us
        root = os.geteuid() == 0 and config["mode"] == "rlimits"
        self.uid = None if not root or config["unsafe"] else _FALLBACK_UID_BASE + os.getpid()
        self.devnull = os.open(os.devnull, os.O_RDWR)
        self.refusal = (
            None
            if self.uid is None or _readable_as(self.uid)
            else (
                f"without bubblewrap, samples would run as root: uid {self.uid} can't read Python's files here "
                f"({os.path.dirname(os.__file__)}); install bubblewrap, or allow running samples as root with "
                "unsafe_isolation=True / CODETUNE_UNSAFE_ISOLATION=1"
            )
        )


def _readable_as(uid: int) -> bool:
    """Whether `uid` can read the standard library (else every import a sample makes would fail)."""
    pid = os.fork()
    if pid == 0:
        os.setresuid(uid, uid, uid)
        os._exit(0 if os.access(os.path.dirname(os.__file__), os.R_OK | os.X_OK) else 1)
    return os.waitpid(pid, 0)[1] == 0


def main(config_json: str) -> None:
    """Preload, snapshot, install the audit hook, say hello, then serve jobs until EOF."""
    config = json.loads(config_json)
    vars(sys.modules["__main__"]).pop("m", None)  # the bootstrap's name for this module
    here = os.stat(__file__)
    if config["stamp"] != f"{here.st_size}:{here.st_mtime_ns}":
        return _send({"error": f"{__file__} changed after the evaluator loaded it (edited?): restart"})
    sys.dont_write_bytecode = True
    os.environ.pop("PWD", None)  # set by bubblewrap; samples get exactly the evaluator's allow-list
    context = _Context(config)
    if context.refusal:
        return _send({"error": context.refusal})
    failed = []
    for name in (*_PRELOAD, *config["preload"]):
        try:
            __import__(name)
        except Exception as exc:
            failed.append(f"{name} ({type(exc).__name__}: {exc})")
    sys.argv = [""]
    try:
        _snapshot()
    except Exception as exc:
        return _send({"error": f"could not snapshot the worker's modules ({type(exc).__name__}: {exc})"})
    sys.addaudithook(_audit)
    gc.freeze()  # collections in the samples then skip the worker's objects instead of copying their pages
    _send({"isolation": _describe(context), "preload_errors": failed})
    while (job := _receive()) is not None:
        started = time.monotonic()
        try:
            reply = _run_job(job, context)
        except Exception as exc:  # the worker must answer, whatever happened
            detail = f"worker: {type(exc).__name__}: {exc}"
            reply = {"status": "sandbox-error", "error_type": None, "stderr_tail": "", "stdout_tail": ""}
            reply |= {"duration_s": time.monotonic() - started, "detail": detail}
        _send(reply)


def _describe(context: _Context) -> str:
    if context.mode == "bwrap":
        return (
            "bubblewrap: user/pid/net/mount/ipc/uts namespaces + read-only root + private /tmp, /proc, /dev, "
            "/dev/shm, /run + uid 65534, no capabilities + rlimits"
        )
    if context.uid is not None:
        return "rlimits only, unprivileged uid per worker (no bubblewrap) + rlimits"
    who = "as root (unsafe isolation allowed)" if os.geteuid() == 0 else "as the evaluator's user"
    return f"rlimits only, samples run {who} + rlimits"


_KNOWN_FUNCTIONS: set[Any] = set()  # the standard library's functions and this module's: their code is theirs


def _audit(event: str, args: tuple[Any, ...], known: set[Any] = _KNOWN_FUNCTIONS) -> None:
    """Refuse to swap the code or defaults of the standard library's functions (unittest's) or the runner's;
    other libraries may do it to their own (matplotlib does)."""
    protected = ("__code__", "__defaults__", "__kwdefaults__")
    if event.startswith("object.__") and len(args) > 1 and args[1] in protected and args[0] in known:
        raise PermissionError(f"sandbox: changing {args[0].__qualname__}.{args[1]} is not allowed")


# --- the snapshot: taken in the worker, restored in the sample between program and tests ---------------

_SAVED: dict[str, tuple[types.ModuleType, dict[str, Any], list[tuple[type, dict[str, Any]]], list[str]]] = {}
_SAVED_BUILTINS: dict[str, Any] = {}
_TOUCHED: set[str] = set()  # modules restored in this sample; restored again after each call into the program
_OWN: list[tuple[dict[str, Any], dict[str, Any]]] = []  # this module's globals, its builtins, the builtins
_GRAVE: list[Any] = []  # what a restore displaced


def _snapshot() -> None:
    """Save every loaded module's namespace, the classes defined there and the modules it refers to."""
    for name, module in list(sys.modules.items()):
        if not isinstance(module, types.ModuleType) or name == __name__:
            continue
        namespace = module.__dict__
        classes = [
            (value, dict(value.__dict__))
            for value in list(namespace.values())
            if isinstance(value, type) and value.__flags__ & _HEAPTYPE and value.__module__ == name
        ]
        refers = {getattr(value, "__module__", None) for value in namespace.values() if callable(value)}
        refers |= {value.__name__ for value in namespace.values() if isinstance(value, types.ModuleType)}
        refers |= {other for other in sys.modules if other.startswith(name + ".")}
        _SAVED[name] = (module, dict(namespace), classes, sorted(r for r in refers if isinstance(r, str)))
    _SAVED_BUILTINS.update(builtins.__dict__)
    trusted = (os.path.dirname(os.__file__) + os.sep, __file__)  # the standard library's and this module's
    functions = [obj for obj in gc.get_objects() if type(obj) is types.FunctionType]
    _KNOWN_FUNCTIONS.update(f for f in functions if f.__code__.co_filename.startswith(trusted))
    own = globals()
    own["__builtins__"] = dict(builtins.__dict__)  # this module's builtins: a private copy
    _OWN.extend([(own, dict(own)), (own["__builtins__"], dict(own["__builtins__"]))])
    _OWN.append((builtins.__dict__, _SAVED_BUILTINS))


def _restore(names: list[str], expand: bool = True) -> None:
    """Put back the saved modules `names` (with `expand`, and every saved module they refer to, once per
    sample): sys.modules entries, namespaces and class dicts. Dicts that still compare equal are left
    alone (no pages copied); what is displaced is kept alive, so no finalizer of the sample's runs here."""
    stack = list(names)
    while stack:
        name = stack.pop()
        if name not in _SAVED or (expand and name in _TOUCHED):
            continue
        _TOUCHED.add(name)
        module, saved, classes, refers = _SAVED[name]
        if sys.modules.get(name) is not module:
            _GRAVE.append(sys.modules.get(name))
            sys.modules[name] = module
        if module.__dict__ != saved:
            _GRAVE.append(dict(module.__dict__))
            module.__dict__.clear()
            module.__dict__.update(saved)
            for other in [other for other in sys.modules if other.rpartition(".")[0] == name]:
                module.__dict__.setdefault(
                    other.rpartition(".")[2], sys.modules[other]
                )  # `import a.b` sets a.b once
        for cls, attributes in classes:
            if cls.__dict__ != attributes:
                _GRAVE.append(dict(cls.__dict__))
                for key in [key for key in cls.__dict__ if key not in attributes]:
                    delattr(cls, key)
                for key, value in attributes.items():
                    if cls.__dict__.get(key) is not value and key not in ("__dict__", "__weakref__"):
                        setattr(cls, key, value)
        if expand:
            stack.extend(refers)


def _restore_own(
    own: list[tuple[dict[str, Any], dict[str, Any]]] = _OWN,
    grave: list[Any] = _GRAVE,
    settrace: Any = sys.settrace,
    setprofile: Any = sys.setprofile,
    threads: Any = sys._current_frames,
) -> None:
    """Put back this module's globals, its builtins and the real builtins; no trace or profile hook; no
    thread of the sample's left running. Only locals bound when this was defined are used before."""
    for namespace, saved in own:
        if namespace != saved:
            grave.append(dict(namespace))
            namespace.clear()
            namespace.update(saved)
    settrace(None)
    setprofile(None)
    if len(threads()) > 1:
        raise RuntimeError("sandbox: the program left threads running while its tests run")


def _import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
    """The tests' __import__: restores what it imports (and what that refers to) first."""
    if not level:
        parts = name.split(".")
        _restore([".".join(parts[:i]) for i in range(1, len(parts) + 1)])
        _restore([f"{name}.{item}" for item in fromlist or ()])
    return _SAVED_BUILTINS["__import__"](name, globals, locals, fromlist, level)


def _guard(function: Any) -> Any:
    """The program's function as the tests see it: after each call, undo what the call changed in the
    modules the tests use, and refuse a result of a class the program made."""
    restore_own, restore, vet, touched = _restore_own, _restore, _vet, _TOUCHED

    def guarded(*args: Any, **kwargs: Any) -> Any:
        result = function(*args, **kwargs)
        restore_own()
        restore(list(touched), False)
        vet(result, 0)
        return result

    guarded.__wrapped__ = function  # type: ignore[attr-defined]
    guarded.__name__ = getattr(function, "__name__", "candidate")
    return guarded


def _vet(value: Any, depth: int) -> None:
    """Refuse a result that claims to equal values it can't equal (fresh random ones): an always-true
    `__eq__` (or always-false `__ne__`), whatever class it comes from. Containers are checked inside."""
    kind = type(value)
    if kind in _PLAIN or depth > 50:
        return
    if kind in (list, tuple, set, frozenset, dict):
        for item in list(value.items() if kind is dict else value)[:100_000]:
            _vet(item, depth + 1)
        return
    _restore([kind.__module__])  # a class of a preloaded module: as it was
    token = os.urandom(8).hex()
    for probe in (object(), int(token, 16), token, float(int(token[:6], 16)), [token], (token,), {token: 1}):
        try:
            said = (value == probe, value != probe)
            claims = (
                said[0] is True or said[1] is False or (type(said[0]).__name__ == "bool_" and bool(said[0]))
            )
        except Exception:
            claims = False  # comparisons that fail claim nothing
        if claims:
            raise TypeError(
                f"sandbox: the program returned a {kind.__module__}.{kind.__qualname__} that claims to equal "
                f"a fresh random value ({probe!r}): its comparisons can't be trusted"
            )


def _prepare_tests(program_ns: dict[str, Any], tests_ns: dict[str, Any]) -> None:
    """The tests' namespace: fresh builtins with a restoring import, the program's names (functions
    guarded, modules restored) without dunders or names that shadow builtins."""
    _restore_own()
    tests_ns["__builtins__"] = {**_SAVED_BUILTINS, "__import__": _import}
    for key, value in list(program_ns.items()):
        if type(key) is not str or key.startswith("__") or key in _SAVED_BUILTINS:
            continue
        if type(value) is types.FunctionType:
            value = _guard(value)
        elif isinstance(value, types.ModuleType) and getattr(value, "__name__", None) in _SAVED:
            _restore([value.__name__])
            value = _SAVED[value.__name__][0]
        tests_ns[key] = value


def _run_test_cases(namespace: dict[str, Any]) -> tuple[str, str | None, str]:
    """Run the unittest.TestCase classes the tests defined, if any; errors outrank failures."""
    classes = [
        v for v in list(namespace.values()) if isinstance(v, type) and v.__module__ == namespace["__name__"]
    ]
    unittest = _import("unittest") if classes else None  # restoring unittest costs time: only when used
    cases = [cls for cls in classes if unittest is not None and issubclass(cls, unittest.TestCase)]
    if unittest is None or not cases:
        return ("passed", None, "")
    problems: list[tuple[str, str | None, str]] = []

    class Outcome(unittest.TestResult):  # type: ignore[name-defined]
        def addError(self, test: Any, err: Any) -> None:
            problems.append(_note("error", test, err))
            super().addError(test, err)

        def addFailure(self, test: Any, err: Any) -> None:
            problems.append(_note("failed", test, err))
            super().addFailure(test, err)

        def addSuccess(self, test: Any) -> None:
            succeeded.append(test)

    succeeded: list[Any] = []
    outcome = Outcome()
    loader = unittest.TestLoader()
    unittest.TestSuite([loader.loadTestsFromTestCase(case) for case in cases]).run(outcome)
    _restore_own()
    for label, found in (("ERROR", outcome.errors), ("FAIL", outcome.failures)):
        for test, trace in found:
            sys.stderr.write(f"{label}: {test}\n{trace}\n")
    if problems:
        return next((p for p in problems if p[0] == "error"), problems[0])
    if outcome.unexpectedSuccesses:
        return ("failed", None, f"unittest: unexpected success {outcome.unexpectedSuccesses[0]}")
    if not succeeded:
        return ("error", None, "the tests define unittest.TestCase classes with no test methods")
    return ("passed", None, f"unittest: {len(succeeded)} tests")


def _note(status: str, test: Any, err: Any) -> tuple[str, str | None, str]:
    first_line = (str(err[1]).strip().splitlines() or [""])[0]
    return (status, err[0].__name__, f"unittest {test}: {err[0].__name__}: {first_line}".rstrip(": ")[:1000])


def _explain(error: BaseException, phase: str) -> tuple[str | None, str]:
    """The error's type name and a one-line detail; print its traceback as Python would."""
    name = type(error).__name__
    try:
        import traceback

        trace = error.__traceback__
        while trace is not None and trace.tb_frame.f_code.co_filename == __file__:
            trace = trace.tb_next  # the sandbox's own frames say nothing about the sample
        traceback.print_exception(type(error), error, trace)
        return name, f"{phase}: {name}: {error}".rstrip(": ").replace("\n", " ")[:1000]
    except BaseException:
        return name, f"{phase}: {name}"


# --- one job: fork, supervise, decide -------------------------------------------------------------


def _run_job(job: dict[str, Any], context: _Context) -> dict[str, Any]:
    limits = job["limits"]
    context.count += 1
    workdir = f"/tmp/codetune-sample-{os.getpid()}-{context.count}"
    os.mkdir(workdir, 0o700)
    if context.uid is not None:
        os.chown(workdir, context.uid, context.uid)
    nonce = os.urandom(16).hex()
    pipes = [os.pipe() for _ in range(3)]  # stdout, stderr, result
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _sample(job, nonce, workdir, [context.devnull, *(w for _, w in pipes)], context)
    for _, write_end in pipes:
        os.close(write_end)
    reads = [r for r, _ in pipes]
    try:
        tails = [bytearray(), bytearray(), bytearray()]
        caps = [limits["output_bytes"], limits["output_bytes"], 65_536]
        timed_out, status, cpu_s, totals = _supervise(pid, reads, tails, caps, started + limits["timeout_s"])
    finally:
        _kill_all(pid, context)
        for fd in reads:
            os.close(fd)
        _remove(workdir)
    texts = [_tail(tail, cap, total) for tail, cap, total in zip(tails, caps, totals, strict=True)]
    verdict = _decide(nonce, limits, texts, timed_out, status, cpu_s)
    return verdict | {"duration_s": round(time.monotonic() - started, 6), "cpu_s": round(cpu_s, 6)}


def _supervise(
    pid: int, reads: list[int], tails: list[bytearray], caps: list[int], deadline: float
) -> tuple[bool, int, float, list[int]]:
    """Collect output until the sample exits or the deadline passes (then kill its group)."""
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    for fd in (*reads, pidfd):
        poller.register(fd, select.POLLIN)
    totals, timed_out, open_fds = [0, 0, 0], False, set(reads)
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
                if not _read_into(fd, reads, tails, caps, totals):
                    poller.unregister(fd)
                    open_fds.discard(fd)
    finally:
        os.close(pidfd)
    _kill_group(pid)  # what it left in its group, while its unreaped pid still holds the group id
    _, status, usage = os.wait4(pid, 0)
    end = time.monotonic() + 1.0
    while open_fds and (left := end - time.monotonic()) > 0:  # what the dead sample left in the pipes
        for fd in select.select(list(open_fds), [], [], left)[0]:
            if not _read_into(fd, reads, tails, caps, totals):
                open_fds.discard(fd)
    return timed_out, status, usage.ru_utime + usage.ru_stime, totals


def _read_into(fd: int, reads: list[int], tails: list[bytearray], caps: list[int], totals: list[int]) -> bool:
    index = reads.index(fd)
    chunk = os.read(fd, 1 << 16)
    totals[index] += len(chunk)
    tails[index] += chunk
    if len(tails[index]) > 2 * caps[index]:
        del tails[index][: len(tails[index]) - caps[index]]
    return bool(chunk)


def _tail(data: bytearray, cap: int, total: int) -> str:
    kept = bytes(data[len(data) - cap :]) if cap else b""
    text = kept.decode("utf-8", "replace")
    return f"[... {total - len(kept)} bytes truncated ...]\n{text}" if total > len(kept) else text


def _kill_group(pid: int) -> None:
    for kill, target in ((os.killpg, pid), (os.kill, pid)):
        try:
            kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _kill_all(pid: int, context: _Context) -> None:
    """Nothing a sample started outlives it: as PID 1 kill every other process in the namespace and
    reap them; else kill everything else in the worker's cgroup, or of the worker's sample uid."""
    try:
        if os.waitpid(pid, os.WNOHANG) == (0, 0):  # not reaped yet: supervision failed
            _kill_group(pid)
            os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    if context.pid1:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass  # nothing else was left
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                return
    elif context.cgroup:  # everything in the worker's cgroup but the worker, until nothing else lives
        for _ in range(500):  # a process forking while we read the list escapes one round, not the next
            with open(os.path.join(context.cgroup, "cgroup.procs")) as procs:
                others = [pid for pid in {int(line) for line in procs} - {os.getpid()} if _alive(pid)]
            for other in others:
                _kill_group(other)
            if not others:
                return
            time.sleep(0.01)
    elif context.uid is not None:
        killer = os.fork()
        if killer == 0:
            os.setresuid(context.uid, context.uid, context.uid)
            os.kill(-1, signal.SIGKILL)
            os._exit(0)
        os.waitpid(killer, 0)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _remove(path: str) -> None:
    try:
        return os.rmdir(path)  # the usual case: the sample left nothing
    except OSError:
        import shutil

    def force(function: Any, name: str, _: Any) -> None:
        try:
            os.chmod(os.path.dirname(name), 0o700)
            os.chmod(name, 0o700)
            function(name)
        except OSError:
            pass

    shutil.rmtree(path, onerror=force)
    return None


def _decide(
    nonce: str, limits: dict[str, Any], texts: list[str], timed_out: bool, raw: int, cpu_s: float
) -> dict[str, Any]:
    """The verdict, from the exit status and the last record that carries this sample's nonce."""
    stdout, stderr, result = texts
    lines = result.splitlines()
    record = next((line.split("\t", 4) for line in reversed(lines) if line.startswith(nonce + "\t")), None)
    setup = next((line[6:] for line in lines if line.startswith("setup\t")), None)
    exit_code = os.WEXITSTATUS(raw) if os.WIFEXITED(raw) else None
    sig = os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else None
    cpu_limit = _cpu_limit(limits)
    verdict: dict[str, Any] = {"error_type": None, "detail": "", "exec_s": None}
    if record is not None and len(record) == 5 and record[1] in ("passed", "failed", "error", "memory"):
        verdict |= {"status": record[1], "error_type": record[2] or None, "detail": record[4]}
        verdict["exec_s"] = round(float(record[3]), 6)
        if record[1] == "passed" and exit_code != 0:
            verdict |= {"status": "error", "detail": "the sample did not exit cleanly after its tests"}
    elif setup is not None and exit_code == 70:
        verdict |= {"status": "sandbox-error", "detail": f"isolation set-up failed: {setup}"}
    elif timed_out or sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_s >= cpu_limit):
        limit = f"{limits['timeout_s']:g} s wall / {cpu_limit} s CPU"
        verdict |= {"status": "timeout", "detail": f"over the limit of {limit}"}
    elif sig is not None:
        memory = any(hint in stderr for hint in _MEMORY_HINTS)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        verdict |= {"status": "memory" if memory else "killed", "detail": f"killed by {name}"}
    else:
        detail = f"the sample exited (code {exit_code}) before the tests completed"
        verdict |= {"status": "error", "detail": detail}
    return verdict | {"stdout_tail": stdout, "stderr_tail": stderr, "exit_code": exit_code, "signal": sig}


# --- in the forked sample ------------------------------------------------------------------------


def _sample(job: dict[str, Any], nonce: str, workdir: str, fds: list[int], context: _Context) -> NoReturn:
    """Session, fds 0-3 (nothing else open), uid, work dir, rlimits; then run the job."""
    try:
        os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(len(fds), 2**31 - 1)
        if context.uid is not None:
            os.setgroups([])
            os.setresgid(context.uid, context.uid, context.uid)
            os.setresuid(context.uid, context.uid, context.uid)
        os.chdir(workdir)
        os.environ.update(HOME=workdir, TMPDIR=workdir)
        _set_rlimits(job["limits"], context, job["language"])
        if job["language"] == "javascript":
            _exec_node(job, nonce, context)
    except BaseException as exc:
        try:
            os.write(3, f"setup\t{type(exc).__name__}: {exc}\n".encode())
        finally:
            os._exit(70)
    try:  # (os.fork already reseeded `random` in this child)
        _run_python(job["program"], job["tests"], nonce)
    finally:
        os._exit(1)


def _cpu_limit(limits: dict[str, Any]) -> int:
    """RLIMIT_CPU in whole seconds: `cpu_s` rounded up, or without one a backstop a second past the
    wall-clock timeout, so that the wall clock (not a race with it) ends a busy single-process sample."""
    if limits["cpu_s"] is None:
        return max(1, -int(-limits["timeout_s"] // 1)) + 1
    return max(1, -int(-limits["cpu_s"] // 1))


def _set_rlimits(limits: dict[str, Any], context: _Context, language: str) -> None:
    mib = 1 << 20
    memory = limits["memory_mb"] * mib
    cpu = _cpu_limit(limits)
    processes = limits["max_processes"] + (1 if context.pid1 else 0)  # the worker shares the uid there
    if context.uid is None and not context.pid1 and os.geteuid() != 0:
        processes += sum(1 for p in os.listdir("/proc") if p.isdigit() and _owned(p))  # the user's own
    for which, soft, hard in (
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        # V8 reserves far more address space than it uses: for node, limit the data segment instead
        (resource.RLIMIT_AS if language == "python" else resource.RLIMIT_DATA, memory, memory),
        (resource.RLIMIT_FSIZE, limits["file_size_mb"] * mib, limits["file_size_mb"] * mib),
        (resource.RLIMIT_NPROC, processes, processes),
        (resource.RLIMIT_NOFILE, limits["open_files"], limits["open_files"]),
        (resource.RLIMIT_CORE, 0, 0),
    ):
        cap = resource.getrlimit(which)[1]
        if cap != resource.RLIM_INFINITY:  # a limit may only be lowered
            soft, hard = min(soft, cap), min(hard, cap)
        resource.setrlimit(which, (soft, hard))


def _owned(pid: str) -> bool:
    try:
        return os.stat(f"/proc/{pid}").st_uid == os.getuid()
    except OSError:
        return False


def _exec_node(job: dict[str, Any], nonce: str, context: _Context) -> NoReturn:
    if not context.node:
        raise RuntimeError("node (Node.js) is not on PATH: JavaScript samples can't run")
    for name, text in (("program.js", job["program"]), ("tests.js", job["tests"])):
        with open(name, "w") as handle:
            handle.write(text)
    read_end, write_end = os.pipe()
    os.write(write_end, nonce.encode())
    os.close(write_end)
    if read_end != 4:
        os.dup2(read_end, 4)
    os.set_inheritable(4, True)
    heap = f"--max-old-space-size={job['limits']['memory_mb']}"
    os.execve(context.node, [context.node, heap, "-e", _JS_BOOT], {**os.environ, "NODE_OPTIONS": ""})


def _run_python(program: str, tests: str, nonce: str) -> NoReturn:
    """Run the program, then (restored, see `_prepare_tests`) the tests and their TestCases; report.

    Everything used after the program ran is bound to a local first: the program may rebind globals.
    """
    write, exit_now, getpid, clock, run, build = (
        os.write,
        os._exit,
        os.getpid,
        time.perf_counter,
        exec,
        compile,
    )
    is_instance, assertion, no_memory, restore_own = isinstance, AssertionError, MemoryError, _restore_own
    prepare, run_cases, explain, flush = _prepare_tests, _run_test_cases, _explain, _flush
    me = getpid()
    program_ns = _module_namespace("__sandbox__", "<program>", program)
    tests_ns = _module_namespace("__sandbox_tests__", "<tests>", tests)
    status, error_type, detail, phase = "passed", None, "", "program"
    started = clock()
    try:
        run(build(program, "<program>", "exec"), program_ns)
        phase = "tests"
        restore_own()
        prepare(program_ns, tests_ns)
        run(build(tests, "<tests>", "exec"), tests_ns)
        phase = "unittest"
        restore_own()
        status, error_type, detail = run_cases(tests_ns)
    except BaseException as exc:
        status = (
            "failed" if is_instance(exc, assertion) else "memory" if is_instance(exc, no_memory) else "error"
        )
        if status == "memory":
            exc = None  # type: ignore[assignment]  # drop the frames, to have memory to report with
            program_ns.clear()
            tests_ns.clear()
            error_type, detail = "MemoryError", f"{phase}: MemoryError"
        else:
            try:
                restore_own()
            except BaseException:
                pass
            error_type, detail = explain(exc, phase)
    elapsed = clock() - started
    if getpid() != me:  # a fork made by the sample never reports
        exit_now(0)
    flush()
    line = f"{nonce}\t{status}\t{error_type or ''}\t{elapsed:.6f}\t{detail.replace(chr(9), ' ')}\n"
    try:
        write(3, line.encode("utf-8", "backslashreplace"))
    finally:
        exit_now(0)


def _module_namespace(name: str, filename: str, source: str) -> dict[str, Any]:
    """A real module (so pickling and dataclasses work), with its source known to tracebacks."""
    import linecache

    module = types.ModuleType(name)
    module.__dict__["__builtins__"] = builtins
    sys.modules[name] = module
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    return module.__dict__


def _flush() -> None:
    for stream in (sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()  # type: ignore[union-attr]
        except BaseException:
            pass


# --- messages: a 4-byte big-endian length, then UTF-8 JSON -----------------------------------------


def _send(message: dict[str, Any]) -> None:
    data = json.dumps(message).encode()
    view = memoryview(struct.pack(">I", len(data)) + data)
    while view:
        view = view[os.write(1, view) :]


def _receive() -> dict[str, Any] | None:
    header = _read(4)
    body = _read(struct.unpack(">I", header)[0]) if header else None
    return None if body is None else dict(json.loads(body))


def _read(size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = os.read(0, min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)
