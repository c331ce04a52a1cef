"""The `selftrain` stage: self-training by execution (rejection-sampling fine-tuning, expert iteration).

For every training task that has tests, sample `n` candidates from the current model, run them in the
sandbox, keep those that pass (less any with `tamper_signs`: what a forged pass needs; deduplicated
after normalising the code, at most `m` per task), write them
as a prepared train split, and fine-tune on it with `train`. With `rounds` > 1, round k samples from
round k-1's model; every round trains from `model.name` afresh on the samples kept so far (as STaR
does: errors of one round's model are not compounded, and a LoRA never stacks on a LoRA).

Nothing from an evaluation split feeds sampling or training: a task source that is a val/test split is
refused, every task must be marked `split: train`, and task ids, prompts and groups are checked against the
held-out splits (`selftrain.held_out`, by default the evaluation splits of the benchmarks in use).

Output layout (a re-run continues: sampled candidates, verdicts and trained rounds are reused):

    {output_dir}/config.yaml, manifest.json     the resolved config; every round's counts
    {output_dir}/round-{k}/samples.jsonl        n candidates per task (the sampling cache)
    {output_dir}/round-{k}/verdicts.jsonl       sandbox status per distinct (task, code) (the verdict cache)
    {output_dir}/round-{k}/data/                train.jsonl + manifest.json + config.yaml, as `prepare` writes
    {output_dir}/round-{k}/train/               `train`'s output; its final/ samples round k+1
"""

from __future__ import annotations

import ast
import functools
import hashlib
import io
import json
import time
import tokenize
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from codetune import progress
from codetune.benchmarks import Benchmark, Task, get_benchmark
from codetune.benchmarks.base import available, resolve_split, split_spec
from codetune.config import Config, config_to_dict, save_config
from codetune.data.records import Example
from codetune.errors import CodetuneError
from codetune.manifest import make_output_dir, sha256_file, write_jsonl, write_manifest
from codetune.models.backends.base import generate_hooks
from codetune.pyparse import parse_python

TRAIN_SPLIT = "train"


@dataclass(frozen=True)
class Candidate:
    """One sampled answer: the code the benchmark's sanitiser took from the reply, the reply itself."""

    code: str
    raw: str = ""
    finish_reason: str = "stop"
    tokens: int = 0  # completion tokens generated


# (tasks, n, seed) -> n candidates per task, in task order; sample j of task i is seeded seed + i*n + j
Sampler = Callable[[Sequence[Task], int, int], list[list[Candidate]]]
Progress = Callable[[int, int], None]  # (done, total)
# [(task, code), ...] -> one sandbox status per job ("passed", "failed", "timeout", ...), in job order
Judge = Callable[[Sequence[tuple[Task, str]]], list[str]]


# --- the pure core ----------------------------------------------------------------------------


