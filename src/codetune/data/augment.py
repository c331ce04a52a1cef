"""Training-data augmentation (train split only): identifier renaming, description paraphrase, noise.

- `rename_identifiers`: consistent renaming of names bound inside the code's functions (parameters and
  locals), never of names the description mentions, free names (globals, builtins, imports), attributes
  or keyword-argument names. The result is checked by parsing: its AST must equal the original's with
  the renaming applied, so only the names changed. Where an example has tests, they are run on both
  versions (by the caller, through the sandbox) and a renaming is kept only if they pass.
- `paraphrase`: the description rephrased by templates.
- `add_noise`: sentence-level (or, for one sentence, word-level) noise in the description, the input
  side; the code, the target, is never changed.

Every augmented example gets a new id `{origin}~{kind}` and `meta.augmented = {origin, kind, ...}`.
"""

from __future__ import annotations

import ast
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from codetune.config import AugmentationConfig
from codetune.data.neardup import _KEEP
from codetune.data.records import Example
from codetune.pyparse import parse_python

_WORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DYNAMIC = {"locals", "vars", "eval", "exec", "globals", "__dict__"}
_NEVER = {"self", "cls", "_", "__class__"}
NAME_POOL = [
    "value",
    "item",
    "result",
    "data",
    "count",
    "index",
    "total",
    "key",
    "elem",
    "acc",
    "node",
    "buf",
    "temp",
    "current",
    "entry",
    "obj",
    "arg",
    "val",
    "res",
    "out",
    "part",
    "piece",
    "chunk",
    "seq",
    "cur",
    "num",
    "pos",
    "flag",
    "target",
    "first",
    "second",
    "other",
    "source",
    "dest",
    "head",
    "tail",
    "step",
    "left",
    "right",
    "low",
    "high",
    "size",
    "limit",
    "prefix",
    "word",
    "token",
    "line",
    "text",
]


# --- renaming ----------------------------------------------------------------------------------


@dataclass
class Renamed:
    code: str
    mapping: dict[str, str]


_Scope = ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda


def _scope_bindings(scope: _Scope) -> set[str]:
    """Names a function binds itself: its parameters and the names stored in its own body."""
    a = scope.args
    bound = {x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg] if x is not None}
    stack: list[ast.AST] = list(scope.body) if isinstance(scope.body, list) else [scope.body]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            bound.add(node.id)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
            stack.extend(node.decorator_list)  # evaluated in this scope; the body is another scope
            continue
        if isinstance(node, ast.Lambda):
            continue
        stack.extend(ast.iter_child_nodes(node))
    return bound


def renamable_names(tree: ast.Module, protected: set[str]) -> set[str]:
    """Names that every occurrence of resolves to a binding inside one of the code's functions."""
    candidates: set[str] = set()
    unsafe: set[str] = set(_NEVER) | protected

    def visit(node: ast.AST, enclosing: list[set[str]], in_class: bool) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            if not isinstance(node, ast.Lambda):
                unsafe.add(node.name)  # the function's own name is its API
                for d in node.decorator_list:
                    visit(d, enclosing, in_class)
            bound = _scope_bindings(node)
            candidates.update(bound)
            for child in ast.iter_child_nodes(node.args):
                visit(child, enclosing, in_class)  # defaults and annotations: enclosing scope
            body = node.body if isinstance(node.body, list) else [node.body]
            for child in body:
                visit(child, [*enclosing, bound], False)
            return
        if isinstance(node, ast.ClassDef):
            unsafe.add(node.name)
            for child in ast.iter_child_nodes(node):
                visit(child, enclosing, True)
            return
        if isinstance(node, ast.Global | ast.Nonlocal):
            unsafe.update(node.names)
        elif isinstance(node, ast.alias):
            unsafe.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            unsafe.add(node.name)
        elif isinstance(node, ast.keyword) and node.arg:
            unsafe.add(node.arg)
        elif isinstance(node, ast.MatchAs | ast.MatchStar) and node.name:
            unsafe.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            unsafe.add(node.rest)
        elif isinstance(node, ast.Name):
            resolved = any(node.id in scope for scope in enclosing)
            if in_class or not resolved:
                unsafe.add(node.id)  # a class attribute, a global, a builtin or an import
        for child in ast.iter_child_nodes(node):
            visit(child, enclosing, in_class)

    visit(tree, [], False)
    return candidates - unsafe - _KEEP


class _Renamer(ast.NodeTransformer):
    def __init__(self, mapping: dict[str, str]) -> None:
        self.mapping = mapping

    def visit_Name(self, node: ast.Name) -> ast.Name:
        node.id = self.mapping.get(node.id, node.id)
        return node

    def visit_arg(self, node: ast.arg) -> ast.arg:
        self.generic_visit(node)
        node.arg = self.mapping.get(node.arg, node.arg)
        return node


