"""Split by date: train (and valid) on code from before a date T, test on code from T on."""

from __future__ import annotations

from datetime import UTC, datetime

from codetune.data.records import Example
from codetune.data.split import split_examples
from codetune.errors import CodetuneError


def example_date(ex: Example) -> datetime | None:
    """The example's date: `meta.commit_date` (mined from git) or `meta.date` (a source's date_field)."""
    raw = ex.meta.get("commit_date") or ex.meta.get("date")
    if not raw:
        return None
    try:
        return _aware(datetime.fromisoformat(str(raw)))
    except ValueError:
        return None


def _aware(d: datetime) -> datetime:
    return d if d.tzinfo is not None else d.replace(tzinfo=UTC)


def parse_split_date(text: str | None) -> datetime:
    if not text:
        raise CodetuneError(
            "data.split_by is 'date' but data.split_date is not set; give an ISO date, e.g. 2024-01-01"
        )
    try:
        return _aware(datetime.fromisoformat(text))
    except ValueError as e:
        raise CodetuneError(f"data.split_date {text!r} is not an ISO date (e.g. 2024-01-01)") from e


def split_by_date(
    examples: list[Example], fractions: dict[str, float], split_date: str | None, seed: int
) -> tuple[dict[str, list[Example]], list[str]]:
    """Examples dated from `split_date` on go to the last split (`test`); earlier ones are shared among
    the other splits by their fractions (renormalised, seeded). Returns the splits and the ids of
    examples without a date (left out; the caller counts them)."""
    cut = parse_split_date(split_date)
    names = list(fractions)
    later_name = "test" if "test" in fractions else names[-1]
    before, after, undated = [], [], []
    for ex in examples:
        d = example_date(ex)
        if d is None:
            undated.append(ex.id)
        elif d < cut:
            before.append(ex)
        else:
            after.append(ex)
    if not before and not after:
        raise CodetuneError(
            "data.split_by is 'date' but no example has a date: mine a git checkout (kind: repo) or set "
            "data.sources[].date_field"
        )
    others = {k: v for k, v in fractions.items() if k != later_name}
    total = sum(others.values())
    splits: dict[str, list[Example]] = {k: [] for k in fractions}
    if others:
        shares = {k: (v / total if total > 0 else 1.0 / len(others)) for k, v in others.items()}
        splits.update(split_examples(before, shares, seed, by_group=False))
    else:
        after = before + after
    splits[later_name] = sorted(after, key=lambda e: e.id)
    return splits, undated
