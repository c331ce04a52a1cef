"""Parsing Python that may not be Python: one quiet `ast.parse` for every step that reads code.

Code from datasets, repositories and models fails to parse in more ways than a SyntaxError: null bytes
(ValueError), nesting too deep for the parser (RecursionError, MemoryError). Odd escapes raise
SyntaxWarnings, which are noise here. Both functions treat all of these alike.
"""

from __future__ import annotations

import ast
import warnings


def _parse(code: str) -> ast.Module | str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning for odd escapes is not an error
            return ast.parse(code)
    except SyntaxError as e:
        return f"line {e.lineno}: {e.msg}"
    except (ValueError, RecursionError, MemoryError) as e:  # null bytes, absurd nesting
        return f"{type(e).__name__}: {e}"


def parse_python(code: str) -> ast.Module | None:
    """The module `code` parses to, or None when it does not parse."""
    tree = _parse(code)
    return tree if isinstance(tree, ast.Module) else None


def python_syntax_error(code: str) -> str | None:
    """None when `code` parses as Python, else a short reason ("line 3: invalid syntax")."""
    tree = _parse(code)
    return tree if isinstance(tree, str) else None
