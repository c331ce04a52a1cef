"""Built-in benchmarks as `prepare` sources (`kind: benchmark`, `path: NAME/SPLIT`) and as
decontamination sets (`data.decontamination.eval_sets: [NAME/SPLIT]`).

DataFrameBench's `val` and `test` splits are evaluation-only (the package's CANARY.txt): they are refused
as training sources, and are what training data is decontaminated against.
"""

from __future__ import annotations

from typing import Any

from codetune.config import SourceConfig
from codetune.data.records import Example
from codetune.errors import CodetuneError

BENCHMARKS = ("dataframebench",)


def _parse(path: str, where: str) -> tuple[str, str]:
    name, _, split = path.partition("/")
    if name not in BENCHMARKS or not split:
        raise CodetuneError(
            f"{where}: {path!r} is not a built-in benchmark split; use one of "
            + ", ".join(f"{b}/train" for b in BENCHMARKS)
        )
    return name, split


def read_benchmark(src: SourceConfig) -> tuple[list[Example], dict[str, Any]]:
    """One benchmark split as NL/code pairs: the task prompt (filled for pandas) as the description,
    the package's verified solution (`training_target`) as the code, its unittest suite in `meta`."""
    from codetune.eval import dataframebench as dfb

    _name, split = _parse(src.path, "data.sources")
    if split in dfb.EVAL_ONLY_SPLITS:
        raise CodetuneError(
            f"data.sources: {src.path} is evaluation-only (dataframebench's CANARY.txt: never train on "
            "val or test); use dataframebench/train, and list the others under "
            "data.decontamination.eval_sets"
        )
    wheel = dfb.wheel_path()
    tasks = dfb.load_tasks(split, "pandas", wheel)
    examples = []
    shapes: dict[str, int] = {}
    skipped: list[str] = []
    rewritten = 0
    for i, t in enumerate(tasks, start=1):
        code, shape = dfb.shaped_target(t.reference, t.entry_point)
        shapes[shape] = shapes.get(shape, 0) + 1
        if src.one_function_only and shape != "one-function":
            skipped.append(t.task_id)
            continue
        if src.keep_starter:
            shaped, code = code, dfb.with_starter(code, t.stub, t.entry_point)
            rewritten += code != shaped
        examples.append(
            Example(
                id=t.task_id,
                nl=t.prompt,
                code=code,
                language="python",
                group=t.seed_id or t.task_id,  # paraphrases of one problem stay in one split
                source=f"{dfb.WHEEL_NAME}!dataframebench/data/{split}.jsonl:{i}",
                meta={
                    "tests": t.test,
                    "entry_point": t.entry_point,
                    "category": t.category,
                    "benchmark": src.path,
                    "target_shape": shape,
                },
            )
        )
    info: dict[str, Any] = {
        "path": src.path,
        "kind": "benchmark",
        "wheel": dfb.WHEEL_NAME,
        "sha256": dfb.WHEEL_SHA256,
        "license": dfb.LICENSE,
        "rows": len(tasks),
        "read": len(examples),
        "target_shapes": shapes,
    }
    if src.keep_starter:
        info["starter_rewritten"] = rewritten  # answers changed to begin as the starter code does
    if src.one_function_only:
        info["skipped_not_one_function"] = len(skipped)
        info["skipped_ids"] = skipped
        if skipped:
            note = f"{src.path}: skipped, reference not writable as one function (one_function_only)"
            info["notes"] = {note: len(skipped)}  # prepare reports and counts it with its own notes
    return examples, info


def load_benchmark_eval_set(path: str) -> Any:
    """A decontamination loader for `NAME/SPLIT` (prompt + reference of every task)."""
    from codetune.data.decontam import EvalItem, strip_docstrings
    from codetune.eval import dataframebench as dfb

    _name, split = _parse(path, "data.decontamination.eval_sets")

    def load(_splits: dict[str, list[Example]]) -> list[EvalItem]:
        items = []
        for t in dfb.load_tasks(split):
            items.append(EvalItem(t.task_id, f"{t.statement}\n{t.reference}", strip_docstrings(t.reference)))
        return items

    return load
