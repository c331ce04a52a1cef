"""The sandbox: verdicts, limits, isolation and clean-up, with every adversarial case of issues 4 and 21
(timeout calibration on reference solutions is the runner's: tests/benchmarks/test_calibration.py).

Each adversarial test pins the exact verdict and then checks that no process is left behind: nothing
below a worker but the worker itself, nothing carrying the test's marker.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from codetune.errors import CodetuneError
from codetune.sandbox import (
    STATUSES,
    Limits,
    SandboxPool,
    Verdict,
    isolation_level,
    run_tests,
    sandbox_manifest,
)
from codetune.sandbox import pool as pool_module
from tests.conftest import ADD_ONE, CHECK_ADD_ONE, FAST


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(workers=2, limits=FAST) as sandbox:
        yield sandbox


@pytest.fixture
def marker() -> str:
    return f"codetune-sandbox-test-{uuid.uuid4().hex}"


def leftovers(pool: SandboxPool, marker: str | None = None) -> list[str]:
    """Processes a sample left behind: anything below a worker but the worker itself (in bubblewrap the
    worker is bwrap's child; without it, the worker), or anything whose command line carries `marker`."""
    table = {}
    for entry in os.listdir("/proc"):
        try:
            status = Path(f"/proc/{entry}/status").read_text() if entry.isdigit() else ""
            cmdline = (
                Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
        except OSError:
            continue  # gone meanwhile
        if status:
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            table[int(entry)] = (int(fields["PPid"]), int(fields["Uid"].split()[0]), fields["State"], cmdline)
    allowed_depth = 1 if pool.isolation.startswith("bubblewrap") else 0
    found = []
    for pid, (ppid, uid, state, cmdline) in table.items():
        depth, parent = 1, ppid
        while parent not in pool.worker_pids and parent in table and parent > 1:
            depth, parent = depth + 1, table[parent][0]
        below = parent in pool.worker_pids and depth > allowed_depth
        if pid != os.getpid() and (below or (marker is not None and marker in cmdline)):
            found.append(f"pid {pid} ppid {ppid} uid {uid} {state.strip()}: {cmdline}")
    return found


def assert_clean(pool: SandboxPool, marker: str | None = None) -> None:
    assert leftovers(pool, marker) == []
    quick = pool.run(ADD_ONE, CHECK_ADD_ONE)  # the machine is still healthy: a normal sample is fast
    assert quick.status == "passed" and quick.duration_s < 1.0, quick


def bwrap_only(pool: SandboxPool) -> None:
    if not pool.isolation.startswith("bubblewrap"):
        pytest.skip(f"needs bubblewrap; this machine: {pool.isolation}")


# --- ordinary verdicts ---------------------------------------------------------------------------


def test_a_correct_program_passes(pool: SandboxPool) -> None:
    verdict = pool.run(ADD_ONE, CHECK_ADD_ONE + "print('checked')\n")
    assert verdict.status == "passed" and verdict.passed
    assert verdict.error_type is None
    assert verdict.stdout_tail == "checked\n"
    assert verdict.stderr_tail == ""
    assert verdict.exit_code == 0 and verdict.signal is None
    assert verdict.exec_s is not None and 0 < verdict.exec_s < verdict.duration_s
    assert_clean(pool)


def test_a_wrong_answer_fails_with_the_assertion_in_stderr(pool: SandboxPool) -> None:
    verdict = pool.run("def add_one(x):\n    return x + 2\n", CHECK_ADD_ONE)
    assert (verdict.status, verdict.error_type) == ("failed", "AssertionError")
    assert 'File "<tests>", line 2, in check' in verdict.stderr_tail
    assert "assert candidate(1) == 2" in verdict.stderr_tail
    assert "worker.py" not in verdict.stderr_tail  # the runner's own frames are not shown


@pytest.mark.parametrize(
    ("program", "tests", "error_type", "phase"),
    [
        ("def f(d):\n    return d['missing']\n", "f({})", "KeyError", "tests"),
        ("x = 1 / 0\n", "pass", "ZeroDivisionError", "program"),
        ("def f(:\n", "pass", "SyntaxError", "program"),
        ("x = input()\n", "pass", "EOFError", "program"),  # stdin is /dev/null
        ("import no_such_module_anywhere\n", "pass", "ModuleNotFoundError", "program"),
    ],
)
def test_an_exception_is_an_error_with_its_type(
    pool: SandboxPool, program: str, tests: str, error_type: str, phase: str
) -> None:
    verdict = pool.run(program, tests)
    assert (verdict.status, verdict.error_type) == ("error", error_type)
    assert verdict.detail.startswith(f"{phase}: {error_type}")
    assert error_type in verdict.stderr_tail


@pytest.mark.parametrize(
    ("body", "status", "error_type"),
    [
        ("self.assertEqual(add_one(1), 2)", "passed", None),
        ("self.assertEqual(add_one(1), 3)", "failed", "AssertionError"),
        ("self.assertEqual([add_one(1)], [3])", "failed", "AssertionError"),  # a multi-line message
        ("self.assertEqual(add_one(None), 3)", "error", "TypeError"),
    ],
)
def test_unittest_cases_in_the_tests_are_run(
    pool: SandboxPool, body: str, status: str, error_type: str
) -> None:
    tests = (
        f"import unittest\n\nclass TestAddOne(unittest.TestCase):\n    def test_it(self):\n        {body}\n"
    )
    verdict = pool.run(ADD_ONE, tests)
    assert (verdict.status, verdict.error_type) == (status, error_type)
    if status != "passed":
        assert "TestAddOne" in verdict.detail and "test_it" in verdict.stderr_tail


def test_a_failing_subtest_is_a_failure(pool: SandboxPool) -> None:
    body = "for i in range(2):\n            with self.subTest(i=i):\n                self.assertEqual(i, 0)"
    tests = f"import unittest\n\nclass TestSub(unittest.TestCase):\n    def test_it(self):\n        {body}\n"
    verdict = pool.run(ADD_ONE, tests)
    assert (verdict.status, verdict.error_type) == ("failed", "AssertionError"), verdict
    assert "(i=1)" in verdict.detail


def test_patching_a_name_of_the_tests_module_reaches_the_program(pool: SandboxPool) -> None:
    # BigCodeBench-style tests patch `__name__ + '.choice'`: program and tests are one module there
    program = "from random import choice\ndef pick():\n    return choice([1, 2, 3]) * 10\n"
    tests = (
        "import unittest\nfrom unittest.mock import patch\n\nclass TestPick(unittest.TestCase):\n"
        "    @patch(__name__ + '.choice', return_value=7)\n    def test_it(self, mock_choice):\n"
        "        self.assertEqual(pick(), 70)\n"
    )
    verdict = pool.run(program, tests)
    assert (verdict.status, verdict.detail) == ("passed", "unittest: 1 tests"), verdict


def test_a_testcase_the_program_defines_is_not_run(pool: SandboxPool) -> None:
    program = (
        ADD_ONE
        + "import unittest\nclass ItsOwn(unittest.TestCase):\n    def test_x(self):\n        self.fail()\n"
    )
    tests = "import unittest\n\nclass TestAddOne(unittest.TestCase):\n    def test_it(self):\n        self.assertEqual(add_one(1), 2)\n"
    verdict = pool.run(program, tests)
    assert verdict.passed and verdict.detail == "unittest: 1 tests", verdict


def test_a_testcase_without_test_methods_is_not_a_pass(pool: SandboxPool) -> None:
    verdict = pool.run(ADD_ONE, "import unittest\n\nclass TestNothing(unittest.TestCase):\n    pass\n")
    assert verdict.status == "error"
    assert "no test methods" in verdict.detail


def test_output_keeps_only_the_tail_of_each_stream(pool: SandboxPool) -> None:
    program = (
        "import sys\nfor i in range(20000):\n    print('line', i)\n    print('err', i, file=sys.stderr)\n"
    )
    verdict = pool.run(program, "pass", Limits(timeout_s=10.0, output_bytes=1000))
    assert verdict.status == "passed"
    for tail, last in ((verdict.stdout_tail, "line 19999\n"), (verdict.stderr_tail, "err 19999\n")):
        header, _, kept = tail.partition("\n")
        assert header.startswith("[... ") and header.endswith(" bytes truncated ...]")
        assert len(kept.encode()) == 1000 and kept.endswith(last)


def test_each_sample_gets_a_fresh_work_dir_that_is_removed(pool: SandboxPool, marker: str) -> None:
    program = (
        "import os\n"
        "print(os.getcwd(), sorted(os.listdir('.')))\n"
        f"open('{marker}.txt', 'w').write('left behind')\n"
    )
    runs = [pool.run(program, "pass", Limits(timeout_s=5.0)) for _ in range(4)]  # both workers, twice
    assert all(run.status == "passed" for run in runs), runs
    for run in runs:
        cwd, listing = run.stdout_tail.split(" ", 1)
        assert listing.strip() == "[]"  # nothing from an earlier sample
        assert not (Path(cwd) / f"{marker}.txt").exists()  # and nothing on the host


def test_a_worker_that_preloads_matplotlib_starts_without_warnings(capfd: pytest.CaptureFixture) -> None:
    # uid 65534's home is /nonexistent: matplotlib warned on every worker's start (DataFrameBench's logs)
    pytest.importorskip("matplotlib")
    with SandboxPool(workers=1, limits=FAST, preload=("matplotlib",)) as sandbox:
        verdict = sandbox.run("import matplotlib.pyplot as plt\nplt.plot([1, 2])\n", "assert plt.gca().lines")
    assert verdict.passed, verdict
    assert "Matplotlib" not in capfd.readouterr().err


def test_environment_secrets_of_the_evaluator_are_not_visible(
    monkeypatch: pytest.MonkeyPatch, marker: str
) -> None:
    monkeypatch.setenv("CODETUNE_TEST_SECRET", marker)
    program = f"""
import json, os
found = [k for k, v in os.environ.items() if {marker!r} in v]
for entry in (os.listdir('/proc') if os.path.isdir('/proc') else []) + ['{os.getpid()}', 'self']:
    try:
        with open(f'/proc/{{entry}}/environ', 'rb') as handle:
            if {marker!r}.encode() in handle.read():
                found.append(entry)
    except OSError:
        pass
print(json.dumps(sorted(os.environ)))
"""
    with SandboxPool(workers=1, limits=FAST) as fresh:  # started after the secret was set
        verdict = fresh.run(program, "assert not found, found")
    assert verdict.status == "passed", verdict
    assert marker not in verdict.stdout_tail
    allowed = {"PATH", "LANG", "LC_ALL", "PYTHONDONTWRITEBYTECODE", "HOME", "TMPDIR"}
    allowed |= {"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"}
    assert set(json.loads(verdict.stdout_tail)) <= allowed


def test_the_sample_has_no_privileges(pool: SandboxPool) -> None:
    bwrap_only(pool)
    program = "status = dict(l.split(':\\t') for l in open('/proc/self/status').read().splitlines())\n"
    tests = (
        "assert status['CapEff'] == status['CapPrm'] == '0000000000000000', status\n"
        "assert status['NoNewPrivs'] == '1'\n"
        "assert int(status['Uid'].split()[0]) == 65534\n"
        "import os\nassert os.getppid() == 1  # the worker is PID 1 of the sandbox's namespace\n"
    )
    assert pool.run(program, tests).status == "passed"


# --- adversarial samples (issue 4) ---------------------------------------------------------------


def test_fork_bomb_is_contained(pool: SandboxPool) -> None:
    verdict = pool.run("import os\nwhile True:\n    os.fork()\n", "pass")
    assert (verdict.status, verdict.error_type) == ("error", "BlockingIOError")  # RLIMIT_NPROC said no
    assert_clean(pool)


def test_fork_bomb_that_ignores_failures_times_out(pool: SandboxPool) -> None:
    program = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    verdict = pool.run(program, "pass", Limits(timeout_s=1.0))
    assert verdict.status == "timeout"
    assert verdict.duration_s < 3.0
    assert_clean(pool)


def test_infinite_loop_times_out(pool: SandboxPool) -> None:
    verdict = pool.run("while True:\n    pass\n", "pass", Limits(timeout_s=1.0))
    assert verdict.status == "timeout" and verdict.signal == signal.SIGKILL
    assert 1.0 <= verdict.duration_s < 2.5
    assert_clean(pool)


def test_cpu_limit_stops_a_busy_loop_before_the_wall_clock(pool: SandboxPool) -> None:
    verdict = pool.run("while True:\n    pass\n", "pass", Limits(timeout_s=30.0, cpu_s=1.0))
    assert verdict.status == "timeout"
    assert verdict.signal in (signal.SIGXCPU, signal.SIGKILL)
    assert verdict.duration_s < 10.0  # RLIMIT_CPU, not the 30 s wall clock
    assert_clean(pool)


def test_memory_hog_is_a_memory_verdict(pool: SandboxPool) -> None:
    program = "x = []\nwhile True:\n    x.append(' ' * 10**6)\n"
    verdict = pool.run(program, "pass", Limits(timeout_s=10.0, memory_mb=256))
    assert (verdict.status, verdict.error_type) == ("memory", "MemoryError")
    assert_clean(pool)


def test_writing_a_huge_file_stops_at_the_file_size_limit(pool: SandboxPool) -> None:
    program = (
        "with open('huge.bin', 'wb') as handle:\n    while True:\n        handle.write(b'x' * (1 << 20))\n"
    )
    verdict = pool.run(program, "pass", Limits(timeout_s=10.0, file_size_mb=4))
    assert (verdict.status, verdict.error_type) == ("error", "OSError")
    assert "File too large" in verdict.detail
    assert_clean(pool)


def test_deleting_files_outside_the_work_dir_fails(pool: SandboxPool) -> None:
    victims = Path(tempfile.mkdtemp(prefix="codetune-victim-", dir="/var/tmp"))
    try:
        (victims / "keep.txt").write_text("precious")
        program = f"import os, shutil\nos.remove({str(victims / 'keep.txt')!r})\n"
        verdict = pool.run(program, "pass")
        assert verdict.status == "error" and verdict.error_type in ("OSError", "PermissionError")
        verdict = pool.run(f"import shutil\nshutil.rmtree({str(victims)!r})\n", "pass")
        assert verdict.status == "error" and verdict.error_type in ("OSError", "PermissionError")
        assert (victims / "keep.txt").read_text() == "precious"
    finally:
        shutil.rmtree(victims)
    assert_clean(pool)


def test_socket_to_localhost_is_unreachable(pool: SandboxPool) -> None:
    bwrap_only(pool)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        verdict = pool.run(program, "pass")
        # the sandbox's own loopback (bubblewrap brings it up): nothing listens there
        assert (verdict.status, verdict.error_type) == ("error", "ConnectionRefusedError")
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody got through
        # The same sample with network=True does connect: the listener is reachable when allowed.
        allowed = pool.run(program, "pass", Limits(timeout_s=5.0, network=True))
        assert allowed.status == "passed", allowed
        listener.accept()[0].close()
    assert_clean(pool)


def test_socket_to_an_outside_address_is_unreachable(pool: SandboxPool) -> None:
    bwrap_only(pool)
    program = (
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('192.0.2.1', 80), timeout=2)\n"
        "except OSError as exc:\n"
        "    print(exc.errno)\n"
        "    raise\n"
    )
    verdict = pool.run(program, "pass")
    assert (verdict.status, verdict.error_type) == ("error", "OSError")
    assert verdict.stdout_tail.strip() == str(errno.ENETUNREACH)  # no route at all, not a slow timeout
    assert_clean(pool)


def test_killing_the_parent_hits_nothing(pool: SandboxPool) -> None:
    bwrap_only(pool)
    workers = pool.worker_pids
    # The sample's parent is PID 1 of the sandbox's PID namespace, which ignores signals from inside it.
    passing = pool.run(f"import os\nos.kill(os.getppid(), 9)\n{ADD_ONE}", CHECK_ADD_ONE)
    assert passing.status == "passed", passing
    failing = pool.run("import os\nos.kill(os.getppid(), 9)\n", "assert False")
    assert (failing.status, failing.error_type) == ("failed", "AssertionError")
    assert pool.worker_pids == workers and all(Path(f"/proc/{pid}").exists() for pid in workers)
    assert_clean(pool)


def test_a_sample_killed_by_a_signal_is_killed(pool: SandboxPool) -> None:
    verdict = pool.run("import ctypes\nctypes.string_at(0)\n", "pass")
    assert verdict.status == "killed" and verdict.signal == signal.SIGSEGV
    assert_clean(pool)


def test_ignoring_sigterm_still_times_out(pool: SandboxPool, marker: str) -> None:
    program = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "time.sleep(60)\n"
    )
    verdict = pool.run(program, "pass", Limits(timeout_s=1.0))
    assert verdict.status == "timeout"
    assert verdict.duration_s < 2.5
    assert_clean(pool, marker)


