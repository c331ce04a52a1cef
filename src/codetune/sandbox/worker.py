"""The sandbox worker: a fork server that runs each sample in a fresh child. Standard library only.

Started by `pool.py` inside bubblewrap (as its PID 1, which samples can't signal) or, without it, as a
plain process. Jobs come as JSON lines on stdin, verdicts go back the same way; the worker itself never
runs sample code. Each sample is a fork with its own session, stdin on /dev/null, pipes for stdout, stderr
and the result and nothing else, rlimits, a fresh work dir (and, as root without bubblewrap, the worker's
unprivileged uid); Python runs program and tests in it, JavaScript execs node. "passed" needs exit status
0 and a result record with a random per-sample nonce, written after the tests ran to the end. In Python,
what the tests use (modules, their classes, builtins, the runner's globals) is restored from a snapshot
taken in the worker, between program and tests and after each call the tests make into the program; an
audit hook refuses swaps of the code of the standard library's functions and the runner's; a result that
claims to equal a fresh random value (an always-true `__eq__`) is an error. With the values judge the
tests run in a process of their own instead, one per worker (`_judge`), and none of that is needed.
"""

from __future__ import annotations

import builtins
import gc
import importlib
import itertools
import json
import os
import resource
import select
import signal
import socket
import sys
import tempfile
import time
import types
from collections.abc import Callable
from typing import Any, NoReturn

