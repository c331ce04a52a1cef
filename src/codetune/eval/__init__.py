"""Evaluation: metrics, benchmarks, sandboxed execution, reports."""

from __future__ import annotations

from typing import Any

__all__ = ["evaluate"]


def __getattr__(name: str) -> Any:  # lazy: importing codetune.eval.sandbox must stay light
    if name == "evaluate":
        from codetune.eval.evaluate import evaluate

        return evaluate
    raise AttributeError(name)