def test_a_daemonised_grandchild_does_not_survive(pool: SandboxPool, marker: str) -> None:
    program = f"""
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])
    os._exit(0)
def daemon_running():
    deadline = time.monotonic() + 40  # exec of a fresh interpreter can take seconds on a loaded machine
    while time.monotonic() < deadline:
        for pid in os.listdir('/proc'):
            try:
                if {marker!r}.encode() in open(f'/proc/{{pid}}/cmdline', 'rb').read():
                    return True
            except OSError:
                pass
        time.sleep(0.02)
    return False
"""
    verdict = pool.run(program, "assert daemon_running()", Limits(timeout_s=60.0))
    assert verdict.status == "passed", verdict  # the daemon was up when the sample ended
    assert_clean(pool, marker)


def test_leaving_the_process_group_and_looping_is_still_killed(pool: SandboxPool, marker: str) -> None:
    program = f"""
import os, sys
if os.fork() == 0:
    os.setsid()
    os.execv(sys.executable, [sys.executable, '-c', 'while True: pass', {marker!r}])
while True:
    pass
"""
    verdict = pool.run(program, "pass", Limits(timeout_s=1.5))
    assert verdict.status == "timeout"
    assert_clean(pool, marker)


@pytest.mark.parametrize(
    ("tests", "status"), [("assert add_one(1) == 2", "passed"), ("assert add_one(1) == 3", "failed")]
)
def test_closing_stdout_changes_nothing(pool: SandboxPool, tests: str, status: str) -> None:
    program = f"import os, sys\nsys.stdout.close()\nos.close(1)\nos.close(2)\n{ADD_ONE}"
    verdict = pool.run(program, tests)
    assert verdict.status == status


