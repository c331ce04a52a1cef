"""Translation pairs for `prepare` (`kind: translation`): code in `source_language` -> the same code in
`language`, from a file of pairs or from a folder of files paired by name.

- A file (JSONL, CSV, Parquet): each record has the source code in `source_field` (default "source") and
  its translation in `target_field` (default "target").
- A folder: `a/b/util.py` pairs with `a/b/util.js` (the same path without its extension, the extension
  of each language). Files without a partner are counted in the manifest, not read.

Each pair becomes an Example whose `nl` is the translation instruction (`format.translation_instruction`,
the causal prompt) and whose `code` is the target code, with `meta.translation = {source_language,
source_code}` so that training can prompt a seq2seq model with its own template instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from codetune.config import SourceConfig
from codetune.data.format import translation_instruction
from codetune.data.records import BadRecord, Example
from codetune.errors import CodetuneError
from codetune.manifest import sha256_text

EXTENSIONS = {
    "python": (".py",),
    "javascript": (".js", ".mjs", ".cjs"),
    "typescript": (".ts",),
    "java": (".java",),
}


def as_translation(ex: Example, source_language: str, source_code: str) -> Example:
    """`ex` (its code in the target language) as a translation of `source_code`."""
    return replace(
        ex,
        nl=translation_instruction(source_code, source_language, ex.language),
        meta={
            **ex.meta,
            "translation": {
                "source_language": source_language,
                "target_language": ex.language,
                "source_code": source_code,
            },
        },
    )


SourceRead = tuple[list[Example], list[BadRecord], dict[str, Any]]


def read_translation_source(
    src: SourceConfig, skip_bad: bool, read_file: Callable[[SourceConfig, bool], SourceRead]
) -> SourceRead:
    """The pairs of one `kind: translation` source, its bad records and its manifest entry. A file of
    pairs is read by `read_file` (`codetune.data.sources.read_source`, which hands itself over)."""
    for lang in (src.source_language, src.language):
        if lang not in EXTENSIONS:
            raise CodetuneError(
                f"data.sources[].{'source_language' if lang == src.source_language else 'language'} "
                f"{lang!r}: translation knows {', '.join(EXTENSIONS)}"
            )
    if src.source_language == src.language:
        raise CodetuneError(f"{src.path}: source_language and language are both {src.language!r}")
    path = Path(src.path)
    if path.is_dir():
        return _read_folder(src, path, skip_bad)
    as_file = replace(src, kind="file", nl_field=src.source_field, code_field=src.target_field)
    examples, bad, info = read_file(as_file, skip_bad)
    return [as_translation(ex, src.source_language, ex.nl) for ex in examples], bad, info


def pair_files(
    folder: Path, source_language: str, target_language: str
) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """(source file, target file) pairs under `folder` by path without extension, and the files of
    either language left without a partner."""

    def by_stem(language: str) -> dict[Path, Path]:
        found: dict[Path, Path] = {}
        for ext in EXTENSIONS[language]:
            for f in sorted(folder.rglob(f"*{ext}")):
                if f.is_file():
                    found.setdefault(f.relative_to(folder).with_suffix(""), f)
        return found

    sources, targets = by_stem(source_language), by_stem(target_language)
    pairs = [(sources[k], targets[k]) for k in sorted(sources) if k in targets]
    unpaired = sorted(
        [f for k, f in sources.items() if k not in targets]
        + [f for k, f in targets.items() if k not in sources]
    )
    return pairs, unpaired


def _read_folder(
    src: SourceConfig, folder: Path, skip_bad: bool
) -> tuple[list[Example], list[BadRecord], dict[str, Any]]:
    pairs, unpaired = pair_files(folder, src.source_language, src.language)
    if not pairs:
        raise CodetuneError(
            f"{folder}: no file pairs ({'/'.join(EXTENSIONS[src.source_language])} with "
            f"{'/'.join(EXTENSIONS[src.language])} of the same name); data.sources[].path"
        )
    examples: list[Example] = []
    bad: list[BadRecord] = []
    digest: list[str] = []
    for source_file, target_file in pairs:
        try:
            source_code = source_file.read_text(encoding="utf-8")
            target_code = target_file.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            problem = f"not valid UTF-8 (byte {e.start}) in the pair {source_file.name} / {target_file.name}"
            if not skip_bad:
                raise CodetuneError(f"{source_file}: {problem}; re-encode it, or pass --skip-bad") from None
            bad.append(BadRecord(str(source_file), 0, problem))
            continue
        key = source_file.relative_to(folder).with_suffix("").as_posix()
        digest.append(f"{key}\0{source_code}\0{target_code}")
        ex = Example(
            id=key, nl="", code=target_code, language=src.language, group=key, source=str(target_file)
        )
        examples.append(as_translation(ex, src.source_language, source_code))
    info = {
        "path": src.path,
        "kind": "translation",
        "pairs": len(pairs),
        "unpaired_files": len(unpaired),
        "unpaired": [str(f.relative_to(folder)) for f in unpaired[:100]],
        "sha256": sha256_text("\0\0".join(digest)),
        "rows": len(pairs),
        "read": len(examples),
    }
    return examples, bad, info
