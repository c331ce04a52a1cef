"""Shared fixtures: a small synthetic NL/code dataset and configs for tiny random-init models."""

from __future__ import annotations

import copy
import importlib.util
import json
import random
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from codetune.config import Config, load_config
from codetune.sandbox import Limits

# A quick sandbox job and its tests (tests/sandbox, tests/benchmarks)
FAST = Limits(timeout_s=2.0, memory_mb=512)
ADD_ONE = "def add_one(x):\n    return x + 1\n"
CHECK_ADD_ONE = (
    "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(-1) == 0\n\ncheck(add_one)\n"
)

# Tiny models gain nothing from threads, and threads oversubscribe a busy 2-core machine.
torch.set_num_threads(1)

OPS = [
    ("add", "+", "Return the sum of {a} and {b}."),
    ("subtract", "-", "Return {a} minus {b}."),
    ("multiply", "*", "Return the product of {a} and {b}."),
    ("power", "**", "Return {a} raised to the power {b}."),
    ("floordiv", "//", "Return {a} divided by {b}, rounded down."),
    ("modulo", "%", "Return the remainder of {a} divided by {b}."),
]
NAMES = [("a", "b"), ("x", "y"), ("m", "n"), ("left", "right"), ("first", "second"), ("p", "q"), ("u", "v")]


REPO = Path(__file__).resolve().parents[1]


def load_script(relpath: str) -> ModuleType:
    """A script outside the package (`scripts/`, `recipes/`), loaded as a module for its tests."""
    path = REPO / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_pairs(n_groups: int = 7) -> list[dict[str, Any]]:
    """Deterministic docstring/code pairs: each op x each argument naming, grouped by naming."""
    rows = []
    for gi, (a, b) in enumerate(NAMES[:n_groups]):
        for name, op, doc in OPS:
            rows.append(
                {
                    "uid": f"{name}-{a}-{b}",
                    "docstring": doc.format(a=a, b=b),
                    "code": f"def {name}_{a}_{b}({a}, {b}):\n    return {a} {op} {b}\n",
                    "repo": f"repo{gi}",
                }
            )
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "pairs.jsonl", make_pairs())


# The tiny random-init model the fast tests train (`model.name: tiny` and its preset's sizes).
TINY_MODEL: dict[str, Any] = {
    "name": "tiny",
    "tiny": {"vocab_size": 300, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
}


def tiny_config(tmp_path: Path, source: Path, **overrides: Any) -> Config:
    """A config for a tiny model on `source`, writing under tmp_path; overrides as {section: {key: v}}."""
    raw: dict[str, Any] = {
        "data": {
            "sources": [
                {
                    "path": str(source),
                    "nl_field": "docstring",
                    "code_field": "code",
                    "id_field": "uid",
                    "group_field": "repo",
                }
            ],
            "output_dir": str(tmp_path / "data"),
            "splits": {"train": 0.7, "valid": 0.15, "test": 0.15},
        },
        "model": copy.deepcopy(TINY_MODEL),
        "train": {
            "output_dir": str(tmp_path / "train"),
            "max_steps": 6,
            "batch_size": 4,
            "lr": 3e-3,
            "eval_every": 3,
            "save_every": 3,
            "keep_checkpoints": 5,
            "warmup_ratio": 0.0,
        },
        "generate": {"max_new_tokens": 24},
        "eval": {"output_dir": str(tmp_path / "eval")},
    }
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    return load_config(None, raw)


@pytest.fixture
def tiny_cfg(tmp_path: Path, pairs_file: Path) -> Config:
    return tiny_config(tmp_path, pairs_file)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """One tiny causal run (prepare + 6 training steps) shared by evaluate/generate tests."""
    from codetune.data.prepare import prepare
    from codetune.training.loop import train

    tmp = tmp_path_factory.mktemp("trained")
    source = write_jsonl(tmp / "pairs.jsonl", make_pairs())
    cfg = tiny_config(tmp, source, train={"max_steps": 20, "lr": 1e-2})
    prepare(cfg)
    train(cfg)
    return cfg


@pytest.fixture
def seeded() -> None:
    random.seed(0)
    torch.manual_seed(0)