@pytest.mark.parametrize(
    ("program", "error_type"),
    [
        ("import sys\nsys.exit(0)\n", "SystemExit"),
        ("raise SystemExit(0)\n", "SystemExit"),
        ("import os\nos._exit(0)\n", None),
    ],
)
def test_exiting_before_the_tests_is_not_a_pass(
    pool: SandboxPool, program: str, error_type: str | None
) -> None:
    verdict = pool.run(program, "assert False, 'the tests never ran'")
    assert (verdict.status, verdict.error_type) == ("error", error_type)
    if error_type is None:
        assert "before the tests completed" in verdict.detail


def test_printing_a_fake_completion_is_not_a_pass(pool: SandboxPool) -> None:
    program = (
        "import json, os\n"
        "record = json.dumps({'status': 'passed', 'error_type': None, 'detail': '', 'exec_s': 0.0})\n"
        "for fd in (1, 2, 3):\n"
        "    os.write(fd, f'passed\\nOK\\n{'0' * 32} {record}\\n'.encode())\n"
        "os._exit(0)\n"
    )
    verdict = pool.run(program, "assert False")
    assert verdict.status == "error"


ASSERT_FALSE = "assert 1 == 2"
# the sandbox's own runner module, found the way a program could: not in sys.modules, so up the stack
FIND_RUNNER = (
    "import sys\n"
    "frame = sys._getframe()\n"
    "while '_run_python' not in frame.f_globals:\n"
    "    frame = frame.f_back\n"
    "runner = frame.f_globals\n"
)
FAILING_TESTCASE = (
    "import unittest\nclass T(unittest.TestCase):\n    def test_it(self):\n        self.assertEqual(1, 2)\n"
)


