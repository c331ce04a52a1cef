"""One-GPU check: what codetune does on a CUDA GPU, in figures, in a few minutes.

    make gpu-check                                          # installed: runs/gpu-check/summary.json
    PYTHONPATH=src python3 benchmarks/gpu_check.py --out DIR   # a GPU machine with torch, transformers,
                                                            # accelerate and peft but not codetune's pins
    python benchmarks/gpu_check.py --device cpu --quick     # code-path check on a CPU (tiny shapes, fp32)

  a) matmul    measured bf16 matmul peak (TFLOP/s), the denominator of MFU below
  b) tiny      codetune prepare + train of the `tiny` preset in bf16 on the GPU; the loss must fall
  c) codetune  LoRA (r=16, all linear layers) on Qwen2.5-Coder-0.5B's shapes through codetune train:
               non-padding tokens/s over steady-state steps (after W warm-up steps), and MFU
  d) Trainer   the same model, data, LoRA, batch, precision and steps through transformers.Trainer;
               the ratio codetune/Trainer (goal >= 1.0)
  e) generate  greedy generation with codetune's transformers backend, batch 1 against batch N
  f) qlora     codetune train with train.lora.quantize=4bit (NF4 base through bitsandbytes, LoRA on top)
               on the same model: the loss must fall, the base's linear layers must be 4-bit, peak GPU
               memory against plain bf16 LoRA, and the adapter must merge into the full-precision base
               (on --device cpu: the one clear error it must give instead)

MFU = model FLOPs/s / the peak measured in a). Model FLOPs per token for LoRA = 4 N (forward 2 N, backward
2 N for the input gradients; frozen weights get no weight gradients, the adapters' own are negligible),
N = the weights of every matmul including the output head (the embedding lookup is not a matmul). The
attention term (~1-3 % at these lengths) is left out, and codetune computes the output head only where there are
labels, so MFU counts FLOPs it does not spend: read it as effective MFU.

The 0.5B model: --model PATH, else the codetune model pack's converted folder if it is already in the cache
(nothing is downloaded), else random weights with Qwen2.5-Coder-0.5B's exact architecture and a small BPE
tokenizer trained on the data: throughput and MFU depend only on shapes, the losses mean nothing.

Without a CUDA GPU it prints "no CUDA GPU: skipped" and exits 0 (1 where `nvidia-smi` lists a GPU that
PyTorch cannot use). A section that fails is reported and the others still run; the exit status is 1.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import inspect
import json
import random
import shutil
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

try:
    import torch
except ImportError:
    sys.exit("gpu_check: PyTorch is not installed (make install, or pip install torch)")

PROMPT = "### Instruction:\n{nl}\n### Response:\n"  # codetune's default prompt.template
PACK = "qwen2.5-coder-0.5b-instruct"
QWEN_05B = {  # Qwen2.5-Coder-0.5B(-Instruct) config.json
    "hidden_size": 896,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "intermediate_size": 4864,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
}
QWEN_TINY = {**QWEN_05B, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
QWEN_TINY.update(intermediate_size=128, vocab_size=4096, max_position_embeddings=2048)
LORA = {"enabled": True, "r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
LR = 2e-4


@dataclass
class Plan:
    """What this run measures and at which sizes (from the command line)."""

    device: str
    precision: str  # bf16 on a GPU, fp32 on a CPU
    quick: bool
    out: Path
    model: Path | None
    batch_size: int
    max_length: int
    warmup_steps: int
    steps: int
    examples: int
    matmul_n: int
    gen_prompts: int
    gen_tokens: int
    gen_batch: int

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.precision == "bf16" else torch.float32


def plan_from_args(args: argparse.Namespace) -> Plan:
    cpu, quick = args.device == "cpu", args.quick
    return Plan(
        device=args.device,
        precision=args.precision or ("fp32" if cpu else "bf16"),
        quick=quick,
        out=args.out,
        model=args.model,
        batch_size=args.batch_size or (4 if cpu else 16),
        max_length=512,
        warmup_steps=2 if quick else 5,
        steps=args.steps or (3 if quick else 30),
        examples=120 if cpu else 800,
        matmul_n=1024 if cpu else (4096 if quick else 8192),
        gen_prompts=4 if cpu else (8 if quick else 32),
        gen_tokens=16 if cpu else (32 if quick else 128),
        gen_batch=4 if cpu else 16,
    )


# --- helpers ------------------------------------------------------------------------------------


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def fresh_accelerate_state() -> None:
    """Several trainings run in this one process; each starts with Accelerate's singletons cleared."""
    try:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state()
        GradientState._reset_state()
    except ImportError:
        pass


