"""The benchmark interface: a loader, a prompt builder, a sanitiser and a program assembler, and a
registry from a name (or a task file) to a benchmark.

A benchmark is one file under `codetune/benchmarks/` with a class that has the methods of `Benchmark`,
named in `BUILTIN` (or added at runtime with `register`). Everything else (generation, the generation
cache, the sandbox, pass@k, the output folder) is the runner's (`codetune.benchmarks.runner`), the same for
every benchmark:

    tasks = bench.load(split)
    prompt = bench.build_prompt(task, style)            # text the model continues
    code = bench.sanitise(task, reply_text, style)       # what the model wrote, cleaned up
    program, tests = bench.assemble(task, code)          # what the sandbox runs

`get_benchmark("humaneval")`, `get_benchmark("dataframebench")`, or `get_benchmark("my/tasks.jsonl")`
(a JSONL file or a folder of problems with tests: `codetune.benchmarks.user_tasks`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from codetune.benchmarks.task import Program, PromptStyle, SandboxSpec, Task
from codetune.errors import CodetuneError


@runtime_checkable
class Benchmark(Protocol):
    """One benchmark: where its tasks come from and how a reply becomes a program that runs."""

    name: str
    splits: tuple[str, ...]  # the splits `load` knows; the first is the default
    ks: tuple[int, ...]  # the k of pass@k that it reports (those <= n)

    def load(self, split: str) -> list[Task]:
        """The tasks of one split, in a fixed order."""
        ...

    def build_prompt(self, task: Task, style: PromptStyle) -> str:
        """The text the model continues for `task`."""
        ...

    def stops(self, style: PromptStyle) -> tuple[str, ...]:
        """Stop sequences that end a reply in this style (the sanitiser cuts there anyway)."""
        ...

    def sanitise(self, task: Task, completion: str, style: PromptStyle) -> str:
        """The code in a reply (pure): what a user would take from it."""
        ...

    def assemble(self, task: Task, code: str) -> Program:
        """The program and tests that the sandbox runs for a sanitised sample (pure)."""
        ...

    def sandbox(self) -> SandboxSpec:
        """Limits and preloaded modules for this benchmark's programs."""
        ...

    def describe(self, split: str) -> dict[str, Any]:
        """What the manifest records about the data: files, sha256, versions, licence."""
        ...


# name -> the module whose `benchmark(spec)` returns it; imported only when asked for
BUILTIN: dict[str, str] = {
    "humaneval": "codetune.benchmarks.humaneval",
    "dataframebench": "codetune.benchmarks.dataframebench",
    # module:factory where one module holds several benchmarks
    "humaneval-py2js": "codetune.benchmarks.humaneval_js:py2js",
    "humaneval-js2py": "codetune.benchmarks.humaneval_js:js2py",
}
_REGISTERED: dict[str, Callable[[], Benchmark]] = {}


def register(name: str, factory: Callable[[], Benchmark]) -> None:
    """Make `get_benchmark(name)` return `factory()` (a benchmark defined outside this package)."""
    _REGISTERED[name] = factory


def available() -> list[str]:
    """The benchmark names `get_benchmark` knows (besides task files)."""
    return sorted({*BUILTIN, *_REGISTERED})


def split_spec(spec: str) -> tuple[str, str | None]:
    """ "NAME/SPLIT" -> (NAME, SPLIT); a bare name or a path -> (it, None). A path that exists wins."""
    name, sep, split = spec.rpartition("/")
    if sep and name in (*BUILTIN, *_REGISTERED) and split:
        return name, split
    return spec, None


def get_benchmark(name_or_path: str | Path) -> Benchmark:
    """The benchmark for a registered name, or the user's own tasks in a JSONL file or folder."""
    spec = str(name_or_path)
    if spec in _REGISTERED:
        return _REGISTERED[spec]()
    if spec in BUILTIN:
        module_name, _, factory = BUILTIN[spec].partition(":")
        module = importlib.import_module(module_name)
        bench: Benchmark = getattr(module, factory or "benchmark")()
        return bench
    path = Path(spec)
    if path.suffix in (".jsonl", ".json") or path.is_dir() or path.is_file():
        from codetune.benchmarks.user_tasks import UserTasks

        return UserTasks(path)
    raise CodetuneError(
        f"eval.benchmark {spec!r} is neither a known benchmark ({', '.join(available())}) nor a task file "
        "or folder; give a JSONL file of problems with tests (see configs/tasks/example.jsonl)"
    )


def resolve_split(bench: Benchmark, split: str | None) -> str:
    """`split` when the benchmark has it, else its default split."""
    return split if split in bench.splits else bench.splits[0]


def tasks_by_id(tasks: Sequence[Task]) -> dict[str, Task]:
    """Tasks keyed by id; a repeated id is an error (results are keyed by it)."""
    out: dict[str, Task] = {}
    for task in tasks:
        if task.id in out:
            raise CodetuneError(f"{task.benchmark or 'tasks'}: task id {task.id!r} appears twice")
        out[task.id] = task
    return out