@pytest.mark.parametrize(
    ("program", "tests"),
    [
        ("import builtins\nbuiltins.abs = lambda x: 0\n", "assert abs(-3) == 0"),
        ("def abs(x):\n    return 0\n", "assert abs(-3) == 0"),  # a global that shadows the builtin
        ("globals()['__builtins__'] = {'abs': lambda x: 0}\n", "assert abs(-3) == 0"),
        ("import builtins\nbuiltins.AssertionError = type('Quiet', (Exception,), {})\n", ASSERT_FALSE),
        ("import math\nmath.isclose = lambda *a, **k: True\n", "import math\nassert math.isclose(1.0, 2.0)"),
        (
            "import sys, types\nsys.modules['math'] = types.SimpleNamespace(isclose=lambda *a, **k: True)\n",
            "import math\nassert math.isclose(1.0, 2.0)",
        ),
        ("import unittest\nunittest.TestCase.assertEqual = lambda *a, **k: None\n", FAILING_TESTCASE),
        ("import unittest\nunittest.TestResult.wasSuccessful = lambda self: True\n", FAILING_TESTCASE),
        (FIND_RUNNER + "runner['_explain'] = lambda *a: (None, 'passed')\n", ASSERT_FALSE),
        (FIND_RUNNER + "runner['_run_test_cases'] = lambda ns: ('passed', None, '')\n", FAILING_TESTCASE),
        (
            FIND_RUNNER + "runner['_restore'] = lambda *a, **k: None\n",
            "import math\nassert math.isclose(1, 2)",
        ),
        (
            "import json\nold = json.dumps\njson.dumps = lambda d, **k: old({**d, 'status': 'passed'}, **k)\n",
            ASSERT_FALSE,
        ),
    ],
)
def test_monkeypatching_cannot_fake_a_pass(pool: SandboxPool, program: str, tests: str) -> None:
    verdict = pool.run(program, tests)
    assert (verdict.status, verdict.error_type) == ("failed", "AssertionError"), verdict


