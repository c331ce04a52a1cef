"""Build data/quickstart/stdlib_pairs.jsonl: docstring -> function pairs mined from Python's standard
library (PSF license) with `ast`. Deterministic for a given Python version; the file is committed so
the quickstart does not depend on the local Python.

    python scripts/build_quickstart_data.py [--max 2500] [--all-functions]

Only self-contained functions are kept (`--all-functions` keeps methods and the rest too): top-level
`def`s whose free names are builtins, the module's imports, or the function itself. A method, or a
function that reads a module-level helper, constant or class of the mined file, can't be written from
its docstring alone: trained on those, the quickstart's model learnt to answer with
`return self._unique(*args)`. Every skipped function is counted by reason, printed and written to
`stdlib_pairs.counts.json` next to the output.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import json
import sys
import sysconfig
import warnings
from collections import Counter
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
BUILTINS = set(dir(builtins))
Function = ast.FunctionDef | ast.AsyncFunctionDef


def first_paragraph(doc: str) -> str:
    para = doc.strip().split("\n\n")[0]
    return " ".join(para.split())


def module_names(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(modules the module imports by `import x`, names it binds otherwise: defs, classes, assignments,
    `from x import y`), at any depth outside functions and classes (an `if`/`try` around an import still
    binds at module level). A module is a name the answer can import; `y` may be any constant."""
    imported: set[str] = set()
    defined: set[str] = set()

    def walk(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                imported.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                defined.update(a.asname or a.name for a in node.names)
            elif isinstance(node, Function | ast.ClassDef):
                defined.add(node.name)
            else:
                for target in ast.walk(node):
                    if isinstance(target, ast.Name) and isinstance(target.ctx, ast.Store):
                        defined.add(target.id)
                for field in ("body", "orelse", "finalbody", "handlers"):
                    walk([n for n in getattr(node, field, []) if isinstance(n, ast.stmt)])
                for handler in getattr(node, "handlers", []):
                    walk(handler.body)

    walk(tree.body)
    return imported, defined - imported


def free_names(fn: Function) -> set[str]:
    """Names `fn` reads that neither its parameters nor its own bindings define (nested scopes are
    folded in: good enough to tell a self-contained function from one that leans on its module)."""
    bound = {a.arg for a in ast.walk(fn.args) if isinstance(a, ast.arg)}
    loaded: set[str] = set()
    declared: set[str] = set()  # `global x` / `nonlocal x`: x is the module's even where it is assigned
    for node in ast.walk(fn):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, Function | ast.ClassDef) and node is not fn:
            bound.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.Global | ast.Nonlocal):
            declared.update(node.names)
    return (loaded - bound) | declared


def private_attributes(fn: Function, modules: set[str]) -> bool:
    """Whether `fn` reads a private attribute of an imported module (`logging._acquireLock()`)."""
    return any(
        isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and isinstance(node.value, ast.Name)
        and node.value.id in modules
        for node in ast.walk(fn)
    )


def why_not_self_contained(fn: Function, in_class: bool, imported: set[str], defined: set[str]) -> str | None:
    """None when `fn` can be written from its signature and docstring alone, else the reason."""
    if in_class:
        return "method"
    names = free_names(fn) - {fn.name}  # recursion is fine: the answer defines the name
    params = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    if names & {"self", "cls"} or params[:1] in (["self"], ["cls"]):
        return "uses_self_or_cls"  # e.g. functools' _gt_from_ge(self, other), a method defined outside
    if any(n.startswith("_") and n not in BUILTINS for n in names) or private_attributes(fn, imported):
        return "uses_private_name"
    if names & defined:
        return "uses_module_name"
    if names - imported - BUILTINS:
        return "uses_unknown_name"  # e.g. from a star import
    return None


def mine_file(path: Path, root: Path, skipped: Counter[str], all_functions: bool = False) -> list[dict]:
    try:
        source = path.read_text(encoding="utf-8")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
    except (UnicodeDecodeError, SyntaxError):
        return []
    lines = source.splitlines()
    imported, defined = module_names(tree)
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, Function):
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
                reason = why_not_self_contained(child, bool(prefix), imported, defined)
                if reason is not None and not all_functions:
                    skipped[reason] += 1
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
    ap.add_argument("--all-functions", action="store_true", help="keep methods and helpers' callers too")
    args = ap.parse_args()
    root = Path(sysconfig.get_paths()["stdlib"])
    rows: list[dict] = []
    skipped: Counter[str] = Counter()
    for path in sorted(root.rglob("*.py")):
        if SKIP_DIRS & set(path.relative_to(root).parts):
            continue
        rows.extend(mine_file(path, root, skipped, args.all_functions))
    mined = len(rows)
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
    counts = {
        "python": sys.version.split()[0],
        "self_contained_only": not args.all_functions,
        "skipped": dict(sorted(skipped.items())),
        "kept": mined,
        "written": len(rows),
        "max": args.max,
    }
    out.with_name(out.name.removesuffix(".jsonl") + ".counts.json").write_text(
        json.dumps(counts, indent=2) + "\n"
    )
    print(f"{len(rows)} pairs from {root} (Python {counts['python']}) -> {out}")
    print(f"  {mined} functions kept; skipped as not self-contained: {counts['skipped'] or 'none'}")


if __name__ == "__main__":
    main()
