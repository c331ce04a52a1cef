"""Seeded, reproducible train/valid/test splits, optionally by a group key."""

from __future__ import annotations

import random
from collections import defaultdict

from codetune.data.records import Example
from codetune.errors import CodetuneError


def _check_fractions(fractions: dict[str, float]) -> None:
    if not fractions:
        raise CodetuneError("data.splits is empty; give e.g. {train: 0.8, valid: 0.1, test: 0.1}")
    if any(f < 0 for f in fractions.values()):
        raise CodetuneError(f"data.splits: fractions must be >= 0, got {fractions}")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise CodetuneError(f"data.splits: fractions must add up to 1, they add up to {total:g}")


def _cut_points(n: int, fractions: dict[str, float]) -> list[tuple[str, int, int]]:
    """Split `n` items by fractions with largest-remainder rounding, so counts add up to n."""
    names = list(fractions)
    exact = [fractions[k] * n for k in names]
    counts = [int(x) for x in exact]
    order = sorted(range(len(names)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    out, start = [], 0
    for name, c in zip(names, counts, strict=True):
        out.append((name, start, start + c))
        start += c
    return out


def split_examples(
    examples: list[Example], fractions: dict[str, float], seed: int, by_group: bool
) -> dict[str, list[Example]]:
    """Shuffle with `seed` and cut by `fractions`. With `by_group`, whole groups go to one split.

    The result depends only on the examples' ids/groups and the seed, not on input order.
    """
    _check_fractions(fractions)
    rng = random.Random(seed)
    splits: dict[str, list[Example]] = {k: [] for k in fractions}
    if not by_group:
        items = sorted(examples, key=lambda e: e.id)
        rng.shuffle(items)
        for name, a, b in _cut_points(len(items), fractions):
            splits[name] = items[a:b]
        return splits
    groups: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        if ex.group is None:
            raise CodetuneError(
                f"{ex.source}: data.split_by is 'group' but this record has no group; set group_field"
            )
        groups[ex.group].append(ex)
    keys = sorted(groups)
    rng.shuffle(keys)
    # Assign whole groups greedily so each split's example count approaches its share.
    total = len(examples)
    targets = {k: f * total for k, f in fractions.items()}
    for key in keys:
        name = max(targets, key=lambda k: (targets[k] - len(splits[k]), -list(fractions).index(k)))
        splits[name].extend(sorted(groups[key], key=lambda e: e.id))
    return splits