# --- the pool, the one-shot function, the manifest ------------------------------------------------


def test_map_keeps_job_order_and_runs_jobs_in_parallel(pool: SandboxPool) -> None:
    jobs = [(f"import time\ntime.sleep(0.4)\nprint({i})\n", "pass") for i in range(6)]
    started = time.monotonic()
    verdicts = pool.map(jobs, Limits(timeout_s=5.0))
    elapsed = time.monotonic() - started
    assert [v.stdout_tail for v in verdicts] == [f"{i}\n" for i in range(6)]
    assert all(v.passed for v in verdicts)
    assert elapsed < 6 * 0.4 * 0.8  # two workers: about half the serial time (1.2 s), with slack


def test_map_copes_with_big_jobs_and_big_replies(pool: SandboxPool) -> None:
    padding = "# " + "x" * 200_000 + "\n"  # bigger than a pipe: such jobs are not queued ahead
    jobs = [(padding + f"print('\\u00e9' * 40_000, {i})\n", "pass") for i in range(5)] + [
        (ADD_ONE, CHECK_ADD_ONE)
    ]
    verdicts = pool.map(jobs, Limits(timeout_s=10.0))
    assert [v.status for v in verdicts] == ["passed"] * 6
    assert [v.stdout_tail.split()[-1] for v in verdicts[:5]] == [str(i) for i in range(5)]


