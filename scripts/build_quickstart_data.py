"""Build data/quickstart/stdlib_pairs.jsonl: docstring -> function pairs mined from Python's standard
library (PSF license) with `ast`. Deterministic for a given Python version; the file is committed so
the quickstart does not depend on the local Python.

    python scripts/build_quickstart_data.py [--max 2500]
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import sysconfig
import warnings
from pathlib import Path

SKIP_DIRS = {
    "test",
    "tests",
    "idlelib",
    "lib2to3",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "site-packages",
    "__pycache__",
}


def first_paragraph(doc: str) -> str:
    para = doc.strip().split("\n\n")[0]
    return " ".join(para.split())


def mine_file(path: Path, root: Path) -> list[dict]:
    try:
        source = path.read_text(encoding="utf-8")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
    except (UnicodeDecodeError, SyntaxError):
        return []
    lines = source.splitlines()
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(child)
                body = child.body[1:] if doc else child.body
                if not doc or not body or child.name.startswith("__") or child.decorator_list:
                    continue
                nl = first_paragraph(doc)
                if not (20 <= len(nl) <= 300):
                    continue
                header = lines[child.lineno - 1 : body[0].lineno - 1]
                # keep the signature (up to the line that ends the def) without the docstring
                sig_end = child.body[0].lineno - 1
                sig = lines[child.lineno - 1 : sig_end]
                while sig and not sig[-1].rstrip().endswith(":"):
                    sig.pop()
                if not sig or header is None:
                    continue
                body_lines = lines[body[0].lineno - 1 : child.end_lineno]
                if not (1 <= len(body_lines) <= 12):
                    continue
                code = "\n".join(sig + body_lines)
                rel = path.relative_to(root).as_posix()
                out.append(
                    {
                        "id": f"{rel}::{prefix}{child.name}",
                        "docstring": nl,
                        "code": code,
                        "file": rel,
                        "qualname": f"{prefix}{child.name}",
                    }
                )

    visit(tree, "")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max", type=int, default=2500)
    ap.add_argument("--out", default="data/quickstart/stdlib_pairs.jsonl")
    args = ap.parse_args()
    root = Path(sysconfig.get_paths()["stdlib"])
    rows = []
    for path in sorted(root.rglob("*.py")):
        if SKIP_DIRS & set(path.relative_to(root).parts):
            continue
        rows.extend(mine_file(path, root))
    rows = (
        rows[: args.max]
        if len(rows) <= args.max
        else [rows[i * len(rows) // args.max] for i in range(args.max)]
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{len(rows)} pairs from {root} (Python {sys.version.split()[0]}) -> {out}")


if __name__ == "__main__":
    main()
