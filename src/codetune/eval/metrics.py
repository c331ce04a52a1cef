"""Pure text metrics for generated code: BLEU (sacrebleu and CodeXGLUE's), exact match, edit similarity,
syntax validity. All take parallel lists of predictions and references."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from codetune.pyparse import python_syntax_error


def sacre_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU from sacrebleu (13a tokenisation, exponential smoothing), 0-100."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def _ngrams(tokens: Sequence[str], max_order: int) -> Counter[tuple[str, ...]]:
    counts: Counter[tuple[str, ...]] = Counter()
    for order in range(1, max_order + 1):
        for i in range(len(tokens) - order + 1):
            counts[tuple(tokens[i : i + order])] += 1
    return counts


def compute_bleu(
    references: Sequence[Sequence[str]],
    translations: Sequence[Sequence[str]],
    max_order: int = 4,
    smooth: bool = False,
) -> float:
    """Corpus BLEU on token lists, as in the TensorFlow NMT `compute_bleu` that CodeXGLUE's text-to-code
    and code-translation evaluators use (one reference each; `smooth` adds one to every order's
    matches and candidates, Lin & Och 2004). Returns 0-1."""
    matches = [0] * max_order
    possible = [0] * max_order
    ref_len = trans_len = 0
    for ref, hyp in zip(references, translations, strict=True):
        ref_len += len(ref)
        trans_len += len(hyp)
        overlap = _ngrams(hyp, max_order) & _ngrams(ref, max_order)
        for ngram, c in overlap.items():
            matches[len(ngram) - 1] += c
        for order in range(1, max_order + 1):
            if len(hyp) - order + 1 > 0:
                possible[order - 1] += len(hyp) - order + 1
    if smooth:
        precisions = [(matches[i] + 1.0) / (possible[i] + 1.0) for i in range(max_order)]
    else:
        precisions = [matches[i] / possible[i] if possible[i] > 0 else 0.0 for i in range(max_order)]
    if min(precisions) <= 0 or ref_len == 0:
        return 0.0
    geo_mean = math.exp(sum(math.log(p) for p in precisions) / max_order)
    if trans_len == 0:
        return 0.0
    ratio = trans_len / ref_len
    bp = 1.0 if ratio > 1.0 else math.exp(1 - 1.0 / ratio)
    return geo_mean * bp


def codexglue_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """CodeXGLUE's reported BLEU (whitespace tokens, smoothed corpus compute_bleu), 0-100."""
    return 100.0 * compute_bleu(
        [r.split() for r in references], [p.split() for p in predictions], smooth=True
    )


def sentence_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean of smoothed sentence-level BLEU (whitespace tokens), 0-100."""
    if not predictions:
        return 0.0
    scores = [
        compute_bleu([r.split()], [p.split()], smooth=True)
        for p, r in zip(predictions, references, strict=True)
    ]
    return 100.0 * sum(scores) / len(scores)


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to their reference after whitespace normalisation, 0-100."""
    if not predictions:
        return 0.0
    same = sum(
        " ".join(p.split()) == " ".join(r.split()) for p, r in zip(predictions, references, strict=True)
    )
    return 100.0 * same / len(predictions)


def levenshtein(a: str, b: str) -> int:
    """Character edit distance (insert, delete, substitute: cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
        prev = cur
    return prev[-1]


def edit_similarity(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean of 1 - levenshtein / max(len), 0-100 (two empty strings are identical)."""
    if not predictions:
        return 0.0
    total = 0.0
    for p, r in zip(predictions, references, strict=True):
        longest = max(len(p), len(r))
        total += 1.0 if longest == 0 else 1.0 - levenshtein(p, r) / longest
    return 100.0 * total / len(predictions)


def syntax_validity(predictions: Sequence[str]) -> float:
    """Share of predictions that parse as Python, 0-100."""
    if not predictions:
        return 0.0
    return 100.0 * sum(python_syntax_error(p) is None for p in predictions) / len(predictions)


def text_metrics(
    predictions: Sequence[str], references: Sequence[str], language: str = "python"
) -> dict[str, float]:
    out = {
        "bleu": sacre_bleu(predictions, references),
        "codexglue_bleu": codexglue_bleu(predictions, references),
        "sentence_bleu": sentence_bleu(predictions, references),
        "exact_match": exact_match(predictions, references),
        "edit_similarity": edit_similarity(predictions, references),
    }
    if language == "python":
        out["syntax_validity"] = syntax_validity(predictions)
    return {k: round(v, 4) for k, v in out.items()}
