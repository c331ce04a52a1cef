"""The sandbox: verdicts, limits, isolation and clean-up, with every adversarial case of issue 4.

Each adversarial test pins the exact verdict and then checks that no process is left behind: no child
of a worker, nothing running as a worker's sandbox uid, nothing carrying the test's marker.
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
from codetune.eval import sandbox as sandbox_module
from codetune.eval.sandbox import (
    _SANDBOX_UID_BASE,
    _SLOT_UID_STRIDE,
    STATUSES,
    Limits,
    SandboxPool,
    Verdict,
    calibrate_timeout,
    calibrated_limits,
    isolation_level,
    run_tests,
    sandbox_manifest,
)

FAST = Limits(timeout_s=2.0, memory_mb=512)
ADD_ONE = "def add_one(x):\n    return x + 1\n"
CHECK_ADD_ONE = (
    "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(-1) == 0\n\ncheck(add_one)\n"
)


@pytest.fixture(scope="module", params=[False, True], ids=["fork-per-job", "fork-ahead"])
def pool(request: pytest.FixtureRequest):
    """Every pool test runs both ways a worker can start its samples: forked when the job comes, or
    forked and set up during the previous job (the spare waits for the job on a pipe)."""
    with SandboxPool(workers=2, limits=FAST, fork_ahead=request.param) as sandbox:
        yield sandbox


@pytest.fixture
def marker() -> str:
    return f"codetune-sandbox-test-{uuid.uuid4().hex}"


def leftovers(pool: SandboxPool, marker: str | None = None) -> list[str]:
    """Processes a sample left behind: children of the workers, anything running as one of a worker's
    two sandbox uids, or anything whose command line carries `marker`. Not a leftover: the one spare
    per worker (namespaces mode) that waits for the next job, as the worker last reported it."""
    workers = set(pool.worker_pids)
    sandbox_uids = {_SANDBOX_UID_BASE + pid + slot * _SLOT_UID_STRIDE for pid in workers for slot in (0, 1)}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in {os.getpid(), *pool.spare_pids}:
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            cmdline = (
                Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
        except OSError:
            continue  # gone meanwhile
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        uid, ppid = int(fields["Uid"].split()[0]), int(fields["PPid"])
        if uid in sandbox_uids or ppid in workers or (marker is not None and marker in cmdline):
            found.append(f"pid {entry} ppid {ppid} uid {uid} {fields['State'].strip()}: {cmdline}")
    return found


def assert_clean(pool: SandboxPool, marker: str | None = None) -> None:
    assert leftovers(pool, marker) == []
    quick = pool.run(ADD_ONE, CHECK_ADD_ONE)  # the machine is still healthy: a normal sample is fast
    assert quick.status == "passed" and quick.duration_s < 1.0, quick


def namespaces_only(pool: SandboxPool) -> None:
    if pool._workers[0].mode != "namespaces":
        pytest.skip(f"needs the namespaces isolation mode (root + unshare); this machine: {pool.isolation}")


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
    assert "sandbox.py" not in verdict.stderr_tail  # the runner's own frames are not shown


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
    namespaces_only(pool)
    program = "status = dict(l.split(':\\t') for l in open('/proc/self/status').read().splitlines())\n"
    tests = (
        "assert status['CapEff'] == status['CapPrm'] == '0000000000000000', status\n"
        "assert status['NoNewPrivs'] == '1'\n"
        "assert int(status['Uid'].split()[0]) >= 1_000_000_000\n"
        "import os\nassert os.getpid() == 1 and os.getppid() == 0  # PID 1 of its own namespace\n"
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
    namespaces_only(pool)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        verdict = pool.run(program, "pass")
        assert (verdict.status, verdict.error_type) == ("error", "OSError")
        assert "Network is unreachable" in verdict.detail
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody got through
        # The same sample with network=True does connect: the listener is reachable when allowed.
        allowed = pool.run(program, "pass", Limits(timeout_s=5.0, network=True))
        assert allowed.status == "passed", allowed
        listener.accept()[0].close()
    assert_clean(pool)


def test_socket_to_an_outside_address_is_unreachable(pool: SandboxPool) -> None:
    namespaces_only(pool)
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
    namespaces_only(pool)
    workers = pool.worker_pids
    # The sample's parent is outside its PID namespace: getppid() is 0, and kill(0) only reaches its
    # own process group, in which PID 1 (the sample) ignores its own SIGKILL. The tests decide.
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
# the sandbox's own runner module, found the way a program could: whatever module holds its functions
FIND_RUNNER = (
    "import sys\n"
    "runner = next(m for m in list(sys.modules.values()) if hasattr(m, '_report') and hasattr(m, '_classify'))\n"
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
        (FIND_RUNNER + "runner._classify = lambda *a: ('passed', None, '')\n", ASSERT_FALSE),
        (
            FIND_RUNNER + "old = runner._report\n"
            "runner._report = lambda token, result, elapsed: old(token, ('passed', None, ''), elapsed)\n",
            ASSERT_FALSE,
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


# --- the pool, the one-shot function, calibration, the manifest -----------------------------------


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


SPARE_ATTACK = """
import os, signal, time
here = os.getcwd()  # /tmp/sample-0 or /tmp/sample-1: the worker's two slots
other = here[:-1] + ("0" if here.endswith("1") else "1")
deadline = time.monotonic() + 2
while not os.path.isdir(other) and time.monotonic() < deadline:
    time.sleep(0.01)  # the next job's spare, and its work dir, appear while this sample runs
