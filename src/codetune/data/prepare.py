"""The `prepare` stage: sources -> cleaned, deduplicated, split JSONL files plus a manifest.

Steps, each counted in the manifest: read (files, or repositories mined for documented functions) ->
clean (normalise, syntax check, exact dedup) -> near-duplicate removal (MinHash LSH, optional) -> split
(random, by group, or by date) -> decontamination of train against the evaluation sets in use ->
augmentation and fill-in-the-middle samples (train only) -> length report (optional) -> write.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from codetune import progress
from codetune.config import Config, SourceConfig, config_to_dict, save_config, validate
from codetune.data.clean import dedup_key, normalise_code, normalise_nl
from codetune.data.records import BadRecord, Example
from codetune.data.sources import read_source
from codetune.data.steps import (
    StepReports,
    augment_train,
    decontaminate_train,
    make_splits,
    read_repo,
    remove_near_duplicates,
    report_steps,
    write_length_report,
)
from codetune.errors import CodetuneError
from codetune.manifest import make_output_dir, sha256_file, write_jsonl, write_manifest
from codetune.pyparse import python_syntax_error

_MAX_LISTED = 50  # ids listed per drop reason in the manifest (all are counted)


def _clean(
    examples: list[Example], cfg: Config, drops: dict[str, list[str]], notes: Counter[str]
) -> list[Example]:
    kept: list[Example] = []
    seen: dict[str, str] = {}
    seen_ids: set[str] = set()
    for ex in examples:
        ex.nl = normalise_nl(ex.nl)
        ex.code = normalise_code(ex.code)
        if ex.id in seen_ids:
            raise CodetuneError(f"{ex.source}: duplicate id {ex.id!r}; ids must be unique across sources")
        seen_ids.add(ex.id)
        if len(ex.nl) < cfg.data.min_nl_chars:
            drops["empty_nl"].append(ex.id)
            continue
        if len(ex.code) < cfg.data.min_code_chars:
            drops["empty_code"].append(ex.id)
            continue
        if cfg.data.syntax_check:
            if ex.language == "python":
                err = python_syntax_error(ex.code)
                if err is not None:
                    drops["syntax_error"].append(ex.id)
                    continue
            else:
                notes[f"syntax check skipped for language {ex.language!r}"] += 1
        if cfg.data.dedup:
            key = dedup_key(ex.code)
            if key in seen:
                drops["exact_duplicate"].append(ex.id)
                continue
            seen[key] = ex.id
        kept.append(ex)
    return kept


@contextmanager
def _step(name: str, total: int | None, unit: str = "examples") -> Iterator[progress.Task]:
    """Progress of one prepare step: a start line and an end line with its counts (see progress.py)."""
    with progress.task(f"prepare: {name}", total, unit=unit) as bar:
        yield bar


def _read_other(src: SourceConfig, steps: StepReports) -> tuple[list[Example], dict[str, Any]]:
    """A mined repository (file and hf sources go through read_source)."""
    return read_repo(src, steps)


def prepare(cfg: Config, console: Console | None = None) -> Path:
    """Read `cfg.data.sources`, clean, deduplicate and split them; write JSONL splits + manifest.

    Returns the output folder, which holds `{split}.jsonl`, `manifest.json`, `bad_records.jsonl`
    (only with skip_bad) and the resolved `config.yaml`.
    """
    validate(cfg)  # the Python API gets the checks `load_config` makes
    console = console or Console(stderr=True)
    if not cfg.data.sources:
        raise CodetuneError("data.sources is empty: list at least one file with nl_field/code_field")
    out = make_output_dir(cfg.data.output_dir, "data.output_dir")

    examples: list[Example] = []
    bad: list[BadRecord] = []
    inputs: list[dict[str, Any]] = []
    steps = StepReports()
    for src in cfg.data.sources:
        if src.kind == "repo":
            with _step(f"read {src.kind} {src.path}", None, unit="sources") as bar:
                got, info = _read_other(src, steps)
                bar.update(1, examples=len(got))
            examples.extend(got)
            inputs.append(info)
            continue
        got, bad_here, info = read_source(src, cfg.data.skip_bad)
        examples.extend(got)
        bad.extend(bad_here)
        inputs.append(info)

    drops: dict[str, list[str]] = {
        k: [] for k in ("empty_nl", "empty_code", "syntax_error", "exact_duplicate")
    }
    notes: Counter[str] = Counter()
    for info in inputs:  # a source's own counted notes (e.g. what a benchmark source skipped)
        notes.update(info.pop("notes", {}))
    with _step("clean", len(examples)) as bar:
        kept = _clean(examples, cfg, drops, notes)
        bar.update(len(examples), kept=len(kept))
    if not kept:
        raise CodetuneError(
            f"no examples left after cleaning; dropped: { {k: len(v) for k, v in drops.items()} }"
        )
    filtered: dict[str, list[str]] = {}  # drops after cleaning, by reason (near_duplicate, contaminated, ...)
    if cfg.data.near_dup.enabled:
        with _step("near-duplicates", len(kept)) as bar:
            kept = remove_near_duplicates(kept, cfg.data.near_dup, filtered, steps)
            bar.update(bar.total or 0, kept=len(kept))
    with _step("split", len(kept)) as bar:
        splits = make_splits(kept, cfg, filtered)
        bar.update(len(kept), **{k: len(v) for k, v in splits.items()})
    if cfg.data.decontamination.eval_sets and "train" in splits:
        with _step("decontaminate train", len(splits["train"])) as bar:
            splits["train"] = decontaminate_train(
                splits, cfg.data.decontamination, cfg.data.near_dup, filtered, steps
            )
            bar.update(bar.total or 0, kept=len(splits["train"]))
    with _step("augment train", len(splits.get("train", []))) as bar:
        splits = augment_train(splits, cfg, steps)
        bar.update(bar.total or 0, added=sum(steps.added.values()))
    if cfg.data.length_report.tokenizer:
        with _step("length report", sum(map(len, splits.values()))) as bar:
            write_length_report(splits, cfg, out, steps)
            bar.update(bar.total or 0)
    drops.update(filtered)

    outputs = {}
    for name, items in splits.items():
        path = out / f"{name}.jsonl"
        write_jsonl(path, [e.to_dict() for e in items])
        outputs[name] = {"file": path.name, "count": len(items), "sha256": sha256_file(path)}
    if bad:
        write_jsonl(out / "bad_records.jsonl", [vars(b) for b in bad])
    save_config(cfg, out / "config.yaml")
    counts = {
        "rows_read": sum(i["rows"] for i in inputs),
        "bad_records": len(bad),
        "examples_read": len(examples),
        "dropped": {k: len(v) for k, v in drops.items() if k not in filtered},
        "filtered": {k: len(v) for k, v in filtered.items()},
        "kept": sum(1 for v in splits.values() for e in v if "augmented" not in e.meta),
        "added": dict(steps.added),
        "splits": {k: len(v) for k, v in splits.items()},
    }
    write_manifest(
        out,
        "prepare",
        inputs=inputs,
        counts=counts,
        dropped_ids={k: v[:_MAX_LISTED] for k, v in drops.items() if v},
        bad_records=[vars(b) for b in bad[:_MAX_LISTED]],
        notes=dict(notes),
        outputs=outputs,
        **steps.manifest_sections(),
        config=config_to_dict(cfg),
    )
    _report(console, out, counts, notes)
    report_steps(console, steps, counts)
    return out


def _report(console: Console, out: Path, counts: dict[str, Any], notes: Counter[str]) -> None:
    dropped = ", ".join(f"{k} {v}" for k, v in counts["dropped"].items() if v) or "none"
    splits = ", ".join(f"{k} {v}" for k, v in counts["splits"].items())
    console.print(
        f"[bold]prepare[/bold]: read {counts['rows_read']} rows, {counts['bad_records']} bad (skipped), "
        f"dropped: {dropped}; kept {counts['kept']} -> {splits}"
    )
    for note, n in notes.items():
        console.print(f"  note: {note} ({n} examples)")
    console.print(f"  wrote {out}/ (manifest.json)")
