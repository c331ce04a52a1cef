"""Benchmark splits as decontamination sets (`data.decontamination.eval_sets: [NAME/SPLIT]`), for every
benchmark in the registry (`codetune.benchmarks.base`).

Training on a benchmark's train split goes through a recipe that writes an ordinary file source (e.g.
`recipes/dataframebench_train.py`); its evaluation splits are what training data is decontaminated against.
"""

from __future__ import annotations

from typing import Any

from codetune.data.records import Example
from codetune.errors import CodetuneError


def load_benchmark_eval_set(path: str) -> Any:
    """A decontamination loader for `NAME/SPLIT` (statement + reference of every task, and the
    reference without docstrings as its code)."""
    from codetune.benchmarks.base import available, get_benchmark, split_spec
    from codetune.data.decontam import EvalItem, strip_docstrings

    name, split = split_spec(path)
    if split is None:
        raise CodetuneError(
            f"data.decontamination.eval_sets: {path!r} is not a benchmark split; use NAME/SPLIT with NAME one "
            f"of {', '.join(available())} (e.g. dataframebench/test)"
        )
    bench = get_benchmark(name)

    def load(_splits: dict[str, list[Example]]) -> list[EvalItem]:
        items = []
        for t in bench.load(split):
            code = t.reference or t.stub or t.prompt
            items.append(EvalItem(t.id, f"{t.statement or t.prompt}\n{code}", strip_docstrings(code)))
        return items

    return load