def normalised_code(code: str) -> str:
    """What two samples must share to count as duplicates: the AST without docstrings (comments,
    blank lines, quoting and layout don't count); code that does not parse: its tokens without
    comments and whitespace."""
    tree = parse_python(code)
    if tree is None:
        return _token_key(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(getattr(first.value, "value", None), str):
                node.body = node.body[1:] or [ast.Pass()]  # a docstring
    return ast.dump(tree, annotate_fields=False)


def _token_key(code: str) -> str:
    """Tokens without comments and layout; where tokenizing stops (an unclosed bracket at the end), the
    rest of the text with its whitespace collapsed."""
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
    tokens: list[str] = []
    line = 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            line = tok.end[0]
            if tok.type not in skip:
                tokens.append(tok.string)
    except (tokenize.TokenError, SyntaxError):
        tokens += "".join(code.splitlines(keepends=True)[line:]).split()
    return " ".join(tokens)


@dataclass
class Selection:
    """What one round keeps: per task the passing, distinct samples (at most m, earlier rounds' first)."""

    kept: dict[str, list[str]]  # task id -> code kept this round, in sample order
    counts: dict[str, Any]


# What a passing sample has no business using in a data-processing or algorithm answer, and what a
# forged pass needs: the test framework, the interpreter's frames, code objects and modules, process exit,
# always-equal objects. The sandbox decides verdicts inside the sample's own process (see
# codetune/sandbox/__init__.py), so a sample that reached these could have forged its "passed"; learning
# from it would teach the trick. Such samples are not kept (counted as `screened`, by sign). Measured
# false positives: 2 of the 989 reference solutions of DataFrameBench and HumanEval (`import inspect`,
# `eval()`); 0 of 568 base-model samples on DataFrameBench's train split.
_SCREEN_MODULES = frozenset(
    [
        "unittest",
        "gc",
        "ctypes",
        "inspect",
        "builtins",
        "atexit",
        "signal",
        "threading",
        "multiprocessing",
        "subprocess",
        "importlib",
    ]
)
_SCREEN_ATTRS = frozenset(
    [
        "__code__",
        "__globals__",
        "__builtins__",
        "__closure__",
        "f_back",
        "f_globals",
        "f_locals",
        "f_builtins",
        "tb_frame",
        "gi_frame",
        "cr_frame",
        "_getframe",
        "settrace",
        "setprofile",
        "exit",
        "_exit",
        "addaudithook",
        "modules",
    ]
)
_SCREEN_CALLS = frozenset(["exit", "quit", "exec", "eval", "compile", "globals", "__import__", "breakpoint"])
_SCREEN_METHODS = frozenset(["__eq__", "__ne__", "__bool__", "__hash__", "__instancecheck__", "__del__"])


def tamper_signs(code: str, language: str = "python") -> list[str]:
    """The constructs in a Python sample that could forge a verdict (sorted; empty: none). Other
    languages, and code that doesn't parse, are not screened."""
    tree = parse_python(code) if language == "python" else None
    signs: set[str] = set()
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, ast.Import):
            signs |= {f"import {a.name}" for a in node.names if a.name.split(".")[0] in _SCREEN_MODULES}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _SCREEN_MODULES:
            signs.add(f"import {node.module}")
        elif isinstance(node, ast.Attribute) and node.attr in _SCREEN_ATTRS:
            signs.add(f".{node.attr}")
        elif isinstance(node, ast.Name) and node.id == "__builtins__":
            signs.add(node.id)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _SCREEN_CALLS:
            signs.add(f"{node.func.id}()")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in _SCREEN_METHODS:
            signs.add(f"def {node.name}")
    return sorted(signs)


def select_passing(
    tasks: Sequence[Task],
    candidates: Sequence[Sequence[Candidate]],
    statuses: Sequence[Sequence[str]],
    m: int,
    earlier: dict[str, list[str]] | None = None,
) -> Selection:
    """Keep the candidates that passed, dropping those with `tamper_signs`, and duplicates (after
    `normalised_code`) of each other and of `earlier` rounds' kept code, up to `m` per task in all;
    every drop is counted by reason."""
    earlier = earlier or {}
    kept: dict[str, list[str]] = {}
    status_counts: Counter[str] = Counter()
    signs: Counter[str] = Counter()
    passed = screened = duplicates = over_cap = truncated = solved = 0
    for task, row, verdicts in zip(tasks, candidates, statuses, strict=True):
        seen = {normalised_code(code) for code in earlier.get(task.id, [])}
        room = m - len(earlier.get(task.id, []))
        mine: list[str] = []
        for cand, status in zip(row, verdicts, strict=True):
            status_counts[status] += 1
            truncated += cand.finish_reason == "length"
            if status != "passed":
                continue
            passed += 1
            found = tamper_signs(cand.code, task.language)
            if found:
                screened += 1
                signs.update(found)
                continue
            key = normalised_code(cand.code)
            if key in seen:
                duplicates += 1
            elif len(mine) >= room:
                over_cap += 1
            else:
                seen.add(key)
                mine.append(cand.code)
        solved += any(s == "passed" for s in verdicts)
        kept[task.id] = mine
    counts = {
        "tasks_tried": len(tasks),
        "tasks_solved": solved,
        "samples": sum(len(row) for row in candidates),
        "passed": passed,
        "screened": screened,  # passed, but used what a forged pass needs (`tamper_signs`)
        "screened_signs": dict(sorted(signs.items())),
        "duplicates": duplicates,
        "over_cap": over_cap,
        "kept": sum(len(v) for v in kept.values()),
        "truncated": truncated,  # replies cut at max_new_tokens
        "statuses": dict(sorted(status_counts.items())),
        "kept_per_task": {tid: len(v) for tid, v in kept.items()},
    }
    return Selection(kept, counts)


