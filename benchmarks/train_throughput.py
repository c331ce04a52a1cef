"""Training throughput: useful (non-padding) tokens/s of `codetune train` against transformers.Trainer.

    python benchmarks/train_throughput.py --repeats 3   # a ~30M Llama-style model, fp32 on this CPU
    python benchmarks/train_throughput.py --quick       # a smoke run (< 1 minute, a tiny model)

Every harness trains the same model folder (the `tiny` preset's initial weights, which codetune writes to
{output_dir}/base with its tokenizer) on the same data: synthetic description -> code pairs through
codetune's real `prepare`, encoded by codetune's own functions (prompt masked with -100, answer + EOS).
Same batch size, learning rate, cosine schedule and steps; full fine-tuning, fp32, the same threads.
Only steady-state steps count: the time between the ends of steps W and W+S.

  codetune  train() with an on_step callback; the tokens of steps W+1..W+S are manifest `summary.tokens`
            of a W+S-step run minus that of a W-step run (same batches: data order follows the seed)
  Trainer   transformers.Trainer as people use it: DataCollatorForSeq2Seq pads each batch to its
            longest example, no length grouping, in the order codetune's seeded sampler draws (so both
            sides train on the same batches). The anchor: goal codetune/Trainer >= 1.6
  TRL       trl.SFTTrainer with packing (bfd, padding-free) where trl is installed, in bins of
            max_length, as many per step as hold about the same tokens as B examples. Goal >= 1.0

Useful tokens are non-padding input tokens, counted the same way on every side. Padding share = padding
positions / all positions processed. MFU = 6 N x useful tokens/s / the fp32 matmul peak measured in this
run (best of a few 2048^3 matmuls): forward 2N + backward 4N per token, N = the weights of every Linear
layer (the non-embedding matmuls + the LM head); attention FLOPs are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from gpu_check import free_memory, fresh_accelerate_state, load_codetune, matmul_params, run_tokens, run_train

LR = 3e-4
SEED = 42  # codetune's train.seed default; the HF harnesses use it too
MODEL = {"vocab_size": 4096, "hidden_size": 512, "num_layers": 8, "num_heads": 8, "intermediate_size": 1376}
TINY = {"vocab_size": 1024, "hidden_size": 128, "num_layers": 2, "num_heads": 4, "intermediate_size": 256}
NAMES = (  # noqa: SIM905
    "data items values rows scores prices weights counts totals names keys limit factor offset step window "
    "threshold scale bias span events orders users tokens labels ratio margin budget depth width height "
    "lines words chars cells nodes edges paths files pages"
).split()
STATEMENTS = [
    "    v{j} = {a} {op} {k}",
    "    if {a} > {k}:\n        result.append({b} {op} {k})",
    "    for x in range({k}):\n        result.append(x {op} {a})",
    "    result.append({a} {op} {b})",
]
VERBS = "compute update filter merge count scale clip collect rank reduce sort".split()  # noqa: SIM905


def make_pairs(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Description -> function pairs of 0-24 statements: ~50-400 tokens under the preset's tokenizer."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        verb, noun, args = rng.choice(VERBS), rng.choice(NAMES), rng.sample(NAMES, rng.randint(1, 4))
        body = ["    result = []"]
        for j in range(rng.randint(0, 24)):
            a, b, k, op = rng.choice(args), rng.choice(args), rng.randint(1, 9999), rng.choice("+-*%")
            body.append(rng.choice(STATEMENTS).format(j=j, a=a, b=b, k=k, op=op))
        code = f"def {verb}_{noun}_{i}({', '.join(args)}):\n" + "\n".join(body) + "\n    return result\n"
        nl = f"{verb.capitalize()} the {noun} from {' and '.join(args)}." + " Keep the order." * rng.randint(
            0, 3
        )
        rows.append({"id": f"ex{i:05d}", "nl": nl, "code": code})
    return rows


def matmul_peak(n: int, reps: int) -> float:
    """fp32 matmul GFLOP/s on this CPU: the best of `reps` timed n^3 products after one warm-up."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9