def test_map_takes_one_limits_per_job(pool: SandboxPool) -> None:
    jobs = [("import time\ntime.sleep(1.5)\n", "pass")] * 2
    verdicts = pool.map(jobs, [Limits(timeout_s=0.5), Limits(timeout_s=5.0)])
    assert [v.status for v in verdicts] == ["timeout", "passed"]
    with pytest.raises(CodetuneError, match="2 jobs but 1 limits"):
        pool.map(jobs, [Limits()])


LINGER = """
import os, sys, time
print(time.time(), flush=True)
time.sleep(0.3)  # the jobs behind it are queued at the worker by now, even on a busy machine
os.closerange(0, 1 << 20)  # every pipe to the worker closed, as after a report: but still running
time.sleep({sleep})
"""
STARTED = "import time\nprint(time.time())\n"


def test_a_sample_that_closes_its_pipes_and_loops_costs_the_next_job_nothing() -> None:
    with SandboxPool(workers=1, limits=FAST) as solo:
        jobs = [(LINGER.format(sleep=60), "pass"), (STARTED, "pass"), (ADD_ONE, CHECK_ADD_ONE)]
        verdicts = solo.map(jobs, Limits(timeout_s=1.5))
        assert [v.status for v in verdicts] == ["timeout", "passed", "passed"], verdicts
        assert leftovers(solo) == []


def test_queued_jobs_keep_their_own_network_setting() -> None:
    # a job with the host network runs on the pool's network worker; the job after it is back to none
    with SandboxPool(workers=1, limits=FAST) as solo:
        bwrap_only(solo)
        with socket.create_server(("127.0.0.1", 0)) as listener:
            port = listener.getsockname()[1]
            connect = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            jobs = [(ADD_ONE, CHECK_ADD_ONE), (connect, "pass"), (connect, "pass"), (ADD_ONE, CHECK_ADD_ONE)]
            offline, online = Limits(timeout_s=5.0), Limits(timeout_s=5.0, network=True)
            verdicts = solo.map(jobs, [offline, online, offline, offline])
            listener.accept()[0].close()
        assert verdicts[0].passed and verdicts[1].passed and verdicts[3].passed, verdicts
        offline_again = verdicts[2]
        assert (offline_again.status, offline_again.error_type) == ("error", "ConnectionRefusedError"), (
            offline_again
        )
        assert leftovers(solo) == []


