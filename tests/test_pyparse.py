"""The one quiet `ast.parse`: every way code can fail to parse gives None / a reason, never an exception."""

from __future__ import annotations

import ast

import pytest

from codetune.pyparse import parse_python, python_syntax_error

NOT_PYTHON = {
    "syntax": "def f(:\n",
    "null byte": "x = 1\x00\n",
    "deep nesting": "x = " + "(" * 300 + ")" * 300 + "\n",
    "long unary chain": "x = " + "-" * 200_000 + "1\n",  # MemoryError in the parser
    "deep attribute chain": "f(" + "a." * 100_000 + "b)\n",  # RecursionError building the AST
}


@pytest.mark.parametrize("code", NOT_PYTHON.values(), ids=NOT_PYTHON.keys())
def test_code_that_does_not_parse(code: str) -> None:
    assert parse_python(code) is None
    reason = python_syntax_error(code)
    assert reason and "\n" not in reason


def test_python_parses_quietly(recwarn: pytest.WarningsRecorder) -> None:
    tree = parse_python('def f():\n    return "\\d"\n')  # an invalid escape: a SyntaxWarning, silenced
    assert isinstance(tree, ast.Module) and isinstance(tree.body[0], ast.FunctionDef)
    assert python_syntax_error("x = 1\n") is None
    assert python_syntax_error("def f(:\n") == "line 1: invalid syntax"
    assert not [w for w in recwarn if issubclass(w.category, SyntaxWarning)]


def test_the_steps_that_read_code_survive_a_parser_that_gives_up() -> None:
    """Two of the old copies caught only SyntaxError: code too deep for the parser crashed them."""
    from codetune.benchmarks.humaneval import sanitize_chat
    from codetune.selftraining import normalised_code

    deep = "def f():\n    return " + "a." * 100_000 + "b\n"
    assert normalised_code(deep) == normalised_code(deep.replace("return ", "return  "))  # by tokens
    assert sanitize_chat(deep, "f").startswith("def f():\n    return a.a.")