class Bench:
    """What every harness shares: sizes, codetune, the prepared data, the model folder, encoded items."""

    def __init__(self, a: argparse.Namespace, ct: Any) -> None:
        self.a, self.ct, self.w, self.s = a, ct, a.warmup, a.steps
        self.sizes = {**(TINY if a.quick else MODEL), "max_position_embeddings": 1024}
        self.packing: str | None = None  # train.packing as passed to codetune; None: its default
        self.batching = ""  # how codetune made its batches (its manifest)

    def raw(self, out: Path, steps: int) -> dict[str, Any]:
        train = {
            **{"output_dir": str(out), "max_steps": steps, "batch_size": self.a.batch_size, "lr": LR},
            **{"max_length": self.a.max_length, "warmup_ratio": 0.0, "eval_every": 0, "save_every": 0},
            **{"keep_checkpoints": 1, "max_valid_examples": 8, "tensorboard": False},
            **{"device": "cpu", "precision": "fp32"},
        }
        if self.packing is not None:
            train["packing"] = self.packing
        model = {"name": "tiny", "tiny": self.sizes, "attn_implementation": "sdpa"}
        return {"data": {"output_dir": str(self.a.out / "data")}, "model": model, "train": train}

    def setup(self) -> None:
        """prepare; a W-step codetune run (it writes base/ and gives the warm-up steps' tokens); encode."""
        from transformers import AutoTokenizer

        from codetune.data.format import audit_lengths
        from codetune.data.records import read_split
        from codetune.training.batches import encode_examples

        out = self.a.out
        source = out / "pairs.jsonl"
        source.write_text(
            "".join(json.dumps(r) + "\n" for r in make_pairs(self.a.examples)), encoding="utf-8"
        )
        data = {"sources": [{"path": str(source), "id_field": "id"}], "output_dir": str(out / "data")}
        data |= {"splits": {"train": 0.95, "valid": 0.05}, "decontamination": {"eval_sets": []}}
        self.ct.prepare(self.ct.load_config(None, {"data": data}))
        if self.a.codetune_packing is not None:
            self.packing = accepted_packing(self.ct, self.a.codetune_packing)
        self.short_tokens = run_tokens(run_train(self.ct, self.raw(out / "codetune-warmup", self.w)))
        self.base = out / "codetune-warmup" / "base"
        for folder in ("checkpoints", "best", "final"):  # hundreds of MB; base/ is what the others load
            shutil.rmtree(out / "codetune-warmup" / folder, ignore_errors=True)
        self.tok = AutoTokenizer.from_pretrained(str(self.base))
        cfg = self.ct.load_config(None, self.raw(out / "unused", 1))
        examples = encode_examples(read_split(out / "data", "train"), cfg, self.tok, "causal")
        t = cfg.train
        self.items, _ = audit_lengths(examples, "causal", t.max_length, t.max_target_length, t.length_policy)
        self.n_matmul = matmul_params(self.base)
        self.n_total = sum(p.numel() for p in load_model(self.base).parameters())


def accepted_packing(ct: Any, option: str) -> str | None:
    """--codetune-packing as train.packing, or None where this codetune has no such key."""
    try:
        ct.load_config(None, {"train": {"packing": option}})
    except Exception as e:  # a codetune from before packing
        print(f"codetune does not accept train.packing={option} ({e}): run without it")
        return None
    return option


def load_model(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(SEED)
    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="sdpa")


