"""Typed configuration: one dataclass per stage, loaded from YAML, overridden by `--section.key=value`.

Precedence: dataclass defaults < YAML file < command-line overrides. The resolved config is written
next to every stage's output (`config.yaml`), so a run can be repeated exactly.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from codetune.errors import CodetuneError

# Files and folders a repository source skips unless told otherwise (gitignore-like: "name/" matches a
# folder at any depth, a pattern without "/" matches file names, one with "/" the path from the root).
DEFAULT_REPO_EXCLUDE: tuple[str, ...] = (
    ".*/",
    "__pycache__/",
    "test/",
    "tests/",
    "testing/",
    "test_*.py",
    "*_test.py",
    "*_tests.py",
    "conftest.py",
    "vendor/",
    "_vendor/",
    "vendored/",
    "third_party/",
    "build/",
    "dist/",
    "site-packages/",
    "dist-packages/",
    "node_modules/",
    "venv/",
    "generated/",
    "*_pb2.py",
    "*_pb2_grpc.py",
    "*.min.js",
    "*.bundle.js",
)


@dataclass
class SourceConfig:
    """One input of `prepare`: a file of NL/code pairs (JSONL, CSV or Parquet), or a code repository
    (a folder or git checkout) mined for documented functions (`kind: repo`)."""

    path: str = ""
    kind: Literal["file", "repo", "benchmark", "hf"] = "file"
    format: Literal["auto", "jsonl", "csv", "parquet"] = "auto"
    nl_field: str = "nl"
    code_field: str = "code"
    id_field: str | None = None
    group_field: str | None = None
    language: str = "python"
    tests_field: str | None = None  # file sources: a field with tests (asserts) for the code
    date_field: str | None = None  # file sources: a field with an ISO date (for split_by: date)
    # kind: hf (a Hugging Face dataset: hub name, local dataset folder or save_to_disk folder)
    hf_split: str = "train"
    hf_subset: str | None = None  # the dataset's configuration name, where it has several
    hf_revision: str | None = None  # hub: branch, tag or commit
    # kind: repo
    include: list[str] = field(default_factory=list)  # empty: by languages (*.py, *.js, ...)
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_REPO_EXCLUDE))
    languages: list[str] = field(default_factory=lambda: ["python"])
    # kind: benchmark (dataframebench/train): keep only tasks whose reference reads as one function
    # (the adapter's helper inlined); the others are skipped and counted in the manifest
    one_function_only: bool = False
    # kind: benchmark (dataframebench/train): answers begin as the task's starter code does (its
    # imports, type-hinted def line and docstring), as an answer completing the starter code would
    keep_starter: bool = False


@dataclass
class NearDupConfig:
    """MinHash LSH near-duplicate removal on code tokens (one example per cluster is kept)."""

    enabled: bool = False
    threshold: float = 0.85  # Jaccard similarity of token n-gram sets
    num_perm: int = 128
    ngram: int = 5


@dataclass
class DecontaminationConfig:
    """Drop training examples that overlap an evaluation set (n-grams, or near-dup after renaming)."""

    eval_sets: list[str] = field(default_factory=lambda: ["test_split"])
    ngram: int = 13
    near_dup_threshold: float = 0.8
    on_contamination: Literal["drop", "fail"] = "drop"


@dataclass
class AugmentationConfig:
    """Extra training examples (train split only), each marked with its origin."""

    rename_rate: float = 0.0
    paraphrase_rate: float = 0.0
    noise_rate: float = 0.0
    seed: int = 0
    run_tests: bool = True  # examples with tests: keep a renaming only if the tests still pass (sandbox)


@dataclass
class FimConfig:
    """Fill-in-the-middle samples added to the train split (loss on the middle only)."""

    rate: float = 0.0
    spm_rate: float = 0.5
    convention: str = "auto"  # auto (the model's own tokens) | qwen2.5-coder | starcoder | ...


@dataclass
class LengthReportConfig:
    """Token-length distribution and what each length policy would cost, under a tokenizer."""

    tokenizer: str | None = None  # None: no report; tiny | a model folder | pack | hub name
    max_length: int | None = None  # default: train.max_length


@dataclass
class DataConfig:
    """`prepare`: read sources, clean, deduplicate, split, write JSONL + manifest."""

    sources: list[SourceConfig] = field(default_factory=list)
    output_dir: str = "runs/data"
    splits: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "valid": 0.1, "test": 0.1})
    split_by: str | None = None  # "group": by each source's group_field (repo, file); "date": split_date
    seed: int = 42
    skip_bad: bool = False  # count and list malformed records instead of stopping at the first
    syntax_check: bool = True  # Python only; other languages are passed through and reported
    dedup: bool = True
    min_nl_chars: int = 1
    min_code_chars: int = 1
    split_date: str | None = None  # split_by "date": ISO date T; train/valid before T, test from T on
    near_dup: NearDupConfig = field(default_factory=NearDupConfig)
    decontamination: DecontaminationConfig = field(default_factory=DecontaminationConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    fim: FimConfig = field(default_factory=FimConfig)
    length_report: LengthReportConfig = field(default_factory=LengthReportConfig)


@dataclass
class TinyModelConfig:
    """Sizes of the random-init `tiny` / `tiny-t5` presets (offline tests and smoke runs)."""

    vocab_size: int = 512
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    max_position_embeddings: int = 1024
    seed: int = 0


@dataclass
class ModelConfig:
    """Which model: `tiny`, `tiny-t5`, a local folder, a model pack name, or a Hugging Face hub name."""

    name: str = "tiny"
    kind: Literal["auto", "causal", "seq2seq"] = "auto"
    revision: str | None = None
    dropout: float | None = None  # overrides the model config's dropout when set
    trust_remote_code: bool = False
    # auto: flash_attention_2 on CUDA in bf16/fp16 where the flash-attn package is installed, else PyTorch
    # SDPA where the model supports it, else eager
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = "auto"
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)


@dataclass
class PromptConfig:
    """How a description becomes a prompt. Saved with the model so that generation uses the same."""

    style: Literal["plain", "chat"] = "plain"
    template: str = "### Instruction:\n{nl}\n### Response:\n"
    system: str | None = None  # chat style only
    answer_template: str = "{code}"  # what the model is trained to produce after the prompt


@dataclass
class LoraSettings:
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"
    top_layers: int | None = None  # adapt only the last N transformer blocks (None: all)


@dataclass
class TrainConfig:
    """`train`: fine-tune on the prepared train split; validate on the valid split."""

    output_dir: str = "runs/train"
    data_dir: str | None = None  # default: data.output_dir
    epochs: float = 1.0
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    seed: int = 42
    max_length: int = 512  # prompt + completion tokens (causal) or source tokens (seq2seq)
    max_target_length: int = 256  # seq2seq target tokens
    length_policy: Literal["drop", "truncate"] = "drop"
    eval_every: int = 50  # steps; 0 = only at the end
    save_every: int = 50  # steps; 0 = only at the end
    keep_checkpoints: int = 2
    early_stopping_patience: int = 0  # evaluations without improvement; 0 = off
    resume: bool = False
    max_valid_examples: int = 256
    # evaluation by execution at every validation (pass@1 in the sandbox, BLEU)
    eval_benchmark: str | None = None  # e.g. "dataframebench/val"; None: validation loss only
    eval_tasks: int | None = None  # the first N tasks of it; None: all
    eval_max_new_tokens: int = 512
    eval_backend: Literal["auto", "hf", "llamacpp"] = "auto"
    select_by: Literal["auto", "valid_loss", "pass@1"] = "auto"  # auto: pass@1 when eval_benchmark is set
    tensorboard: bool = True  # write {output_dir}/tensorboard (needs the tensorboard package)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # auto: cuda, else mps, else cpu
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 / fp16 on GPUs, fp32 on CPU
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (less memory)
    # auto: causal models pack each micro-batch's examples into rows of max_length tokens where a probe
    # shows it exact for the model; on: the same, or stop; off: pad each micro-batch to its longest
    packing: Literal["auto", "on", "off"] = "auto"
    group_by_length: bool = True  # where packing does not apply: micro-batches of similar lengths
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass
class GenerateConfig:
    """Decoding settings and backend for `generate`, `evaluate` and `serve`."""

    backend: Literal["hf", "llamacpp"] = "hf"
    model: str | None = None  # a model folder, checkpoint, GGUF file or pack name
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    batch_size: int = 8
    threads: int | None = None
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # transformers backend; auto: cuda, mps, cpu
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # weights' dtype; auto: bf16/fp16 on GPUs


@dataclass
class EvalConfig:
    """`evaluate`: generate for a split or benchmark and score it."""

    models: list[str] = field(default_factory=list)  # default: the trained base and final models
    output_dir: str = "runs/eval"
    data_dir: str | None = None  # default: data.output_dir
    split: str = "test"
    max_examples: int | None = None
    benchmark: str | None = None  # e.g. "humaneval"; None scores the prepared split
    select_from: list[str] = field(default_factory=list)  # labels pooled by sample-then-filter (row "filter")
    baseline: str | None = None  # the label others are compared with (default: base, else the first)
    report: bool = True  # write report.html (a benchmark: also compare.json) over output_dir's models
    workers: int = 1  # generation processes on this machine (each loads the model); results merge by id


@dataclass
class ServeConfig:
    """`serve`: an OpenAI-compatible HTTP API and web playground over one or more models."""

    host: str = "127.0.0.1"  # loopback only unless asked
    port: int = 8000
    models: list[str] | dict[str, str] = field(default_factory=list)  # name=path; default: generate.model
    backend: Literal["hf", "llamacpp"] | None = None  # default: generate.backend (a .gguf file: llamacpp)
    api_keys: list[str] = field(default_factory=list)
    api_keys_file: str | None = None  # one key per line; '#' starts a comment
    max_concurrent: int = 8  # requests generating at once (non-streamed greedy ones share batches)
    max_queue: int = 8  # requests waiting for a slot; beyond that: 429
    request_timeout_s: float = 120.0  # queue wait + generation
    max_tokens_limit: int = 1024
    max_prompt_tokens: int = 2048
    access_log: str | None = None  # JSON-lines file; None: stderr


@dataclass
class SelftrainConfig:
    """`selftrain`: sample from the model on training tasks with tests, keep what passes, fine-tune."""
    max_body_bytes: int = 1_048_576

    tasks: list[str] = field(default_factory=lambda: ["dataframebench/train"])
    max_tasks: int | None = None  # the first N tasks only; None: all
    tasks_per_group: int | None = None  # the first N paraphrases of each problem; None: all
    held_out: list[str] | None = None  # None: the benchmarks' val/test splits and eval.benchmark
    n: int = 8
    m: int = 2
    rounds: int = 1
    temperature: float = 0.8
    seed: int = 0
    output_dir: str = "runs/selftrain"
    unit_size: int = 8
    sandbox_workers: int | None = None


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    selftrain: SelftrainConfig = field(default_factory=SelftrainConfig)

    @property
    def train_data_dir(self) -> Path:
        return Path(self.train.data_dir or self.data.output_dir)

    @property
    def eval_data_dir(self) -> Path:
        return Path(self.eval.data_dir or self.data.output_dir)


# ---------------------------------------------------------------------------------------------
# Building dataclasses from plain dicts, with errors that name the field.


def _build(cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise CodetuneError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise CodetuneError(
            f"{where}: unknown field(s) {', '.join(unknown)}; known fields: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in raw.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except CodetuneError as e:
                errors.append(str(e))
        raise CodetuneError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise CodetuneError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise CodetuneError(f"{where}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise CodetuneError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise CodetuneError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    return value


def config_from_dict(raw: dict[str, Any], where: str = "config") -> Config:
    """Build a Config from a plain mapping (as read from YAML)."""
    return typing.cast(Config, _build(Config, raw, where))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return typing.cast(dict[str, Any], dataclasses.asdict(cfg))


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """Turn `--train.lr=1e-4 --data.seed 3` into a nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) < 3:
            raise CodetuneError(f"unexpected argument {arg!r}; overrides look like --section.key=value")
        body = arg[2:]
        if "=" in body:
            key, text = body.split("=", 1)
        else:
            if i + 1 >= len(args):
                raise CodetuneError(f"override {arg!r} has no value; write {arg}=VALUE")
            key, text = body, args[i + 1]
            i += 1
        i += 1
        if "." not in key:
            raise CodetuneError(f"override {arg!r} must name a section and a key, e.g. --train.lr=1e-4")
        try:
            value = yaml.safe_load(text) if text != "" else ""
            if isinstance(value, str):
                try:
                    value = float(value) if any(c in value.lower() for c in ".e") else value
                except ValueError:
                    pass
        except yaml.YAMLError as e:
            raise CodetuneError(f"override {arg!r}: value is not valid YAML ({e})") from e
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise CodetuneError(f"override {arg!r} conflicts with another override of {p!r}")
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def load_config(
    path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None
) -> Config:
    """Load a YAML config (or defaults when `path` is None) and apply overrides."""
    raw: dict[str, Any] = {}
    where = "config"
    if path is not None:
        p = Path(path)
        where = str(p)
        if not p.is_file():
            raise CodetuneError(f"config file {p} not found")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise CodetuneError(f"{p}: not valid YAML: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise CodetuneError(f"{p}: the top level must be a mapping of sections (data, model, train, ...)")
        raw = loaded or {}
    if overrides:
        extra = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        raw = _merge(raw, extra)
        where += " + overrides"
    return config_from_dict(raw, where)


def save_config(cfg: Config, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")


# Help text for every key, shown by `codetune <stage> --help` (overrides: --section.key=value).
FIELD_HELP: dict[str, str] = {
    "data.sources": "inputs: files {path, format, nl_field, code_field, id_field, group_field, language, "
    "tests_field, date_field}, Hugging Face datasets {kind: hf, path, hf_split, hf_subset, hf_revision, "
    "and the same fields} or repositories {kind: repo, path, include, exclude, languages}",
    "data.output_dir": "where the splits, manifest.json and config.yaml are written",
    "data.splits": "split names and fractions adding up to 1, e.g. {train: 0.8, valid: 0.1, test: 0.1}",
    "data.split_by": "'group' keeps each source's group_field value (repo, file) inside one split; "
    "'date' splits by data.split_date",
    "data.seed": "seed of the split shuffle",
    "data.skip_bad": "count and list malformed records in the manifest instead of stopping",
    "data.syntax_check": "drop Python code that does not parse (other languages are reported, not checked)",
    "data.dedup": "drop exact duplicates of the code (whitespace-insensitive)",
    "data.min_nl_chars": "drop descriptions shorter than this",
    "data.min_code_chars": "drop code shorter than this",
    "data.sources.kind": "file (JSONL/CSV/Parquet of pairs) or repo (a folder or git checkout mined for "
    "documented functions: Python via ast, JavaScript via tree-sitter) or benchmark (a built-in "
    "benchmark split as pairs, with its tests: path dataframebench/train) or hf (a Hugging Face dataset "
    "through the datasets library: a hub name, a local dataset folder or a save_to_disk folder; the same "
    "field mapping as files; needs pip install -e '.[hf]')",
    "data.sources.path": "file or folder; an hf path is a hub dataset name or a dataset folder; a repo path may be @stdlib (this Python's standard library, "
    "resolved at run time) or @purelib (its site-packages); a benchmark path is name/split "
    "(dataframebench/train; its val and test splits are refused for training)",
    "data.sources.hf_split": "hf: which split of the dataset to read (default train)",
    "data.sources.hf_subset": "hf: the dataset's configuration (subset) name, where it has several",
    "data.sources.hf_revision": "hf: hub branch, tag or commit to pin",
    "data.sources.tests_field": "file sources: field holding tests (asserts) that augmented code must pass",
    "data.sources.date_field": "file sources: field holding an ISO date (commit or creation) for split_by date",
    "data.sources.include": "repo: globs of files to mine (default: by languages, *.py / *.js)",
    "data.sources.exclude": "repo: globs to skip; 'name/' = a folder at any depth, '*.py' = file names, "
    "'a/b.py' = a path from the root (default: tests, vendored, build, site-packages, generated files)",
    "data.sources.one_function_only": "benchmark: keep only tasks whose reference reads as one function "
    "(dataframebench's adapter helper inlined); the rest are skipped and counted",
    "data.sources.keep_starter": "benchmark: answers begin as the task's starter code does: its imports, "
    "def line (type hints) and docstring (dataframebench), where exactly equivalent",
    "data.sources.languages": "repo: languages to mine: python, javascript",
    "data.split_date": "split_by date: ISO date T; code last committed before T goes to train/valid, "
    "from T on to test (repo sources need a git checkout)",
    "data.near_dup": "MinHash LSH near-duplicate removal: {enabled, threshold, num_perm, ngram}; "
    "clusters are listed in manifest.json",
    "data.near_dup.enabled": "remove near-duplicate code, keeping the first example of each cluster",
    "data.near_dup.threshold": "Jaccard similarity of code-token n-gram sets at which two examples are near-duplicates",
    "data.near_dup.num_perm": "MinHash permutations (more: slower, more accurate)",
    "data.near_dup.ngram": "code tokens per shingle",
    "data.decontamination": "drop training examples that overlap an evaluation set: {eval_sets, ngram, "
    "near_dup_threshold, on_contamination}; listed in manifest.json under decontamination",
    "data.decontamination.eval_sets": "evaluation sets to check against: test_split, valid_split, humaneval "
    "(more can be registered); [] turns decontamination off",
    "data.decontamination.ngram": "an example sharing one word n-gram of this length with an evaluation item is contaminated",
    "data.decontamination.near_dup_threshold": "Jaccard similarity, after renaming identifiers canonically, "
    "at which code counts as a near-duplicate of an evaluation item",
    "data.decontamination.on_contamination": "drop (default: drop and list them) or fail (stop with the list)",
    "data.augmentation": "extra train examples marked with their origin: {rename_rate, paraphrase_rate, "
    "noise_rate, seed, run_tests}; never applied to valid/test",
    "data.augmentation.rename_rate": "share of train examples that get a copy with local identifiers renamed "
    "(checked by parsing and, where tests exist, by running them)",
    "data.augmentation.paraphrase_rate": "share of train examples that get a copy with the description "
    "rephrased by templates",
    "data.augmentation.noise_rate": "share of train examples that get a copy with sentence-level noise in "
    "the description (the input side; the code is never changed)",
    "data.augmentation.seed": "seed of the augmentation choices",
    "data.augmentation.run_tests": "run an example's tests on its renamed copy (in the sandbox) and keep "
    "the copy only if they pass",
    "data.fim": "fill-in-the-middle samples added to train: {rate, spm_rate, convention}",
    "data.fim.rate": "share of train examples that also yield a FIM sample (split at statement boundaries)",
    "data.fim.spm_rate": "share of FIM samples in SPM order (suffix first); the rest are PSM",
    "data.fim.convention": "auto (the model's own FIM tokens, found at training time) or one of "
    "qwen2.5-coder, starcoder, deepseek-coder, codellama",
    "data.length_report": "token-length report at prepare time: {tokenizer, max_length}",
    "data.length_report.tokenizer": "tokenizer for the report: tiny (BPE trained on the data) | a model "
    "folder | a model pack | a hub name; unset: no report",
    "data.length_report.max_length": "limit the policies are costed at (default: train.max_length)",
    "model.name": "tiny | tiny-t5 | a local folder | a model pack (codetune models list) | a hub name | "
    "encoder-decoder:<encoder folder or hub name> (a seq2seq model warm-started from an encoder-only "
    "model such as CodeBERT)",
    "model.kind": "auto | causal | seq2seq (auto reads the model config)",
    "model.revision": "hub revision",
    "model.dropout": "override the model's dropout",
    "model.trust_remote_code": "allow model code from the hub",
    "model.attn_implementation": "auto | sdpa | flash_attention_2 | eager (auto: flash attention on a GPU "
    "in bf16/fp16 where flash-attn is installed, else PyTorch SDPA where the model has it, else eager)",
    "model.tiny": "sizes of the tiny presets: vocab_size, hidden_size, num_layers, num_heads, ...",
    "prompt.style": "plain (template text) or chat (the model's chat template around the template)",
    "prompt.template": "prompt text with {nl} for the description",
    "prompt.system": "system message (chat style)",
    "prompt.answer_template": "what the model learns to write after the prompt, with {code}",
    "train.output_dir": "checkpoints/, best/, final/, metrics.jsonl, length_audit.json, manifest.json",
    "train.data_dir": "prepared data folder (default: data.output_dir)",
    "train.epochs": "passes over the train split (fractions allowed)",
    "train.max_steps": "optimizer steps; overrides epochs",
    "train.batch_size": "examples per micro-batch",
    "train.grad_accum": "micro-batches per optimizer step",
    "train.lr": "peak learning rate (AdamW)",
    "train.weight_decay": "AdamW weight decay (not on biases and norms)",
    "train.warmup_ratio": "share of steps with linear warm-up before the cosine decay",
    "train.max_grad_norm": "gradient clipping",
    "train.seed": "seed for initialisation, data order and dropout",
    "train.max_length": "token limit of prompt + answer (causal) or of the source (seq2seq)",
    "train.max_target_length": "token limit of the target (seq2seq)",
    "train.length_policy": "drop (default) or truncate examples over the limit; always reported",
    "train.eval_every": "validation every N steps (0: at the end only); the best model goes to best/",
    "train.save_every": "checkpoint every N steps (0: at the end only)",
    "train.keep_checkpoints": "how many recent checkpoints to keep",
    "train.early_stopping_patience": "stop after N validations without improvement of the selection "
    "metric (select_by; 0: off)",
    "train.eval_benchmark": "at every validation also generate for this benchmark split (dataframebench/val) "
    "and score pass@1 by execution in the sandbox, plus BLEU; logged to metrics.jsonl and TensorBoard",
    "train.eval_tasks": "use the first N tasks of eval_benchmark (a fixed subset); empty: all",
    "train.eval_max_new_tokens": "token budget per generated answer during training evaluation",
    "train.eval_backend": "auto (llama.cpp with the adapter as a LoRA GGUF when the base came from a GGUF "
    "model pack, else transformers), hf or llamacpp",
    "train.select_by": "what best/ and early stopping follow: valid_loss, pass@1 (ties: lower valid loss), "
    "or auto (pass@1 when eval_benchmark is set)",
    "train.tensorboard": "write TensorBoard event files to {output_dir}/tensorboard",
    "train.resume": "continue from the latest checkpoint in output_dir",
    "train.max_valid_examples": "cap on validation examples",
    "train.device": "auto | cpu | cuda | mps (auto: cuda, else mps, else cpu); under accelerate launch or "
    "torchrun each process takes its own GPU",
    "train.precision": "auto | fp32 | bf16 | fp16: mixed precision (autocast; trainable weights stay fp32, a "
    "LoRA's frozen base is loaded in the 16-bit type). auto: bf16 on GPUs that have it, fp16 with loss "
    "scaling on older GPUs, fp32 on CPU and MPS",
    "train.gradient_checkpointing": "recompute activations during the backward pass: less memory, ~30% "
    "more compute",
    "train.packing": "auto | on | off: pack each micro-batch's examples into rows of up to max_length "
    "tokens (position ids restart per example, so none attends to another; the loss per token is "
    "unchanged) instead of padding them to the longest. auto: for causal models where a probe at start "
    "shows the model keeps packed examples apart, else padding (said and recorded); on: stop if it can't",
    "train.group_by_length": "where packing does not apply (seq2seq, or a model it would not be exact for): "
    "sort each window of 16 micro-batches' examples by length and cut them into micro-batches taken in "
    "a seeded order, so less is spent on padding (off with train.packing=off: plain shuffled batches)",
    "train.lora": "LoRA: {enabled, r, alpha, dropout, target_modules, top_layers (adapt only the last N blocks: "
    "backpropagation stops below them)}",
    "generate.backend": "hf (transformers) or llamacpp (GGUF)",
    "generate.model": "model folder, checkpoint, GGUF file or pack name",
    "generate.max_new_tokens": "tokens to generate at most",
    "generate.temperature": "0 = greedy",
    "generate.top_p": "nucleus sampling",
    "generate.top_k": "top-k sampling (0: off)",
    "generate.n": "completions per prompt",
    "generate.seed": "sampling seed",
    "generate.stop": "stop sequences",
    "generate.batch_size": "prompts per batch (greedy)",
    "generate.threads": "CPU threads (llamacpp)",
    "generate.device": "transformers backend: auto | cpu | cuda | mps (auto: cuda, else mps, else cpu)",
    "generate.precision": "transformers backend: auto | fp32 | bf16 | fp16, the weights' dtype "
    "(auto: bf16 on GPUs that have it, else fp16; fp32 on CPU and MPS)",
    "eval.models": "models to compare, as label=path or path (default: the trained base and final)",
    "eval.output_dir": "predictions, metrics, summary.json and manifest.json",
    "eval.data_dir": "prepared data folder (default: data.output_dir)",
    "eval.split": "which split to score",
    "eval.max_examples": "score only the first N examples",
    "eval.benchmark": "score a built-in benchmark instead of a split: humaneval, or dataframebench "
    "(its eval.split: test, val or train)",
    "eval.select_from": "dataframebench: labels of evaluated models whose answers are pooled; per task the "
    "first candidate that passes visible checks (examples, else a smoke call) is kept: row 'filter'",
    "eval.baseline": "label the others are compared with in compare.json and report.html (default: base)",
    "eval.report": "write report.html over every model folder in output_dir (bootstrap CIs, the largest "
    "changes against eval.baseline); after a benchmark also compare.json (fixed/broken tasks)",
    "eval.workers": "generation processes on this machine, each with its own copy of the model; prompts "
    "go out in fixed batches and results merge in order, so 1, 2 or 4 workers give the same results; "
    "generated code still runs only in the sandbox pool of the main process (dataframebench: not used)",
    "serve.host": "address to bind (127.0.0.1: this machine only; 0.0.0.0 exposes the server: set API keys)",
    "serve.port": "TCP port",
    "serve.models": "models to serve as name=path (or a {name: path} mapping); a path is a model folder, "
    "LoRA adapter folder, checkpoint, GGUF file or pack name; clients pick one by name "
    "(default: generate.model)",
    "serve.backend": "hf or llamacpp for every model (default: generate.backend; a .gguf file runs on llamacpp)",
    "serve.api_keys": "accepted API keys (Authorization: Bearer KEY); none and no keys file: no auth",
    "serve.api_keys_file": "file with one accepted API key per line ('#' comments); keys are never logged",
    "serve.max_concurrent": "requests generating at once. Non-streamed greedy requests with the same "
    "decoding settings are decoded together: each backend call takes every such request waiting "
    "then; streams and sampled requests take turns on the model. 1: one request at a time",
    "serve.max_queue": "requests that may wait for a free slot; more get 429 with Retry-After",
    "serve.request_timeout_s": "per-request limit in seconds (queue wait + generation); then 504",
    "serve.max_tokens_limit": "largest max_tokens a request may ask for (more: 400)",
    "serve.max_prompt_tokens": "longest prompt in tokens (more: 400)",
    "serve.access_log": "JSON-lines access log file (latency, tokens, status; never keys); unset: stderr",
    "selftrain.tasks": "training tasks with tests: NAME/train of a benchmark (dataframebench/train) or "
    "a JSONL file or folder of your own tasks (each marked split: train); val/test splits are refused",
    "selftrain.max_tasks": "use only the first N training tasks (a short run); empty: all",
    "selftrain.tasks_per_group": "use only the first N tasks of each group (dataframebench: the 5 "
    "paraphrases of one problem), before max_tasks; empty: all",
    "selftrain.held_out": "splits no training task may share an id, a prompt or a group with (NAME/SPLIT or task "
    "files); empty: every non-train split of the benchmarks in selftrain.tasks, plus eval.benchmark "
    "at eval.split; the check and its overlap (0) go to the manifest",
    "selftrain.n": "candidates sampled per task and round",
    "selftrain.m": "passing candidates kept per task at most, over all rounds (after removing duplicates: "
    "the same code up to docstrings, comments and layout)",
    "selftrain.rounds": "sample -> keep -> train rounds; round k samples from round k-1's model and trains "
    "model.name afresh on every sample kept so far",
    "selftrain.temperature": "sampling temperature (> 0 when n > 1); other decoding settings: generate.*",
    "selftrain.seed": "sampling seed: sample j of task i in round k is seeded seed + ((k-1)*tasks + i)*n + j",
    "serve.max_body_bytes": "largest request body in bytes, refused with 413 before it is read whole or "
    "parsed (0: no limit)",
    "selftrain.output_dir": "round-K/{samples,verdicts}.jsonl (caches a re-run continues from), "
    "round-K/data (the kept samples as a prepared train split), round-K/train, manifest.json",
    "selftrain.unit_size": "tasks sampled per generation call, and sandbox jobs per batch (the resume grain)",
    "selftrain.sandbox_workers": "sandbox worker processes (empty: one per CPU)",
}


def describe_sections(*sections: str) -> str:
    """Every key of the given sections with its default and help, for `--help` epilogs."""
    lines = []
    cfg = Config()
    for section in sections:
        obj = getattr(cfg, section)
        for f in dataclasses.fields(obj):
            key = f"{section}.{f.name}"
            default = getattr(obj, f.name)
            if dataclasses.is_dataclass(default):
                default = "{...}"
            lines.append(f"--{key}={default!r}: {FIELD_HELP.get(key, '')}")
    return "\n\n".join(lines)