def train_examples(tasks: Sequence[Task], kept: dict[str, list[str]]) -> list[Example]:
    """The kept samples as `prepare`'s records: the task prompt as the description, the sample as the
    code, the task as the group (its samples stay together)."""
    out = []
    for task in tasks:
        for j, code in enumerate(kept.get(task.id, [])):
            out.append(
                Example(
                    id=f"{task.id}#{j}",
                    nl=task.prompt,
                    code=code,
                    language=task.language,
                    group=task.group or task.id,
                    source=f"selftrain:{task.benchmark}:{task.id}",
                    meta={"task_id": task.id, "benchmark": task.benchmark, "tests": task.tests},
                )
            )
    return out


# --- tasks and the leak checks ---------------------------------------------------------------


@dataclass
class TaskSet:
    """The training tasks, the benchmark each came from, and what the leak checks found."""

    tasks: list[Task]
    benchmarks: dict[str, Benchmark]  # task id -> its benchmark
    sources: list[dict[str, Any]] = field(default_factory=list)
    leak_check: dict[str, Any] = field(default_factory=dict)


def _open(spec: str, key: str) -> tuple[Benchmark, str | None]:
    name, split = split_spec(spec)
    try:
        return get_benchmark(name), split
    except CodetuneError as e:
        raise CodetuneError(f"{key}: {e}") from e


def _label(spec: str, bench: Benchmark, split: str) -> str:
    """How a split is named in messages and the manifest: NAME/SPLIT, or a task file and its split."""
    return f"{bench.name}/{split}" if bench.name in available() else f"{split_spec(spec)[0]} [{split}]"


def _train_split_of(spec: str, key: str) -> tuple[Benchmark, list[Task]]:
    """The train tasks of one task source; an evaluation split, or a task marked as one, is refused."""
    bench, split = _open(spec, key)
    split = split or (TRAIN_SPLIT if TRAIN_SPLIT in bench.splits else bench.splits[0])
    if split != TRAIN_SPLIT:
        fix = f"use {bench.name}/train" if bench.name in available() else 'mark its tasks "split": "train"'
        raise CodetuneError(
            f"{key}: {spec!r} is the {split!r} split: only train splits may feed self-training "
            f"(evaluation splits stay unseen); {fix}"
        )
    tasks = bench.load(split)
    for task in tasks:
        if task.split != TRAIN_SPLIT:
            raise CodetuneError(
                f"{key}: task {task.id!r} of {spec} is marked split {task.split!r}; only tasks "
                "marked split: train may feed self-training"
            )
    return bench, tasks