def run_codetune(b: Bench, r: int) -> dict[str, Any]:
    clock: dict[int, float] = {}

    def on_step(step: int, loss: float) -> None:
        if step in (b.w, b.w + b.s):
            clock[step] = time.perf_counter()

    out = run_train(b.ct, b.raw(b.a.out / f"codetune-{r}", b.w + b.s), on_step)
    tokens = run_tokens(out) - b.short_tokens
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    b.batching = manifest.get("runtime", {}).get("batching", "padded (a codetune without packing)")
    shutil.rmtree(out)  # checkpoint and final/: hundreds of MB per run
    packed = re.match(r"packed into rows of up to (\d+)", b.batching)
    useful, positions = codetune_shapes(b, int(packed.group(1)) if packed else None)
    if useful != tokens:
        print(f"   note: replayed batches hold {useful:,} tokens, the manifests say {tokens:,.0f}")
    return timed(tokens, clock[b.w + b.s] - clock[b.w], 1 - useful / positions)


def codetune_shapes(b: Bench, capacity: int | None) -> tuple[int, int]:
    """Non-padding tokens and positions of steps W+1..W+S: codetune's sampler replayed over the same
    encoded items (grouped by length where its manifest says so), each micro-batch padded to its
    longest or, with a capacity, packed into rows as codetune packs it."""
    from codetune.training import batches

    lengths = [len(e.input_ids) for e in b.items]
    grouped = {"group_lengths": lengths} if "grouped by length" in b.batching else {}
    sampler = batches.StepSampler(len(b.items), b.a.batch_size, SEED, 0, b.w + b.s, **grouped)
    useful = positions = 0
    for k, idx in enumerate(sampler):
        mine = [lengths[i] for i in idx]
        rows = batches.pack_rows(mine, capacity) if capacity else [[i] for i in range(len(mine))]
        if k >= b.w:
            useful += sum(mine)
            positions += len(rows) * max(sum(mine[i] for i in row) for row in rows)
    return useful, positions


def timed(tokens: float, seconds: float, padding: float) -> dict[str, Any]:
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "padding_share": padding}


def hf_args(b: Bench, name: str, r: int) -> dict[str, Any]:
    """TrainingArguments shared by the HF harnesses: codetune's schedule and optimizer settings."""
    args = {"output_dir": str(b.a.out / f"{name}-{r}"), "max_steps": b.w + b.s, "learning_rate": LR}
    args |= {"lr_scheduler_type": "cosine", "warmup_steps": 0, "weight_decay": 0.01, "max_grad_norm": 1.0}
    args |= {"use_cpu": True, "seed": SEED, "logging_strategy": "no", "save_strategy": "no", "report_to": []}
    return args | {"disable_tqdm": True}


def run_trainer(b: Bench, r: int) -> dict[str, Any]:
    """transformers.Trainer, padding each batch to its longest, in the order of codetune's seeded shuffle
    (sequential over it; no length grouping): the same batches as codetune where it packs or pads."""
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from codetune.training.batches import StepSampler

    order = [i for idx in StepSampler(len(b.items), b.a.batch_size, SEED, 0, b.w + b.s) for i in idx]
    rows = [{"input_ids": b.items[i].input_ids, "labels": b.items[i].labels} for i in order]
    args = TrainingArguments(
        **hf_args(b, "trainer", r),
        per_device_train_batch_size=b.a.batch_size,
        train_sampling_strategy="sequential",
        remove_unused_columns=False,
    )
    collator = DataCollatorForSeq2Seq(b.tok, padding="longest")
    return run_hf(b, Trainer, args=args, train_dataset=rows, data_collator=collator)


def run_trl(b: Bench, r: int) -> dict[str, Any]:
    """trl.SFTTrainer with packing (bfd, padding-free) on the same encoded examples (loss on the answer)."""
    from datasets import Dataset, disable_progress_bars
    from trl import SFTConfig, SFTTrainer

    disable_progress_bars()
    rows = [
        {"input_ids": e.input_ids, "completion_mask": [int(x != -100) for x in e.labels]} for e in b.items
    ]
    packing = {"packing": True, "max_length": b.a.max_length, "completion_only_loss": True}
    off = {"gradient_checkpointing": False, "bf16": False}  # SFTConfig's defaults: True
    args = SFTConfig(**hf_args(b, "trl", r), **packing, **off, per_device_train_batch_size=trl_bins(b))
    return run_hf(b, SFTTrainer, args=args, train_dataset=Dataset.from_list(rows), processing_class=b.tok)