seen_other = os.path.isdir(other)
try:
    with open(os.path.join(other, "planted.txt"), "w") as handle:
        handle.write("left for the next sample")
    planted = True
except OSError:
    planted = False
try:
    os.kill(-1, signal.SIGKILL)  # every process it may signal
except OSError:
    pass
"""


def test_a_sample_cannot_reach_the_spare_that_runs_the_next_job() -> None:
    with SandboxPool(workers=1, limits=FAST, fork_ahead=True) as solo:
        namespaces_only(solo)
        verdict = solo.run(SPARE_ATTACK, "assert seen_other and not planted, (seen_other, planted)")
        assert verdict.status == "passed", verdict
        (spare,) = solo.spare_pids  # forked while the attacker ran; alive, and on the other slot
        assert Path(f"/proc/{spare}").exists()
        clean = solo.run("import os\nfound = os.listdir('.')\n", "assert found == [], found")
        assert clean.status == "passed", clean  # ran in that spare, in a work dir nobody touched
        assert solo.spare_pids != (spare,)
        assert leftovers(solo) == []


LINGER = """
import os, sys, time
print(time.time(), flush=True)
time.sleep(0.3)  # the jobs behind it are queued at the worker by now, even on a busy machine
os.closerange(0, 1 << 20)  # every pipe to the worker closed, as after a report: but still running
time.sleep({sleep})
"""
STARTED = "import time\nprint(time.time())\n"


def test_the_next_job_starts_while_a_sample_that_closed_its_pipes_still_runs() -> None:
    with SandboxPool(workers=1, limits=FAST, fork_ahead=True) as solo:
        namespaces_only(solo)
        jobs = [(LINGER.format(sleep=2.0), "pass"), (STARTED, "pass"), (ADD_ONE, CHECK_ADD_ONE)]
        lingering, following, last = solo.map(jobs, Limits(timeout_s=10.0))
        # no completion record (its result pipe was closed), and its verdict waited for its end
        assert lingering.status == "error" and lingering.duration_s >= 2.3, lingering
        assert following.passed and last.passed, (following, last)
        started = float(lingering.stdout_tail), float(following.stdout_tail)
        assert started[1] - started[0] < 1.5  # the second started before the first was gone (2.3 s)
        assert leftovers(solo) == []


def test_a_sample_that_closes_its_pipes_and_loops_costs_the_next_job_nothing() -> None:
    with SandboxPool(workers=1, limits=FAST, fork_ahead=True) as solo:
        namespaces_only(solo)
        jobs = [(LINGER.format(sleep=60), "pass"), (STARTED, "pass"), (ADD_ONE, CHECK_ADD_ONE)]
        verdicts = solo.map(jobs, Limits(timeout_s=1.5))
        assert [v.status for v in verdicts] == ["timeout", "passed", "passed"], verdicts
        assert leftovers(solo) == []


def test_fork_ahead_is_on_only_when_there_are_fewer_workers_than_cpus() -> None:
    cpus = len(os.sched_getaffinity(0))
    with SandboxPool(workers=cpus, limits=FAST) as full:
        namespaces_only(full)
        full.run(ADD_ONE, CHECK_ADD_ONE)
        assert full.spare_pids == ()
    if cpus > 1:
        with SandboxPool(workers=1, limits=FAST) as solo:
            solo.run(ADD_ONE, CHECK_ADD_ONE)
            assert len(solo.spare_pids) == 1


def test_queued_jobs_keep_their_own_network_setting() -> None:
    # queued behind a running job, a job with the host network can't go to the spare forked without
    # it (it is forked afresh), and the job after it is back to no network
    with SandboxPool(workers=1, limits=FAST, fork_ahead=True) as solo:
        namespaces_only(solo)
        with socket.create_server(("127.0.0.1", 0)) as listener:
            port = listener.getsockname()[1]
            connect = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            jobs = [(ADD_ONE, CHECK_ADD_ONE), (connect, "pass"), (connect, "pass"), (ADD_ONE, CHECK_ADD_ONE)]
            offline, online = Limits(timeout_s=5.0), Limits(timeout_s=5.0, network=True)
            verdicts = solo.map(jobs, [offline, online, offline, offline])
            listener.accept()[0].close()
        assert verdicts[0].passed and verdicts[1].passed and verdicts[3].passed, verdicts
        assert (verdicts[2].status, verdicts[2].error_type) == ("error", "OSError"), verdicts[2]
        assert "Network is unreachable" in verdicts[2].detail
        assert leftovers(solo) == []


def test_a_worker_from_a_file_changed_since_import_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    # as if sandbox.py had been edited or upgraded on disk after this process imported it
    monkeypatch.setattr(sandbox_module, "_SOURCE_STAMP", "0:0")
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


def test_calibrate_timeout_is_a_multiple_of_the_slowest_reference_with_a_floor() -> None:
    assert calibrate_timeout([0.01, 0.02], factor=10.0, floor_s=1.0) == 1.0
    assert calibrate_timeout([0.3, 0.5, 0.4], factor=10.0, floor_s=1.0) == 5.0
    assert calibrate_timeout([], factor=10.0, floor_s=2.0) == 2.0


def test_calibrated_limits_are_recorded_in_the_manifest(pool: SandboxPool) -> None:
    jobs = [(ADD_ONE, CHECK_ADD_ONE), ("import time\n", "time.sleep(0.2)")]
    limits = calibrated_limits(pool, jobs, factor=10.0, floor_s=1.0, repeats=2)
    assert limits[0].timeout_s == 1.0  # the floor
    assert 2.0 <= limits[1].timeout_s < 10.0  # ten times ~0.2 s
    assert limits[1].memory_mb == pool.limits.memory_mb
    calibration = sandbox_manifest()["calibration"]
    assert calibration["jobs"] == 2 and calibration["factor"] == 10.0 and calibration["repeats"] == 2
    with pytest.raises(CodetuneError, match="reference job 0 did not pass"):
        calibrated_limits(pool, [(ADD_ONE, "assert False")], repeats=1)


def test_a_reference_slower_than_the_limits_on_a_busy_machine_is_measured_not_failed(
    pool: SandboxPool,
) -> None:
    slow = ("import time\n", "time.sleep(1.2)")  # past the 0.5 s limit: run again alone, with 5 s
    limits = calibrated_limits(
        pool, [(ADD_ONE, CHECK_ADD_ONE), slow], Limits(timeout_s=0.5), factor=2.0, floor_s=0.5, repeats=1
    )
    assert limits[0].timeout_s == 0.5 and 2.4 <= limits[1].timeout_s < 5.0, limits
    with pytest.raises(CodetuneError, match="reference job 0 did not pass.*timeout"):
        calibrated_limits(pool, [("import time\n", "time.sleep(30)")], Limits(timeout_s=0.3), repeats=1)


def test_the_isolation_level_is_detected_and_reported(pool: SandboxPool) -> None:
    level = isolation_level()
    assert level == pool.isolation
    assert level.endswith("rlimits")
    manifest = sandbox_manifest()
    assert manifest["isolation"] == level
    assert manifest["limits"]["timeout_s"] == Limits().timeout_s
    if os.geteuid() == 0 and pool._workers[0].mode == "namespaces":
        assert level.startswith("unprivileged uid per worker + pid/net/mount namespaces")


@pytest.mark.parametrize("mode", ["userns", "rlimits"])
def test_the_weaker_modes_still_judge_and_clean_up(mode: str, marker: str) -> None:
    with SandboxPool(workers=1, limits=FAST, isolation=mode) as weaker:
        assert weaker._workers[0].mode == mode, weaker.isolation
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
