"""Timeouts calibrated on reference solutions (the runner's policy; the sandbox only runs the references)."""

from __future__ import annotations

import pytest

from codetune.benchmarks.runner import calibrate_timeout, calibrated_limits, last_calibration
from codetune.errors import CodetuneError
from codetune.sandbox import Limits, SandboxPool
from tests.conftest import ADD_ONE, CHECK_ADD_ONE, FAST


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(workers=2, limits=FAST) as sandbox:
        yield sandbox


def test_calibrate_timeout_is_a_multiple_of_the_slowest_reference_with_a_floor() -> None:
    assert calibrate_timeout([0.01, 0.02], factor=10.0, floor_s=1.0) == 1.0
    assert calibrate_timeout([0.3, 0.5, 0.4], factor=10.0, floor_s=1.0) == 5.0
    assert calibrate_timeout([], factor=10.0, floor_s=2.0) == 2.0


def test_calibrated_limits_are_recorded_for_the_manifest(pool: SandboxPool) -> None:
    jobs = [(ADD_ONE, CHECK_ADD_ONE), ("import time\n", "time.sleep(0.2)")]
    limits = calibrated_limits(pool, jobs, factor=10.0, floor_s=1.0, repeats=2)
    assert limits[0].timeout_s == 1.0  # the floor
    assert 2.0 <= limits[1].timeout_s < 10.0  # ten times ~0.2 s
    assert limits[1].memory_mb == pool.limits.memory_mb
    calibration = last_calibration()
    assert calibration is not None
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
