"""Typed configuration: one dataclass per stage, loaded from YAML, overridden by `--section.key=value`.

Precedence: dataclass defaults < YAML file < command-line overrides. The resolved config is written
next to every stage's output (`config.yaml`), so a run can be repeated exactly.
"""

from __future__ import annotations

import dataclasses
import string
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
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


def setting(
    default: Any = dataclasses.MISSING, *, help: str, factory: Callable[[], Any] | None = None
) -> Any:
    """A config field and its help text: `--help` shows it (`describe_sections`) and a test requires one
    for every key. `factory` makes a fresh default (a list, a nested section) for each config."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class SourceConfig:
    """One input of `prepare`: a file of NL/code pairs (JSONL, CSV or Parquet), or a code repository
    (a folder or git checkout) mined for documented functions (`kind: repo`)."""

    path: str = setting(
        "",
        help="file or folder; an hf path is a hub dataset name or a dataset folder; a repo path may"
        " be @stdlib (this Python's standard library, resolved at run time) or @purelib (its "
        "site-packages)",
    )
    kind: Literal["file", "repo", "hf", "translation"] = setting(
        "file",
        help="file (JSONL/CSV/Parquet of pairs) or repo (a folder or git checkout mined for "
        "documented functions: Python via ast, JavaScript via tree-sitter) or hf "
        "(a Hugging Face dataset through the datasets library: a hub name, a local dataset "
        "folder or a save_to_disk folder; the same field mapping as files; needs pip install "
        "-e '.[hf]') or translation (code in source_language -> the same code in language: a file"
        " with source_field/target_field, or a folder of files paired by name, util.py with util.js)",
    )
    format: Literal["auto", "jsonl", "csv", "parquet"] = setting(
        "auto",
        help="file sources: auto (from the extension: .jsonl/.json/.ndjson, .csv, .parquet), jsonl,"
        " csv or parquet",
    )
    nl_field: str = setting(
        "nl",
        help="file and hf sources: the field holding the description (the prompt side)",
    )
    code_field: str = setting(
        "code",
        help="file and hf sources: the field holding the code (the answer side)",
    )
    id_field: str | None = setting(
        None,
        help="file and hf sources: a field with a stable example id; unset or empty: the file name "
        "and row number",
    )
    group_field: str | None = setting(
        None,
        help="file and hf sources: a field (repo, file) whose examples stay in one split under "
        "split_by group",
    )
    language: str = setting(
        "python",
        help="language of the code (python is syntax-checked; others are passed through and reported)",
    )
    source_language: str = setting(
        "python",
        help="translation: the language translated from (language is the one translated to)",
    )
    source_field: str = setting("source", help="translation files: the field holding the source code")
    target_field: str = setting("target", help="translation files: the field holding its translation")
    tests_field: str | None = setting(
        None,
        help="file sources: field holding tests (asserts) that augmented code must pass",
    )
    date_field: str | None = setting(
        None,
        help="file sources: field holding an ISO date (commit or creation) for split_by date",
    )
    hf_split: str = setting("train", help="hf: which split of the dataset to read (default train)")
    hf_subset: str | None = setting(
        None,
        help="hf: the dataset's configuration (subset) name, where it has several",
    )
    hf_revision: str | None = setting(None, help="hf: hub branch, tag or commit to pin")
    include: list[str] = setting(
        factory=list,
        help="repo: globs of files to mine (default: by languages, *.py / *.js)",
    )
    exclude: list[str] = setting(
        factory=lambda: list(DEFAULT_REPO_EXCLUDE),
        help="repo: globs to skip; 'name/' = a folder at any depth, '*.py' = file names, 'a/b.py' ="
        " a path from the root (default: tests, vendored, build, site-packages, generated "
        "files)",
    )
    languages: list[str] = setting(
        factory=lambda: ["python"],
        help="repo: languages to mine: python, javascript",
    )


@dataclass
class NearDupConfig:
    """MinHash LSH near-duplicate removal on code tokens (one example per cluster is kept)."""

    enabled: bool = setting(
        False,
        help="remove near-duplicate code, keeping the first example of each cluster",
    )
    threshold: float = setting(
        0.85,
        help="Jaccard similarity of code-token n-gram sets at which two examples are near-duplicates",
    )
    num_perm: int = setting(128, help="MinHash permutations (more: slower, more accurate)")
    ngram: int = setting(5, help="code tokens per shingle")


@dataclass
class DecontaminationConfig:
    """Drop training examples that overlap an evaluation set (n-grams, or near-dup after renaming)."""

    eval_sets: list[str] = setting(
        factory=lambda: ["test_split"],
        help="evaluation sets to check against: test_split, valid_split, humaneval (more can be "
        "registered); [] turns decontamination off",
    )
    ngram: int = setting(
        13,
        help="an example sharing one word n-gram of this length with an evaluation item is contaminated",
    )
    near_dup_threshold: float = setting(
        0.8,
        help="Jaccard similarity, after renaming identifiers canonically, at which code counts as a"
        " near-duplicate of an evaluation item",
    )
    on_contamination: Literal["drop", "fail"] = setting(
        "drop",
        help="drop (default: drop and list them) or fail (stop with the list)",
    )


@dataclass
class AugmentationConfig:
    """Extra training examples (train split only), each marked with its origin."""

    rename_rate: float = setting(
        0.0,
        help="share of train examples that get a copy with local identifiers renamed (checked by "
        "parsing and, where tests exist, by running them)",
    )
    paraphrase_rate: float = setting(
        0.0,
        help="share of train examples that get a copy with the description rephrased by templates",
    )
    noise_rate: float = setting(
        0.0,
        help="share of train examples that get a copy with sentence-level noise in the description "
        "(the input side; the code is never changed)",
    )
    seed: int = setting(0, help="seed of the augmentation choices")
    run_tests: bool = setting(
        True,
        help="run an example's tests on its renamed copy (in the sandbox) and keep the copy only if"
        " they pass",
    )


@dataclass
class FimConfig:
    """Fill-in-the-middle samples added to the train split (loss on the middle only)."""

    rate: float = setting(
        0.0,
        help="share of train examples that also yield a FIM sample (split at statement boundaries)",
    )
    spm_rate: float = setting(0.5, help="share of FIM samples in SPM order (suffix first); the rest are PSM")
    convention: str = setting(
        "auto",
        help="auto (the model's own FIM tokens, found at training time) or one of qwen2.5-coder, "
        "starcoder, deepseek-coder, codellama",
    )


@dataclass
class LengthReportConfig:
    """Token-length distribution and what each length policy would cost, under a tokenizer."""

    tokenizer: str | None = setting(
        None,
        help="tokenizer for the report: tiny (BPE trained on the data) | a model folder | a model "
        "pack | a hub name; unset: no report",
    )
    max_length: int | None = setting(
        None,
        help="limit the policies are costed at (default: train.max_length)",
    )


@dataclass
class DataConfig:
    """`prepare`: read sources, clean, deduplicate, split, write JSONL + manifest."""

    sources: list[SourceConfig] = setting(
        factory=list,
        help="inputs: files {path, format, nl_field, code_field, id_field, group_field, language, "
        "tests_field, date_field}, Hugging Face datasets {kind: hf, path, hf_split, hf_subset,"
        " hf_revision, and the same fields} or repositories {kind: repo, path, include, "
        "exclude, languages}",
    )
    output_dir: str = setting("runs/data", help="where the splits, manifest.json and config.yaml are written")
    splits: dict[str, float] = setting(
        factory=lambda: {"train": 0.8, "valid": 0.1, "test": 0.1},
        help="split names and fractions adding up to 1, e.g. {train: 0.8, valid: 0.1, test: 0.1}",
    )
    split_by: str | None = setting(
        None,
        help="'group' keeps each source's group_field value (repo, file) inside one split; 'date' "
        "splits by data.split_date",
    )
    seed: int = setting(42, help="seed of the split shuffle")
    skip_bad: bool = setting(
        False,
        help="count and list malformed records in the manifest instead of stopping",
    )
    syntax_check: bool = setting(
        True,
        help="drop Python code that does not parse (other languages are reported, not checked)",
    )
    dedup: bool = setting(True, help="drop exact duplicates of the code (whitespace-insensitive)")
    min_nl_chars: int = setting(1, help="drop descriptions shorter than this")
    min_code_chars: int = setting(1, help="drop code shorter than this")
    split_date: str | None = setting(
        None,
        help="split_by date: ISO date T; code last committed before T goes to train/valid, from T "
        "on to test (repo sources need a git checkout)",
    )
    near_dup: NearDupConfig = setting(
        factory=NearDupConfig,
        help="MinHash LSH near-duplicate removal: {enabled, threshold, num_perm, ngram}; clusters "
        "are listed in manifest.json",
    )
    decontamination: DecontaminationConfig = setting(
        factory=DecontaminationConfig,
        help="drop training examples that overlap an evaluation set: {eval_sets, ngram, "
        "near_dup_threshold, on_contamination}; listed in manifest.json under decontamination",
    )
    augmentation: AugmentationConfig = setting(
        factory=AugmentationConfig,
        help="extra train examples marked with their origin: {rename_rate, paraphrase_rate, "
        "noise_rate, seed, run_tests}; never applied to valid/test",
    )
    fim: FimConfig = setting(
        factory=FimConfig,
        help="fill-in-the-middle samples added to train: {rate, spm_rate, convention}",
    )
    length_report: LengthReportConfig = setting(
        factory=LengthReportConfig,
        help="token-length report at prepare time: {tokenizer, max_length}",
    )


@dataclass
class TinyModelConfig:
    """Sizes of the random-init `tiny` / `tiny-t5` presets (offline tests and smoke runs)."""

    vocab_size: int = setting(
        512,
        help="tiny presets: vocabulary size of the BPE tokenizer trained on the data",
    )
    hidden_size: int = setting(64, help="tiny presets: width of the hidden states")
    num_layers: int = setting(
        2,
        help="tiny presets: transformer blocks (encoder and decoder each for tiny-t5)",
    )
    num_heads: int = setting(4, help="tiny presets: attention heads (hidden_size must divide by it)")
    intermediate_size: int = setting(128, help="tiny presets: width of the feed-forward layers")
    max_position_embeddings: int = setting(1024, help="tiny presets: the longest sequence the model takes")
    seed: int = setting(0, help="tiny presets: seed of the random initialisation")


@dataclass
class ModelConfig:
    """Which model: `tiny`, `tiny-t5`, a local folder, a model pack name, or a Hugging Face hub name."""

    name: str = setting(
        "tiny",
        help="tiny | tiny-t5 | a local folder | a model pack (codetune models list) | a hub name | "
        "encoder-decoder:<encoder folder or hub name> (a seq2seq model warm-started from an "
        "encoder-only model such as CodeBERT)",
    )
    kind: Literal["auto", "causal", "seq2seq"] = setting(
        "auto",
        help="auto | causal | seq2seq (auto reads the model config)",
    )
    revision: str | None = setting(None, help="hub revision")
    dropout: float | None = setting(None, help="override the model's dropout")
    trust_remote_code: bool = setting(False, help="allow model code from the hub")
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = setting(
        "auto",
        help="auto | sdpa | flash_attention_2 | eager (auto: flash attention on a GPU in bf16/fp16 "
        "where flash-attn is installed, else PyTorch SDPA where the model has it, else eager)",
    )
    tiny: TinyModelConfig = setting(
        factory=TinyModelConfig,
        help="sizes of the tiny presets: vocab_size, hidden_size, num_layers, num_heads, ...",
    )


@dataclass
class PromptConfig:
    """How a description becomes a prompt. Saved with the model so that generation uses the same."""

    style: Literal["plain", "chat"] = setting(
        "plain",
        help="plain (template text) or chat (the model's chat template around the template)",
    )
    template: str = setting(
        "### Instruction:\n{nl}\n### Response:\n",
        help="prompt text with {nl} for the description",
    )
    system: str | None = setting(None, help="system message (chat style)")
    answer_template: str = setting(
        "{code}",
        help="what the model learns to write after the prompt, with {code}",
    )


@dataclass
class LoraSettings:
    enabled: bool = setting(False, help="train LoRA adapters on a frozen base instead of every weight")
    r: int = setting(8, help="rank of the LoRA update matrices")
    alpha: int = setting(16, help="LoRA scaling: the update is multiplied by alpha / r")
    dropout: float = setting(0.05, help="dropout on the LoRA branch's input")
    target_modules: list[str] | str = setting(
        "all-linear",
        help="modules that get adapters: all-linear, or a list of module names (q_proj, v_proj, ...)",
    )
    top_layers: int | None = setting(
        None,
        help="adapt only the last N transformer blocks (backpropagation stops below them); unset: all",
    )
    quantize: Literal["none", "4bit"] = setting(
        "none",
        help="QLoRA: none, or 4bit (the frozen base loaded in 4-bit NF4 through bitsandbytes, LoRA "
        "adapters trained on top; needs a CUDA GPU and `pip install codetune[qlora]`)",
    )


@dataclass
class TrainConfig:
    """`train`: fine-tune on the prepared train split; validate on the valid split."""

    output_dir: str = setting(
        "runs/train",
        help="checkpoints/, best/, final/, metrics.jsonl, length_audit.json, manifest.json",
    )
    data_dir: str | None = setting(None, help="prepared data folder (default: data.output_dir)")
    epochs: float = setting(1.0, help="passes over the train split (fractions allowed)")
    max_steps: int | None = setting(None, help="optimizer steps; overrides epochs")
    batch_size: int = setting(8, help="examples per micro-batch")
    grad_accum: int = setting(1, help="micro-batches per optimizer step")
    lr: float = setting(5e-4, help="peak learning rate (AdamW)")
    weight_decay: float = setting(0.01, help="AdamW weight decay (not on biases and norms)")
    warmup_ratio: float = setting(0.05, help="share of steps with linear warm-up before the cosine decay")
    max_grad_norm: float = setting(1.0, help="gradient clipping")
    seed: int = setting(42, help="seed for initialisation, data order and dropout")
    max_length: int = setting(512, help="token limit of prompt + answer (causal) or of the source (seq2seq)")
    max_target_length: int = setting(256, help="token limit of the target (seq2seq)")
    length_policy: Literal["drop", "truncate"] = setting(
        "drop",
        help="drop (default) or truncate examples over the limit; always reported",
    )
    eval_every: int = setting(
        50,
        help="validation every N steps (0: at the end only); the best model goes to best/",
    )
    save_every: int = setting(50, help="checkpoint every N steps (0: at the end only)")
    keep_checkpoints: int = setting(2, help="how many recent checkpoints to keep")
    early_stopping_patience: int = setting(
        0,
        help="stop after N validations without improvement of the selection metric (select_by; 0: off)",
    )
    resume: bool = setting(False, help="continue from the latest checkpoint in output_dir")
    max_valid_examples: int = setting(256, help="cap on validation examples")
    eval_benchmark: str | None = setting(
        None,
        help="at every validation also generate for these tasks and score pass@1 by execution in "
        "the sandbox, plus BLEU: a benchmark split (dataframebench/val), a task file or folder, or "
        "a prepared split whose examples have tests (valid); logged to metrics.jsonl and "
        "TensorBoard",
    )
    eval_tasks: int | None = setting(
        None,
        help="use the first N tasks of eval_benchmark (a fixed subset); empty: all",
    )
    eval_max_new_tokens: int = setting(
        512,
        help="token budget per generated answer during training evaluation",
    )
    eval_backend: Literal["auto", "hf", "llamacpp"] = setting(
        "auto",
        help="auto (llama.cpp with the adapter as a LoRA GGUF when the base came from a GGUF model "
        "pack, else transformers), hf or llamacpp",
    )
    select_by: Literal["auto", "valid_loss", "pass@1"] = setting(
        "auto",
        help="what best/ and early stopping follow: valid_loss, pass@1 (ties: lower valid loss), or"
        " auto (pass@1 when eval_benchmark is set)",
    )
    tensorboard: bool = setting(True, help="write TensorBoard event files to {output_dir}/tensorboard")
    report_to: list[Literal["wandb", "mlflow"]] = setting(
        factory=list,
        help="experiment trackers besides TensorBoard, off by default: wandb (Weights & Biases; "
        "WANDB_MODE=offline keeps the run in {output_dir}/wandb), mlflow (mlflow_tracking_uri, else "
        "MLFLOW_TRACKING_URI, else a file store in {output_dir}/mlruns); pip install -e '.[tracking]'",
    )
    tracking_project: str = setting(
        "codetune", help="wandb project / MLflow experiment the run is logged under (report_to)"
    )
    run_name: str | None = setting(
        None, help="run name in wandb / MLflow (default: the output folder's name)"
    )
    mlflow_tracking_uri: str | None = setting(
        None,
        help="MLflow tracking URI (a server, or file:///path for a local file store); default: "
        "MLFLOW_TRACKING_URI, else {output_dir}/mlruns",
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = setting(
        "auto",
        help="auto | cpu | cuda | mps (auto: cuda, else mps, else cpu); under accelerate launch or "
        "torchrun each process takes its own GPU",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = setting(
        "auto",
        help="auto | fp32 | bf16 | fp16: mixed precision (autocast; trainable weights stay fp32, a "
        "LoRA's frozen base is loaded in the 16-bit type). auto: bf16 on GPUs that have it, "
        "fp16 with loss scaling on older GPUs, fp32 on CPU and MPS",
    )
    gradient_checkpointing: bool = setting(
        False,
        help="recompute activations during the backward pass: less memory, ~30% more compute",
    )
    packing: Literal["auto", "on", "off"] = setting(
        "auto",
        help="auto | on | off: pack each micro-batch's examples into rows of up to max_length "
        "tokens (position ids restart per example, so none attends to another; the loss per "
        "token is unchanged) instead of padding them to the longest. auto: for causal models "
        "where a probe at start shows the model keeps packed examples apart, else padding "
        "(said and recorded); on: stop if it can't",
    )
    group_by_length: bool = setting(
        True,
        help="where packing does not apply (seq2seq, or a model it would not be exact for): sort "
        "each window of 16 micro-batches' examples by length and cut them into micro-batches "
        "taken in a seeded order, so less is spent on padding (off with train.packing=off: "
        "plain shuffled batches)",
    )
    lora: LoraSettings = setting(
        factory=LoraSettings,
        help="LoRA: {enabled, r, alpha, dropout, target_modules, top_layers (adapt only the last N "
        "blocks: backpropagation stops below them), quantize}",
    )


@dataclass
class GenerateConfig:
    """Decoding settings and backend for `generate`, `evaluate` and `serve`."""

    backend: Literal["hf", "llamacpp"] = setting("hf", help="hf (transformers) or llamacpp (GGUF)")
    model: str | None = setting(None, help="model folder, checkpoint, GGUF file or pack name")
    max_new_tokens: int = setting(256, help="tokens to generate at most")
    temperature: float = setting(0.0, help="0 = greedy")
    top_p: float = setting(1.0, help="nucleus sampling")
    top_k: int = setting(0, help="top-k sampling (0: off)")
    n: int = setting(1, help="completions per prompt")
    seed: int = setting(0, help="sampling seed")
    stop: list[str] = setting(factory=list, help="stop sequences")
    batch_size: int = setting(8, help="prompts per batch (greedy)")
    threads: int | None = setting(None, help="CPU threads (llamacpp)")
    max_batch: int = setting(
        16,
        help="llamacpp: sequences decoded together (a KV stream each; on 2 cores 32 gave 1.16x the "
        "tokens/s of 16 on HumanEval); 1 = one at a time",
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = setting(
        "auto",
        help="transformers backend: auto | cpu | cuda | mps (auto: cuda, else mps, else cpu)",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = setting(
        "auto",
        help="transformers backend: auto | fp32 | bf16 | fp16, the weights' dtype (auto: bf16 on "
        "GPUs that have it, else fp16; fp32 on CPU and MPS)",
    )


@dataclass
class EvalConfig:
    """`evaluate`: generate for a split or benchmark and score it."""

    models: list[str] = setting(
        factory=list,
        help="models to compare, as label=path or path (default: the trained base and final)",
    )
    output_dir: str = setting("runs/eval", help="predictions, metrics, summary.json and manifest.json")
    data_dir: str | None = setting(None, help="prepared data folder (default: data.output_dir)")
    split: str = setting("test", help="which split to score")
    max_examples: int | None = setting(None, help="score only the first N examples")
    benchmark: str | None = setting(
        None,
        help="score a benchmark instead of a split: humaneval, dataframebench (at eval.split: test,"
        " val or train), or your own problems with tests: a JSONL file or folder of them "
        "(configs/tasks/example.jsonl); pass@k from generate.n samples per task",
    )
    select_from: list[str] = setting(
        factory=list,
        help="benchmarks: labels of evaluated models whose answers are pooled; per task the "
        "first candidate that passes visible checks (examples, else a smoke call) is kept: row"
        " 'filter'",
    )
    baseline: str | None = setting(
        None,
        help="label the others are compared with in compare.json and report.html (default: base)",
    )
    report: bool = setting(
        True,
        help="write report.html over every model folder in output_dir (bootstrap CIs, the largest "
        "changes against eval.baseline); after a benchmark also compare.json (fixed/broken "
        "tasks)",
    )
    workers: int = setting(
        1,
        help="generation processes on this machine, each with its own copy of the model; prompts go"
        " out in fixed batches and results merge in order, so 1, 2 or 4 workers give the same "
        "results; generated code still runs only in the sandbox pool of the main process",
    )


@dataclass
class ServeConfig:
    """`serve`: an OpenAI-compatible HTTP API and web playground over one or more models."""

    host: str = setting(
        "127.0.0.1",
        help="address to bind (127.0.0.1: this machine only; 0.0.0.0 exposes the server: set API keys)",
    )
    port: int = setting(8000, help="TCP port")
    models: list[str] | dict[str, str] = setting(
        factory=list,
        help="models to serve as name=path (or a {name: path} mapping); a path is a model folder, "
        "LoRA adapter folder, checkpoint, GGUF file or pack name; clients pick one by name "
        "(default: generate.model)",
    )
    backend: Literal["hf", "llamacpp"] | None = setting(
        None,
        help="hf or llamacpp for every model (default: generate.backend; a .gguf file runs on llamacpp)",
    )
    api_keys: list[str] = setting(
        factory=list,
        help="accepted API keys (Authorization: Bearer KEY); none and no keys file: no auth",
    )
    api_keys_file: str | None = setting(
        None,
        help="file with one accepted API key per line ('#' comments); keys are never logged",
    )
    max_concurrent: int = setting(
        8,
        help="requests generating at once. Non-streamed greedy requests with the same decoding "
        "settings are decoded together: each backend call takes every such request waiting "
        "then; streams and sampled requests take turns on the model. 1: one request at a time",
    )
    max_queue: int = setting(8, help="requests that may wait for a free slot; more get 429 with Retry-After")
    request_timeout_s: float = setting(
        120.0,
        help="per-request limit in seconds (queue wait + generation); then 504",
    )
    max_tokens_limit: int = setting(1024, help="largest max_tokens a request may ask for (more: 400)")
    max_prompt_tokens: int = setting(2048, help="longest prompt in tokens (more: 400)")
    max_body_bytes: int = setting(
        1_048_576,
        help="largest request body in bytes, refused with 413 before it is read whole or parsed (0:"
        " no limit)",
    )
    access_log: str | None = setting(
        None,
        help="JSON-lines access log file (latency, tokens, status; never keys); unset: stderr",
    )


@dataclass
class SelftrainConfig:
    """`selftrain`: sample from the model on training tasks with tests, keep what passes, fine-tune."""

    tasks: list[str] = setting(
        factory=lambda: ["dataframebench/train"],
        help="training tasks with tests: NAME/train of a benchmark (dataframebench/train) or a "
        "JSONL file or folder of your own tasks (each marked split: train); val/test splits "
        "are refused",
    )
    max_tasks: int | None = setting(
        None,
        help="use only the first N training tasks (a short run); empty: all",
    )
    tasks_per_group: int | None = setting(
        None,
        help="use only the first N tasks of each group (dataframebench: the 5 paraphrases of one "
        "problem), before max_tasks; empty: all",
    )
    held_out: list[str] | None = setting(
        None,
        help="splits no training task may share an id, a prompt or a group with (NAME/SPLIT or task "
        "files); "
        "empty: every non-train split of the benchmarks in selftrain.tasks, plus "
        "eval.benchmark at eval.split; the check and its overlap (0) go to the manifest",
    )
    n: int = setting(8, help="candidates sampled per task and round")
    m: int = setting(
        2,
        help="passing candidates kept per task at most, over all rounds (after removing duplicates:"
        " the same code up to docstrings, comments and layout)",
    )
    rounds: int = setting(
        1,
        help="sample -> keep -> train rounds; round k samples from round k-1's model and trains "
        "model.name afresh on every sample kept so far",
    )
    temperature: float = setting(
        0.8,
        help="sampling temperature (> 0 when n > 1); other decoding settings: generate.*",
    )
    seed: int = setting(
        0,
        help="sampling seed: sample j of task i in round k is seeded seed + ((k-1)*tasks + i)*n + j",
    )
    output_dir: str = setting(
        "runs/selftrain",
        help="round-K/{samples,verdicts}.jsonl (caches a re-run continues from), round-K/data (the "
        "kept samples as a prepared train split), round-K/train, manifest.json",
    )
    unit_size: int = setting(
        8,
        help="tasks sampled per generation call, and sandbox jobs per batch (the resume grain)",
    )
    sandbox_workers: int | None = setting(None, help="sandbox worker processes (empty: one per CPU)")


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
    return validate(config_from_dict(raw, where), where)


def validate(cfg: Config, where: str = "config") -> Config:
    """Check the rules that span fields, or that a field's type cannot say, when the config loads:
    a config that cannot run stops here, before any data is read or model loaded, with every broken
    rule named by its keys."""
    problems = [*_data_rules(cfg.data), *_train_rules(cfg.train), *_prompt_rules(cfg.prompt)]
    problems += [
        *_generate_rules(cfg.generate, cfg.eval),
        *_serve_rules(cfg.serve),
        *_selftrain_rules(cfg.selftrain),
    ]
    if problems:
        raise CodetuneError(f"{where}: " + "; ".join(problems))
    return cfg


def _data_rules(d: DataConfig) -> Iterator[str]:
    if d.split_by == "date" and not d.split_date:
        yield "data.split_by=date needs data.split_date (an ISO date, e.g. 2024-01-01)"
    if d.split_date:
        try:
            datetime.fromisoformat(d.split_date)
        except ValueError:
            yield f"data.split_date {d.split_date!r} is not an ISO date (e.g. 2024-01-01)"


def _train_rules(t: TrainConfig) -> Iterator[str]:
    if t.select_by == "pass@1" and not t.eval_benchmark:
        yield "train.select_by=pass@1 needs train.eval_benchmark (e.g. dataframebench/val), which scores it"
    if t.eval_tasks is not None and not t.eval_benchmark:
        yield "train.eval_tasks is set but train.eval_benchmark is not; set both or neither"
    if t.lora.quantize != "none" and not t.lora.enabled:
        yield f"train.lora.quantize={t.lora.quantize} (QLoRA) trains LoRA adapters on a 4-bit base: set train.lora.enabled=true"
    if t.eval_backend == "llamacpp" and not t.lora.enabled:
        yield "train.eval_backend=llamacpp needs train.lora.enabled (a LoRA over a GGUF model pack); use auto or hf"


def _prompt_rules(p: PromptConfig) -> Iterator[str]:
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(p.template) if name is not None}
    except ValueError as e:
        names = {f"(unbalanced braces: {e})"}
    if names != {"nl"}:
        unknown = ", ".join(sorted(n or "{}" for n in names - {"nl"}))
        yield "prompt.template needs the {nl} placeholder and no other" + (
            f" (has {unknown})" if unknown else ""
        )


def _generate_rules(g: GenerateConfig, e: EvalConfig) -> Iterator[str]:
    if g.n < 1:
        yield f"generate.n={g.n}: need at least 1 sample per prompt"
    if g.n > 1 and g.temperature <= 0:
        yield f"generate.n={g.n} needs generate.temperature > 0: greedy samples would all be the same"
    if e.workers < 1:
        yield f"eval.workers={e.workers}: need at least 1 generation process"
    if g.max_batch < 1:
        yield f"generate.max_batch={g.max_batch}: need at least 1 sequence at a time"


def _selftrain_rules(s: SelftrainConfig) -> Iterator[str]:
    for key, value in (("n", s.n), ("m", s.m), ("rounds", s.rounds), ("unit_size", s.unit_size)):
        if value < 1:
            yield f"selftrain.{key} must be at least 1 (got {value})"
    for key, limit in (("max_tasks", s.max_tasks), ("tasks_per_group", s.tasks_per_group)):
        if limit is not None and limit < 1:
            yield f"selftrain.{key} must be at least 1 or unset (got {limit})"
    if s.n > 1 and s.temperature <= 0:
        yield f"selftrain.n={s.n} needs selftrain.temperature > 0: greedy samples per task would all be the same"


def _serve_rules(s: ServeConfig) -> Iterator[str]:
    if s.max_concurrent < 1 or s.max_queue < 0:
        yield "serve.max_concurrent must be >= 1 and serve.max_queue >= 0"
    if s.max_body_bytes < 0:
        yield "serve.max_body_bytes must be >= 0 (0: no limit)"


def save_config(cfg: Config, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")


def config_keys(cls: type = Config, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field[Any]]]:
    """Every key of the config as (`section.key`, its field), nested sections included
    (`data.near_dup.ngram`; `data.sources.path` stands for the key of every entry of the list)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if prefix:
            yield key, f
        section = _dataclass_in(hints[f.name])
        if section is not None:
            yield from config_keys(section, key)


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass a field holds, directly or inside a list or an optional (`list[SourceConfig]`)."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    for arg in typing.get_args(tp):
        found = _dataclass_in(arg)
        if found is not None:
            return found
    return None


# Help for every key, read from the fields (`setting(..., help=...)`); `codetune <stage> --help` shows it.
FIELD_HELP: dict[str, str] = {key: str(f.metadata.get("help", "")) for key, f in config_keys()}


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