def load_codetune() -> tuple[Any, str]:
    """codetune's stage functions, or None and why (a bare machine may lack typer, rich, pyyaml, ...)."""
    try:
        from codetune.config import load_config
        from codetune.data.prepare import prepare
        from codetune.training.loop import train
    except ImportError as e:
        return None, f"codetune is not importable ({e}); `make install`, or pip install what is missing"
    return argparse.Namespace(load_config=load_config, prepare=prepare, train=train), ""


def attention(plan: Plan) -> str:
    """What codetune's model.attn_implementation=auto picks, so both sides of d) use the same kernel."""
    flash = importlib.util.find_spec("flash_attn") is not None
    return "flash_attention_2" if plan.device == "cuda" and flash else "sdpa"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- data and model -----------------------------------------------------------------------------

VERBS = ["compute", "update", "filter", "merge", "count", "scale", "clip", "collect", "rank", "reduce"]
NOUNS = ["scores", "prices", "events", "totals", "weights", "rows", "counts", "names", "items", "values"]


def make_examples(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Synthetic description -> function pairs, 1-40 statements each (~60-400 tokens), all distinct."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        verb, noun = rng.choice(VERBS), rng.choice(NOUNS)
        args = rng.sample(["data", "limit", "factor", "offset", "key"], rng.randint(1, 3))
        lines = [f"def {verb}_{noun}_{i}({', '.join(args)}):", "    result = []"]
        for j in range(rng.randint(1, 40)):
            a, op, k = rng.choice(args), rng.choice("+-*"), rng.randint(1, 99)
            lines.append(f"    v{j} = {a} {op} {k}" if j % 3 else f"    result.append({a} {op} {k})")
        lines.append("    return result")
        nl = f"{verb.capitalize()} the {noun} from {' and '.join(args)}."
        nl += " Keep the order of the input." * rng.randint(0, 2)
        rows.append({"id": f"ex{i:05d}", "nl": nl, "code": "\n".join(lines) + "\n"})
    return rows


def bpe_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """codetune's tiny-preset tokenizer: a byte-level BPE trained on `texts` (needs only tokenizers,
    transformers and pyyaml, which a bare GPU machine with transformers has)."""
    from codetune.models.tiny import train_tokenizer

    return train_tokenizer(texts, vocab_size)


def cached_pack() -> Path | None:
    """The pack's converted transformers folder if codetune already has it in its cache (no download)."""
    try:
        from codetune.models.pack import CONVERSION_STAMP, default_cache_dir
    except ImportError:
        return None
    folder = default_cache_dir() / "models" / PACK / "hf"
    return folder if (folder / CONVERSION_STAMP).is_file() and (folder / "config.json").is_file() else None


def model_folder(plan: Plan, texts: list[str]) -> dict[str, Any]:
    """The 0.5B model to train: its folder ("path") and a line saying what it is ("what")."""
    if plan.model is not None:
        return {"path": plan.model, "what": f"{plan.model} (--model)"}
    if plan.device == "cuda" and (pack := cached_pack()) is not None:
        return {"path": pack, "what": f"{pack} (codetune model pack {PACK}, from the cache)"}
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shapes = QWEN_TINY if plan.device == "cpu" else QWEN_05B
    folder = plan.out / "qwen2.5-coder-0.5b-random"
    tok = bpe_tokenizer(texts, 2000)
    ids = {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    torch.manual_seed(0)
    with torch.device(plan.device):
        model = Qwen2ForCausalLM(Qwen2Config(**shapes, **ids))
    model.to(plan.dtype).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    del model
    free_memory()
    what = "Qwen2.5-Coder-0.5B's architecture" if plan.device == "cuda" else "Qwen2 at tiny sizes (CPU)"
    return {
        "path": folder,
        "what": f"{what}, RANDOM weights, a BPE tokenizer (2,000 tokens) trained on the data",
    }


def matmul_params(folder: Path) -> int:
    """N for MFU: the weights of every Linear layer (the output head included), counted on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(folder)))
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


# --- a) matmul peak -----------------------------------------------------------------------------


def check_matmul(plan: Plan) -> dict[str, Any]:
    n, reps = plan.matmul_n, 3 if plan.device == "cpu" else 20
    a = torch.randn(n, n, device=plan.device, dtype=plan.dtype)
    b = torch.randn(n, n, device=plan.device, dtype=plan.dtype)
    for _ in range(3):
        c = a @ b
    sync(plan.device)
    started = time.perf_counter()
    for _ in range(reps):
        c = a @ b
    del c
    sync(plan.device)
    seconds = time.perf_counter() - started
    tflops = 2 * n**3 * reps / seconds / 1e12
    print(f"a) matmul    {plan.precision} {n}x{n}x{n}, {reps} reps: {tflops:,.3g} TFLOP/s (measured peak)")
    return {"n": n, "reps": reps, "dtype": plan.precision, "tflops": tflops}


# --- b) tiny model through codetune -------------------------------------------------------------


def codetune_raw(plan: Plan, data_dir: Path, out: Path, steps: int, **train: Any) -> dict[str, Any]:
    return {
        "data": {"output_dir": str(data_dir)},
        "train": {
            "output_dir": str(out),
            "max_steps": steps,
            "batch_size": plan.batch_size,
            "max_length": plan.max_length,
            "eval_every": 0,
            "save_every": 0,
            "keep_checkpoints": 1,
            "max_valid_examples": 8,
            "tensorboard": False,
            "device": plan.device,
            "precision": plan.precision,
            **train,
        },
    }


def run_train(ct: Any, raw: dict[str, Any], on_step: Callable[[int, float], None] | None = None) -> Path:
    """codetune's train() on a fresh output folder, its console quiet."""
    out = Path(raw["train"]["output_dir"])
    shutil.rmtree(out, ignore_errors=True)
    fresh_accelerate_state()
    params = inspect.signature(ct.train).parameters
    kwargs: dict[str, Any] = {}
    if "console" in params:
        from rich.console import Console

        kwargs["console"] = Console(stderr=True, quiet=True)
    if on_step is not None:
        if "on_step" not in params:
            raise RuntimeError(
                "codetune's train() has no on_step callback: steady-state steps can't be timed"
            )
        kwargs["on_step"] = on_step
    ct.train(ct.load_config(None, raw), **kwargs)
    free_memory()
    return out


def prepare_data(plan: Plan, ct: Any, rows: list[dict[str, str]]) -> Path:
    """codetune prepare over the synthetic pairs: train/valid splits, no decontamination (the
    synthetic functions share n-grams by construction)."""
    source = plan.out / "pairs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    data_dir = plan.out / "data"
    raw = {
        "data": {
            "sources": [{"path": str(source), "id_field": "id"}],
            "output_dir": str(data_dir),
            "splits": {"train": 0.95, "valid": 0.05},
            "decontamination": {"eval_sets": []},
        }
    }
    ct.prepare(ct.load_config(None, raw))
    return data_dir


def check_tiny(plan: Plan, ct: Any, data_dir: Path) -> dict[str, Any]:
    steps = 8 if plan.quick else 30
    tiny = {"vocab_size": 2048, "hidden_size": 128, "num_layers": 2, "num_heads": 4, "intermediate_size": 256}
    raw = codetune_raw(plan, data_dir, plan.out / "tiny", steps, lr=3e-3, warmup_ratio=0.0, batch_size=8)
    raw["model"] = {"name": "tiny", "tiny": tiny}
    started = time.perf_counter()
    out = run_train(ct, raw)
    losses = [r["loss"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    fell = last < first
    print(
        f"b) tiny      {len(losses)} steps, {plan.precision} on {plan.device}: loss {losses[0]:.3f} -> "
        f"{losses[-1]:.3f} (mean of first 3 {first:.3f}, last 3 {last:.3f}: "
        f"{'fell' if fell else 'DID NOT FALL'}) [{time.perf_counter() - started:.0f} s]"
    )
    if not fell:
        raise AssertionError(f"tiny model: the loss did not fall ({first:.3f} -> {last:.3f})")
    return {"steps": len(losses), "first_loss": losses[0], "last_loss": losses[-1], "loss_fell": fell}


# --- c) LoRA on the 0.5B model through codetune -------------------------------------------------


def run_tokens(out: Path) -> float:
    """Non-padding tokens one train() run processed, from its manifest (tokens/s x seconds)."""
    summary = json.loads((out / "manifest.json").read_text(encoding="utf-8")).get("summary", {})
    if summary.get("tokens") is not None:  # codetune records the exact count
        return float(summary["tokens"])
    if summary.get("tokens_per_s") is None or summary.get("seconds_this_run") is None:
        raise RuntimeError(f"{out}/manifest.json: summary lacks tokens_per_s / seconds_this_run")
    return float(summary["tokens_per_s"]) * float(summary["seconds_this_run"])


def check_codetune(plan: Plan, ct: Any, data_dir: Path, model: Path, peak: float | None) -> dict[str, Any]:
    """Steady state without touching codetune's loop: the time between the ends of steps W and W + S
    (train()'s on_step callback), and the tokens of those steps as the difference between a run of
    W + S steps and one of W steps, which see the same batches (data order is a function of the seed)."""
    w, s = plan.warmup_steps, plan.steps
    clock: dict[int, float] = {}

    def on_step(step: int, loss: float) -> None:
        if step in (w, w + s):
            sync(plan.device)
            clock[step] = time.perf_counter()

    runs = {}
    for name, steps in (("short", w), ("long", w + s)):
        raw = codetune_raw(plan, data_dir, plan.out / f"codetune-{name}", steps, lr=LR, lora=LORA)
        raw["model"] = {"name": str(model), "attn_implementation": attention(plan)}
        runs[name] = run_train(ct, raw, on_step if name == "long" else None)
    tokens = run_tokens(runs["long"]) - run_tokens(runs["short"])
    seconds = clock[w + s] - clock[w]
    tps = tokens / seconds
    n = matmul_params(model)
    mfu = 4 * n * tps / (peak * 1e12) if peak else None
    losses = [r["loss"] for r in read_jsonl(runs["long"] / "metrics.jsonl") if "loss" in r]
    print(
        f"c) codetune  LoRA r={LORA['r']} all-linear, batch {plan.batch_size}, {plan.precision}, "
        f"{attention(plan)}: {tps:,.0f} tokens/s over steps {w + 1}-{w + s} ({tokens:,.0f} tokens in "
        f"{seconds:.2f} s); MFU {f'{100 * mfu:.1f} %' if mfu is not None else 'n/a'} (4 N tokens/s / peak, "
        f"N = {n / 1e6:,.1f} M); loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    )
    return {"tokens_per_s": tps, "tokens": tokens, "seconds": seconds, "mfu": mfu, "n_params": n}


# --- f) QLoRA: a 4-bit base through bitsandbytes, LoRA adapters on top ----------------------------


def check_qlora(plan: Plan, ct: Any, data_dir: Path, model: Path) -> dict[str, Any]:
    """train.lora.quantize=4bit through codetune train, then the same steps as plain LoRA: loss, peak
    memory, the 4-bit layers seen in the model train() built, and the adapter merged for inference."""
    steps = 6 if plan.quick else 30
    lora4 = {**LORA, "quantize": "4bit"}
    raw = codetune_raw(plan, data_dir, plan.out / "qlora", steps, lr=LR, lora=lora4, warmup_ratio=0.0)
    raw["model"] = {"name": str(model), "attn_implementation": attention(plan)}
    if plan.device != "cuda":
        from codetune.errors import CodetuneError

        try:
            run_train(ct, raw)
        except CodetuneError as e:
            print(f"f) qlora     on {plan.device}: {e}")
            return {"cpu_error": str(e)}
        raise AssertionError("train.lora.quantize=4bit on a CPU did not stop with a CodetuneError")
    import codetune.models.loading as loading

    four_bit: list[int] = []
    original = loading.load_pretrained

    def counting(*args: Any, **kwargs: Any) -> Any:  # count bitsandbytes' 4-bit layers as train() loads
        loaded = original(*args, **kwargs)
        four_bit.append(sum(type(m).__name__ == "Linear4bit" for m in loaded.modules()))
        return loaded

    peaks, losses = {}, {}
    for name, settings in (("qlora", lora4), ("lora", LORA)):
        raw["train"]["lora"] = settings
        raw["train"]["output_dir"] = str(plan.out / name)
        torch.cuda.reset_peak_memory_stats()
        loading.load_pretrained = counting if name == "qlora" else original
        try:
            out = run_train(ct, raw)
        finally:
            loading.load_pretrained = original
        peaks[name] = torch.cuda.max_memory_allocated() / 2**30
        losses[name] = [r["loss"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    q = losses["qlora"]
    first, last = sum(q[:3]) / 3, sum(q[-3:]) / 3
    merged, tok, _, _ = loading.load_for_inference(str(plan.out / "qlora" / "final"))
    merged_ok = all(p.dtype == torch.float32 for p in merged.parameters()) and not any(
        type(m).__name__ == "Linear4bit" for m in merged.modules()
    )
    print(
        f"f) qlora     {len(q)} steps, LoRA r={LORA['r']} on a 4-bit NF4 base ({four_bit[0] if four_bit else 0} "
        f"Linear4bit layers): loss {q[0]:.3f} -> {q[-1]:.3f} (first 3 {first:.3f}, last 3 {last:.3f}); "
        f"plain bf16 LoRA {losses['lora'][0]:.3f} -> {losses['lora'][-1]:.3f}; peak GPU memory "
        f"{peaks['qlora']:.2f} GiB vs {peaks['lora']:.2f} GiB; adapter merges into the fp32 base: {merged_ok}"
    )
    if not four_bit or four_bit[0] == 0:
        raise AssertionError("train.lora.quantize=4bit: the model train() loaded has no 4-bit layers")
    if not last < first:
        raise AssertionError(f"QLoRA: the loss did not fall ({first:.3f} -> {last:.3f})")
    if not merged_ok:
        raise AssertionError("the QLoRA adapter did not merge into a full-precision model")
    return {
        "steps": len(q), "linear4bit_layers": four_bit[0], "first_loss": q[0], "last_loss": q[-1],
        "lora_first_loss": losses["lora"][0], "lora_last_loss": losses["lora"][-1],
        "peak_gib": peaks["qlora"], "lora_peak_gib": peaks["lora"], "merged_fp32": merged_ok,
    }  # fmt: skip


# --- d) the same through transformers.Trainer ---------------------------------------------------


def encode(tok: Any, nl: str, code: str, max_length: int) -> dict[str, list[int]] | None:
    """codetune's causal encoding: prompt (with the tokenizer's special tokens), answer + EOS, loss on
    the answer only; None when over max_length (codetune's default length policy drops it)."""
    prompt = tok(PROMPT.format(nl=nl), add_special_tokens=True)["input_ids"]
    answer = tok(code, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    if len(prompt) + len(answer) > max_length:
        return None
    return {"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer}


def check_trainer(
    plan: Plan, data_dir: Path | None, rows: list[dict[str, str]], model: Path
) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    tok = AutoTokenizer.from_pretrained(str(model))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    train_rows = read_jsonl(data_dir / "train.jsonl") if data_dir else rows
    items = [e for r in train_rows if (e := encode(tok, r["nl"], r["code"], plan.max_length))]

    def collate(batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in batch)  # pad to the longest in the batch, on the right
        ids = torch.full((len(batch), width), pad)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, e in enumerate(batch):
            n = len(e["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = (
                torch.tensor(e["input_ids"]),
                torch.tensor(e["labels"]),
                1,
            )
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    w, s = plan.warmup_steps, plan.steps
    clock: dict[int, float] = {}

    class StepClock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step in (w, w + s):
                sync(plan.device)
                clock[state.global_step] = time.perf_counter()

    tokens: list[torch.Tensor] = []  # non-padding tokens per micro-batch, kept on the device (no sync)

    class CountingTrainer(Trainer):
        def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            tokens.append(inputs["attention_mask"].sum())
            return super().compute_loss(model, inputs, *args, **kwargs)

    fresh_accelerate_state()
    torch.manual_seed(42)
    base = AutoModelForCausalLM.from_pretrained(
        str(model), dtype=plan.dtype, attn_implementation=attention(plan)
    )
    lora = LoraConfig(
        r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], target_modules="all-linear"
    )
    peft_model = get_peft_model(base, lora)  # adapters in fp32 (peft's default), the base in bf16
    args = TrainingArguments(
        output_dir=str(plan.out / "trainer"),
        per_device_train_batch_size=plan.batch_size,
        max_steps=w + s,
        learning_rate=LR,
        lr_scheduler_type="cosine",
        weight_decay=0.01,
        max_grad_norm=1.0,
        bf16=plan.precision == "bf16",
        use_cpu=plan.device == "cpu",
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        disable_tqdm=True,
        seed=42,
    )
    trainer = CountingTrainer(
        model=peft_model, args=args, train_dataset=items, data_collator=collate, callbacks=[StepClock()]
    )
    trainer.train()
    n_tokens = float(sum(int(t) for t in tokens[w : w + s]))
    seconds = clock[w + s] - clock[w]
    del trainer, peft_model, base
    free_memory()
    tps = n_tokens / seconds
    print(
        f"d) Trainer   transformers {__import__('transformers').__version__}, same model/LoRA/batch/precision: "
        f"{tps:,.0f} tokens/s over steps {w + 1}-{w + s} ({n_tokens:,.0f} tokens in {seconds:.2f} s)"
    )
    return {"tokens_per_s": tps, "tokens": n_tokens, "seconds": seconds}


# --- e) generation ------------------------------------------------------------------------------


def hf_backend(plan: Plan, model: Path) -> Any:
    from codetune.models.backends.hf import HFBackend

    if "device" in inspect.signature(HFBackend.from_path).parameters:
        return HFBackend.from_path(str(model), batch_size=1, device=plan.device, precision=plan.precision)
    if plan.device != "cpu":
        raise RuntimeError(
            "this codetune's HFBackend.from_path takes no device: it generates on the CPU only"
        )
    return HFBackend.from_path(str(model), batch_size=1)


def check_generation(plan: Plan, model: Path, rows: list[dict[str, str]]) -> dict[str, Any]:
    from codetune.models.backends.base import SamplingSettings

    backend = hf_backend(plan, model)
    prompts = [PROMPT.format(nl=r["nl"]) for r in rows[: plan.gen_prompts]]
    settings = SamplingSettings(max_new_tokens=plan.gen_tokens, temperature=0.0)
    backend.batch_size = plan.gen_batch
    backend.generate(prompts[: plan.gen_batch], SamplingSettings(max_new_tokens=4))  # warm-up
    result: dict[str, Any] = {"prompts": len(prompts), "max_new_tokens": plan.gen_tokens}
    texts = {}
    for batch in (1, plan.gen_batch):
        backend.batch_size = batch
        sync(plan.device)
        started = time.perf_counter()
        outs = backend.generate(prompts, settings)
        sync(plan.device)
        seconds = time.perf_counter() - started
        made = sum(c[0].completion_tokens for c in outs)
        texts[batch] = [c[0].text for c in outs]
        result[f"batch_{batch}"] = {"tokens": made, "seconds": seconds, "tokens_per_s": made / seconds}
    one, many = result["batch_1"]["tokens_per_s"], result[f"batch_{plan.gen_batch}"]["tokens_per_s"]
    same = sum(a == b for a, b in zip(texts[1], texts[plan.gen_batch], strict=True))
    result.update(speedup=many / one, same_text=same)
    print(
        f"e) generate  {len(prompts)} prompts x {plan.gen_tokens} new tokens, greedy, {plan.precision}: "
        f"batch 1 {one:,.0f} tokens/s, batch {plan.gen_batch} {many:,.0f} tokens/s ({many / one:.1f}x); "
        f"same text at both batch sizes for {same}/{len(prompts)}"
    )
    if plan.precision != "fp32":  # greedy in the 16-bit type against fp32, batched both
        del backend
        free_memory()
        reference = hf_backend(replace(plan, precision="fp32"), model)
        reference.batch_size = plan.gen_batch
        fp32 = [c[0].text for c in reference.generate(prompts, settings)]
        del reference
        free_memory()
        agree = [_common_prefix(a, b) for a, b in zip(texts[plan.gen_batch], fp32, strict=True)]
        same32 = sum(a == b for a, b in zip(texts[plan.gen_batch], fp32, strict=True))
        result["same_text_as_fp32"] = same32
        result["chars_agreeing_with_fp32_median"] = sorted(agree)[len(agree) // 2]
        print(
            f"   greedy {plan.precision} vs fp32 (batch {plan.gen_batch}): same text for {same32}/{len(prompts)}; "
            f"median {result['chars_agreeing_with_fp32_median']} leading characters agree (a 16-bit logit tie "
            "can flip one token, and the rest follows)"
        )
    return result


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


# --- main ---------------------------------------------------------------------------------------


def gpu_listed() -> bool:
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "GPU" in listing


def environment(plan: Plan) -> dict[str, Any]:
    from importlib import metadata

    versions: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("transformers", "accelerate", "peft", "flash_attn"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    gpu = torch.cuda.get_device_name() if plan.device == "cuda" else "cpu"
    return {"device": gpu, "python": sys.version.split()[0], **versions}


def main() -> int:
    warnings.filterwarnings(
        "ignore", message="`is_gradient_checkpointing` is deprecated"
    )  # peft on transformers 5
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"))
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="fewer steps and tokens: a smoke run")
    parser.add_argument("--model", type=Path, default=None, help="a transformers causal LM folder for c-e")
    parser.add_argument("--batch-size", type=int, default=None, help="per-device batch of c) and d)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps of c) and d), after warm-up")
    parser.add_argument(
        "--precision", choices=("bf16", "fp32"), default=None, help="default: bf16 on cuda, fp32 on cpu"
    )
    plan = plan_from_args(parser.parse_args())

    if plan.device == "cuda" and not torch.cuda.is_available():
        if gpu_listed():
            print(
                f"gpu_check: nvidia-smi lists a GPU but PyTorch {torch.__version__} cannot use it (CUDA build: "
                f"{torch.version.cuda or 'no'}); make install TORCH_BUILD=cuda",
                file=sys.stderr,
            )
            return 1
        print("gpu_check: no CUDA GPU: skipped (`--device cpu --quick` checks the code paths on a CPU)")
        return 0
    if plan.out.exists():
        shutil.rmtree(plan.out)
    plan.out.mkdir(parents=True)
    started = time.perf_counter()
    env = environment(plan)
    print(f"gpu_check on {env['device']}: {json.dumps(env)}; plan {json.dumps(asdict(plan), default=str)}")
    ct, why_not = load_codetune()
    summary: dict[str, Any] = {"environment": env, "plan": asdict(plan), "sections": {}, "errors": {}}

    def section(name: str, fn: Callable[[], dict[str, Any]], needs_codetune: bool = False) -> dict[str, Any]:
        if needs_codetune and ct is None:
            print(f"{name}: skipped: {why_not}")
            summary["errors"][name] = f"skipped: {why_not}"
            return {}
        try:
            result = fn()
        except Exception as e:  # one failing section must not hide the figures of the others
            traceback.print_exc()
            print(f"{name}: FAILED: {type(e).__name__}: {e}")
            summary["errors"][name] = f"{type(e).__name__}: {e}"
            return {}
        finally:
            free_memory()
        summary["sections"][name] = result
        return result

    rows = make_examples(plan.examples)
    peak = section("matmul", lambda: check_matmul(plan)).get("tflops")
    data = section("data", lambda: {"dir": prepare_data(plan, ct, rows)}, needs_codetune=True).get("dir")
    if data is not None:
        section("tiny", lambda: check_tiny(plan, ct, data), needs_codetune=True)
    texts = [r["nl"] + "\n" + r["code"] for r in rows]
    model = section("model", lambda: model_folder(plan, texts))
    if model:
        print(f"   model     {model['what']}")
        mine = section(
            "codetune", lambda: check_codetune(plan, ct, data, model["path"], peak), needs_codetune=True
        )
        theirs = section("trainer", lambda: check_trainer(plan, data, rows, model["path"]))
        if mine and theirs:
            ratio = mine["tokens_per_s"] / theirs["tokens_per_s"]
            summary["sections"]["codetune_vs_trainer"] = ratio
            print(f"   codetune/Trainer tokens/s: {ratio:.2f}x (goal >= 1.0)")
        section("generate", lambda: check_generation(plan, model["path"], rows), needs_codetune=True)
        section("qlora", lambda: check_qlora(plan, ct, data, model["path"]), needs_codetune=True)

    summary["seconds"] = time.perf_counter() - started
    (plan.out / "summary.json").write_text(
        json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8"
    )
    print_summary(summary, plan)
    return 1 if summary["errors"] else 0


def print_summary(summary: dict[str, Any], plan: Plan) -> None:
    s = summary["sections"]

    def fig(path: str, fmt: str) -> str:
        value: Any = s
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        return format(value, fmt) if isinstance(value, (int, float)) else "-"

    gen = f"generate.batch_{plan.gen_batch}.tokens_per_s"
    rows = [
        (f"matmul peak, {plan.precision}", f"{fig('matmul.tflops', ',.3g')} TFLOP/s"),
        ("tiny loss, first -> last", f"{fig('tiny.first_loss', '.3f')} -> {fig('tiny.last_loss', '.3f')}"),
        (
            "codetune LoRA tokens/s",
            f"{fig('codetune.tokens_per_s', ',.0f')}   MFU {fig('codetune.mfu', '.1%')}",
        ),
        ("Trainer LoRA tokens/s", fig("trainer.tokens_per_s", ",.0f")),
        ("codetune / Trainer", f"{fig('codetune_vs_trainer', '.2f')}x (goal >= 1.0)"),
        ("generate tokens/s, batch 1", fig("generate.batch_1.tokens_per_s", ",.0f")),
        (
            f"generate tokens/s, batch {plan.gen_batch}",
            f"{fig(gen, ',.0f')} ({fig('generate.speedup', '.1f')}x)",
        ),
        (
            "QLoRA loss, first -> last",
            f"{fig('qlora.first_loss', '.3f')} -> {fig('qlora.last_loss', '.3f')}   peak "
            f"{fig('qlora.peak_gib', '.2f')} GiB (bf16 LoRA {fig('qlora.lora_peak_gib', '.2f')} GiB)",
        ),
    ]
    quick = ", QUICK" if plan.quick else ""
    lines = [
        f"== gpu_check summary ({summary['environment']['device']}, {summary['seconds']:.0f} s{quick}) =="
    ]
    lines += [f"{label:<30}{value}" for label, value in rows]
    lines += [f"ERROR {name}: {err}" for name, err in summary["errors"].items()]
    lines.append(f"written: {plan.out / 'summary.json'}")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
