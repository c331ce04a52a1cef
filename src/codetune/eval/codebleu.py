"""CodeBLEU (Ren et al. 2020, arXiv:2009.10297) for Python and JavaScript, on the tree-sitter we pin.

The `codebleu` package (0.7) needs tree-sitter 0.22 and grammars 0.21, older than the tree-sitter 0.26 /
tree-sitter-javascript 0.25 that the JavaScript miner pins, so this module computes the same four
components itself with our tree-sitter:

    codebleu = 0.25 * BLEU + 0.25 * weighted BLEU + 0.25 * syntax match + 0.25 * dataflow match

It follows the reference implementation (github.com/k4black/codebleu, MIT; the CodeXGLUE original,
Microsoft, MIT), quirks included, so that scores agree with it; `tests/eval/test_codebleu.py` checks the
agreement on 50+ pairs per language against scores the reference computed (fixture in
`tests/eval/fixtures/codebleu_reference.json`). The quirks kept on purpose:

- tokens are whitespace-split; BLEU-4 with the "add 0.1 to zero counts" smoothing (NLTK method1);
- the weighted BLEU is a recall over the reference's n-grams (keywords weigh 1, other unigrams 0.2),
  with a brevity penalty taken against a "reference length" of 2;
- the syntax match counts the reference's subtrees (S-expressions) found among the candidate's;
- a dataflow score of 0 (no dataflow in any reference) counts as 1 in the combined score.

Where the reference iterates a Python `set` (hash-seeded order), this module sorts, so scores here are
deterministic; the reference's own scores vary by a hair between processes for that reason.
"""

from __future__ import annotations

import io
import math
import re
import tokenize
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

from codetune.errors import CodetuneError

LANGUAGES = ("python", "javascript")

# The reference's keyword lists (codebleu/keywords/*.txt), "True" in JavaScript's included.
KEYWORDS: dict[str, frozenset[str]] = {
    "python": frozenset(
        "False None True and as assert async await break class continue def del elif else except finally "  # noqa: SIM905
        "for from global if import in is lambda nonlocal not or pass raise return try while with yield "
        "match case type".split()
    ),
    "javascript": frozenset(
        "await break case catch class const continue debugger default delete do else enum export extends "  # noqa: SIM905
        "false finally for function if implements import in instanceof interface let new null package "
        "private protected public return super switch static this throw try True typeof var void while "
        "with yield".split()
    ),
}

_WEIGHTS = (0.25, 0.25, 0.25, 0.25)


@dataclass(frozen=True)
class CodeBleuScore:
    """Corpus-level CodeBLEU and its four components, each in [0, 1]."""

    codebleu: float
    ngram_match: float
    weighted_ngram_match: float
    syntax_match: float
    dataflow_match: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def codebleu(
    predictions: Sequence[str],
    references: Sequence[str],
    language: str,
    weights: tuple[float, float, float, float] = _WEIGHTS,
) -> CodeBleuScore:
    """Corpus CodeBLEU of `predictions` against one reference each, in `language` (python, javascript)."""
    if language not in LANGUAGES:
        raise CodetuneError(f"CodeBLEU language {language!r}: use one of {', '.join(LANGUAGES)}")
    if len(predictions) != len(references):
        raise CodetuneError(f"CodeBLEU: {len(predictions)} predictions but {len(references)} references")
    hyps = [p.strip() for p in predictions]
    refs = [r.strip() for r in references]
    hyp_tokens = [h.split() for h in hyps]
    ref_tokens = [r.split() for r in refs]
    ngram = corpus_bleu(ref_tokens, hyp_tokens)
    weighted = weighted_corpus_bleu(ref_tokens, hyp_tokens, KEYWORDS[language])
    syntax = corpus_syntax_match(refs, hyps, language)
    dataflow = corpus_dataflow_match(refs, hyps, language)
    alpha, beta, gamma, theta = weights
    total = alpha * ngram + beta * weighted + gamma * syntax + theta * (dataflow or 1.0)
    return CodeBleuScore(total, ngram, weighted, syntax, dataflow)


# --- n-gram match: BLEU-4 over whitespace tokens ------------------------------------------------------


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(zip(*(tokens[i:] for i in range(n)), strict=False)) if len(tokens) >= n else Counter()


