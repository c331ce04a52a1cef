"""The steps `prepare` runs after cleaning, each wrapping a pure module (mine, neardup, decontam, augment,
fim, length_report) with its counting: what it dropped by reason, what it added, and its manifest section.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from codetune.config import Config, DecontaminationConfig, NearDupConfig, SourceConfig
from codetune.data.augment import augment_examples
from codetune.data.date_split import split_by_date
from codetune.data.decontam import decontaminate, resolve_eval_set
from codetune.data.fim import fim_examples
from codetune.data.length_report import length_report, load_report_tokenizer
from codetune.data.mine import mine_repo
from codetune.data.neardup import near_duplicate_clusters
from codetune.data.records import Example
from codetune.data.split import split_examples
from codetune.errors import CodetuneError
from codetune.manifest import write_json

_LISTED = 50


@dataclass
class StepReports:
    """Manifest sections and counts collected by the steps, in the order they ran."""

    mining: list[dict[str, Any]] = field(default_factory=list)
    near_dup: dict[str, Any] | None = None
    decontamination: dict[str, Any] | None = None
    augmentation: dict[str, Any] | None = None
    length_report: dict[str, Any] | None = None
    added: Counter[str] = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=dict)

    def manifest_sections(self) -> dict[str, Any]:
        sections = {
            "mining": self.mining or None,
            "near_dup": self.near_dup,
            "decontamination": self.decontamination,
            "augmentation": self.augmentation,
            "length_report": self.length_report,
        }
        out = {k: v for k, v in sections.items() if v is not None}
        if self.seconds:
            out["step_seconds"] = {k: round(v, 2) for k, v in self.seconds.items()}
        return out


class _Timer:
    def __init__(self, steps: StepReports, name: str) -> None:
        self.steps, self.name = steps, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.steps.seconds[self.name] = (
            self.steps.seconds.get(self.name, 0.0) + time.perf_counter() - self.start
        )


def read_repo(src: SourceConfig, steps: StepReports) -> tuple[list[Example], dict[str, Any]]:
    """Mine one repository source; its stats go to the manifest's `mining` section."""
    with _Timer(steps, "mine"):
        examples, stats = mine_repo(src)
    info = stats.to_dict()
    steps.mining.append({"path": src.path, **info})
    return examples, {
        "path": src.path,
        "kind": "repo",
        "resolved": info["root"],
        "sha256": info["sha256"],
        "git_head": info["git_head"],
        "files": info["files_mined"],
        "rows": len(examples),
        "read": len(examples),
    }


def remove_near_duplicates(
    examples: list[Example], cfg: NearDupConfig, filtered: dict[str, list[str]], steps: StepReports
) -> list[Example]:
    """Keep the first example of each near-duplicate cluster; list the clusters."""
    with _Timer(steps, "near_dup"):
        clusters = near_duplicate_clusters([e.code for e in examples], cfg.threshold, cfg.num_perm, cfg.ngram)
    drop = {i for c in clusters for i in c.members[1:]}
    filtered["near_duplicate"] = [examples[i].id for i in sorted(drop)]
    clusters.sort(key=lambda c: (-len(c.members), c.members[0]))
    steps.near_dup = {
        "threshold": cfg.threshold,
        "num_perm": cfg.num_perm,
        "ngram": cfg.ngram,
        "clusters": len(clusters),
        "examples_in_clusters": sum(len(c.members) for c in clusters),
        "removed": len(drop),
        "largest": [
            {
                "kept": examples[c.members[0]].id,
                "removed": [examples[i].id for i in c.members[1:]][:20],
                "size": len(c.members),
                "min_similarity": c.min_similarity,
            }
            for c in clusters[:_LISTED]
        ],
    }
    return [e for i, e in enumerate(examples) if i not in drop]