def _spans(tree: ast.Module, mapping: dict[str, str]) -> list[tuple[int, int, str, str]]:
    """(line, byte column, old, new) of every occurrence to rewrite."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in mapping:
            out.append((node.lineno, node.col_offset, node.id, mapping[node.id]))
        elif isinstance(node, ast.arg) and node.arg in mapping:
            out.append((node.lineno, node.col_offset, node.arg, mapping[node.arg]))
    return out


def rename_identifiers(code: str, rng: random.Random, protected: Sequence[str] = ()) -> Renamed | str:
    """Consistently rename the code's local names; returns `Renamed`, or the reason it can't."""
    tree = parse_python(code)
    if tree is None:
        return "does_not_parse"
    used = set(_WORD_RE.findall(code))
    if used & _DYNAMIC:
        return "dynamic_scope"
    names = sorted(renamable_names(tree, set(protected)))
    if not names:
        return "nothing_to_rename"
    pool = [n for n in NAME_POOL if n not in used and n not in protected]
    rng.shuffle(pool)
    fresh = iter([*pool, *(f"var{i}" for i in range(len(names)) if f"var{i}" not in used)])
    mapping = {name: next(fresh) for name in names}
    lines = code.encode("utf-8").split(b"\n")
    for lineno, col, old, new in sorted(_spans(tree, mapping), reverse=True):
        line = lines[lineno - 1]
        if line[col : col + len(old.encode())] != old.encode():
            return "positions_unreliable"  # e.g. a name inside a multi-line f-string
        lines[lineno - 1] = line[:col] + new.encode() + line[col + len(old.encode()) :]
    renamed = b"\n".join(lines).decode("utf-8")
    check = parse_python(renamed)
    if check is None or ast.dump(check) != ast.dump(_Renamer(mapping).visit(tree)):
        return "changed_structure"
    return Renamed(renamed, mapping)


# --- descriptions --------------------------------------------------------------------------------

_VERBS = {
    "return": ("returns", ["Return", "Compute and return", "Give back"]),
    "get": ("gets", ["Get", "Fetch", "Return"]),
    "create": ("creates", ["Create", "Build", "Construct", "Make"]),
    "make": ("makes", ["Make", "Create", "Build"]),
    "build": ("builds", ["Build", "Construct", "Create"]),
    "compute": ("computes", ["Compute", "Calculate", "Work out"]),
    "calculate": ("calculates", ["Calculate", "Compute"]),
    "check": ("checks", ["Check", "Test", "Determine"]),
    "convert": ("converts", ["Convert", "Transform", "Turn"]),
    "find": ("finds", ["Find", "Locate", "Search for"]),
    "remove": ("removes", ["Remove", "Delete", "Drop"]),
    "add": ("adds", ["Add", "Append", "Insert"]),
    "set": ("sets", ["Set", "Assign"]),
    "read": ("reads", ["Read", "Load"]),
    "write": ("writes", ["Write", "Output"]),
    "parse": ("parses", ["Parse", "Read"]),
    "count": ("counts", ["Count", "Tally"]),
    "generate": ("generates", ["Generate", "Produce", "Create"]),
    "split": ("splits", ["Split", "Divide", "Break up"]),
    "sort": ("sorts", ["Sort", "Order"]),
    "test": ("tests", ["Test", "Check"]),
    "determine": ("determines", ["Determine", "Decide", "Find out"]),
}
_VERB_TEMPLATES = [
    "{Syn} {rest}",
    "Write a function that {third} {rest}",
    "Implement a function to {verb} {rest}",
    "This function should {verb} {rest}",
    "Task: {Syn} {rest}",
]
_GENERIC_TEMPLATES = [
    "Write a Python function for the following. {nl}",
    "Task: {nl}",
    "Implement this: {nl}",
    "{nl} Implement it as a function.",
]


def paraphrase(nl: str, rng: random.Random) -> str | None:
    """`nl` rephrased by a template (None when no template gives a different text)."""
    words = nl.split(maxsplit=1)
    options: list[str] = []
    if len(words) == 2 and words[0].lower().rstrip(",") in _VERBS:
        verb, rest = words[0].lower(), words[1]
        third, synonyms = _VERBS[verb]
        for template in _VERB_TEMPLATES:
            for syn in synonyms:
                options.append(template.format(Syn=syn, verb=syn.lower(), third=third, rest=rest))
    else:
        options = [t.format(nl=nl) for t in _GENERIC_TEMPLATES]
    options = sorted({o for o in options if o != nl})
    return rng.choice(options) if options else None


_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+")


def add_noise(nl: str, rng: random.Random) -> tuple[str, str] | None:
    """(noisy description, what was done): drop, swap or repeat one sentence; with one sentence, the
    same on one word (never the first). None when the description is too short to change."""
    sentences = [s for s in _SENTENCE_RE.split(nl.strip()) if s]
    unit, parts = ("sentence", sentences) if len(sentences) >= 2 else ("word", nl.split())
    lo = 0 if unit == "sentence" else 1
    if len(parts) - lo < 2:
        return None
    op = rng.choice(["drop", "swap", "repeat"])
    i = rng.randrange(lo, len(parts) - 1)
    if op == "drop":
        parts = parts[:i] + parts[i + 1 :]
    elif op == "swap":
        parts = parts[:i] + [parts[i + 1], parts[i]] + parts[i + 2 :]
    else:
        parts = parts[: i + 1] + [parts[i]] + parts[i + 1 :]
    noisy = " ".join(parts)
    return (noisy, f"{op} {unit} {i}") if noisy != nl else None


# --- the step ------------------------------------------------------------------------------------

TestRunner = Callable[[list[tuple[str, str]]], list[bool]]  # [(program, tests)] -> passed?


@dataclass
class AugmentResult:
    added: list[Example]
    counts: Counter[str] = field(default_factory=Counter)  # added by kind
    rejected: Counter[str] = field(default_factory=Counter)  # "kind: reason"


def _rng(seed: int, kind: str, ex_id: str) -> random.Random:
    return random.Random(f"{seed}:{kind}:{ex_id}")  # per example: independent of order and of the rates


def _derived(ex: Example, kind: str, detail: dict[str, Any], **changes: Any) -> Example:
    meta = {**ex.meta, "augmented": {"origin": ex.id, "kind": kind, **detail}}
    return replace(ex, id=f"{ex.id}~{kind}", meta=meta, **changes)


def augment_examples(
    train: Sequence[Example], cfg: AugmentationConfig, run_tests: TestRunner | None = None
) -> AugmentResult:
    """Augmented copies of `train` examples at the configured rates (the originals are not changed)."""
    result = AugmentResult([])
    pending: list[tuple[Example, Example]] = []  # (original, renamed) whose tests still have to run
    for ex in train:
        if cfg.rename_rate > 0 and _rng(cfg.seed, "pick-rename", ex.id).random() < cfg.rename_rate:
            if ex.language != "python":
                result.rejected["rename: not_python"] += 1
            else:
                got = rename_identifiers(ex.code, _rng(cfg.seed, "rename", ex.id), _WORD_RE.findall(ex.nl))
                if isinstance(got, str):
                    result.rejected[f"rename: {got}"] += 1
                else:
                    new = _derived(ex, "rename", {"mapping": got.mapping}, code=got.code)
                    if ex.meta.get("tests") and run_tests is not None:
                        pending.append((ex, new))
                    else:
                        result.added.append(new)
                        result.counts["rename"] += 1
        if cfg.paraphrase_rate > 0 and _rng(cfg.seed, "pick-para", ex.id).random() < cfg.paraphrase_rate:
            text = paraphrase(ex.nl, _rng(cfg.seed, "paraphrase", ex.id))
            if text is None:
                result.rejected["paraphrase: no_template"] += 1
            else:
                result.added.append(_derived(ex, "paraphrase", {}, nl=text))
                result.counts["paraphrase"] += 1
        if cfg.noise_rate > 0 and _rng(cfg.seed, "pick-noise", ex.id).random() < cfg.noise_rate:
            noisy = add_noise(ex.nl, _rng(cfg.seed, "noise", ex.id))
            if noisy is None:
                result.rejected["noise: too_short"] += 1
            else:
                result.added.append(_derived(ex, "noise", {"op": noisy[1]}, nl=noisy[0]))
                result.counts["noise"] += 1
    if pending and run_tests is not None:
        _check_with_tests(pending, run_tests, result)
    return result


def _check_with_tests(
    pending: list[tuple[Example, Example]], run_tests: TestRunner, result: AugmentResult
) -> None:
    jobs = [(e.code, str(e.meta["tests"])) for pair in pending for e in pair]
    passed = run_tests(jobs)
    for k, (_, new) in enumerate(pending):
        before, after = passed[2 * k], passed[2 * k + 1]
        if not before:
            result.rejected["rename: original_fails_tests"] += 1
        elif not after:
            result.rejected["rename: renamed_fails_tests"] += 1
        else:
            new.meta["augmented"]["tests_passed"] = True
            result.added.append(new)
            result.counts["rename"] += 1
