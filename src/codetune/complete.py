"""Completion inside a file: `codetune complete FILE:LINE[:COL]`.

The file is split at the cursor into a prefix and a suffix (`split_at`, pure); the far ends of both are
cut, whole lines at a time and symmetrically, until they fit the context budget (`fit_context`, pure);
neighbouring files go before the prefix in the model's repository format (`<|file_sep|>path` for
Qwen2.5-Coder and StarCoder) while they fit; the model's own fill-in-the-middle prompt
(`generation.infill_prompt`, as the server's `suffix`) asks for the middle, which is printed.
`prefix + infill + suffix` is the file with the completion inserted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from codetune.config import Config
from codetune.errors import CodetuneError
from codetune.generation import infill_prompt, load_backend, sampling_settings
from codetune.models.backends.base import Backend, Completion

_LOCATION = re.compile(r"^(?P<path>.+?):(?P<line>\d+)(?::(?P<col>\d+))?$")
FILE_SEPARATORS = ("<|file_sep|>", "<file_sep>")  # the repository formats of Qwen2.5-Coder, StarCoder


@dataclass(frozen=True)
class Cursor:
    """A place in a file: 1-based line; 1-based column, None = the end of the line."""

    path: Path
    line: int
    col: int | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.line}" + (f":{self.col}" if self.col is not None else "")


def parse_location(spec: str) -> Cursor:
    """`FILE:LINE` or `FILE:LINE:COL` (1-based) -> a Cursor."""
    m = _LOCATION.match(spec)
    if m is None:
        raise CodetuneError(f"{spec!r}: give the place to complete as FILE:LINE or FILE:LINE:COL (1-based)")
    col = m.group("col")
    return Cursor(Path(m.group("path")), int(m.group("line")), int(col) if col is not None else None)


def split_at(text: str, cursor: Cursor) -> tuple[str, str]:
    """(prefix, suffix) of `text` at `cursor`, so that prefix + suffix == text. Line n+1 of a file whose
    last line ends with a newline is its end. A line or column outside the file is a CodetuneError."""
    lines = text.split("\n")  # a final "" after a trailing newline is the line after the last
    if cursor.line < 1 or cursor.line > len(lines):
        raise CodetuneError(
            f"{cursor}: line {cursor.line} is outside the file ({len(lines)} lines, counting the empty "
            "line after a final newline); give a line from 1"
        )
    line = lines[cursor.line - 1]
    col = len(line) + 1 if cursor.col is None else cursor.col
    if col < 1 or col > len(line) + 1:
        raise CodetuneError(
            f"{cursor}: column {col} is outside line {cursor.line}, which has {len(line)} characters "
            f"(columns 1 to {len(line) + 1}, the last being its end)"
        )
    offset = sum(len(x) + 1 for x in lines[: cursor.line - 1]) + col - 1
    return text[:offset], text[offset:]


@dataclass
class Fitted:
    """The prefix and suffix that fit the budget, and what was cut from their far ends (in lines)."""

    prefix: str
    suffix: str
    cut_prefix_lines: int = 0
    cut_suffix_lines: int = 0
    tokens: int = 0
    neighbours: list[str] = field(default_factory=list)  # neighbour files included
    left_out: list[str] = field(default_factory=list)  # neighbour files that did not fit

    def note(self) -> str | None:
        """A line for the user when anything was cut or left out (None: nothing was)."""
        parts = []
        if self.cut_prefix_lines or self.cut_suffix_lines:
            parts.append(
                f"cut {self.cut_prefix_lines} line(s) from the start and {self.cut_suffix_lines} from the end "
                "of the file to fit the context budget"
            )
        if self.left_out:
            parts.append(f"left out neighbouring file(s) that did not fit: {', '.join(self.left_out)}")
        return "; ".join(parts) or None


def fit_context(prefix: str, suffix: str, budget: int, count: Callable[[str], int]) -> Fitted:
    """Keep the context nearest the cursor: cut whole lines from the start of `prefix` and the end of
    `suffix`, from whichever side is longer (so each keeps about half the budget, or what the other
    leaves), until `count(prefix) + count(suffix) <= budget`. The cursor's line is kept whole."""
    head = prefix.split("\n")  # head[-1] is the cursor line's start: never cut
    tail = suffix.split("\n")  # tail[0] is the cursor line's end: never cut
    head_cost = [count(x + "\n") for x in head[:-1]]  # per line: an estimate, checked before returning
    tail_cost = [count("\n" + x) for x in tail[1:]]
    start, end = 0, len(tail)
    cp, cs = count(prefix), count(suffix)
    while True:
        if cp + cs <= budget:
            p = "\n".join(head[start:])
            s = suffix[
                : len("\n".join(tail[:end])) + (end < len(tail))
            ]  # the last line kept keeps its newline
            cp, cs = count(p), count(s)
            if cp + cs <= budget:
                return Fitted(p, s, start, len(suffix[len(s) :].splitlines()), cp + cs)
        can_p, can_s = start < len(head) - 1, end > 1
        if not (can_p or can_s):
            raise CodetuneError(
                f"the line at the cursor alone takes {cp + cs} tokens, over the context budget of {budget}; "
                "raise --context-tokens"
            )
        if can_p and (cp >= cs or not can_s):
            cp -= head_cost[start]
            start += 1
        else:
            end -= 1
            cs -= tail_cost[end - 1]


