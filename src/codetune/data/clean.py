"""Pure cleaning steps: whitespace normalisation, syntax checks, exact-duplicate keys."""

from __future__ import annotations

import textwrap


def normalise_text(text: str) -> str:
    """Unify line endings, drop trailing whitespace on each line and surrounding blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines)


def normalise_code(code: str) -> str:
    """normalise_text plus removal of common indentation (a method lifted out of its class)."""
    return textwrap.dedent(normalise_text(code))


def normalise_nl(nl: str) -> str:
    """Descriptions: normalised lines, dedented (docstrings keep their paragraph structure)."""
    return textwrap.dedent(normalise_text(nl)).strip()


def dedup_key(code: str) -> str:
    """Key for exact-duplicate detection: the code with all whitespace runs collapsed."""
    return " ".join(code.split())