def _combine(numerators: Sequence[float], denominators: Sequence[float], bp: float) -> float:
    """Geometric mean of the n-gram precisions with zero numerators smoothed by 0.1, times `bp`."""
    if numerators[0] == 0:
        return 0.0
    logs = (
        math.log((num if num != 0 else 0.1) / den) for num, den in zip(numerators, denominators, strict=True)
    )
    return bp * math.exp(math.fsum(0.25 * x for x in logs))


def _brevity_penalty(ref_len: int, hyp_len: int) -> float:
    if hyp_len > ref_len:
        return 1.0
    return 0.0 if hyp_len == 0 else math.exp(1 - ref_len / hyp_len)


def corpus_bleu(references: Sequence[Sequence[str]], hypotheses: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 (clipped precision, brevity penalty, smoothing as NLTK's method1)."""
    nums, dens = [0.0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for ref, hyp in zip(references, hypotheses, strict=True):
        for n in range(1, 5):
            counts, ref_counts = _ngrams(hyp, n), _ngrams(ref, n)
            nums[n - 1] += sum(min(c, ref_counts[g]) for g, c in counts.items())
            dens[n - 1] += max(1, sum(counts.values()))
        hyp_len += len(hyp)
        ref_len += len(ref)
    return _combine(nums, dens, _brevity_penalty(ref_len, hyp_len))


def weighted_corpus_bleu(
    references: Sequence[Sequence[str]], hypotheses: Sequence[Sequence[str]], keywords: frozenset[str]
) -> float:
    """The keyword-weighted n-gram match: recall of the reference's n-grams, unigrams weighted 1 for
    keywords and 0.2 for other tokens (the reference's brevity penalty compares against length 2)."""
    nums, dens = [0.0] * 4, [0.0] * 4
    hyp_len = ref_len = 0
    for ref, hyp in zip(references, hypotheses, strict=True):
        weight = {t: 1.0 if t in keywords else 0.2 for t in ref}
        for n in range(1, 5):
            counts, ref_counts = _ngrams(hyp, n), _ngrams(ref, n)
            clipped = {g: min(c, counts[g]) for g, c in ref_counts.items()}
            if n == 1:
                nums[0] += sum(c * weight[g[0]] for g, c in clipped.items())
                dens[0] += max(1, sum(c * weight[g[0]] for g, c in ref_counts.items()))
            else:
                nums[n - 1] += sum(clipped.values())
                dens[n - 1] += max(1, sum(ref_counts.values()))
        hyp_len += len(hyp)
        ref_len += 2  # the reference measures len([tokens, weights]), not the tokens: kept for agreement
    return _combine(nums, dens, _brevity_penalty(ref_len, hyp_len))


# --- syntax match: shared subtrees --------------------------------------------------------------------


@cache
def _parser(language: str) -> Any:
    import tree_sitter

    if language == "python":
        import tree_sitter_python as grammar
    else:
        import tree_sitter_javascript as grammar  # type: ignore[no-redef]
    return tree_sitter.Parser(tree_sitter.Language(grammar.language()))


def _parse(code: str, language: str) -> Any:
    return _parser(language).parse(code.encode("utf-8")).root_node


def _subtrees(root: Any) -> list[str]:
    """S-expressions of the root and of every inner (non-leaf) node below it."""
    out, stack = [], [root]
    while stack:
        node = stack.pop()
        out.append(str(node))
        stack.extend(child for child in node.children if child.children)
    return out


def corpus_syntax_match(references: Sequence[str], candidates: Sequence[str], language: str) -> float:
    """Share of the references' subtrees (comments and docstrings removed) found in their candidate."""
    matched = total = 0
    for ref, cand in zip(references, candidates, strict=True):
        cand_trees = set(_subtrees(_parse(remove_comments(cand, language), language)))
        ref_trees = _subtrees(_parse(remove_comments(ref, language), language))
        matched += sum(1 for t in ref_trees if t in cand_trees)
        total += len(ref_trees)
    return matched / total if total else 0.0


_JS_COMMENT = re.compile(r'//.*?$|/\*.*?\*/|\'(?:\\.|[^\\\'])*\'|"(?:\\.|[^\\"])*"', re.DOTALL | re.MULTILINE)


def remove_comments(source: str, language: str) -> str:
    """`source` without comments (and Python docstrings) and blank lines, as the reference strips it;
    source that does not tokenise is returned as it is."""
    try:
        out = _strip_python(source) if language == "python" else _JS_COMMENT.sub(_js_replacer, source)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return source
    return "\n".join(line for line in out.split("\n") if line.strip())


def _js_replacer(m: re.Match[str]) -> str:
    return " " if m.group(0).startswith("/") else m.group(0)


def _strip_python(source: str) -> str:
    out, prev_type, last_line, last_col = "", tokenize.INDENT, -1, 0
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        (start_line, start_col), (end_line, end_col) = tok.start, tok.end
        if start_line > last_line:
            last_col = 0
        if start_col > last_col:
            out += " " * (start_col - last_col)
        if tok.type == tokenize.COMMENT:
            pass
        elif tok.type == tokenize.STRING:  # a string after an indent or a newline is a docstring
            if prev_type not in (tokenize.INDENT, tokenize.NEWLINE) and start_col > 0:
                out += tok.string
        else:
            out += tok.string
        prev_type, last_col, last_line = tok.type, end_col, end_line
    return out


# --- dataflow match: "where a variable's value comes from" graphs -------------------------------------

Edge = tuple[str, int, str, list[str], list[int]]  # (variable, token index, relation, from names, from idx)
States = dict[str, list[int]]
Span = tuple[Any, Any]  # (start_point, end_point) of a leaf
_LEAF_TYPES = ("string_literal", "string", "character_literal")


def _is_leaf(node: Any) -> bool:
    return (len(node.children) == 0 or node.type in _LEAF_TYPES) and node.type != "comment"


def _token_spans(node: Any) -> list[Span]:
    if _is_leaf(node):
        return [(node.start_point, node.end_point)]
    return [span for child in node.children for span in _token_spans(child)]


def _variable_spans(node: Any, tokens: dict[Span, tuple[int, str]]) -> list[Span]:
    """Spans of the leaves under `node` whose text is not their own type (identifiers, literals)."""
    if _is_leaf(node):
        span = (node.start_point, node.end_point)
        return [span] if node.type != tokens[span][1] else []
    return [s for child in node.children for s in _variable_spans(child, tokens)]


def _span_text(span: Span, lines: list[str]) -> str:
    (r0, c0), (r1, c1) = span
    if r0 == r1:
        return lines[r0][c0:c1]
    return lines[r0][c0:] + "".join(lines[r0 + 1 : r1]) + lines[r1][:c1]


def _merge_edges(edges: list[Edge]) -> list[Edge]:
    merged: dict[tuple[str, int, str], list[Any]] = {}
    for name, idx, rel, names, idxs in edges:
        key = (name, idx, rel)
        if key not in merged:
            merged[key] = [names, idxs]
        else:
            merged[key] = [sorted(set(merged[key][0] + names)), sorted(set(merged[key][1] + idxs))]
    return [(k[0], k[1], k[2], v[0], v[1]) for k, v in sorted(merged.items(), key=lambda t: t[0][1])]


def _union_states(parts: list[States]) -> States:
    out: States = {}
    for states in parts:
        for key, value in states.items():
            out[key] = out[key] + value if key in out else list(value)
    return {k: sorted(set(v)) for k, v in out.items()}


def _by_index(edges: list[Edge]) -> list[Edge]:
    return sorted(edges, key=lambda e: e[1])


class _DataFlow:
    """The reference's DFG_python / DFG_javascript walkers: edges from a variable's use or assignment to
    the tokens its value comes from, with `states` = the token indices where each name was last set."""

    def __init__(self, language: str, tokens: dict[Span, tuple[int, str]]) -> None:
        self.language = language
        self.tokens = tokens
        py = language == "python"
        self.assignment = (
            ("assignment", "augmented_assignment", "for_in_clause")
            if py
            else (
                "assignment_pattern",
                "augmented_assignment_expression",
            )
        )
        self.definition = "default_parameter" if py else "variable_declarator"
        self.if_types = ("if_statement",) if py else ("if_statement", "else")
        self.do_first = ("for_in_clause",) if py else ()

    def visit(self, node: Any, states: States) -> tuple[list[Edge], States]:
        states = states.copy()
        if _is_leaf(node):
            return self._leaf(node, states)
        kind = node.type
        if kind == self.definition:
            return self._definition(node, states)
        if kind in self.assignment:
            if self.language == "python":
                return self._py_assignment(node, states)
            return self._js_assignment(node, states)
        if kind == "update_expression" and self.language == "javascript":
            return self._js_update(node, states)
        if kind in self.if_types:
            return self._if(node, states)
        if kind == "for_statement":
            return self._py_for(node, states) if self.language == "python" else self._js_for(node, states)
        if kind == "while_statement":
            return self._while(node, states)
        edges: list[Edge] = []
        for first in (True, False):
            for child in node.children:
                if (child.type in self.do_first) == first:
                    found, states = self.visit(child, states)
                    edges += found
        return _by_index(edges), states

    def _text(self, span: Span) -> tuple[int, str]:
        return self.tokens[span]

    def _leaf(self, node: Any, states: States) -> tuple[list[Edge], States]:
        idx, code = self._text((node.start_point, node.end_point))
        if node.type == code:
            return [], states
        if code in states:
            return [(code, idx, "comesFrom", [code], states[code].copy())], states
        if node.type == "identifier":
            states[code] = [idx]
        return [(code, idx, "comesFrom", [], [])], states

    def _definition(self, node: Any, states: States) -> tuple[list[Edge], States]:
        name, value = node.child_by_field_name("name"), node.child_by_field_name("value")
        edges: list[Edge] = []
        if value is None:
            for span in _variable_spans(name, self.tokens):
                idx, code = self._text(span)
                edges.append((code, idx, "comesFrom", [], []))
                states[code] = [idx]
            return _by_index(edges), states
        value_spans = _variable_spans(value, self.tokens)
        edges, states = self.visit(value, states)
        for span in _variable_spans(name, self.tokens):
            idx1, code1 = self._text(span)
            for span2 in value_spans:
                idx2, code2 = self._text(span2)
                edges.append((code1, idx1, "comesFrom", [code2], [idx2]))
            states[code1] = [idx1]
        return _by_index(edges), states

    def _pair_sides(self, left: Any, right: Any) -> tuple[list[Any], list[Any]]:
        """Python: `a, b = x, y` pairs a with x and b with y; else the whole sides pair up."""
        lefts = [x for x in left.children if x.type != ","]
        rights = [x for x in right.children if x.type != ","]
        if len(rights) != len(lefts):
            lefts, rights = [left], [right]
        return lefts or [left], rights or [right]

    def _computed_from(self, lefts: list[Any], rights: list[Any], states: States) -> list[Edge]:
        edges: list[Edge] = []
        for left, right in zip(lefts, rights, strict=False):
            right_spans = _variable_spans(right, self.tokens)
            for span in _variable_spans(left, self.tokens):
                idx1, code1 = self._text(span)
                names = [self.tokens[s][1] for s in right_spans]
                edges.append((code1, idx1, "computedFrom", names, [self.tokens[s][0] for s in right_spans]))
                states[code1] = [idx1]
        return edges

    def _py_assignment(self, node: Any, states: States) -> tuple[list[Edge], States]:
        if node.type == "for_in_clause":
            lefts, rights = [node.child_by_field_name("left")], [node.children[-1]]
        else:
            if node.child_by_field_name("right") is None:
                return [], states
            lefts, rights = self._pair_sides(
                node.child_by_field_name("left"), node.child_by_field_name("right")
            )
        edges: list[Edge] = []
        for right in rights:
            found, states = self.visit(right, states)
            edges += found
        edges += self._computed_from(lefts, rights, states)
        return _by_index(edges), states

    def _py_for(self, node: Any, states: States) -> tuple[list[Edge], States]:
        edges: list[Edge] = []
        for _ in range(2):
            lefts, rights = self._pair_sides(
                node.child_by_field_name("left"), node.child_by_field_name("right")
            )
            for right in rights:
                found, states = self.visit(right, states)
                edges += found
            edges += self._computed_from(lefts, rights, states)
            if node.children[-1].type == "block":
                found, states = self.visit(node.children[-1], states)
                edges += found
        return _by_index(_merge_edges(edges)), states

    def _while(self, node: Any, states: States) -> tuple[list[Edge], States]:
        edges: list[Edge] = []
        for _ in range(2):
            for child in node.children:
                found, states = self.visit(child, states)
                edges += found
        return _by_index(_merge_edges(edges)), states

    def _if(self, node: Any, states: States) -> tuple[list[Edge], States]:
        edges: list[Edge] = []
        current, branches = states.copy(), []
        has_else = "else" in node.type
        in_branches = False  # JavaScript: once an else branch starts, the rest are branches too
        for child in node.children:
            has_else = has_else or "else" in child.type
            if self.language == "python":
                is_branch = child.type in ("elif_clause", "else_clause")
            else:
                in_branches = in_branches or child.type in self.if_types
                is_branch = in_branches
            if not is_branch:
                found, current = self.visit(child, current)
            else:
                found, branch_states = self.visit(child, states)
                branches.append(branch_states)
            edges += found
        branches.append(current)
        if not has_else:
            branches.append(states)
        if self.language == "javascript":
            branches.append(states)  # the reference adds the states before the `if` once more
        return _by_index(edges), _union_states(branches)

    def _js_assignment(self, node: Any, states: States) -> tuple[list[Edge], States]:
        left, right = node.child_by_field_name("left"), node.child_by_field_name("right")
        edges, states = self.visit(right, states)
        value_spans = _variable_spans(right, self.tokens)
        for span in _variable_spans(left, self.tokens):
            idx1, code1 = self._text(span)
            for span2 in value_spans:
                idx2, code2 = self._text(span2)
                edges.append((code1, idx1, "computedFrom", [code2], [idx2]))
            states[code1] = [idx1]
        return _by_index(edges), states

    def _js_update(self, node: Any, states: States) -> tuple[list[Edge], States]:
        edges: list[Edge] = []
        spans = _variable_spans(node, self.tokens)
        for span in spans:
            idx1, code1 = self._text(span)
            for span2 in spans:
                idx2, code2 = self._text(span2)
                edges.append((code1, idx1, "computedFrom", [code2], [idx2]))
            states[code1] = [idx1]
        return _by_index(edges), states

    def _js_for(self, node: Any, states: States) -> tuple[list[Edge], States]:
        edges: list[Edge] = []
        for child in node.children:
            found, states = self.visit(child, states)
            edges += found
        after_declaration = False
        for child in node.children:
            if after_declaration:
                found, states = self.visit(child, states)
                edges += found
            elif child.type == "variable_declaration":
                after_declaration = True
        return _by_index(_merge_edges(edges)), states


def data_flow(code: str, language: str) -> list[Edge]:
    """The dataflow edges of `code` that link to something, one per token index."""
    root = _parse(code, language)
    lines = code.split("\n")
    tokens = {span: (i, _span_text(span, lines)) for i, span in enumerate(_token_spans(root))}
    try:
        edges, _ = _DataFlow(language, tokens).visit(root, {})
    except (
        KeyError,
        IndexError,
        AttributeError,
        TypeError,
        RecursionError,
    ):  # the reference gives up the same way
        edges = []
    edges = _by_index(edges)
    linked = {e[1] for e in edges if e[4]} | {i for e in edges for i in e[4]}
    merged: dict[int, Edge] = {}
    for e in edges:
        if e[1] not in linked:
            continue
        if e[1] in merged:
            m = merged[e[1]]
            e = (e[0], e[1], e[2], sorted(set(m[3] + e[3])), sorted(set(m[4] + e[4])))
        merged[e[1]] = e
    return list(merged.values())


def _normalize(edges: list[Edge]) -> list[tuple[str, str, list[str]]]:
    """Edges with variable names replaced by var_0, var_1, ... in order of appearance."""
    names: dict[str, str] = {}
    out = []
    for name, _, rel, sources, _ in edges:
        for n in [*sources, name]:
            names.setdefault(n, f"var_{len(names)}")
        out.append((names[name], rel, [names[s] for s in sources]))
    return out


def corpus_dataflow_match(references: Sequence[str], candidates: Sequence[str], language: str) -> float:
    """Share of the references' normalised dataflow edges found (each at most once) in the candidate's;
    0.0 when no reference has any dataflow."""
    matched = total = 0
    for ref, cand in zip(references, candidates, strict=True):
        cand_flow = _normalize(data_flow(remove_comments(cand, language), language))
        ref_flow = _normalize(data_flow(remove_comments(ref, language), language))
        total += len(ref_flow)
        for edge in ref_flow:
            if edge in cand_flow:
                matched += 1
                cand_flow.remove(edge)
    return matched / total if total else 0.0