def load_training_tasks(cfg: Config) -> TaskSet:
    """The tasks of `selftrain.tasks` (the first `tasks_per_group` of each group, the first `max_tasks`
    of those), refusing any that is not a train split and any that shares an id, a prompt or a group
    with a held-out split."""
    s = cfg.selftrain
    if not s.tasks:
        raise CodetuneError("selftrain.tasks is empty: list dataframebench/train or a JSONL file of tasks")
    tasks: list[Task] = []
    benches: dict[str, Benchmark] = {}
    sources: list[dict[str, Any]] = []
    held_out: dict[str, tuple[Benchmark, str]] = {}  # label -> the split's benchmark and name
    for i, spec in enumerate(s.tasks):
        key = f"selftrain.tasks[{i}]"
        bench, loaded = _train_split_of(spec, key)
        for task in loaded:
            if task.id in benches:
                raise CodetuneError(f"{key}: task id {task.id!r} also comes from another task source")
            benches[task.id] = bench
        tasks.extend(loaded)
        sources.append({"spec": spec, "benchmark": bench.name, "split": TRAIN_SPLIT, "tasks": len(loaded)})
        held_out.update({_label(spec, bench, sp): (bench, sp) for sp in bench.splits if sp != TRAIN_SPLIT})
    if s.tasks_per_group is not None:
        tasks = _first_per_group(tasks, s.tasks_per_group)
    if s.max_tasks is not None:
        tasks = tasks[: s.max_tasks]
    if s.held_out is not None:  # named: these instead of the task sources' evaluation splits
        held_out = {}
        for i, spec in enumerate(s.held_out):
            bench, split = _open(spec, f"selftrain.held_out[{i}]")
            held_out[_label(spec, bench, split or bench.splits[0])] = (bench, split or bench.splits[0])
    elif cfg.eval.benchmark:
        bench, split = _open(cfg.eval.benchmark, "eval.benchmark")
        split = split or resolve_split(bench, cfg.eval.split)
        held_out[_label(cfg.eval.benchmark, bench, split)] = (bench, split)
    leak_check = check_no_leak(tasks, [(label, b.load(sp)) for label, (b, sp) in held_out.items()])
    return TaskSet(tasks, {t.id: benches[t.id] for t in tasks}, sources, leak_check)


def _first_per_group(tasks: Sequence[Task], k: int) -> list[Task]:
    """The first `k` tasks of each group (paraphrases of one problem), in task order; ungrouped tasks
    are their own group."""
    seen: Counter[str] = Counter()
    out = []
    for task in tasks:
        group = task.group or task.id
        seen[group] += 1
        if seen[group] <= k:
            out.append(task)
    return out


def _prompt_key(text: str) -> str:
    return " ".join(text.split())


def check_no_leak(tasks: Sequence[Task], held_out: Sequence[tuple[str, Sequence[Task]]]) -> dict[str, Any]:
    """Raise when a training task shares an id or a (whitespace-normalised) prompt with a held-out
    task; else the record for the manifest (the splits checked, overlap 0)."""
    ids = {t.id for t in tasks}
    prompts = {_prompt_key(t.prompt): t.id for t in tasks}
    groups: dict[str, list[str]] = {}
    for t in tasks:
        if t.group:
            groups.setdefault(t.group, []).append(t.id)
    checked = []
    for spec, held in held_out:
        clashes = sorted(
            {h.id for h in held if h.id in ids}
            | {prompts[_prompt_key(h.prompt)] for h in held if _prompt_key(h.prompt) in prompts}
            | {tid for h in held if h.group for tid in groups.get(h.group, [])}
        )
        if clashes:
            raise CodetuneError(
                f"selftrain.tasks: {len(clashes)} training task(s) share an id, a prompt or a group "
                f"(paraphrases of one problem) with held-out {spec}: {', '.join(clashes[:10])}; remove "
                "them from the task file (they would leak the evaluation into training)"
            )
        checked.append({"split": spec, "tasks": len(held)})
    return {"held_out": checked, "overlap": 0, "checked_by": ["id", "prompt", "group"]}


# --- one round: sample, judge, select (each cached on disk) ------------------------------------


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def _last_rows(path: Path, key: str) -> dict[str, dict[str, Any]]:
    """Rows of an append-only cache by `key` (the last row wins; a torn last line is ignored)."""
    rows: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[row[key]] = row
    return rows


