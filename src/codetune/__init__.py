"""codetune: fine-tune pretrained language models for code, evaluate them honestly, serve them.

    from codetune import load_config, prepare, train, evaluate, generate, selftrain

Each stage takes a `Config` and hands its output to the next through files with a manifest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Config", "CodetuneError", "evaluate", "generate", "load_config", "prepare", "selftrain", "train"]

if TYPE_CHECKING:
    from codetune.config import Config, load_config
    from codetune.data.prepare import prepare
    from codetune.errors import CodetuneError
    from codetune.eval.evaluate import evaluate
    from codetune.generation import generate
    from codetune.selftraining import selftrain
    from codetune.training.loop import train

_LAZY = {
    "Config": "codetune.config",
    "load_config": "codetune.config",
    "CodetuneError": "codetune.errors",
    "prepare": "codetune.data.prepare",
    "train": "codetune.training.loop",
    "evaluate": "codetune.eval.evaluate",
    "generate": "codetune.generation",
    "selftrain": "codetune.selftraining",  # not selftrain.py: `codetune.selftrain` is always the function
}


def __getattr__(name: str) -> Any:  # imports torch/transformers only when a stage is used
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'codetune' has no attribute {name!r}")