_PRELOAD = ("unittest", "math", "re", "collections", "itertools", "functools", "string", "heapq", "typing")
_PRELOAD += ("traceback",)  # type: ignore[assignment]  # for `_explain`
_MEMORY_HINTS = ("MemoryError", "Cannot allocate memory", "out of memory", "bad_alloc", "heap out of memory")
_PLAIN = frozenset({int, float, complex, str, bytes, bool, type(None), range, bytearray})
_ENDS_LOOPS = (StopIteration, StopAsyncIteration)  # from the program: a RuntimeError for the tests
_SCRATCH = ("/tmp", "/run", "/root", "/dev", "/dev/shm")  # bubblewrap's writable mounts: this worker's alone
_RLIMITS = tuple(getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_"))
_JS_BOOT = r"""(() => {
const fs = require('fs'), vm = require('vm'), write = fs.writeSync, exit = process.exit.bind(process);
const nonce = fs.readFileSync('.nonce', 'utf8'), started = process.hrtime.bigint();
fs.unlinkSync('.nonce');
for (const name of ['assert', 'assert/strict']) Object.freeze(require(name));
globalThis.require = require;
let phase = 'program', status = 'passed', type = '', detail = '';
try {
  vm.runInThisContext(fs.readFileSync('program.js', 'utf8'), {filename: '<program>'});
  phase = 'tests';  // in a function: the tests' top-level names are their own
  vm.runInThisContext(`(function () {${fs.readFileSync('tests.js', 'utf8')}\n})();`, {filename: '<tests>'});
} catch (e) {
  type = (e && e.name) || typeof e;
  const memory = /RangeError: (Invalid array length|Array buffer)/.test(String(e));
  status = type === 'AssertionError' ? 'failed' : memory ? 'memory' : 'error';
  detail = `${phase}: ${type}: ${String(e && e.message).split('\n')[0]}`.slice(0, 1000).replace(/\t/g, ' ');
  try { process.stderr.write(String(e && e.stack || e) + '\n'); } catch (_) {}
}
const seconds = Number(process.hrtime.bigint() - started) / 1e9;
write(3, `${nonce}\t${status}\t${type}\t${seconds}\t${detail}\n`);
exit(0);
})();
"""


def main(config_json: str) -> None:
    """Check the stamp, preload, snapshot, install the audit hook, say hello, then serve jobs until EOF."""
    config = json.loads(config_json)
    vars(sys.modules["__main__"]).pop("m", None)  # the bootstrap's name for this module
    here = os.stat(__file__)
    if config["stamp"] != f"{here.st_size}:{here.st_mtime_ns}":
        return _send({"error": f"{__file__} changed after the evaluator loaded it (edited?): restart"})
    sys.dont_write_bytecode, sys.argv = True, [""]
    os.environ.pop("PWD", None)  # set by bubblewrap; samples get exactly the evaluator's allow-list
    if not os.access(os.path.expanduser("~"), os.W_OK):  # uid 65534's /nonexistent, in bubblewrap
        # a home in its private /tmp for what preloaded libraries write at import (matplotlib warned on
        # every worker's start and rebuilt its font cache); each sample gets its work dir as HOME
        os.environ["HOME"] = home = tempfile.mkdtemp(prefix="codetune-worker-")
    ctx = types.SimpleNamespace(
        **config, count=0, pid1=os.getpid() == 1, devnull=os.open(os.devnull, os.O_RDWR), judge=None
    )
    ctx.uid = 1_000_000_000 + os.getpid() if config["drop_uid"] else None  # the fallback's, per worker
    if ctx.uid is not None and not _readable_as(ctx.uid):
        stdlib = os.path.dirname(os.__file__)
        why = f"uid {ctx.uid} can't read Python's files here ({stdlib}); install bubblewrap, or allow running"
        why += " samples as root with unsafe_isolation=True / CODETUNE_UNSAFE_ISOLATION=1"
        return _send({"error": f"without bubblewrap, samples would run as root: {why}"})
    import ctypes

    # undumpable (PR_SET_DUMPABLE 0), and so every process forked from it: a sample of the same uid can't
    # trace this worker or open its /proc/<pid>/mem and fd/ (fd 1 carries the verdicts to the evaluator),
    # nor those of a values judge's tests; node gets its own flag back at exec, but not this one's
    ctx.libc = ctypes.CDLL(None, use_errno=True)
    if ctx.libc.prctl(4, 0, 0, 0, 0) != 0:
        return _send({"error": "prctl(PR_SET_DUMPABLE, 0) failed: the worker would be open to its samples"})
    failed = []
    for name in (*_PRELOAD, *config["preload"]):
        try:
            __import__(name)
        except Exception as exc:
            failed.append(f"{name} ({type(exc).__name__}: {exc})")
    _snapshot()
    sys.addaudithook(_audit)
    gc.freeze()  # collections in the samples then skip the worker's objects instead of copying their pages
    if "home" in locals():
        _remove(home)  # (samples get their own)
    state, ctx.scratch = _state(os.getpid()), {path: _listing(path) for path in _SCRATCH if ctx.pid1}
    _send({"preload_errors": failed})
    for line in sys.stdin.buffer:
        started = time.monotonic()
        try:
            reply = _run_job(json.loads(line), ctx)
        except Exception as exc:  # the worker must answer, whatever happened
            detail = f"worker: {type(exc).__name__}: {exc}"
            reply = {"status": "sandbox-error", "duration_s": time.monotonic() - started, "detail": detail}
        # lowered limits can't be raised again, nor device nodes made anew: a new worker takes over
        disturbed = _state(os.getpid()) != state and "reniced or limited its sandbox worker"
        disturbed = disturbed or (not _wipe(ctx) and f"changed what was in {', '.join(_SCRATCH)}")
        if disturbed:
            return _send(reply | {"status": "error", "detail": f"the sample {disturbed}", "replace": True})
        _send(reply)


def _send(message: dict[str, Any]) -> None:
    data = memoryview(json.dumps(message).encode() + b"\n")
    while data:
        data = data[os.write(1, data) :]


def _readable_as(uid: int) -> bool:
    """Whether `uid` can read the standard library (else every import a sample makes would fail)."""
    if (pid := os.fork()) == 0:
        os.setresuid(uid, uid, uid)
        os._exit(0 if os.access(os.path.dirname(os.__file__), os.R_OK | os.X_OK) else 1)
    return os.waitpid(pid, 0)[1] == 0


# --- the snapshot: taken in the worker, restored in the sample -----------------------------------

_SAVED: dict[str, tuple[types.ModuleType, dict[str, Any], list[tuple[type, dict[str, Any]]], list[str]]] = {}
_BUILTINS: dict[str, Any] = {}
_TOUCHED: set[str] = set()  # modules the tests use: restored once, then after each call into the program
_OWN: list[tuple[dict[str, Any], dict[str, Any]]] = []  # this module's globals, its builtins, the builtins
_GRAVE: list[Any] = []  # what a restore displaced, kept alive: no finalizer of the sample's runs in a restore
_KNOWN: set[int] = set()  # ids of the standard library's functions and this module's: their code is theirs


def _snapshot() -> None:
    """Save every loaded module's namespace, the classes defined there and the modules it refers to."""
    for name, module in list(sys.modules.items()):
        if isinstance(module, types.ModuleType) and name != __name__:
            space = module.__dict__
            classes = [(v, dict(v.__dict__)) for v in list(space.values()) if _own_class(v, name)]
            refers = {getattr(v, "__module__", None) for v in space.values() if callable(v)}
            refers |= {v.__name__ for v in space.values() if isinstance(v, types.ModuleType)}
            refers |= {other for other in sys.modules if other.startswith(name + ".")}
            _SAVED[name] = (module, dict(space), classes, [r for r in refers if isinstance(r, str)])
    trusted = (os.path.dirname(os.__file__) + os.sep, __file__)  # the standard library and this module
    functions = [obj for obj in gc.get_objects() if type(obj) is types.FunctionType]
    _KNOWN.update(id(f) for f in functions if f.__code__.co_filename.startswith(trusted))
    _BUILTINS.update(builtins.__dict__)
    own = globals()
    own["__builtins__"] = dict(builtins.__dict__)  # this module's builtins: a private copy
    _OWN.extend([(own, dict(own)), (own["__builtins__"], dict(_BUILTINS)), (builtins.__dict__, _BUILTINS)])


def _own_class(value: Any, module: str) -> bool:
    return isinstance(value, type) and bool(value.__flags__ & (1 << 9)) and value.__module__ == module  # heap


def _audit(event: str, args: tuple[Any, ...], known: set[int] = _KNOWN) -> None:
    """Refuse swaps of the code or defaults of known functions (unittest's, the runner's); other libraries
    may do it to their own (matplotlib does). Reading them (`object.__getattr__`: inspect.signature does,
    typing_extensions on import) is allowed."""
    protected = ("__code__", "__defaults__", "__kwdefaults__")
    changes = event in ("object.__setattr__", "object.__delattr__")
    if changes and len(args) > 1 and args[1] in protected and id(args[0]) in known:
        raise PermissionError(f"sandbox: changing {args[0].__qualname__}.{args[1]} is not allowed")


def _restore(names: list[str], expand: bool = True) -> None:
    """Put back the saved modules `names` (with `expand`, and once per sample every saved module they
    refer to): sys.modules entries, namespaces, class dicts. Equal dicts are left alone (no pages copied)."""
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
                module.__dict__.setdefault(other.rpartition(".")[2], sys.modules[other])  # `import a.b`
        for cls, attributes in classes:
            if cls.__dict__ != attributes:
                _GRAVE.append(dict(cls.__dict__))
                for key in [key for key in cls.__dict__ if key not in attributes]:
                    delattr(cls, key)
                for key, value in attributes.items():
                    if cls.__dict__.get(key) is not value and key not in ("__dict__", "__weakref__"):
                        setattr(cls, key, value)
        stack.extend(refers if expand else ())


def _restore_own(
    own: list[Any] = _OWN,
    grave: list[Any] = _GRAVE,
    settrace: Any = sys.settrace,
    setprofile: Any = sys.setprofile,
    threads: Any = sys._current_frames,
) -> None:
    """Put back this module's globals, its builtins and the real builtins; no trace or profile hook; no
    thread of the sample's left running. Only what was bound when this was defined is used before."""
    for namespace, saved in own:
        if namespace != saved:
            grave.append(namespace.copy())
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
    return _BUILTINS["__import__"](name, globals, locals, fromlist, level)


def _guard(function: Any) -> Any:
    """The program's function as the tests see it: after each call, undo what the call changed in the
    modules the tests use, and refuse a result whose comparisons can't be trusted."""
    restore_own, restore, vet, touched, ends_loops = _restore_own, _restore, _vet, _TOUCHED, _ENDS_LOOPS

    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            result = function(*args, **kwargs)
        except ends_loops as exc:  # it would end the tests' loop over map(...) early, as if done
            raise RuntimeError(f"the program raised {type(exc).__name__}") from None
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


def _shared(name: Any) -> bool:
    """Whether a top-level name of the program reaches the tests: no dunders, nothing that shadows a
    builtin."""
    return type(name) is str and not name.startswith("__") and name not in _BUILTINS


def _prepare_tests(program_ns: dict[str, Any], tests_ns: dict[str, Any]) -> list[Any]:
    """The tests' namespace: fresh builtins with a restoring import, the program's names (functions
    guarded, modules restored) but no dunders and no names that shadow builtins. Returns the program's
    values, held so that no object the tests make can take one's id."""
    _restore_own()
    program_values = list(program_ns.values())
    tests_ns["__builtins__"] = {**_BUILTINS, "__import__": _import}
    for key, value in list(program_ns.items()):
        if _shared(key):
            if type(value) is types.FunctionType:
                value = _guard(value)
            elif isinstance(value, types.ModuleType) and getattr(value, "__name__", None) in _SAVED:
                _restore([value.__name__])
                value = _SAVED[value.__name__][0]
            tests_ns[key] = value
    return program_values


def _run_test_cases(namespace: dict[str, Any], program_values: list[Any]) -> tuple[str, str | None, str]:
    """Run the unittest.TestCase classes the tests defined (not the program's, whose module name they
    share), if any; errors outrank failures."""
    theirs = {id(v) for v in program_values}
    classes = [
        v for v in list(namespace.values()) if _own_class(v, namespace["__name__"]) and id(v) not in theirs
    ]
    unittest = _import("unittest") if classes else None  # restoring unittest costs time: only when used
    cases = [cls for cls in classes if unittest is not None and issubclass(cls, unittest.TestCase)]
    if unittest is None or not cases:
        return ("passed", None, "")
    outcome = unittest.TestResult()
    unittest.TestSuite([unittest.TestLoader().loadTestsFromTestCase(case) for case in cases]).run(outcome)
    _restore_own()
    for status, label, found in (("error", "ERROR", outcome.errors), ("failed", "FAIL", outcome.failures)):
        for test, trace in found:
            sys.stderr.write(f"{label}: {test}\n{trace}\n")
        for test, trace in found[:1]:  # the exception's line: the first unindented one of the last traceback
            last = trace.rpartition("Traceback (most recent call last):\n")[2].splitlines()
            line = next((line for line in last if line and not line.startswith(" ")), "")
            return status, line.partition(":")[0].rpartition(".")[2], f"unittest {test}: {line}"[:1000]
    if outcome.unexpectedSuccesses:
        return ("failed", None, f"unittest: unexpected success {outcome.unexpectedSuccesses[0]}")
    if outcome.testsRun == len(outcome.skipped):
        return ("error", None, "the tests define unittest.TestCase classes with no test methods")
    return ("passed", None, f"unittest: {outcome.testsRun - len(outcome.skipped)} tests")


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


def _run_python(program: str, tests: str, nonce: str) -> NoReturn:
    """Run the program, then (restored, see `_prepare_tests`) the tests and their TestCases; report.
    Everything used after the program ran is bound to a local first: the program may rebind globals."""
    write, exit_now, getpid, clock, run, build = (
        os.write,
        os._exit,
        os.getpid,
        time.perf_counter,
        exec,
        compile,
    )
    is_instance, assertion, no_memory, restore_own = isinstance, AssertionError, MemoryError, _restore_own
    prepare, run_cases, explain, report, me = _prepare_tests, _run_test_cases, _explain, _report, getpid()
    streams = (sys.__stdout__, sys.__stderr__)
    program_ns = _module_namespace("__sandbox__", "<program>", program)
    tests_ns = _module_namespace("__sandbox_tests__", "<tests>", tests)
    tests_ns["__name__"] = "__sandbox__"  # as one module: `patch(__name__ + ".f")` reaches the program
    status, error_type, detail, phase, started = "passed", None, "", "program", clock()
    try:
        run(build(program, "<program>", "exec"), program_ns)
        phase = "tests"
        restore_own()
        program_values = prepare(program_ns, tests_ns)
        run(build(tests, "<tests>", "exec"), tests_ns)
        phase = "unittest"
        restore_own()
        status, error_type, detail = run_cases(tests_ns, program_values)
    except BaseException as exc:
        status = "failed" if is_instance(exc, assertion) else "error"
        if is_instance(exc, no_memory):
            exc = None  # type: ignore[assignment]  # drop the frames, to have memory to report with
            program_ns.clear()
            tests_ns.clear()
            status, error_type, detail = "memory", "MemoryError", f"{phase}: MemoryError"
        else:
            try:
                restore_own()
            except BaseException:
                pass
            error_type, detail = explain(exc, phase)
    elapsed = clock() - started
    if getpid() != me:  # a fork made by the sample never reports
        exit_now(0)
    report(nonce, status, error_type, detail, elapsed, streams, write, exit_now)


def _report(
    nonce: str,
    status: str,
    error_type: str | None,
    detail: str,
    elapsed: float,
    streams: tuple[Any, ...],
    write: Callable[[int, bytes], int],
    exit_now: Callable[[int], NoReturn],
) -> NoReturn:
    """Flush stdout and stderr, write the result record to fd 3, exit 0. The streams, os.write and
    os._exit come as `_run_python` bound them before the program ran (it may rebind the globals)."""
    for stream in streams:
        try:
            stream.flush()
        except BaseException:
            pass
    line = f"{nonce}\t{status}\t{error_type or ''}\t{elapsed:.6f}\t{detail.replace(chr(9), ' ')}\n"
    try:
        write(3, line.encode("utf-8", "backslashreplace"))
    finally:
        exit_now(0)


def _module_namespace(name: str, filename: str, source: str) -> dict[str, Any]:
    """A real module (so pickling and dataclasses work), with its source known to tracebacks."""
    import linecache

    module = sys.modules[name] = types.ModuleType(name)
    module.__dict__["__builtins__"] = builtins
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    return module.__dict__


# --- the values judge: the tests in a process of their own --------------------------------------


def _judge(sock: socket.socket, uid: int | None) -> NoReturn:
    """The values judge's tests' process: forked by the worker before any sample, it never runs a sample's
    code (the program's values reach it as plain data, `_decode`) and, undumpable, can't be traced or read
    by one. Per job it gets the tests and the nonce, and over its socket the sample's stdout and stderr, the
    result pipe and two pipes to the program's process; it writes the record, then says it is idle."""
    try:
        os.setsid()
        keep = sock.fileno()
        devnull = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(devnull, target)
        os.closerange(3, keep)
        os.closerange(keep + 1, 2**31 - 1)
        if uid is not None:  # the fallback as root: a uid of its own, which the samples' can't signal
            _become(uid)
        own = {which: resource.getrlimit(which) for which in _RLIMITS}
        sock.sendall(b".")
        while True:
            data, fds, _, _ = socket.recv_fds(sock, 1 << 16, 5)
            size, _, data = data.partition(b"\n")
            while size and len(data) < int(size):
                data += sock.recv(1 << 20) or b"\0"  # (a closed socket: the JSON fails to load)
            job = json.loads(data)  # (no job: the worker is gone, and so is this process)
            result, calls, answers, out, err = fds
            os.dup2(out, 1)
            os.dup2(err, 2)
            os.chdir(job["workdir"])
            os.environ.update(HOME=job["workdir"], TMPDIR=job["workdir"])
            for which, limit in own.items():  # its own limits back (a sample may have lowered them)
                resource.setrlimit(which, limit)
            resource.setrlimit(resource.RLIMIT_AS, (job["memory_mb"] << 20, own[resource.RLIMIT_AS][1]))
            line = _test_apart(job["tests"], os.fdopen(calls, "wb", buffering=0), os.fdopen(answers, "rb"))
            _flush_output()
            sys.stdout, sys.stderr = (
                sys.__stdout__ or sys.stdout,
                sys.__stderr__ or sys.stderr,
            )  # (the tests')
            if line is not None:
                os.write(result, f"{job['nonce']}\t{line}".encode("utf-8", "backslashreplace"))
            for fd in (result, out, err):
                os.close(fd)
            os.dup2(0, 1)
            os.dup2(0, 2)
            os.chdir("/")
            resource.setrlimit(resource.RLIMIT_AS, own[resource.RLIMIT_AS])
            sock.sendall(b".")
    finally:
        os._exit(1)


def _test_apart(tests: str, calls: Any, answers: Any) -> str | None:
    """Run the tests against the program's names as proxies; the record's fields, or None if the program's
    process ended before the tests did (its exit status then decides the verdict)."""
    started, channel, tests_ns = time.perf_counter(), _Channel(calls, answers), {}
    status, error_type, detail, phase = "passed", None, "", "program"
    try:
        names = channel.receive()["names"]  # filtered here too: over there the sample can change the filter
        names = {k: v for k, v in names.items() if _shared(k)}
        tests_ns = _module_namespace("__sandbox__", "<tests>", tests)
        tests_ns.update({name: channel.bind(name, kind) for name, kind in names.items()})
        phase = "tests"
        exec(compile(tests, "<tests>", "exec"), tests_ns)
        phase = "unittest"
        status, error_type, detail = _run_test_cases(tests_ns, [tests_ns[name] for name in names])
    except MemoryError:
        status, error_type, detail = "memory", "MemoryError", f"{phase}: MemoryError"
    except BaseException as exc:
        status = "failed" if isinstance(exc, AssertionError) else "error"
        error_type, detail = _explain(exc, phase)
    finally:
        calls.close()
        answers.close()
        tests_ns.clear()
    if channel.ended:  # (whatever the tests made of it, unittest catches all)
        return None
    elapsed = time.perf_counter() - started
    return f"{status}\t{error_type or ''}\t{elapsed:.6f}\t{detail.replace(chr(9), ' ')}\n"


class _Ended(BaseException):
    """The program's process closed its end: no test may catch this (it is no Exception)."""


def _serve_program(program: str, calls: Any, answers: Any) -> NoReturn:
    """The program's process: run the program, list its top-level names, then answer calls until EOF."""
    namespace = _module_namespace("__sandbox__", "<program>", program)
    try:
        exec(compile(program, "<program>", "exec"), namespace)
        reply = {"names": {k: _describe(v) for k, v in list(namespace.items()) if _shared(k)}}
    except BaseException as exc:
        reply = _failure(exc, "program")
    for line in itertools.chain([b""], calls):  # the listing first, then one answer per call
        if line:
            try:
                call = json.loads(line)
                function, args, kwargs = (
                    namespace[call["name"]],
                    _decode(call["args"]),
                    _decode(call["kwargs"]),
                )
                reply = {"value": function(*args, **kwargs)}
            except BaseException as exc:
                reply = _failure(exc, "call")
        try:
            data = json.dumps(
                {key: _encode(value) for key, value in reply.items()} if "value" in reply else reply
            )
        except TypeError as exc:
            why = f"{call['name']}() returned {exc}; the tests run apart (judge='values'): {_PLAIN_NAMES}"
            data = json.dumps({"raise": "TypeError", "message": f"sandbox: {why}"})
        _flush_output()  # what it printed reaches its tails before the tests end
        answers.write(data.encode() + b"\n")
    os._exit(0)


def _flush_output() -> None:
    """Flush sys.stdout and sys.stderr, whatever they are now (the tests' or the program's own)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def _describe(value: Any) -> dict[str, Any]:
    if isinstance(value, types.ModuleType):
        return {"module": value.__name__}
    try:
        return {"value": _encode(value)}
    except TypeError:
        return {"call": True} if callable(value) else {"opaque": type(value).__qualname__}


def _failure(exc: BaseException, phase: str) -> dict[str, Any]:
    _explain(exc, phase)  # its traceback on stderr
    return {"raise": type(exc).__name__, "message": str(exc)[:1000]}


class _Channel:
    """The tests' side of the program's process: its names as proxies (functions) or decoded values."""

    def __init__(self, calls: Any, answers: Any) -> None:
        self.calls, self.answers, self.ended = calls, answers, False

    def receive(self) -> dict[str, Any]:
        line = self.answers.readline()
        if not line:
            self.ended = True
            raise _Ended
        reply = json.loads(line)
        if type(reply) is not dict:
            raise ValueError("sandbox: the program's process broke the protocol")
        if "raise" in reply:  # the program, or a call into it, raised: the same builtin exception here,
            # but not one that ends the tests' loops early (StopIteration inside `map`, `next`)
            kind, message = getattr(builtins, str(reply["raise"]), None), str(reply.get("message"))
            if isinstance(kind, type) and issubclass(kind, Exception) and not issubclass(kind, _ENDS_LOOPS):
                raise kind(message)
            raise RuntimeError(f"{reply['raise']}: {message}")
        return reply

    def bind(self, name: str, kind: dict[str, Any]) -> Any:
        if type(kind) is not dict:
            raise ValueError("sandbox: the program's process broke the protocol")
        if "value" in kind:
            return _decode(kind["value"])
        if "module" in kind:
            try:
                return importlib.import_module(str(kind["module"]))
            except Exception:
                return _opaque(name, "module")
        if "call" not in kind:
            return _opaque(name, str(kind.get("opaque")))

        def call(*args: Any, **kwargs: Any) -> Any:
            message = {"name": name, "args": _encode(list(args)), "kwargs": _encode(kwargs)}
            try:
                self.calls.write(json.dumps(message).encode() + b"\n")
            except BrokenPipeError:
                self.ended = True
                raise _Ended from None
            return _decode(self.receive()["value"])

        call.__name__ = call.__qualname__ = name
        return call


def _opaque(name: str, kind: str) -> Any:
    def refuse(*_: Any, **__: Any) -> NoReturn:
        raise TypeError(
            f"sandbox: the program's {name} is a {kind}; the tests run apart (judge='values'): {_PLAIN_NAMES}"
        )

    return type(
        f"Opaque_{name}", (), {m: refuse for m in ("__getattr__", "__call__", "__eq__", "__iter__")}
    )()


_PLAIN_CONTAINERS: dict[str, Any] = {kind.__name__: kind for kind in (list, tuple, set, frozenset)}
_PLAIN_NAMES = (
    "only None, bool, int, float, complex, str, bytes and lists, tuples, sets and dicts of them cross"
)


def _encode(value: Any, depth: int = 0) -> Any:
    """A plain value as JSON: None, bool, int, str natively; float, bytes, complex and containers tagged.
    Anything else raises TypeError. numpy's scalars count as the Python values they hold."""
    kind = type(value)
    if depth > 200:
        raise TypeError("nested too deeply to cross")
    if value is None or kind in (bool, str) or (kind is int and value.bit_length() < 10_000):
        return value
    if kind is int:  # past what json reads back as a number
        return {"int": hex(value)}
    if kind is float:
        return {"float": repr(value)}
    if kind in (list, tuple, set, frozenset):
        return {kind.__name__: [_encode(item, depth + 1) for item in value]}
    if kind is dict:
        return {"dict": [[_encode(k, depth + 1), _encode(v, depth + 1)] for k, v in value.items()]}
    if kind is bytes:
        return {"bytes": value.hex()}
    if kind is complex:
        return {"complex": [repr(value.real), repr(value.imag)]}
    if kind.__module__ == "numpy" and hasattr(value, "item") and not getattr(value, "shape", ()):
        return _encode(value.item(), depth)
    raise TypeError(f"a {kind.__module__}.{kind.__qualname__}")


def _decode(data: Any) -> Any:
    """The value `_encode` made; anything else from the program's process is refused (ValueError)."""
    if data is None or type(data) in (bool, int, str):
        return data
    if type(data) is dict and len(data) == 1:
        ((tag, inner),) = data.items()
        if tag in _PLAIN_CONTAINERS and type(inner) is list:
            return _PLAIN_CONTAINERS[tag](_decode(item) for item in inner)
        if tag == "dict" and type(inner) is list:
            return {_decode(k): _decode(v) for k, v in inner}
        if tag in ("float", "int") and type(inner) is str:
            return float(inner) if tag == "float" else int(inner, 16)
        if tag == "bytes" and type(inner) is str:
            return bytes.fromhex(inner)
        if tag == "complex" and type(inner) is list and all(type(part) is str for part in inner):
            return complex(float(inner[0]), float(inner[1]))
    raise ValueError("sandbox: the program's process sent something that is not a plain value")


# --- one job: fork, supervise, decide -------------------------------------------------------------


def _run_job(job: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Fork the sample; keep the tails of its pipes until it exits or the deadline passes (then kill its
    group), and for up to a second after it exits; clean up; decide."""
    limits, started = job["limits"], time.monotonic()
    ctx.count += 1
    workdir = f"/tmp/codetune-sample-{os.getpid()}-{ctx.count}"
    os.mkdir(workdir, 0o700)
    if ctx.uid is not None:
        os.chown(workdir, ctx.uid, ctx.uid)
    judge = _judge_for(ctx) if job["judge"] == "values" else None
    pipes = [os.pipe() for _ in range(3)]  # stdout, stderr, result
    links = [os.pipe() for _ in range(2 if judge else 1)]  # to and from the tests' process, or the nonce's
    if (pid := os.fork()) == 0:
        ends = [links[0][0], links[1][1]] if judge else [links[0][0]]
        _sample(job, workdir, [ctx.devnull, *(w for _, w in pipes), *ends], ctx)
    # the nonce made after the fork: it is in no memory a sample started from
    nonce, oom_kills = os.urandom(16).hex(), _oom_kills(ctx)
    try:
        if judge:  # the tests' process gets them, and the sample's output pipes, the result pipe
            body = json.dumps({"tests": job["tests"], "nonce": nonce, "workdir": workdir} | limits).encode()
            data = b"%d\n%s" % (len(body), body)
            fds = [pipes[2][1], links[0][1], links[1][0], pipes[0][1], pipes[1][1]]
            try:
                judge.sock.sendall(data[socket.send_fds(judge.sock, [data], fds) :])
            except OSError:
                _stop_judge(ctx)
                _kill_group(pid)
                raise
        else:
            os.write(links[0][1], nonce.encode())
    finally:
        for fd in (*(w for _, w in pipes), *(fd for link in links for fd in link)):
            os.close(fd)
    reads, caps = [r for r, _ in pipes], [limits["output_bytes"]] * 2 + [65_536]
    tails, totals, open_fds = {fd: bytearray() for fd in reads}, dict.fromkeys(reads, 0), set(reads)
    pidfd, poller, timed_out, raw, cpu_s = os.pidfd_open(pid), select.poll(), False, None, 0.0
    deadline = started + limits["timeout_s"]
    try:
        for fd in (*reads, pidfd):
            poller.register(fd, select.POLLIN)
        while raw is None or open_fds:
            left = deadline - time.monotonic()
            events = poller.poll(left * 1000) if left > 0 else []
            if not events and raw is not None:
                break  # a process it left holds the pipes: what they carry later is lost
            if not events:  # the wall clock ran out
                timed_out, events = True, [(pidfd, 0)]
                _stop_judge(ctx)  # it may be running the tests still
            for fd, _ in events:
                if fd == pidfd:
                    poller.unregister(pidfd)
                    _kill_group(pid)  # what it left in its group, while its unreaped pid holds the group id
                    _, raw, usage = os.wait4(pid, 0)
                    cpu_s, deadline = usage.ru_utime + usage.ru_stime, time.monotonic() + 1.0
                elif chunk := os.read(fd, 1 << 16):
                    totals[fd] += len(chunk)
                    tails[fd] += chunk
                    del tails[fd][: -2 * caps[reads.index(fd)] or None]
                else:
                    poller.unregister(fd)
                    open_fds.discard(fd)
    finally:
        _kill_all(pid, ctx)
        for fd in (*reads, pidfd):
            os.close(fd)
        _remove(workdir)
        undisturbed = _check_judge(ctx) if judge else True
    texts = []
    for fd, cap in zip(reads, caps, strict=True):
        text = (kept := bytes(tails[fd][-cap:]) if cap else b"").decode("utf-8", "replace")
        cut = totals[fd] - len(kept)
        texts.append(f"[... {cut} bytes truncated ...]\n{text}" if cut else text)
    verdict = _decide(nonce, limits, texts, timed_out, raw or 0, cpu_s)
    if not undisturbed:
        verdict |= {"status": "error", "detail": "the sample stopped, reniced or limited the tests' process"}
    elif verdict["status"] == "killed" and _oom_kills(ctx) > oom_kills:
        limit = f"{limits['memory_mb']} MB for all its processes together"
        verdict |= {
            "status": "memory",
            "detail": f"killed by the kernel's out-of-memory killer: over {limit}",
        }
    return verdict | {"duration_s": round(time.monotonic() - started, 6), "cpu_s": round(cpu_s, 6)}


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
    verdict: dict[str, Any] = {
        "stdout_tail": stdout,
        "stderr_tail": stderr,
        "exit_code": exit_code,
        "signal": sig,
    }
    if record is not None and len(record) == 5 and record[1] in ("passed", "failed", "error", "memory"):
        verdict |= {"status": record[1], "error_type": record[2] or None, "detail": record[4]}
        verdict["exec_s"] = round(float(record[3]), 6)
        if record[1] == "passed" and exit_code != 0:
            verdict |= {"status": "error", "detail": "the sample did not exit cleanly after its tests"}
    elif setup is not None and exit_code == 70:
        verdict |= {"status": "sandbox-error", "detail": f"isolation set-up failed: {setup}"}
    elif timed_out or sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_s >= _cpu_limit(limits)):
        limit = f"{limits['timeout_s']:g} s wall / {_cpu_limit(limits)} s CPU"
        verdict |= {"status": "timeout", "detail": f"over the limit of {limit}"}
    elif sig is not None:
        memory = any(hint in stderr for hint in _MEMORY_HINTS)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        verdict |= {"status": "memory" if memory else "killed", "detail": f"killed by {name}"}
    else:
        verdict |= {
            "status": "error",
            "detail": f"the sample exited (code {exit_code}) before the tests completed",
        }
    return verdict


def _judge_for(ctx: Any) -> Any:
    """The values judge's tests' process (`_judge`), started on first use and after it was stopped."""
    if ctx.judge is None:
        ours, its = socket.socketpair()
        if (pid := os.fork()) == 0:
            _judge(its, None if ctx.uid is None else ctx.uid + 500_000_000)
        its.close()
        ctx.judge = types.SimpleNamespace(pid=pid, sock=ours, state=None)
        if not select.select([ours], [], [], 30)[0] or ours.recv(1) != b".":
            _stop_judge(ctx)
            raise RuntimeError("the values judge's tests' process did not start")
        ctx.judge.state = _state(pid)
    return ctx.judge


def _state(pid: int) -> tuple[Any, ...]:
    """What a sample of the same uid can change in this worker or its tests' process without tracing it."""
    limits = tuple(resource.prlimit(pid, which)[1] for which in _RLIMITS)
    return os.getpriority(os.PRIO_PROCESS, pid), os.sched_getscheduler(pid), os.sched_getaffinity(pid), limits


def _check_judge(ctx: Any) -> bool:
    """After a job: is the tests' process idle and as it started (not stopped, reniced, moved to other CPUs
    or limited by the sample)? If not, the next job gets a new one. (None left: it was killed.)"""
    if ctx.judge is None:
        return True
    try:
        os.kill(ctx.judge.pid, signal.SIGCONT)
        idle = select.select([ctx.judge.sock], [], [], 1.0)[0] and ctx.judge.sock.recv(1) == b"."
        if idle and _state(ctx.judge.pid) == ctx.judge.state:
            return True
    except OSError:
        pass
    _stop_judge(ctx)
    return False


def _stop_judge(ctx: Any) -> None:
    if ctx.judge is not None:
        _kill_group(ctx.judge.pid)
        try:
            os.waitpid(ctx.judge.pid, 0)
        except ChildProcessError:
            pass
        ctx.judge.sock.close()
        ctx.judge = None


def _kill_group(pid: int) -> None:
    for kill, target in ((os.killpg, pid), (os.kill, pid)):
        try:
            kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _kill_all(pid: int, ctx: Any) -> None:
    """Nothing a sample started outlives it: as PID 1 kill every other process in the namespace and
    reap them; else kill everything else in the worker's cgroup, or of the worker's sample uid."""
    try:
        if os.waitpid(pid, os.WNOHANG) == (0, 0):  # not reaped yet: supervision failed
            _kill_group(pid)
            os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    if ctx.pid1 and ctx.judge is None:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass  # nothing else was left
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                return
    for _ in range(1000 if ctx.pid1 else 0):  # all but this worker and the values judge's tests' process
        spare = {1, ctx.judge.pid if ctx.judge else 1}
        others = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in spare]
        for other in others:
            _kill_group(other)
        while (reaped := _reap_one()) > 0:
            if ctx.judge and reaped == ctx.judge.pid:  # killed by the sample: the next job gets a new one
                ctx.judge.sock.close()
                ctx.judge = None
        if not others:
            return
        time.sleep(0.0002)
    for _ in range(500 if ctx.cgroup else 0):  # all in the worker's cgroup but the worker, until none lives
        with open(os.path.join(ctx.cgroup, "cgroup.procs")) as procs:  # (one forking as we read escapes once)
            spare = {os.getpid(), ctx.judge.pid if ctx.judge else 0}
            others = [pid for pid in {int(line) for line in procs} - spare if _alive(pid)]
        for other in others:
            _kill_group(other)
        if not others:
            return
        time.sleep(0.01)
    if ctx.uid is not None:
        if (killer := os.fork()) == 0:
            os.setresuid(ctx.uid, ctx.uid, ctx.uid)
            os.kill(-1, signal.SIGKILL)
            os._exit(0)
        os.waitpid(killer, 0)


def _oom_kills(ctx: Any) -> int:
    """How many processes the worker's memory cgroup (as root) has had killed for memory, so far."""
    if not ctx.oom_events:
        return 0
    with open(ctx.oom_events) as counts:
        return next((int(line.split()[1]) for line in counts if line.startswith("oom_kill ")), 0)


def _reap_one() -> int:
    try:
        return os.waitpid(-1, os.WNOHANG)[0]
    except ChildProcessError:
        return 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _listing(directory: str) -> dict[str, tuple[int, int]]:
    return {name: (os.lstat(f"{directory}/{name}")[:2]) for name in os.listdir(directory)}


def _wipe(ctx: Any) -> bool:
    """In bubblewrap, remove what the sample left in the worker's writable mounts and IPC namespace (SysV
    shared memory, message queues and semaphores outlive their makers): no later sample finds it, nor a
    work dir made ahead of it, and no memory stays taken. False if it changed what was there before any
    sample (/dev/null, a mount point)."""
    for kind, remove in (("shm", ctx.libc.shmctl), ("msg", ctx.libc.msgctl), ("sem", ctx.libc.semctl)):
        if ctx.pid1:  # (without bubblewrap the IPC namespace is the host's)
            with open(f"/proc/sysvipc/{kind}") as table:
                for line in list(table)[1:]:
                    remove(int(line.split()[1]), 0, None)  # IPC_RMID (semctl: semnum 0)
    intact = True
    for directory, before in ctx.scratch.items():
        now = _listing(directory)
        intact = intact and all(now.get(name) == identity for name, identity in before.items())
        for name in now.keys() - before.keys():
            path = f"{directory}/{name}"
            if os.path.isdir(path) and not os.path.islink(path):
                _remove(path)
            else:
                os.unlink(path)
    return intact


def _remove(path: str) -> None:
    """Remove a directory, whatever the sample did to the permissions inside it."""
    try:
        return os.rmdir(path)  # the usual case: the sample left nothing
    except OSError:
        import shutil
    os.chmod(path, 0o700)
    for root, dirs, _ in os.walk(path):
        for inside in [os.path.join(root, name) for name in dirs]:
            if not os.path.islink(inside):
                os.chmod(inside, 0o700)
    shutil.rmtree(path, ignore_errors=True)


# --- in the forked sample ------------------------------------------------------------------------


def _sample(job: dict[str, Any], workdir: str, fds: list[int], ctx: Any) -> NoReturn:
    """Session, fds 0-4 (stdin, stdout, stderr, result, nonce; with the values judge 4 and 5 are the pipes
    from and to the tests; nothing else open), uid, work dir, rlimits; then run the job."""
    try:
        os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(len(fds), 2**31 - 1)
        if ctx.uid is not None:
            _become(ctx.uid)
        os.chdir(workdir)
        os.environ.update(HOME=workdir, TMPDIR=workdir)
        _set_rlimits(job["limits"], ctx, job["language"], job["judge"])
        if job["language"] == "javascript":
            if not ctx.node:
                raise RuntimeError("node (Node.js) is not on PATH: JavaScript samples can't run")
            nonce = _read_nonce()
            for name, text in (("program.js", job["program"]), ("tests.js", job["tests"]), (".nonce", nonce)):
                with open(name, "w") as handle:
                    handle.write(text)
            heap = f"--max-old-space-size={job['limits']['memory_mb']}"
            os.execve(ctx.node, [ctx.node, heap, "-e", _JS_BOOT], {**os.environ, "NODE_OPTIONS": ""})
    except BaseException as exc:
        try:
            os.write(3, f"setup\t{type(exc).__name__}: {exc}\n".encode())
        finally:
            os._exit(70)
    try:  # (os.fork already reseeded `random` in this child)
        if job["judge"] == "values":
            _serve_program(job["program"], os.fdopen(4, "rb"), os.fdopen(5, "wb", buffering=0))
        _run_python(job["program"], job["tests"], _read_nonce())
    finally:
        os._exit(1)


def _become(uid: int) -> None:
    """This process as `uid` (and gid), with no supplementary groups."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def _read_nonce() -> str:
    nonce = os.read(4, 64).decode()
    os.close(4)
    return nonce


def _cpu_limit(limits: dict[str, Any]) -> int:
    """RLIMIT_CPU in whole seconds: `cpu_s` rounded up, or without one a backstop a second past the
    wall-clock timeout, so that the wall clock (not a race with it) ends a busy single-process sample."""
    seconds = limits["timeout_s"] if limits["cpu_s"] is None else limits["cpu_s"]
    return max(1, -int(-seconds // 1)) + (limits["cpu_s"] is None)


def _set_rlimits(limits: dict[str, Any], ctx: Any, language: str, judge: str) -> None:
    memory, size, cpu = limits["memory_mb"] << 20, limits["file_size_mb"] << 20, _cpu_limit(limits)
    # the worker shares the uid in bubblewrap; the values judge's tests process is not the sample's
    processes = limits["max_processes"] + ctx.pid1 + (judge == "values")
    if ctx.uid is None and not ctx.pid1 and os.geteuid() != 0:  # the user's own processes count too
        processes += sum(1 for p in os.listdir("/proc") if p.isdigit() and _owned(p))
    for which, soft, hard in (
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        # V8 reserves far more address space than it uses: for node, limit the data segment instead
        (resource.RLIMIT_AS if language == "python" else resource.RLIMIT_DATA, memory, memory),
        (resource.RLIMIT_FSIZE, size, size),
        (resource.RLIMIT_NPROC, processes, processes),
        (resource.RLIMIT_NOFILE, limits["open_files"], limits["open_files"]),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_MSGQUEUE, 0, 0),  # POSIX message queues outlive their makers too
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