def _append(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        f.flush()


def sample_round(
    tasks: Sequence[Task],
    sampler: Sampler,
    n: int,
    seed: int,
    identity: str,
    path: Path,
    unit: int,
    progress: Progress | None = None,
) -> tuple[list[list[Candidate]], int]:
    """`n` candidates per task, from the cache at `path` where a row for the same task, prompt and
    `identity` (model, decoding) exists, else sampled in units of `unit` tasks and appended. Sample j
    of task i is seeded `seed + i*n + j` however the work was split. Returns (candidates, units sampled)."""
    cached = _last_rows(path, "key")
    keys = [_digest(t.id, t.prompt, identity) for t in tasks]
    calls = 0
    for start in range(0, len(tasks), max(1, unit)):
        stop = min(start + max(1, unit), len(tasks))
        if all(keys[i] in cached for i in range(start, stop)):
            if progress is not None:
                progress(stop, len(tasks))
            continue
        rows = sampler(tasks[start:stop], n, seed + start * n)
        calls += 1
        if len(rows) != stop - start or any(len(r) != n for r in rows):
            raise CodetuneError(
                f"the sampler returned {[len(r) for r in rows]} candidates, expected {n} each"
            )
        new: list[dict[str, Any]] = [
            {"key": keys[i], "task_id": tasks[i].id, "candidates": [asdict(c) for c in row]}
            for i, row in zip(range(start, stop), rows, strict=True)
        ]
        _append(path, new)
        cached.update({r["key"]: r for r in new})
        if progress is not None:
            progress(stop, len(tasks))
    return [[Candidate(**c) for c in cached[k]["candidates"]] for k in keys], calls


def judge_round(
    tasks: Sequence[Task],
    candidates: Sequence[Sequence[Candidate]],
    judge: Judge,
    path: Path,
    unit: int,
    progress: Progress | None = None,
) -> tuple[list[list[str]], int]:
    """Sandbox status of every candidate: each distinct (task, tests, code) is run once, its status
    appended to the cache at `path` (a re-run judges only what is missing). Returns (statuses, run)."""
    cached = {k: r["status"] for k, r in _last_rows(path, "key").items()}
    jobs: dict[str, tuple[Task, str]] = {}
    for task, row in zip(tasks, candidates, strict=True):
        for cand in row:
            key = _digest(task.id, task.tests, cand.code)
            if key not in cached:
                jobs.setdefault(key, (task, cand.code))
    pending = list(jobs.items())
    step = max(1, unit)
    for start in range(0, len(pending), step):
        chunk = pending[start : start + step]
        statuses = judge([job for _, job in chunk])
        if len(statuses) != len(chunk):
            raise CodetuneError(f"the judge returned {len(statuses)} verdicts for {len(chunk)} samples")
        _append(
            path,
            [
                {"key": k, "task_id": t.id, "status": s}
                for (k, (t, _)), s in zip(chunk, statuses, strict=True)
            ],
        )
        cached.update({k: s for (k, _), s in zip(chunk, statuses, strict=True)})
        if progress is not None:
            progress(start + len(chunk), len(pending))
    out = [
        [cached[_digest(t.id, t.tests, c.code)] for c in row]
        for t, row in zip(tasks, candidates, strict=True)
    ]
    return out, len(pending)


# --- the real sampler and judge ----------------------------------------------------------------


class ModelSampler:
    """Samples from `model` with `generate`'s backend (loaded on first use, so a round whose samples are
    all cached never loads it) at `selftrain.temperature`; code taken from replies by each task's
    benchmark sanitiser."""

    def __init__(self, cfg: Config, model: str, benchmarks: dict[str, Benchmark]) -> None:
        from codetune.generation import model_prompt_config

        self.cfg, self.model, self.benchmarks = cfg, model, benchmarks
        self.prompt = model_prompt_config(model, cfg.prompt)
        self.backend: Any = None

    def __call__(self, tasks: Sequence[Task], n: int, seed: int) -> list[list[Candidate]]:
        from codetune.benchmarks.runner import prompt_style
        from codetune.generation import load_backend, sampling_settings

        g = replace(self.cfg.generate, temperature=self.cfg.selftrain.temperature, n=n, seed=seed)
        if self.backend is None:
            self.backend = load_backend(g, self.model)
        style = prompt_style(self.backend.chat_prompt, self.prompt)
        out: list[list[Candidate]] = []
        for bench, run in _runs_by_benchmark(tasks, self.benchmarks):
            settings = sampling_settings(g, (*style.stops, *bench.stops(style)))
            rows = self.backend.generate(
                [bench.build_prompt(t, style) for t in run], replace(settings, seed=seed + len(out) * n)
            )
            out += [
                [
                    Candidate(bench.sanitise(t, c.text, style), c.text, c.finish_reason, c.completion_tokens)
                    for c in row
                ]
                for t, row in zip(run, rows, strict=True)
            ]
        return out


def _runs_by_benchmark(
    tasks: Sequence[Task], benchmarks: dict[str, Benchmark]
) -> Iterator[tuple[Benchmark, list[Task]]]:
    """Consecutive tasks of one benchmark (they share its prompt, stops and sanitiser)."""
    run: list[Task] = []
    for task in tasks:
        if run and benchmarks[task.id] is not benchmarks[run[0].id]:
            yield benchmarks[run[0].id], run
            run = []
        run.append(task)
    if run:
        yield benchmarks[run[0].id], run


class SandboxJudge:
    """Runs samples in the sandbox, one pool per benchmark (its limits and preloaded modules), opened on
    first use. Timeouts are the benchmark's own limits, not calibrated per task: a timeout only loses a
    sample here, and calibrating would run every training task's reference first."""

    def __init__(self, benchmarks: dict[str, Benchmark], workers: int | None = None) -> None:
        self.benchmarks, self.workers = benchmarks, workers
        self.pools: dict[str, Any] = {}
        self.isolation: dict[str, str] = {}

    def __call__(self, jobs: Sequence[tuple[Task, str]]) -> list[str]:
        statuses: list[str] = [""] * len(jobs)
        by_bench: dict[str, list[int]] = {}
        for i, (task, _) in enumerate(jobs):
            by_bench.setdefault(self.benchmarks[task.id].name, []).append(i)
        for indices in by_bench.values():
            bench = self.benchmarks[jobs[indices[0]][0].id]
            pool = self._pool(bench)
            programs = [tuple(bench.assemble(jobs[i][0], jobs[i][1])) for i in indices]
            for i, verdict in zip(indices, pool.map(programs), strict=True):
                statuses[i] = verdict.status
        return statuses

    def _pool(self, bench: Benchmark) -> Any:
        if bench.name not in self.pools:
            from codetune.benchmarks.runner import open_pool

            self.pools[bench.name] = open_pool(bench, self.workers)
            self.isolation[bench.name] = self.pools[bench.name].isolation
        return self.pools[bench.name]

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()

    def __enter__(self) -> SandboxJudge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the stage ---------------------------------------------------------------------------------


def selftrain(
    cfg: Config,
    *,
    sampler_for: Callable[[str], Sampler] | None = None,
    judge: Judge | None = None,
    console: Console | None = None,
) -> Path:
    """Self-train `cfg.model` for `selftrain.rounds` rounds; returns `selftrain.output_dir`, whose
    manifest.json names the final model (the last round's `train/final`, or `best/` where validation
    chose one).

    `sampler_for(model)` and `judge` replace the model sampler and the sandbox (tests inject fakes)."""
    s = cfg.selftrain  # its settings were checked when the config loaded (config.validate)
    console = console or Console(stderr=True)
    out = Path(s.output_dir)
    taskset = load_training_tasks(cfg)
    make_output_dir(out, "selftrain.output_dir")
    save_config(cfg, out / "config.yaml")
    console.print(
        f"[bold]selftrain[/bold]: {len(taskset.tasks)} training tasks from {', '.join(s.tasks)}; "
        f"held-out splits checked: {len(taskset.leak_check['held_out'])}, overlap 0"
    )
    model = cfg.model.name
    kept: dict[str, list[str]] = {}  # task id -> code kept so far, over all rounds
    rounds: list[dict[str, Any]] = []
    with ExitStack() as stack:
        if judge is None:
            judge = stack.enter_context(SandboxJudge(taskset.benchmarks, s.sandbox_workers))
        for k in range(1, s.rounds + 1):
            started = time.perf_counter()
            make_sampler = sampler_for or functools.partial(ModelSampler, cfg, benchmarks=taskset.benchmarks)
            row = _round(cfg, k, model, make_sampler, judge, taskset, kept, out / f"round-{k}", console)
            model = row["model_out"]
            rounds.append({**row, "seconds_this_run": round(time.perf_counter() - started, 1)})
            _write_manifest(out, cfg, taskset, rounds, model, getattr(judge, "isolation", None))
    return out


def _round(
    cfg: Config,
    k: int,
    model: str,
    make_sampler: Callable[[str], Sampler],
    judge: Judge,
    taskset: TaskSet,
    kept: dict[str, list[str]],
    rdir: Path,
    console: Console,
) -> dict[str, Any]:
    """One round: sample, judge, select, write the train split, train. `kept` grows by this round's."""
    s, tasks = cfg.selftrain, taskset.tasks
    seed = s.seed + (k - 1) * s.n * len(tasks)  # no sample shares a seed with another round's
    decoding = {
        "model": _model_identity(model),
        "temperature": s.temperature,
        "top_p": cfg.generate.top_p,
        "top_k": cfg.generate.top_k,
        "backend": cfg.generate.backend,
        "max_new_tokens": cfg.generate.max_new_tokens,
        "stop": cfg.generate.stop,
        "n": s.n,
        "seed": seed,
        "prompt": asdict(cfg.prompt),
    }
    identity = json.dumps(decoding, sort_keys=True)
    started = time.perf_counter()
    sampler = make_sampler(model)
    with (
        progress.task(f"selftrain round {k}: sample", len(tasks), unit="tasks", console=console) as bar,
        generate_hooks(on_step=lambda k: bar.advance(0, tokens=k)),  # a live tok/s in a long unit
    ):
        candidates, units = sample_round(
            tasks, sampler, s.n, seed, identity, rdir / "samples.jsonl", s.unit_size, bar.callback
        )
        # say so on the step's last line: "142 tasks in 0.0 s" alone read like a bug
        if units < -(-len(tasks) // s.unit_size):
            bar.fields["decoded now"] = f"{units} unit(s), the rest from samples.jsonl"
    del sampler  # a model it loaded is not kept in memory through training
    sample_s, started = time.perf_counter() - started, time.perf_counter()
    with progress.task(f"selftrain round {k}: run in the sandbox", unit="samples", console=console) as bar:
        statuses, judged = judge_round(
            tasks, candidates, judge, rdir / "verdicts.jsonl", s.unit_size, bar.callback
        )
    judge_s = time.perf_counter() - started
    selection = select_passing(tasks, candidates, statuses, s.m, kept)
    for tid, codes in selection.kept.items():
        kept.setdefault(tid, []).extend(codes)
    examples = train_examples(tasks, kept)
    c = selection.counts
    c["generated_tokens"] = sum(cand.tokens for row in candidates for cand in row)
    c["seconds"] = {"sample": round(sample_s, 1), "judge": round(judge_s, 1)}  # this run (0: cached)
    console.print(
        f"  round {k}: sampled {c['samples']} ({units} unit(s) new, the rest cached), judged {judged} new; "
        f"{c['tasks_solved']}/{c['tasks_tried']} tasks solved, {c['passed']} passed, {c['screened']} "
        f"screened out (tamper signs), {c['duplicates']} "
        f"duplicates, {c['over_cap']} over m={s.m}; kept {c['kept']} -> train split {len(examples)}"
    )
    data_dir = _write_split(rdir / "data", cfg, k, model, seed, selection, examples, taskset)
    if not examples:
        raise CodetuneError(
            f"selftrain round {k}: no sample passed its tests ({c['samples']} tried; see "
            f"{data_dir}/manifest.json); raise selftrain.n or selftrain.temperature, or start from a "
            "stronger model"
        )
    started = time.perf_counter()
    model_out = _train_round(cfg, data_dir, rdir / "train", console)
    c["seconds"]["train"] = round(time.perf_counter() - started, 1)
    return {
        "round": k,
        "model_in": model,
        "model_out": model_out,
        "data": str(data_dir),
        **c,
        "train_examples": len(examples),
    }


def _model_identity(model: str) -> str:
    """What decides whether cached samples came from these weights: a pack or hub name as is; a folder
    by the size and modification time of its weight files (a retrained round samples afresh)."""
    path = Path(model)
    if not path.is_dir():
        return model
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf", ".json"))
    return json.dumps([model, [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]])


def _write_split(
    data_dir: Path,
    cfg: Config,
    k: int,
    model: str,
    seed: int,
    selection: Selection,
    examples: list[Example],
    taskset: TaskSet,
) -> Path:
    """`train.jsonl` as `prepare` writes it, with its manifest and config (what `train` reads)."""
    s = cfg.selftrain
    path = data_dir / "train.jsonl"
    write_jsonl(path, [e.to_dict() for e in examples])
    save_config(cfg, data_dir / "config.yaml")
    write_manifest(
        data_dir,
        "selftrain-data",
        round=k,
        model=model,
        sampling={"n": s.n, "m": s.m, "temperature": s.temperature, "seed": seed, "rounds": s.rounds},
        task_sources=taskset.sources,
        leak_check=taskset.leak_check,
        counts={**selection.counts, "train_examples": len(examples)},
        outputs={"train": {"file": path.name, "count": len(examples), "sha256": sha256_file(path)}},
        config=config_to_dict(cfg),
    )
    return data_dir


def _train_round(cfg: Config, data_dir: Path, train_dir: Path, console: Console) -> str:
    """`train` from `model.name` on this round's split (continuing its checkpoints; a finished round
    is not trained again). Returns the model the next round samples from."""
    data_sha = sha256_file(data_dir / "train.jsonl")
    marker = train_dir / "selftrain-data.sha256"  # what the checkpoints here were trained on
    if marker.is_file() and marker.read_text(encoding="utf-8").strip() != data_sha:
        raise CodetuneError(
            f"{train_dir} was trained on other samples than {data_dir}/train.jsonl holds now (the "
            "selftrain settings changed?); delete it or choose another selftrain.output_dir"
        )
    if (train_dir / "manifest.json").is_file() and (train_dir / "final").is_dir():
        console.print(f"  {train_dir} is already trained: reused")
    else:
        from codetune.training.loop import train

        train_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(data_sha + "\n", encoding="utf-8")
        train_cfg = replace(cfg.train, output_dir=str(train_dir), data_dir=str(data_dir), resume=True)
        train(replace(cfg, train=train_cfg), console)
    best = train_dir / "best"
    return str(best if best.is_dir() else train_dir / "final")


def _write_manifest(
    out: Path,
    cfg: Config,
    taskset: TaskSet,
    rounds: list[dict[str, Any]],
    model: str,
    sandbox: dict[str, str] | None,
) -> None:
    s = cfg.selftrain
    write_manifest(
        out,
        "selftrain",
        model=cfg.model.name,
        final_model=model,
        sampling={"n": s.n, "m": s.m, "temperature": s.temperature, "seed": s.seed, "rounds": s.rounds},
        task_sources=taskset.sources,
        splits_used=sorted({src["split"] for src in taskset.sources}),
        leak_check=taskset.leak_check,
        sandbox_isolation=sandbox,  # by benchmark; None: a judge handed in (tests)
        rounds=[{k: v for k, v in r.items() if k != "kept_per_task"} for r in rounds],
        kept_per_task={
            tid: [r["kept_per_task"].get(tid, 0) for r in rounds] for tid in rounds[0]["kept_per_task"]
        },
        config=config_to_dict(cfg),
    )