def run_hf(b: Bench, trainer_class: type, **kwargs: Any) -> dict[str, Any]:
    """Train a fresh copy of the model with `trainer_class`; time steps W+1..W+S with a callback and
    count their tokens as compute_loss sees them."""
    from transformers import PrinterCallback, TrainerCallback

    clock: dict[int, float] = {}
    counts: list[tuple[int, int]] = []  # (non-padding tokens, positions) per micro-batch

    class StepClock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step in (b.w, b.w + b.s):
                clock[state.global_step] = time.perf_counter()

    class Counting(trainer_class):  # type: ignore[misc, valid-type]
        def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kw: Any) -> Any:
            n, mask = inputs["input_ids"].numel(), inputs.get("attention_mask")
            counts.append((int(mask.sum()) if mask is not None else n, n))  # padding-free: no mask
            return super().compute_loss(model, inputs, *args, **kw)

    fresh_accelerate_state()
    trainer = Counting(model=load_model(b.base), callbacks=[StepClock()], **kwargs)
    trainer.remove_callback(PrinterCallback)  # its end-of-run metrics dict
    trainer.train()
    del trainer
    free_memory()
    useful, positions = (sum(c[i] for c in counts[b.w : b.w + b.s]) for i in (0, 1))
    return timed(useful, clock[b.w + b.s] - clock[b.w], 1 - useful / positions)


def trl_bins(b: Bench) -> int:
    """Packed rows of max_length per step that hold about as many tokens as B average examples."""
    mean = statistics.mean(len(e.input_ids) for e in b.items)
    return max(1, round(b.a.batch_size * mean / b.a.max_length))


def trl_missing() -> str | None:
    try:
        import datasets  # noqa: F401
        import trl  # noqa: F401
    except ImportError as e:
        return f"trl is not importable ({e}); pip install trl --no-deps + datasets"
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help="timed steps per run (default 4; quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2; quick 1)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--repeats", type=int, default=1, help="alternate the harnesses R times")
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny model, few steps")
    p.add_argument("--out", type=Path, default=Path("runs/train-throughput"))
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--codetune-packing", choices=("auto", "on", "off"), default=None, help="train.packing")
    a = p.parse_args()
    a.steps = a.steps or (2 if a.quick else 4)
    a.warmup = a.warmup or (1 if a.quick else 2)
    a.examples = 300 if a.quick else 2000
    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated")  # SFTConfig's default
    ct, why = load_codetune()
    if ct is None:
        sys.exit(f"train_throughput: {why}")
    shutil.rmtree(a.out, ignore_errors=True)
    a.out.mkdir(parents=True)
    load_before, started = os.getloadavg(), time.perf_counter()
    b = Bench(a, ct)
    b.setup()
    lengths = sorted(len(e.input_ids) for e in b.items)
    print(
        f"data: {len(lengths)} train examples of {lengths[0]}/{statistics.median(lengths):.0f}/{lengths[-1]} "
        f"tokens (min/median/max); model: Llama {b.sizes}, {b.n_total / 1e6:.1f} M params"
    )
    harnesses = {"codetune": run_codetune, "trainer": run_trainer}
    if (trl_why := trl_missing()) is None:
        harnesses["trl"] = run_trl
    else:
        print(f"TRL anchor skipped: {trl_why}")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in harnesses}
    peaks = []
    for r in range(a.repeats):
        peaks.append(matmul_peak(512 if a.quick else 2048, 5))
        order = list(harnesses) if r % 2 == 0 else list(harnesses)[::-1]  # alternate against drift
        for name in order:
            res = harnesses[name](b, r)
            runs[name].append(res)
            print(
                f"  repeat {r + 1} {name:<9}{res['tokens_per_s']:>7,.0f} tokens/s ({res['tokens']:,.0f} in "
                f"{res['seconds']:.2f} s), padding {res['padding_share']:.1%}; peak {peaks[-1]:,.1f} GFLOP/s"
            )
    summary = summarise(b, runs, peaks)
    summary.update(load_before=load_before, load_after=os.getloadavg(), seconds=time.perf_counter() - started)
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    print_summary(summary)
    return 0