def test_a_worker_from_a_file_changed_since_import_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    # as if worker.py had been edited or upgraded on disk after this process imported the pool
    monkeypatch.setattr(pool_module, "_STAMP", "0:0")
    with pytest.raises(CodetuneError, match="changed after the evaluator loaded it.*restart"):
        SandboxPool(workers=1, limits=FAST)


def test_run_tests_is_the_one_shot_entry_point() -> None:
    assert run_tests(ADD_ONE, CHECK_ADD_ONE).status == "passed"
    verdict = run_tests("while True:\n    pass\n", "pass", Limits(timeout_s=1.0))
    assert verdict.status == "timeout"
    assert isinstance(verdict, Verdict) and verdict.status in STATUSES


def test_a_dying_worker_gives_a_sandbox_error_and_is_replaced() -> None:
    with SandboxPool(workers=1, limits=FAST) as solo:
        worker = solo.worker_pids[0]
        result: list[Verdict] = []
        thread = threading.Thread(
            target=lambda: result.append(solo.run("import time\ntime.sleep(5)\n", "pass"))
        )
        thread.start()
        time.sleep(0.5)
        os.kill(worker, signal.SIGKILL)
        thread.join(timeout=30)
        assert result[0].status == "sandbox-error"
        assert solo.worker_pids != (worker,)
        assert solo.run(ADD_ONE, CHECK_ADD_ONE).status == "passed"
        assert leftovers(solo) == []
        # In map, the job queued behind the one that dies goes to the replacement worker.
        killer = threading.Timer(0.5, os.kill, (solo.worker_pids[0], signal.SIGKILL))
        killer.start()
        verdicts = solo.map([("import time\ntime.sleep(5)\n", "pass"), (ADD_ONE, CHECK_ADD_ONE)])
        killer.join()
        assert [v.status for v in verdicts] == ["sandbox-error", "passed"]
        assert leftovers(solo) == []
        workers = solo.worker_pids
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)  # closed: no worker, no zombie


def test_the_isolation_level_is_detected_and_reported(pool: SandboxPool) -> None:
    level = isolation_level()
    assert level == pool.isolation
    assert level.endswith("rlimits")
    manifest = sandbox_manifest()
    assert manifest["isolation"] == level
    assert manifest["limits"]["timeout_s"] == Limits().timeout_s
    if pool_module._bwrap_problem() is None:
        assert level.startswith("bubblewrap: user/pid/net/mount/ipc/uts namespaces")
        assert manifest["isolation_mode"] == "bwrap"


@pytest.mark.parametrize("mode", ["rlimits"])
def test_the_weaker_modes_still_judge_and_clean_up(mode: str, marker: str) -> None:
    # as root where Python is unreadable by an unprivileged uid (a pyenv in /root), only as root
    with SandboxPool(workers=1, limits=FAST, isolation=mode, unsafe_isolation=os.geteuid() == 0) as weaker:
        assert weaker.isolation.startswith("rlimits only"), weaker.isolation
        assert weaker.run(ADD_ONE, CHECK_ADD_ONE).status == "passed"
        assert weaker.run(ADD_ONE, "assert add_one(1) == 3").status == "failed"
        assert weaker.run("while True:\n    pass\n", "pass", Limits(timeout_s=1.0)).status == "timeout"
        daemon = f"""
import os, sys
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])
    os._exit(0)
import time
time.sleep(0.5)
"""
        assert weaker.run(daemon, "pass", Limits(timeout_s=10.0)).status == "passed"
        assert leftovers(weaker, marker) == []


@pytest.mark.parametrize(
    "kwargs",
    [{"timeout_s": 0}, {"memory_mb": -1}, {"max_processes": 0}, {"output_bytes": -1}, {"cpu_s": 0.0}],
)
def test_bad_limits_are_a_user_error(kwargs: dict) -> None:
    with pytest.raises(CodetuneError, match="sandbox limits"):
        Limits(**kwargs)


def test_bad_pool_arguments_are_user_errors() -> None:
    with pytest.raises(CodetuneError, match="isolation must be"):
        SandboxPool(workers=1, isolation="docker")
    with pytest.raises(CodetuneError, match="workers must be at least 1"):
        SandboxPool(workers=0)
