"""The user's own problems with tests, as a `Benchmark`: a JSONL file, or a folder of JSONL files.

One problem per line:

    {"id": "add", "prompt": "Write add(a, b) that returns the sum of a and b.",
     "tests": "assert add(1, 2) == 3", "entry_point": "add", "reference": "def add(a, b): ..."}

- `id` (or `task_id`) and `tests` (code run after the answer: asserts, a unittest module) are required;
- `prompt` (or `nl`, `description`): the description the model is given, rendered like a training prompt
  (the model's prompt config and chat template);
- optional: `entry_point`, `language` (python), `reference` (or `code`, `solution`: a known-good answer;
  when given, every reference must pass its own tests, and timeouts are calibrated on them), `split`
  (test), `stub` (starter code), `category`, `judge`: "values" where the tests only compare plain values
  (numbers, strings, lists, dicts, ...): they then run in a process of their own, where no answer can
  forge its pass (`codetune.sandbox`); "in-process" (the default) where they need the program's objects.
  One file (or folder) has one judge.

A prepared split (`data.output_dir/{split}.jsonl`, records with `nl`, `code` and the tests of a file
source's `tests_field` under `meta.tests`) reads the same way; its examples without tests are skipped
and counted (`skipped`). A folder holds one JSONL file per split (`train.jsonl`, `valid.jsonl`,
`test.jsonl`, like a prepared data folder); a single file's split is each row's `split` (default: test,
or the file's stem for `train.jsonl`, `valid.jsonl`, `val.jsonl`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from codetune.benchmarks.humaneval import sanitize_chat
from codetune.benchmarks.task import Program, PromptStyle, SandboxSpec, Task
from codetune.errors import CodetuneError
from codetune.manifest import sha256_file
from codetune.sandbox import JUDGES, Limits

DEFAULT_LIMITS = Limits(timeout_s=10.0, memory_mb=1024)
# Example usage a model appends at top level: the sanitiser drops it, stopping there saves tokens.
REPLY_STOPS: tuple[str, ...] = ("\n# Example", "\n# Test", "\nif __name__", "\nprint(", "\nassert ")
PROMPT_FIELDS = ("prompt", "nl", "description")
REFERENCE_FIELDS = ("reference", "code", "solution")
KNOWN_FIELDS = {
    "id",
    "task_id",
    *PROMPT_FIELDS,
    *REFERENCE_FIELDS,
    "tests",
    "entry_point",
    "language",
    "split",
    "stub",
    "category",
    "statement",
    "judge",
    # prepared records carry these too
    "group",
    "source",
    "meta",
}


def task_from_row(row: dict[str, Any], where: str, default_split: str = "test") -> Task | None:
    """One task from a task-file row or a prepared record; None for a prepared record without tests.

    Raises `CodetuneError` naming `where` (file:line) and the field for anything malformed."""
    if not isinstance(row, dict):
        raise CodetuneError(f"{where}: a task is a JSON object, got {type(row).__name__}")
    unknown = sorted(set(row) - KNOWN_FIELDS)
    if unknown:
        raise CodetuneError(
            f"{where}: unknown field(s) {', '.join(unknown)}; a task has id, prompt, tests and optionally "
            "entry_point, language, reference, split, stub, category"
        )
    meta = row.get("meta") or {}
    prepared = "nl" in row and "tests" not in row
    tests = meta.get("tests") if prepared else row.get("tests")
    if not tests:
        if prepared:
            return None
        raise CodetuneError(
            f"{where}: field 'tests' is missing or empty; give the code that checks an answer"
        )
    task_id = row.get("id", row.get("task_id"))
    if task_id in (None, ""):
        raise CodetuneError(f"{where}: field 'id' is missing; give each task a unique id")
    prompt = next((row[f] for f in PROMPT_FIELDS if row.get(f)), None)
    if not isinstance(prompt, str):
        raise CodetuneError(
            f"{where}: task {task_id}: field 'prompt' is missing; give the problem's description"
        )
    reference = next((row[f] for f in REFERENCE_FIELDS if row.get(f)), None)
    entry = row.get("entry_point") or meta.get("entry_point") or ""
    for name, value in (("tests", tests), ("reference", reference), ("entry_point", entry)):
        if value is not None and not isinstance(value, str):
            raise CodetuneError(f"{where}: task {task_id}: field {name!r} must be a string")
    judge, language = row.get("judge", "in-process"), str(row.get("language", "python"))
    if judge not in JUDGES or (judge != "in-process" and language != "python"):
        raise CodetuneError(
            f"{where}: task {task_id}: field 'judge' is {judge!r}; use one of {', '.join(JUDGES)} "
            "(values for Python tasks only)"
        )
    return Task(
        id=str(task_id),
        prompt=prompt,
        tests=str(tests),
        entry_point=str(entry),
        language=language,
        statement=str(row.get("statement") or prompt),
        stub=str(row.get("stub", "")),
        reference=reference,
        split=str(row.get("split", default_split)),
        category=str(row.get("category") or meta.get("category") or ""),
        group=str(row.get("group") or ""),
        meta={"source": where, "judge": judge},
    )


def read_task_file(path: Path, default_split: str = "test") -> tuple[list[Task], int]:
    """The tasks of one JSONL file in file order, and how many prepared records had no tests (skipped)."""
    tasks: list[Task] = []
    skipped = 0
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CodetuneError(f"{path}: cannot read the task file ({e})") from e
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise CodetuneError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from e
        task = task_from_row(row, where, default_split)
        if task is None:
            skipped += 1
        else:
            tasks.append(task)
    return tasks, skipped


class UserTasks:
    """Problems with tests from a JSONL file or a folder of per-split JSONL files."""

    ks: tuple[int, ...] = (1, 2, 5, 10)

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise CodetuneError(
                f"eval.benchmark: {self.path} does not exist; give a JSONL file of problems with tests "
                "(see configs/tasks/example.jsonl) or a folder of them"
            )
        self.name = self.path.stem if self.path.is_file() else self.path.name
        self.skipped: dict[str, int] = {}
        if self.path.is_dir():
            found = sorted(p.stem for p in self.path.glob("*.jsonl"))
            if not found:
                raise CodetuneError(f"eval.benchmark: {self.path} holds no *.jsonl task files")
            order = [s for s in ("test", "valid", "val", "train") if s in found]
            self.splits: tuple[str, ...] = tuple(order + [s for s in found if s not in order])
        files = sorted(self.path.glob("*.jsonl")) if self.path.is_dir() else [self.path]
        # each file read once, here: the judge is the whole source's, and `load` takes its split from it
        self._read = {
            file: read_task_file(file, file.stem if self.path.is_dir() else self._default_split())
            for file in files
        }
        every = [t for tasks, _ in self._read.values() for t in tasks]
        if self.path.is_file():
            self.splits = tuple(dict.fromkeys([self._default_split(), *(t.split for t in every)]))
        self.judge = every[0].meta["judge"] if every else "in-process"
        other = next((t for t in every if t.meta["judge"] != self.judge), None)
        if other is not None:
            raise CodetuneError(
                f"{other.meta['source']}: judge {other.meta['judge']!r}, but {every[0].meta['source']} says "
                f"{self.judge!r}: the tasks of one file or folder share one judge"
            )

    def _default_split(self) -> str:
        """A single file's split for rows that name none: its stem for a prepared split file, else test."""
        return self.path.stem if self.path.stem in ("train", "valid", "val", "test") else "test"

    def load(self, split: str = "test") -> list[Task]:
        if self.path.is_dir():
            file = self.path / f"{split}.jsonl"
            if file not in self._read:
                raise CodetuneError(f"{self.path}: no {split}.jsonl (splits here: {', '.join(self.splits)})")
            tasks, skipped = self._read[file]
        else:
            every, skipped = self._read[self.path]
            tasks = [t for t in every if t.split == split]
        self.skipped[split] = skipped
        tasks = [Task(**{**t.to_dict(), "benchmark": str(self.path)}) for t in tasks]
        if not tasks:
            raise CodetuneError(
                f"{self.path}: no tasks with tests in split {split!r}"
                + (
                    f" ({skipped} records have no tests: set tests_field on the file source)"
                    if skipped
                    else ""
                )
            )
        return tasks

    def build_prompt(self, task: Task, style: PromptStyle) -> str:
        return style.render(task.prompt)

    def stops(self, style: PromptStyle) -> tuple[str, ...]:
        # not the answer template's closing fence (style.stops): an instruct model that writes a sentence
        # before its code block would be cut at the opening fence; the sanitiser finds the block itself
        return REPLY_STOPS

    def sanitise(self, task: Task, completion: str, style: PromptStyle) -> str:
        return sanitize_chat(completion, task.entry_point)

    def assemble(self, task: Task, code: str) -> Program:
        return Program(code, task.tests)

    def sandbox(self) -> SandboxSpec:
        return SandboxSpec(DEFAULT_LIMITS, (), calibrate=True, factor=10.0, floor_s=5.0, judge=self.judge)

    def describe(self, split: str) -> dict[str, Any]:
        file = self.path / f"{split}.jsonl" if self.path.is_dir() else self.path
        return {
            "file": str(file),
            "sha256": sha256_file(file) if file.is_file() else None,
            "skipped_without_tests": self.skipped.get(split, 0),
        }