def make_splits(
    examples: list[Example], cfg: Config, filtered: dict[str, list[str]]
) -> dict[str, list[Example]]:
    """Random, by group, or by date (undated examples are left out and counted as `no_date`)."""
    by = cfg.data.split_by
    if by not in (None, "group", "date"):
        raise CodetuneError(f"data.split_by must be group, date or unset, got {by!r}")
    if by == "date":
        splits, undated = split_by_date(examples, cfg.data.splits, cfg.data.split_date, cfg.data.seed)
        if undated:
            filtered["no_date"] = undated
        return splits
    return split_examples(examples, cfg.data.splits, cfg.data.seed, by_group=by == "group")


def decontaminate_train(
    splits: dict[str, list[Example]],
    cfg: DecontaminationConfig,
    near: NearDupConfig,
    filtered: dict[str, list[str]],
    steps: StepReports,
) -> list[Example]:
    """The train split without examples that overlap the evaluation sets; stops instead with `fail`."""
    with _Timer(steps, "decontamination"):
        eval_sets = {name: resolve_eval_set(name)(splits) for name in cfg.eval_sets}
        result = decontaminate(
            splits.get("train", []), eval_sets, cfg.ngram, cfg.near_dup_threshold, near.num_perm, near.ngram
        )
    settings = {
        "ngram": cfg.ngram,
        "near_dup_threshold": cfg.near_dup_threshold,
        "on_contamination": cfg.on_contamination,
    }
    steps.decontamination = result.report(settings)
    if result.matches and cfg.on_contamination == "fail":
        listed = "; ".join(f"{m.id} ~ {m.eval_set}:{m.eval_id} ({m.method})" for m in result.matches[:10])
        raise CodetuneError(
            f"{len(result.matches)} training examples overlap the evaluation sets: {listed}. "
            "Remove them, or set data.decontamination.on_contamination=drop"
        )
    filtered["contaminated"] = [m.id for m in result.matches]
    return result.kept


def augment_train(
    splits: dict[str, list[Example]], cfg: Config, steps: StepReports
) -> dict[str, list[Example]]:
    """Add augmented and FIM examples to the train split only."""
    a, f = cfg.data.augmentation, cfg.data.fim
    train = splits.get("train", [])
    if not train or (a.rename_rate <= 0 and a.paraphrase_rate <= 0 and a.noise_rate <= 0 and f.rate <= 0):
        return splits
    added: list[Example] = []
    report: dict[str, Any] = {}
    with _Timer(steps, "augmentation"):
        if a.rename_rate > 0 or a.paraphrase_rate > 0 or a.noise_rate > 0:
            result = augment_examples(train, a, _sandbox_runner if a.run_tests else None)
            added += result.added
            steps.added.update(result.counts)
            report.update(added=dict(result.counts), rejected=dict(sorted(result.rejected.items())))
        if f.rate > 0:
            fims, unsplittable = fim_examples(train, f.rate, f.spm_rate, f.convention, cfg.data.seed)
            added += fims
            steps.added["fim"] += len(fims)
            report["fim"] = {
                "samples": len(fims),
                "spm": sum(1 for e in fims if e.meta["fim"]["mode"] == "spm"),
                "unsplittable": unsplittable,
                "convention": f.convention,
            }
    report["examples"] = [e.id for e in added[:_LISTED]]
    steps.augmentation = report
    return {**splits, "train": train + added}


def _sandbox_runner(jobs: list[tuple[str, str]]) -> list[bool]:
    """Run (program, tests) pairs in codetune's sandbox, the one place that executes code."""
    from codetune.sandbox import Limits, SandboxPool

    with SandboxPool(limits=Limits(timeout_s=10.0, memory_mb=1024)) as pool:
        return [v.passed for v in pool.map(jobs)]


def write_length_report(splits: dict[str, list[Example]], cfg: Config, out: Path, steps: StepReports) -> None:
    name = str(cfg.data.length_report.tokenizer)
    with _Timer(steps, "length_report"):
        train = splits.get("train", [])
        texts = [e.nl for e in train] + [e.code for e in train] + [cfg.prompt.template]
        tokenizer = load_report_tokenizer(name, cfg, texts)
        report = {"tokenizer": name, **length_report(splits, cfg, tokenizer)}
    write_json(out / "length_report.json", report)
    steps.length_report = report


# --- printing ------------------------------------------------------------------------------------


