"""Near-duplicate detection with MinHash LSH on code-token n-grams (pure; numpy only).

A MinHash signature estimates the Jaccard similarity of two shingle sets; LSH banding finds candidate
pairs without comparing all pairs; candidates are confirmed with the exact Jaccard similarity of their
shingle sets, so the result depends on the threshold, not on hashing luck.
"""

from __future__ import annotations

import builtins
import keyword
import re
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

_TOKEN_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?|\S")
_MERSENNE = np.uint64((1 << 61) - 1)
_MAX_HASH = np.uint64((1 << 32) - 1)
# Words that are kept as they are when identifiers are renamed canonically (Python and JavaScript).
_KEEP = (
    frozenset(keyword.kwlist)
    | frozenset(dir(builtins))
    | frozenset(
        [
            "function",
            "var",
            "let",
            "const",
            "return",
            "if",
            "else",
            "for",
            "while",
            "do",
            "switch",
            "case",
            "break",
            "continue",
            "new",
            "this",
            "class",
            "extends",
            "super",
            "import",
            "export",
            "default",
            "try",
            "catch",
            "finally",
            "throw",
            "typeof",
            "instanceof",
            "in",
            "of",
            "null",
            "undefined",
            "true",
            "false",
            "async",
            "await",
            "yield",
            "self",
            "cls",
        ]
    )
)


def code_tokens(code: str) -> list[str]:
    """Identifiers, numbers and single punctuation characters (whitespace and layout are ignored)."""
    return _TOKEN_RE.findall(code)


def canonical_tokens(code: str) -> list[str]:
    """`code_tokens` with every identifier that is not a keyword or builtin replaced by its order of
    first appearance (`v0`, `v1`, ...), so a consistently renamed copy has the same tokens."""
    names: dict[str, str] = {}
    out = []
    for tok in code_tokens(code):
        if (tok[0].isalpha() or tok[0] == "_") and tok not in _KEEP:
            tok = names.setdefault(tok, f"v{len(names)}")
        out.append(tok)
    return out


def shingles(tokens: Sequence[str], n: int) -> frozenset[int]:
    """Hashed n-grams of `tokens` (one shingle of all tokens when there are fewer than n)."""
    if not tokens:
        return frozenset()
    if len(tokens) < n:
        return frozenset([zlib.crc32("\x1f".join(tokens).encode("utf-8"))])
    return frozenset(
        zlib.crc32("\x1f".join(tokens[i : i + n]).encode("utf-8")) for i in range(len(tokens) - n + 1)
    )


def jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


class MinHasher:
    """`num_perm` universal hash functions (a*x + b mod 2^61-1, cut to 32 bits), seeded."""

    def __init__(self, num_perm: int = 128, seed: int = 1) -> None:
        rng = np.random.RandomState(seed)
        self.num_perm = num_perm
        self.a = rng.randint(1, (1 << 61) - 1, size=num_perm, dtype=np.uint64)
        self.b = rng.randint(0, (1 << 61) - 1, size=num_perm, dtype=np.uint64)

    def signature(self, hashes: Iterable[int]) -> np.ndarray:
        """(num_perm,) uint64 MinHash signature of a set of 32-bit hashes."""
        h = np.fromiter(hashes, dtype=np.uint64)
        if h.size == 0:
            return np.full(self.num_perm, _MAX_HASH, dtype=np.uint64)
        with np.errstate(over="ignore"):  # the product wraps modulo 2^64, as in datasketch
            values = (self.a[:, None] * h[None, :] + self.b[:, None]) % _MERSENNE & _MAX_HASH  # (P, N)
        return np.asarray(values.min(axis=1))


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising false positives + false negatives around
    `threshold` (the probability that two sets of similarity s share a band is 1 - (1 - s^r)^b)."""
    s = np.linspace(0.0, 1.0, 201)
    best, best_err = (1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            p = 1.0 - (1.0 - s**rows) ** bands
            fp = np.trapezoid(np.where(s < threshold, p, 0.0), s)
            fn = np.trapezoid(np.where(s >= threshold, 1.0 - p, 0.0), s)
            if fp + fn < best_err:
                best, best_err = (bands, rows), float(fp + fn)
    return best


class LSHIndex:
    """Banded LSH over MinHash signatures: items sharing any band are candidates."""

    def __init__(self, threshold: float, num_perm: int) -> None:
        self.bands, self.rows = lsh_params(threshold, num_perm)
        self.buckets: list[dict[bytes, list[int]]] = [defaultdict(list) for _ in range(self.bands)]

    def _keys(self, sig: np.ndarray) -> list[bytes]:
        return [sig[i * self.rows : (i + 1) * self.rows].tobytes() for i in range(self.bands)]

    def insert(self, key: int, sig: np.ndarray) -> None:
        for bucket, k in zip(self.buckets, self._keys(sig), strict=True):
            bucket[k].append(key)

    def query(self, sig: np.ndarray) -> set[int]:
        out: set[int] = set()
        for bucket, k in zip(self.buckets, self._keys(sig), strict=True):
            out.update(bucket.get(k, ()))
        return out


@dataclass
class Cluster:
    """Near-duplicates of `members[0]` (the first in input order, which is kept)."""

    members: list[int]
    min_similarity: float  # lowest confirmed similarity of a pair that joined the cluster


def near_duplicate_clusters(
    codes: Sequence[str], threshold: float, num_perm: int = 128, ngram: int = 5, seed: int = 1
) -> list[Cluster]:
    """Clusters (size >= 2) of codes whose token n-gram sets have Jaccard similarity >= threshold,
    joined transitively; members are indexes into `codes`, sorted, the first one is the one to keep."""
    hasher = MinHasher(num_perm, seed)
    index = LSHIndex(threshold, num_perm)
    sets = [shingles(code_tokens(c), ngram) for c in codes]
    parent = list(range(len(codes)))
    weakest: dict[int, float] = {}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, s in enumerate(sets):
        sig = hasher.signature(s)
        for j in sorted(index.query(sig)):
            sim = jaccard(s, sets[j])
            if sim >= threshold:
                a, b = sorted((find(i), find(j)))
                parent[b] = a
                weakest[a] = min(weakest.get(a, 1.0), weakest.get(b, 1.0), sim)
        index.insert(i, sig)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(codes)):
        groups[find(i)].append(i)
    return [Cluster(sorted(m), round(weakest.get(root, 1.0), 4)) for root, m in groups.items() if len(m) > 1]