def repository_context(
    neighbours: Sequence[tuple[str, str]], separator: str, budget: int, count: Callable[[str], int]
) -> tuple[str, list[str], list[str]]:
    """The neighbouring files `(path, text)` in the repository format, those that fit `budget` whole,
    in the order given: (the text, paths included, paths left out)."""
    parts, kept, left = [], [], []
    for path, text in neighbours:
        block = f"{separator}{path}\n{text.rstrip()}\n"
        cost = count(block)
        if cost <= budget:
            parts.append(block)
            kept.append(path)
            budget -= cost
        else:
            left.append(path)
    return "".join(parts), kept, left


@dataclass
class Infill:
    """What `complete` produced: the completions, and the context they were given."""

    completions: list[Completion]
    prefix: str
    suffix: str
    fitted: Fitted
    prompt: str


def complete(
    cursor: Cursor,
    cfg: Config,
    *,
    context_tokens: int = 2048,
    neighbours: Sequence[Path] = (),
    backend: Backend | None = None,
) -> Infill:
    """Fill in the code at `cursor` with `cfg.generate.model` (which needs FIM tokens)."""
    if not cursor.path.is_file():
        raise CodetuneError(f"{cursor.path}: no such file to complete in")
    text = _read(cursor.path)
    prefix, suffix = split_at(text, cursor)
    backend = backend or load_backend(cfg.generate)
    tokens = backend.fim_tokens()
    who = f"model {cfg.generate.model!r}"
    fitted = fit_context(prefix, suffix, context_tokens, backend.count_tokens)
    prompt, stops = infill_prompt(fitted.prefix, fitted.suffix, backend, who)
    separator = next((s for s in (tokens.extra_stop if tokens else ()) if s in FILE_SEPARATORS), None)
    if neighbours:
        if separator is None:
            raise CodetuneError(f"{who} has no repository format (<|file_sep|>); complete without --with")
        files = [(str(p), _read(p)) for p in neighbours]
        here = f"{separator}{cursor.path.name}\n"
        spare = context_tokens - fitted.tokens - backend.count_tokens(here)
        context, fitted.neighbours, fitted.left_out = repository_context(
            files, separator, spare, backend.count_tokens
        )
        prompt = context + here + prompt
    settings = sampling_settings(cfg.generate, (*stops, *FILE_SEPARATORS))
    completions = backend.generate([prompt], settings)[0]
    return Infill(completions, prefix, suffix, fitted, prompt)


def _read(path: Path) -> str:
    if not path.is_file():
        raise CodetuneError(f"{path}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CodetuneError(f"{path}: not valid UTF-8 (byte {e.start})") from None
