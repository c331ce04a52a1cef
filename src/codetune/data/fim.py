"""Fill-in-the-middle samples: split code at statement boundaries into prefix / middle / suffix.

Pure: `split_points` (line starts of Python statements, or of lines for other languages, so a split is
never inside a token or statement), `make_fim_sample` (a seeded PSM or SPM sample, whose
`prefix + middle + suffix` is exactly the code) and `FimEncoder`, which builds the model's own infilling
prompt (`codetune.models.fim` conventions) with the loss on the middle and the end token only.

A FIM sample travels in the prepared JSONL as an Example with `meta.fim = {prefix, suffix, middle, mode,
convention}`; `convention: auto` means the tokenizer's own FIM tokens, found when training starts.
"""

from __future__ import annotations

import ast
import random
from dataclasses import dataclass, replace
from typing import Any, Literal

from codetune.data.format import IGNORE_INDEX, Encoded, encode_prompt
from codetune.data.records import Example
from codetune.errors import CodetuneError
from codetune.models.backends.base import FimTokens
from codetune.models.fim import FIM_CONVENTIONS, detect_fim_tokens, fim_prompt
from codetune.pyparse import parse_python

Mode = Literal["psm", "spm"]


@dataclass(frozen=True)
class FimSample:
    prefix: str
    middle: str
    suffix: str
    mode: Mode

    def reassemble(self) -> str:
        return self.prefix + self.middle + self.suffix


def _line_starts(code: str) -> list[int]:
    starts = [0]
    for i, ch in enumerate(code):
        if ch == "\n" and i + 1 < len(code):
            starts.append(i + 1)
    return starts


def split_points(code: str, language: str = "python") -> list[int]:
    """Sorted character offsets where a FIM split may fall: the start of each line that begins a Python
    statement (any depth), plus the end of the code. Other languages (or code that doesn't parse):
    every line start."""
    starts = _line_starts(code)
    points = set(starts)
    if language == "python":
        tree = parse_python(code)
        if tree is not None:
            lines = code.split("\n")
            points = set()
            for node in ast.walk(tree):
                if not isinstance(node, ast.stmt):
                    continue
                first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
                if not lines[first - 1][: node.col_offset].strip():
                    points.add(starts[first - 1])
    points.add(len(code))
    return sorted(p for p in points if p <= len(code))


def make_fim_sample(
    code: str, rng: random.Random, spm_rate: float = 0.5, language: str = "python"
) -> FimSample | None:
    """A random split of `code` at two split points (not the whole code as the middle, when there is
    another choice); SPM with probability `spm_rate`. None if the code has a single split point."""
    points = split_points(code, language)
    if len(points) < 2:
        return None
    while True:
        a, b = sorted(rng.sample(range(len(points)), 2))
        i, j = points[a], points[b]
        if (i, j) != (0, len(code)) or len(points) == 2:
            break
    mode: Mode = "spm" if rng.random() < spm_rate else "psm"
    return FimSample(code[:i], code[i:j], code[j:], mode)


def fim_examples(
    train: list[Example], rate: float, spm_rate: float, convention: str, seed: int
) -> tuple[list[Example], int]:
    """FIM samples for a share `rate` of `train` (marked with their origin), and how many examples were
    picked but had no place to split."""
    if convention != "auto" and convention not in FIM_CONVENTIONS:
        raise CodetuneError(
            f"data.fim.convention {convention!r}: use auto or one of {', '.join(FIM_CONVENTIONS)}"
        )
    out, unsplittable = [], 0
    for ex in train:
        rng = random.Random(f"{seed}:fim:{ex.id}")
        if rng.random() >= rate:
            continue
        sample = make_fim_sample(ex.code, rng, spm_rate, ex.language)
        if sample is None:
            unsplittable += 1
            continue
        fim = {
            "prefix": sample.prefix,
            "suffix": sample.suffix,
            "middle": sample.middle,
            "mode": sample.mode,
            "convention": convention,
        }
        meta = {**ex.meta, "fim": fim, "augmented": {"origin": ex.id, "kind": "fim"}}
        out.append(replace(ex, id=f"{ex.id}~fim", meta=meta))
    return out, unsplittable


class FimEncoder:
    """Tokenises FIM samples with a tokenizer's own FIM tokens: prompt = the infilling prompt (PSM or
    SPM), answer = middle + end token; labels cover exactly the answer."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._vocab: dict[str, int] | None = None

    def tokens(self, convention: str) -> FimTokens:
        if self._vocab is None:
            self._vocab = dict(self.tokenizer.get_vocab())
        vocab = self._vocab
        if convention == "auto":
            found = detect_fim_tokens(vocab)
        else:
            found = FIM_CONVENTIONS.get(convention)
            if found is not None and not all(t in vocab for t in (found.prefix, found.suffix, found.middle)):
                found = None
        if found is None:
            raise CodetuneError(
                f"the prepared data has fill-in-the-middle samples (convention {convention!r}) but this "
                f"model's tokenizer has no such FIM tokens (known: {', '.join(FIM_CONVENTIONS)}); "
                "use a model with FIM tokens or prepare again with data.fim.rate=0"
            )
        return found

    def encode(self, ex_id: str, fim: dict[str, Any], kind: str) -> Encoded:
        tokens = self.tokens(str(fim.get("convention", "auto")))
        prompt = fim_prompt(fim["prefix"], fim["suffix"], tokens, str(fim["mode"]))
        assert self._vocab is not None
        end = self._vocab.get(tokens.eot) if tokens.eot else None
        end = end if end is not None else self.tokenizer.eos_token_id
        answer = self.tokenizer(fim["middle"], add_special_tokens=False)["input_ids"] + [end]
        if kind == "seq2seq":
            return Encoded(ex_id, self.tokenizer(prompt, add_special_tokens=True)["input_ids"], answer)
        p = encode_prompt(self.tokenizer, prompt)
        return Encoded(ex_id, p + answer, [IGNORE_INDEX] * len(p) + answer)
