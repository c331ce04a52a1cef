"""scripts/build_quickstart_data.py: only self-contained functions are mined, and every skip is counted."""

from __future__ import annotations

import ast
import json
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import load_script

SOURCE = '''
import os
import os.path as osp
from collections import OrderedDict
from ._impl import helper as _helper

LIMIT = 10
cache = {}
if os.name == "nt":
    import ntpath as pathmod


def basename(path):
    """Return the final component of a path name, without its directory."""
    return os.path.basename(path)


def _uses_private(x):
    """Return x passed through the module's private helper function."""
    return _helper(x)


def uses_constant(x):
    """Return the smaller of x and the module's limit constant."""
    return min(x, LIMIT)


def uses_from_import(items):
    """Return an ordered dictionary built from the given key/value pairs."""
    return OrderedDict(items)


def private_module_attribute(path):
    """Return the path split by the private splitter of the os module."""
    return os._private_split(path)


def counts(words):
    """Return how many times each word occurs, as a dictionary of counts."""
    seen = {}
    for w in words:
        seen[w] = seen.get(w, 0) + 1
    return seen


def factorial(n):
    """Return n factorial, computed recursively for a non-negative n."""
    return 1 if n <= 1 else n * factorial(n - 1)


def joined(a, b):
    """Return the two path components joined, using the imported alias."""
    return osp.join(a, pathmod.sep if a else "", b)


def resets_global():
    """Reset the module's cached value to nothing, for the next caller."""
    global cache
    cache = None


def star_name(x):
    """Return x converted by a name that nothing in this module defines."""
    return mystery(x)


def _gt(self, other):
    """Return a > b, for a method that is defined outside of its class."""
    return self.value > other.value


class Box:
    def size(self):
        """Return the number of things kept inside this box."""
        return len(self.items)
'''


@pytest.fixture(scope="module")
def miner() -> ModuleType:
    return load_script("scripts/build_quickstart_data.py")


def test_only_self_contained_functions_are_mined_and_the_rest_counted(
    miner: ModuleType, tmp_path: Path
) -> None:
    root = tmp_path / "lib"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text(SOURCE)
    skipped: Counter[str] = Counter()
    rows = miner.mine_file(root / "pkg" / "mod.py", root, skipped)
    assert [r["qualname"] for r in rows] == ["basename", "counts", "factorial", "joined"]
    assert rows[0] == {
        "id": "pkg/mod.py::basename",
        "docstring": "Return the final component of a path name, without its directory.",
        "code": "def basename(path):\n    return os.path.basename(path)",
        "file": "pkg/mod.py",
        "qualname": "basename",
    }
    assert skipped == {
        "method": 1,  # Box.size
        "uses_private_name": 2,  # _helper, os._private_split
        "uses_module_name": 3,  # LIMIT, OrderedDict (from-imported), global cache
        "uses_unknown_name": 1,  # mystery
        "uses_self_or_cls": 1,  # _gt(self, other)
    }
    everything = miner.mine_file(root / "pkg" / "mod.py", root, Counter(), all_functions=True)
    assert len(everything) == 12 and everything[-1]["qualname"] == "Box.size"


def test_free_names_are_what_a_function_reads_but_does_not_bind(miner: ModuleType) -> None:
    fn = ast.parse(
        "def f(a, *args, k=1, **kw):\n"
        "    import re\n"
        "    b = [x for x in args]\n"
        "    try:\n        pass\n    except ValueError as e:\n        print(e)\n"
        "    def g():\n        return h\n"
        "    return re.sub(a, b, k, kw, g, LIMIT)\n"
    ).body[0]
    assert miner.free_names(fn) == {"print", "ValueError", "h", "LIMIT"}


def test_the_shipped_data_is_what_the_miner_writes(miner: ModuleType) -> None:
    data = Path(__file__).resolve().parents[2] / "data" / "quickstart"
    counts = json.loads((data / "stdlib_pairs.counts.json").read_text())
    rows = [json.loads(line) for line in (data / "stdlib_pairs.jsonl").read_text().splitlines()]
    assert counts["self_contained_only"] and len(rows) == counts["written"] == counts["kept"]
    assert sum(counts["skipped"].values()) > len(rows)  # most of the standard library leans on its module
    assert not any("." in r["qualname"] or "self" in r["code"].split("\n")[0] for r in rows)