def _say(console: Console, text: str) -> None:
    console.print(text, soft_wrap=True, highlight=False, markup=False)


def report_steps(console: Console, steps: StepReports, counts: dict[str, Any]) -> None:
    """One or two lines per step that ran (after prepare's summary line)."""
    for m in steps.mining:
        skipped_f = ", ".join(f"{k} {v}" for k, v in m["files_skipped"].items()) or "none"
        skipped_fn = ", ".join(f"{k} {v}" for k, v in m["functions_skipped"].items()) or "none"
        pairs = ", ".join(f"{k} {v}" for k, v in m["pairs"].items()) or "0"
        _say(
            console,
            f"  mined {m['root']}: {m['files_mined']}/{m['files_seen']} files (skipped: {skipped_f}); "
            f"{m['functions_seen']} functions -> pairs: {pairs} (skipped: {skipped_fn})",
        )
    if counts.get("filtered"):
        _say(console, "  filtered: " + ", ".join(f"{k} {v}" for k, v in counts["filtered"].items()))
    if steps.near_dup is not None:
        nd = steps.near_dup
        top = nd["largest"][0] if nd["largest"] else None
        _say(
            console,
            f"  near-duplicates (MinHash LSH, Jaccard >= {nd['threshold']}): {nd['clusters']} clusters with "
            f"{nd['examples_in_clusters']} examples, {nd['removed']} removed"
            + (f"; largest: {top['size']} x {top['kept']}" if top else ""),
        )
    if steps.decontamination is not None:
        _report_decontamination(console, steps.decontamination)
    if steps.augmentation is not None:
        parts = [f"{k} {v}" for k, v in steps.augmentation.get("added", {}).items()]
        if "fim" in steps.augmentation:
            fim = steps.augmentation["fim"]
            parts.append(f"fim {fim['samples']} ({fim['spm']} SPM)")
        rejected = steps.augmentation.get("rejected") or {}
        _say(
            console,
            "  augmentation (train only): added "
            + (", ".join(parts) or "none")
            + (f"; not augmented: {', '.join(f'{k} {v}' for k, v in rejected.items())}" if rejected else ""),
        )
    if steps.length_report is not None:
        _report_lengths(console, steps.length_report)
    if steps.seconds:
        _say(console, "  time: " + ", ".join(f"{k} {v:.1f}s" for k, v in steps.seconds.items()))


def _report_decontamination(console: Console, d: dict[str, Any]) -> None:
    sets = ", ".join(f"{k} ({v['items']})" for k, v in d["eval_sets"].items())
    _say(
        console,
        f"  decontamination vs {sets}: {d['checked']} train examples checked ({d['too_short_to_check']} too "
        f"short), {d['contaminated']} contaminated -> {d['on_contamination']}"
        + (f"; by set: {d['by_eval_set']}, by method: {d['by_method']}" if d["contaminated"] else ""),
    )
    for m in d["examples"][:10]:
        _say(console, f"    {m['id']} ~ {m['eval_set']}:{m['eval_id']} ({m['method']}: {m['evidence'][:60]})")


def _report_lengths(console: Console, r: dict[str, Any]) -> None:
    _say(console, f"  length report ({r['tokenizer']}, limit {r['max_length']} tokens):")
    for name, s in r["splits"].items():
        p, c, t = s["prompt_tokens"], s["completion_tokens"], s["total_tokens"]
        pol = s["policies"]
        _say(
            console,
            f"    {name}: prompt p50/p95/max {p['p50']}/{p['p95']}/{p['max']}, completion "
            f"{c['p50']}/{c['p95']}/{c['max']}, total {t['p50']}/{t['p95']}/{t['max']}; "
            f"{pol['over_limit']}/{pol['examples']} over the limit -> drop loses {pol['drop']['tokens_lost']} "
            f"tokens ({pol['drop']['share_of_tokens']:.1%}); truncate cuts {pol['truncate']['tokens_cut']} tokens "
            f"of {pol['truncate']['examples_truncated']} (drops {pol['truncate']['examples_dropped']})",
        )