def summarise(b: Bench, runs: dict[str, list[dict[str, Any]]], peaks: list[float]) -> dict[str, Any]:
    lengths = sorted(len(e.input_ids) for e in b.items)
    summary: dict[str, Any] = {
        "plan": vars(b.a) | {"codetune_packing": b.packing, "codetune_batching": b.batching},
        "model": {**b.sizes, "params": b.n_total, "n_matmul": b.n_matmul},
        "data": dict(train=len(lengths), min=lengths[0], median=statistics.median(lengths), max=lengths[-1]),
        "peak_gflops": max(peaks),
        "peaks_gflops": peaks,
        "harnesses": {},
        "ratios": {},
    }
    for name, rs in runs.items():
        tps = statistics.median(r["tokens_per_s"] for r in rs)
        mfu = 6 * b.n_matmul * tps / (max(peaks) * 1e9)
        padding = statistics.median(r["padding_share"] for r in rs)
        summary["harnesses"][name] = {"tokens_per_s": tps, "mfu": mfu, "padding_share": padding, "runs": rs}
    for anchor, goal in (("trainer", 1.6), ("trl", 1.0)):
        if anchor in runs:
            pairs = zip(runs["codetune"], runs[anchor], strict=True)
            ratios = [c["tokens_per_s"] / x["tokens_per_s"] for c, x in pairs]
            summary["ratios"][anchor] = dict(per_repeat=ratios, median=statistics.median(ratios), goal=goal)
    return summary


def print_summary(s: dict[str, Any]) -> None:
    p, m, d = s["plan"], s["model"], s["data"]
    lines = [
        f"== train_throughput: {p['repeats']} repeat(s), {s['seconds']:.0f} s{', QUICK' if p['quick'] else ''}, "
        f"load {s['load_before'][0]:.2f} -> {s['load_after'][0]:.2f} ==",
        f"model        Llama {m['params'] / 1e6:.1f} M params (N = {m['n_matmul'] / 1e6:.1f} M), fp32, batch "
        f"{p['batch_size']}, steps {p['warmup'] + 1}-{p['warmup'] + p['steps']} timed, {p['threads']} threads",
        f"data         {d['train']} train examples, {d['min']}/{d['median']:.0f}/{d['max']} tokens (min/median/max)",
        f"matmul peak  {s['peak_gflops']:,.1f} GFLOP/s fp32 (best of repeats)",
        f"codetune     batches {p['codetune_batching']} (train.packing {p['codetune_packing'] or 'default'})",
    ]
    for name, x in s["harnesses"].items():
        tps, mfu, pad = x["tokens_per_s"], x["mfu"], x["padding_share"]
        lines.append(f"{name:<12}{tps:>7,.0f} tokens/s (median)  MFU {mfu:.1%}  padding {pad:.1%}")
    for anchor, r in s["ratios"].items():
        each, x = ", ".join(f"{x:.2f}" for x in r["per_repeat"]), r["per_repeat"]
        lines.append(
            f"codetune/{anchor:<8}{r['median']:.2f}x ({each}; {min(x):.2f}-{max(x):.2f}); goal >= {r['goal']}"
        )
    lines.append("MFU = 6 N useful tokens/s / matmul peak, N = Linear weights (non-embedding + LM head)")
    print("\n".join([*lines, f"written: {Path(p['out']) / 'summary.json'}"]))


if __name__ == "__main__":
    sys.exit(main())
