"""DataFrameBench's train split as a trainable, versioned JSONL file for `prepare` (a recipe, not library code).

    python recipes/dataframebench_train.py --out data/dataframebench/train-v1.jsonl [--one-function-only]
        [--keep-starter]

Reads the 709 train tasks of the pinned `dataframebench==0.1.1` wheel (never val or test: the package's
CANARY.txt) and writes one row per kept task:

    {"id", "nl": the task prompt (filled for pandas), "code": the reference shaped as a training answer,
     "tests": its unittest suite, "group": its BigCodeBench seed (paraphrases share a split),
     "entry_point", "category", "target_shape"}

and `<out>.manifest.json` beside it (recipe version, wheel sha256, counts, the shapes, the skipped ids).
`prepare` reads the file as an ordinary file source:

    data:
      sources:
        - path: data/dataframebench/train-v1.jsonl
          id_field: id
          group_field: group
          tests_field: tests

Shaping (`shaped_target`): the package's references define `task_func`, alias it as `_reference_impl` and
wrap it in a second `task_func` that converts DataFrames into plain values. Trained on as shipped, small
models learn to repeat the first function; the rewrite drops the long docstring and inlines the helper
into one function where that is exactly equivalent ("one-function"), else nests it ("nested-helper").
`--one-function-only` keeps only the one-function references; `--keep-starter` begins each answer as the
task's starter code does (its imports, type-hinted def line and one-line docstring: `with_starter`).
Every rewrite is kept only when it parses; the tests in tests/eval/test_dataframebench.py check that the
shaped references still pass their unittest suites in the sandbox.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from pathlib import Path
from typing import Any

from codetune.benchmarks import dataframebench as dfb
from codetune.manifest import sha256_file, write_json
from codetune.pyparse import python_syntax_error

RECIPE_VERSION = 1
SPLIT = "train"  # the only split that may be trained on


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


# --- the file ------------------------------------------------------------------------------------


def build_rows(
    tasks: list[Any], *, one_function_only: bool = False, keep_starter: bool = False
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows of the training file, and the manifest's counts (shapes, skipped, starter rewrites)."""
    rows: list[dict[str, Any]] = []
    shapes: dict[str, int] = {}
    skipped: list[str] = []
    rewritten = 0
    for task in tasks:
        code, shape = shaped_target(task.reference, task.entry_point)
        shapes[shape] = shapes.get(shape, 0) + 1
        if one_function_only and shape != "one-function":
            skipped.append(task.id)
            continue
        if keep_starter:
            shaped, code = code, with_starter(code, task.stub, task.entry_point)
            rewritten += code != shaped
        rows.append(
            {
                "id": task.id,
                "nl": task.prompt,
                "code": code,
                "tests": task.tests,
                "group": task.group or task.id,
                "entry_point": task.entry_point,
                "category": task.category,
                "target_shape": shape,
            }
        )
    counts: dict[str, Any] = {"tasks": len(tasks), "rows": len(rows), "target_shapes": shapes}
    if one_function_only:
        counts["skipped_not_one_function"] = len(skipped)
        counts["skipped_ids"] = skipped
    if keep_starter:
        counts["starter_rewritten"] = rewritten
    return rows, counts


def write_training_file(
    out: Path, *, one_function_only: bool = False, keep_starter: bool = False, library: str = "pandas"
) -> Path:
    """Write the train split's shaped references to `out` (JSONL) and `<out>.manifest.json`."""
    tasks = dfb.load_tasks(SPLIT, library)
    rows, counts = build_rows(tasks, one_function_only=one_function_only, keep_starter=keep_starter)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    tmp.replace(out)
    write_json(
        out.with_suffix(out.suffix + ".manifest.json"),
        {
            "recipe": "recipes/dataframebench_train.py",
            "recipe_version": RECIPE_VERSION,
            "dataframebench": {"wheel": dfb.WHEEL_NAME, "sha256": dfb.WHEEL_SHA256, "split": SPLIT},
            "license": dfb.LICENSE,
            "library": library,
            "options": {"one_function_only": one_function_only, "keep_starter": keep_starter},
            "sha256": sha256_file(out),
            **counts,
        },
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=Path(f"data/dataframebench/train-v{RECIPE_VERSION}.jsonl")
    )
    parser.add_argument("--one-function-only", action="store_true", help="keep only one-function references")
    parser.add_argument("--keep-starter", action="store_true", help="answers begin as the starter code does")
    parser.add_argument("--library", default="pandas")
    args = parser.parse_args()
    out = write_training_file(
        args.out,
        one_function_only=args.one_function_only,
        keep_starter=args.keep_starter,
        library=args.library,
    )
    manifest = json.loads(out.with_suffix(out.suffix + ".manifest.json").read_text())
    print(f"{out}: {manifest['rows']} of {manifest['tasks']} train tasks, shapes {manifest['target_shapes']}")


if __name__ == "__main__":
    main()
