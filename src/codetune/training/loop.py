"""The `train` stage: fine-tune on the prepared train split, validate, checkpoint, resume exactly.

The loop runs on Accelerate's `Accelerator`, so the same `codetune train CONFIG` runs on a CPU, a GPU,
and under `accelerate launch` / `torchrun` on several GPUs or machines (DDP, FSDP, DeepSpeed). Each
process takes `train.batch_size` examples of every global micro-batch (`batch_size` x processes), and
an optimizer step's loss is normalised by the label tokens of the whole global step, so a step's loss
and update are the same whatever the number of processes. Only the main process writes files.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from codetune import progress
from codetune.config import Config, config_to_dict, save_config, validate
from codetune.data.format import IGNORE_INDEX, Encoded, LengthAudit, audit_lengths
from codetune.data.records import Example, read_split
from codetune.devices import Runtime, attention_implementation, resolve_runtime
from codetune.errors import CodetuneError
from codetune.manifest import (
    atomic_folder,
    make_output_dir,
    read_jsonl,
    sha256_file,
    write_json,
    write_manifest,
)
from codetune.models.loading import (
    Kind,
    apply_lora,
    forward_parameters,
    load_for_training,
    load_pretrained,
    meta_for,
    write_meta,
)
from codetune.training.batches import (
    StepSampler,
    chat_renderer,
    collate,
    collate_packed,
    collator,
    encode_examples,
    label_tokens,
)
from codetune.training.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    load_optimizer_state,
    optimizer_state,
    rotate_checkpoints,
    save_checkpoint,
    trainable_state,
)
from codetune.training.exec_eval import better, make_exec_eval, run_exec_eval
from codetune.training.tracking import Trackers, open_trackers

# Re-exported: the data side lived here before codetune.training.batches.
__all__ = ["chat_renderer", "collate", "encode_examples", "read_split", "token_loss_sum", "train"]

StepCallback = Callable[[int, float], None]


# --- loss -------------------------------------------------------------------------------------


def token_loss_sum(
    model: Any, batch: dict[str, torch.Tensor], kind: Kind, logits_to_keep: bool | None = None
) -> tuple[torch.Tensor, int]:
    """Sum of cross-entropy over the label tokens of a batch, and how many there are.

    `logits_to_keep`: whether the model's forward takes it (looked up when None)."""
    labels = batch["labels"]
    if kind == "seq2seq":
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels
        ).logits
        target = labels  # (B, T_tgt); logits (B, T_tgt, V)
    else:
        # Position t predicts token t+1. Only positions that predict a label need logits: with a large
        # vocabulary (Qwen: 152k) the LM head over the prompt tokens is most of the step's cost.
        needed = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().flatten()  # (K,)
        inputs: dict[str, Any] = {"input_ids": batch["input_ids"]}
        if "position_ids" in batch:  # packed rows: the mask comes from the position ids (and no cache)
            inputs.update(position_ids=batch["position_ids"], use_cache=False)
        else:
            inputs["attention_mask"] = batch["attention_mask"]
        if logits_to_keep is None:
            logits_to_keep = accepts_logits_to_keep(model)
        if logits_to_keep:
            logits = model(**inputs, logits_to_keep=needed).logits  # (B, K, V)
        else:
            logits = model(**inputs).logits[:, needed]  # (B, K, V)
        target = labels[:, needed + 1]  # (B, K)
    loss = cross_entropy_sum(logits.reshape(-1, logits.size(-1)), target.reshape(-1))
    return loss, int((target != IGNORE_INDEX).sum())


CE_CHUNK = 256  # rows of logits per cross-entropy chunk


def cross_entropy_sum(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of (N, V) logits in fp32, a chunk of rows at a time, each chunk recomputed in
    the backward pass: neither a full fp32 copy of 16-bit logits nor the full log-softmax is kept, so the
    output layer's memory is the logits and their gradient (with a 152k vocabulary, ~0.6 GB per 1,000
    positions in fp32, each)."""
    if not logits.requires_grad or logits.size(0) <= CE_CHUNK:
        return _ce_sum(logits, target)
    from torch.utils.checkpoint import checkpoint

    parts = [
        checkpoint(_ce_sum, logits[i : i + CE_CHUNK], target[i : i + CE_CHUNK], use_reentrant=False)
        for i in range(0, logits.size(0), CE_CHUNK)
    ]
    return torch.stack(parts).sum()


def _ce_sum(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(
        logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum"
    )


def accepts_logits_to_keep(model: Any) -> bool:
    return "logits_to_keep" in forward_parameters(model)


def _on(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def validation_loss(
    model: Any, items: Sequence[Encoded], pad_id: int, kind: Kind, batch_size: int, accelerator: Any = None
) -> float:
    """Mean per-token loss on `items`, shared out over the processes (each runs the same number of
    forward passes, as FSDP needs) and summed across them. Leaves the RNG state untouched."""
    if not items:
        return float("nan")
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    device = accelerator.device if accelerator else next(model.parameters()).device
    keep = accepts_logits_to_keep(model) if kind == "causal" else False
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # (loss sum, label tokens)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for start in range(0, len(items), batch_size * world):
            mine = items[start + rank * batch_size : start + (rank + 1) * batch_size]
            loss, n = token_loss_sum(model, _on(collate(mine or items[:1], pad_id, kind), device), kind, keep)
            if mine:  # an empty share still runs a forward pass (collectives), counted as nothing
                sums += torch.tensor([float(loss), n], dtype=torch.float64, device=device)
    if world > 1:
        sums = accelerator.reduce(sums, reduction="sum")
    model.train(was_training)
    return float(sums[0] / max(float(sums[1]), 1.0))


# --- set-up -----------------------------------------------------------------------------------


def _accelerator(runtime: Runtime, grad_accum: int) -> Any:
    """Accelerate's engine for this run. Gradient accumulation follows a plain micro-batch count; the
    data loader is split per global batch (every process gets its slice of each micro-batch)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DataLoaderConfiguration, GradientAccumulationPlugin, InitProcessGroupKwargs

    # Accelerate keeps its settings in process-wide singletons; a second train() in one process (tests,
    # notebooks) may ask for another precision. The distributed set-up itself (PartialState) is kept.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    accelerator = Accelerator(
        cpu=runtime.device == "cpu",
        mixed_precision=runtime.mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=grad_accum, sync_with_dataloader=False
        ),
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        # the other processes wait while the main one evaluates by execution (train.eval_benchmark),
        # which can take longer than the collectives' default 10-minute timeout
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(hours=2))],
    )
    if accelerator.device.type != runtime.device:
        raise CodetuneError(
            f"train.device={runtime.requested_device} resolved to {runtime.device}, but Accelerate runs on "
            f"{accelerator.device}; check the accelerate config (use_cpu) or set train.device explicitly"
        )
    return accelerator


def _packing(
    mode: str, max_length: int, model: Any, items: Sequence[Encoded], pad_id: int, kind: Kind, exact: bool
) -> tuple[int | None, str]:
    """The row length to pack micro-batches into (None: pad them) and how batches are made, in words.
    `exact`: the model computes in fp32 (the probe's tolerance)."""
    if mode == "off":
        return None, "padded (train.packing=off)"
    tolerance = 1e-4 if exact else 2e-2
    why = "a seq2seq model" if kind == "seq2seq" else packing_leak(model, items, pad_id, tolerance)
    if why is None:
        return max_length, f"packed into rows of up to {max_length} tokens"
    if mode == "on":
        raise CodetuneError(f"train.packing=on, but packing is not exact here: {why}; use auto or off")
    return None, f"padded (packing does not apply: {why})"


@torch.no_grad()
def packing_leak(model: Any, items: Sequence[Encoded], pad_id: int, tolerance: float = 1e-4) -> str | None:
    """None when packing is exact for `model`: the loss of an example packed after another equals its
    loss alone within `tolerance` per token, relative (the model keeps packed examples apart). Otherwise
    why not, in words. Every process runs it (FSDP's forward is collective)."""
    if len(items) < 2:
        return "fewer than two examples"
    if "position_ids" not in forward_parameters(model):
        return f"{type(getattr(model, 'module', model)).__name__} takes no position ids"
    device = next(model.parameters()).device
    first, second = items[0], items[1]
    alone = _on(collate([second], pad_id, "causal"), device)
    hidden = replace(first, labels=[IGNORE_INDEX] * len(first.labels))  # only the second one's loss
    packed = _on(collate_packed([hidden, second], pad_id, 1 << 30), device)
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        a, n = token_loss_sum(model, alone, "causal")
        b, m = token_loss_sum(model, packed, "causal")
    model.train(was_training)
    per_token = abs(float(a) - float(b)) / max(n, 1)
    if n != m or per_token > tolerance * max(1.0, float(a) / max(n, 1)):
        return f"an example's loss changes by {per_token:.2g} per token when packed after another"
    return None


def _is_sharded(accelerator: Any) -> bool:
    """FSDP or DeepSpeed: the model's weights are split over the processes (gathering is collective)."""
    return str(accelerator.distributed_type).endswith(("FSDP", "DEEPSPEED"))


def _is_deepspeed(accelerator: Any) -> bool:
    return str(accelerator.distributed_type).endswith("DEEPSPEED")


def _deepspeed_settings(accelerator: Any, t: Any) -> None:
    """DeepSpeed (untested here: it needs CUDA) reads batch size, accumulation and clipping from its own
    config; codetune's settings fill them, since the data loader has a batch sampler, not a batch size."""
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = t.batch_size
    ds["gradient_accumulation_steps"] = t.grad_accum
    ds["gradient_clipping"] = t.max_grad_norm


def _optimizer(model: Any, cfg: Config) -> torch.optim.Optimizer:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # the fused kernel: one pass over all parameters per step instead of a loop (what HF Trainer uses)
    return torch.optim.AdamW(groups, lr=cfg.train.lr, fused=True)


def _prepare_model(
    cfg: Config, out: Path, train_ex: Sequence[Example], resuming: bool, runtime: Runtime, accelerator: Any
) -> tuple[Any, Any, Kind, str]:
    """Load (or on resume, reload) the base model; presets are saved to `out/base` once (by the main
    process; every process builds the same one from the same seeds). With LoRA on a GPU the frozen
    base is loaded straight into the training precision; trainable weights stay fp32."""
    base_dir = out / "base"
    fresh_base = cfg.model.name in ("tiny", "tiny-t5") or cfg.model.name.startswith("encoder-decoder:")
    dtype = runtime.dtype if (cfg.train.lora.enabled and runtime.device != "cpu") else torch.float32
    attn = attention_implementation(cfg.model.attn_implementation, runtime)
    if resuming and fresh_base and base_dir.is_dir():
        from codetune.models.loading import load_tokenizer, read_meta

        kind: Kind = read_meta(base_dir)["kind"]
        model = load_pretrained(str(base_dir), kind, dtype=dtype, attn_implementation=attn)
        return model, load_tokenizer(str(base_dir)), kind, str(base_dir)
    texts = [ex.nl for ex in train_ex] + [ex.code for ex in train_ex] + [cfg.prompt.template]
    model, tok, kind, base_ref = load_for_training(
        cfg.model, texts, dtype, attn, cfg.train.lora, str(accelerator.device)
    )
    if base_ref == "":  # a preset: keep the initial model so "before" can be evaluated and resume reloads it
        if accelerator.is_main_process:
            model.save_pretrained(str(base_dir))
            tok.save_pretrained(str(base_dir))
            write_meta(base_dir, **meta_for(kind, cfg.prompt, "full", "", None))
        accelerator.wait_for_everyone()
        base_ref = str(base_dir)
    return model, tok, kind, base_ref


def export_model(
    model: Any, tokenizer: Any, folder: Path, meta: dict[str, Any], state_dict: dict[str, Any] | None = None
) -> None:
    """A loadable model folder: full weights (or a LoRA adapter), tokenizer, codetune.json."""
    with atomic_folder(folder) as tmp:
        model.save_pretrained(str(tmp), **({"state_dict": state_dict} if state_dict is not None else {}))
        tokenizer.save_pretrained(str(tmp))
        write_meta(tmp, **meta)


def _export(accelerator: Any, model: Any, tokenizer: Any, folder: Path, meta: dict[str, Any]) -> None:
    """`export_model` from the main process; under FSDP every process first helps gather the weights."""
    state = accelerator.get_state_dict(model) if _is_sharded(accelerator) else None
    if accelerator.is_main_process:
        export_model(accelerator.unwrap_model(model), tokenizer, folder, meta, state)
    accelerator.wait_for_everyone()


def _report_audit(console: Console, name: str, audit: LengthAudit) -> None:
    if audit.over_limit == 0:
        console.print(
            f"  length audit ({name}): {audit.total} examples, all within {audit.max_length} tokens"
        )
        return
    console.print(
        f"  [yellow]length audit ({name})[/yellow]: {audit.over_limit}/{audit.total} examples over the limit "
        f"({audit.tokens_over} tokens beyond it, longest {audit.longest}); policy {audit.policy}: "
        f"{audit.dropped} dropped, {audit.truncated} truncated"
    )


# --- the stage --------------------------------------------------------------------------------


def train(cfg: Config, console: Console | None = None, on_step: StepCallback | None = None) -> Path:
    """Fine-tune `cfg.model` on `{data}/train.jsonl`; write checkpoints, `best/`, `final/`, metrics.

    Returns the output folder. `on_step(step, loss)` is called after every optimizer step.
    """
    validate(cfg)  # the Python API gets the checks `load_config` makes
    t = cfg.train
    runtime = resolve_runtime(t.device, t.precision, "train")
    accelerator = _accelerator(runtime, t.grad_accum)
    main = accelerator.is_main_process
    console = (console or Console(stderr=True)) if main else Console(quiet=True)  # logs from rank 0
    world = accelerator.num_processes
    out = Path(t.output_dir)
    existing = list_checkpoints(out)
    if existing and not t.resume:
        raise CodetuneError(
            f"{out} already has checkpoints (latest {existing[-1].name}); pass --train.resume=true to continue, "
            "or choose another train.output_dir (nothing is overwritten)"
        )
    ckpt = existing[-1] if (existing and t.resume) else None
    torch.manual_seed(t.seed)
    if main:
        make_output_dir(out, "train.output_dir")
        save_config(cfg, out / "config.yaml")

    # --- data and model
    train_ex = read_split(cfg.train_data_dir, "train")
    valid_ex = (
        read_split(cfg.train_data_dir, "valid")[: t.max_valid_examples]
        if (cfg.train_data_dir / "valid.jsonl").is_file()
        else []
    )
    model, tok, kind, base_ref = _prepare_model(cfg, out, train_ex, ckpt is not None, runtime, accelerator)
    train_items, train_audit = audit_lengths(
        encode_examples(train_ex, cfg, tok, kind), kind, t.max_length, t.max_target_length, t.length_policy
    )
    valid_items, valid_audit = audit_lengths(
        encode_examples(valid_ex, cfg, tok, kind), kind, t.max_length, t.max_target_length, t.length_policy
    )
    _report_audit(console, "train", train_audit)
    _report_audit(console, "valid", valid_audit)
    if main:
        write_json(
            out / "length_audit.json", {"train": train_audit.to_dict(), "valid": valid_audit.to_dict()}
        )
    if not train_items:
        raise CodetuneError(
            f"no training examples fit train.max_length={t.max_length}; see {out}/length_audit.json"
        )
    if t.gradient_checkpointing:
        kwargs = {"use_reentrant": False}  # non-reentrant: frozen inputs (LoRA) need no requires_grad hook
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False
    if t.lora.enabled:
        model = apply_lora(model, t.lora, kind)
    lora = t.lora if t.lora.enabled else None
    ckpt_meta = meta_for(kind, cfg.prompt, "checkpoint", base_ref, lora)
    model_meta = meta_for(kind, cfg.prompt, "lora" if lora else "full", base_ref, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total_params = sum(p.numel() for p in model.parameters())
    keep_logits = kind == "causal" and accepts_logits_to_keep(model)

    # --- schedule, optimizer, state (restored before Accelerate wraps anything)
    global_batch = t.batch_size * world
    steps_per_epoch = math.ceil(len(train_items) / (global_batch * t.grad_accum))
    total_steps = t.max_steps if t.max_steps is not None else max(1, math.ceil(t.epochs * steps_per_epoch))
    optimizer = _optimizer(model, cfg)
    from transformers import get_cosine_schedule_with_warmup

    scheduler = get_cosine_schedule_with_warmup(optimizer, int(t.warmup_ratio * total_steps), total_steps)
    exec_eval = make_exec_eval(cfg)
    if exec_eval is not None and _is_sharded(accelerator):
        raise CodetuneError(
            "train.eval_benchmark generates with the whole model on the main process, which FSDP and "
            "DeepSpeed shard; unset it there (use DDP, or evaluate the checkpoints with codetune evaluate)"
        )
    # pass@1 without train.eval_benchmark is refused when the config loads (config.validate)
    select_by = t.select_by if t.select_by != "auto" else ("pass@1" if exec_eval else "valid_loss")
    state: dict[str, Any] = {
        "step": 0,
        "best_valid_loss": None,
        "best_step": None,
        "best": None,  # {"valid_loss", "pass@1"?} of best/
        "bad_evals": 0,
        "tokens": 0,
    }
    rng = None
    if ckpt is not None:
        state, rng = load_checkpoint(ckpt, model, scheduler)
        if state.get("best") is None and state.get("best_valid_loss") is not None:
            state["best"] = {"valid_loss": state["best_valid_loss"], "pass@1": None}
        if state.get("global_batch", global_batch) != global_batch:
            console.print(
                f"  [yellow]the checkpoint was written with a global batch of {state['global_batch']} "
                f"examples, this run has {global_batch} (batch_size x processes): the data continues "
                "from the same example, in steps of the new size[/yellow]"
            )
    start = state.get("examples_seen", state["step"] * t.grad_accum * global_batch)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if _is_deepspeed(accelerator):
        _deepspeed_settings(accelerator, t)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    exact = runtime.precision == "fp32" and next(model.parameters()).dtype == torch.float32
    pack_capacity, batching = _packing(t.packing, t.max_length, model, train_items, pad_id, kind, exact)
    # where packing can't apply (seq2seq), micro-batches of similar lengths waste less on padding
    grouped = pack_capacity is None and t.packing != "off" and t.group_by_length
    if grouped:
        batching += f"; grouped by length in windows of {StepSampler.GROUP_WINDOW} micro-batches"
    loader: Any = torch.utils.data.DataLoader(
        train_items,  # type: ignore[arg-type]
        batch_sampler=StepSampler(
            len(train_items),
            global_batch,
            t.seed,
            start,
            (total_steps - state["step"]) * t.grad_accum,
            group_lengths=[len(e.input_ids) for e in train_items] if grouped else None,
        ),
        collate_fn=collator(pad_id, kind, pack_capacity),
        generator=torch.Generator().manual_seed(t.seed),  # its seed draw leaves the global RNG be
    )
    loader = accelerator.prepare(loader)
    if ckpt is not None:
        if not load_optimizer_state(ckpt, model, optimizer.optimizer):
            console.print(
                f"  [yellow]{ckpt} has no optimizer state (written under DeepSpeed): AdamW's moments start "
                "afresh, so this resume is not exact[/yellow]"
            )
        console.print(f"  resumed from {ckpt} (step {state['step']})")
    if rng is not None:
        rng.restore()
    runtime_info = {
        **runtime.to_dict(),
        "distributed_type": str(accelerator.distributed_type),
        "processes": world,
        "global_batch": global_batch * t.grad_accum,
        "attn_implementation": getattr(accelerator.unwrap_model(model).config, "_attn_implementation", None),
        "gradient_checkpointing": t.gradient_checkpointing,
        "batching": batching,
    }
    console.print(
        f"[bold]train[/bold]: {kind} model {cfg.model.name} ({trainable:,} trainable of {total_params:,} params"
        f"{', LoRA r=' + str(t.lora.r) if lora else ''}); {len(train_items)} examples, {total_steps} steps\n"
        f"  runtime: {runtime.describe()}; {runtime_info['distributed_type']} x {world} process(es); "
        f"global batch {global_batch} x {t.grad_accum} accumulation; attention "
        f"{runtime_info['attn_implementation']}; gradient checkpointing {'on' if t.gradient_checkpointing else 'off'}; "
        f"batches {batching}"
    )

    run = _Run(accelerator, model, tok, kind, cfg, out, model_meta, ckpt_meta, base_ref, console)
    metrics_path = out / "metrics.jsonl"
    board: Trackers | None = None  # TensorBoard, wandb, MLflow (training/tracking.py)
    if main:
        _truncate_metrics(metrics_path, state["step"])  # rows after the checkpoint belong to the lost tail
        board = open_trackers(cfg, out, state["step"], console)
        if board.names:
            console.print(f"  tracking: {', '.join(board.names)}")
    params = [p for p in model.parameters() if p.requires_grad]
    batches = iter(loader)
    first_step = state["step"]
    model.train()
    started = time.perf_counter()
    tokens_this_run = 0
    last_loss = float("nan")
    with progress.task("train", total_steps, unit="steps", console=console) as bar:
        bar.update(state["step"])
        while state["step"] < total_steps:
            # forward/backward over grad_accum micro-batches. Each process's loss sum is scaled by
            # processes x accumulation / (label tokens of the whole global step): Accelerate divides by
            # the accumulation count and DDP averages over processes, so the update is the gradient of
            # the step's mean token loss, as on one process.
            micro = [next(batches) for _ in range(t.grad_accum)]
            counts = torch.tensor(
                [
                    sum(label_tokens(b, kind) for b in micro),
                    sum(int(b["attention_mask"].sum()) for b in micro),
                ],
                device=accelerator.device,
            )
            n_label, n_tokens = (int(x) for x in accelerator.reduce(counts, reduction="sum"))
            scale = world * t.grad_accum
            loss_total = torch.zeros((), dtype=torch.float64, device=accelerator.device)
            grad_norm = torch.tensor(float("nan"))
            for b in micro:
                with accelerator.accumulate(model):
                    loss_sum, _ = token_loss_sum(model, b, kind, keep_logits)
                    accelerator.backward(loss_sum * scale / max(n_label, 1))
                    loss_total += loss_sum.detach().double()
                    if accelerator.sync_gradients:
                        # None under DeepSpeed, which clips by its own config
                        grad_norm = accelerator.clip_grad_norm_(params, t.max_grad_norm) or grad_norm
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
            step_loss = float(accelerator.reduce(loss_total, reduction="sum")) / max(n_label, 1)
            state["step"] += 1
            state["examples_seen"] = start + (state["step"] - first_step) * t.grad_accum * global_batch
            tokens_this_run += n_tokens
            last_loss = step_loss
            elapsed = time.perf_counter() - started
            tps = tokens_this_run / elapsed if elapsed > 0 else 0.0
            lr = scheduler.get_last_lr()[0]
            if main:
                row = {"step": state["step"], "loss": step_loss, "lr": lr, "grad_norm": float(grad_norm)}
                _append_metrics(metrics_path, {**row, "tokens_per_s": tps})
                if board is not None:
                    board.log(
                        {
                            "train/loss": step_loss,
                            "train/lr": lr,
                            "train/grad_norm": float(grad_norm),
                            "train/tokens_per_s": tps,
                        },
                        state["step"],
                    )
            bar.update(state["step"], tokens=tokens_this_run, loss=f"{step_loss:.4f}")
            if on_step is not None:
                on_step(state["step"], step_loss)
            # validation, best model, early stopping
            at_end = state["step"] == total_steps
            stop_early = False
            if valid_items and ((t.eval_every and state["step"] % t.eval_every == 0) or at_end):
                stop_early = _validate(run, state, valid_items, pad_id, select_by, exec_eval, board)
            # checkpoint
            if (t.save_every and state["step"] % t.save_every == 0) or at_end or stop_early:
                _checkpoint(run, optimizer, scheduler, state)
            if stop_early:
                console.print(f"  early stopping: {state['bad_evals']} evaluations without improvement")
                break

    _export(accelerator, model, tok, out / "final", model_meta)
    elapsed = time.perf_counter() - started
    if main:
        if board is not None:
            board.close()
        if not valid_items:
            console.print("  [yellow]no valid split: best/ is not written; final/ is the last step[/yellow]")
        summary = {
            "steps": state["step"],
            "total_steps": total_steps,
            "final_train_loss": last_loss,
            "best_valid_loss": state["best_valid_loss"],
            "best_step": state["best_step"],
            "best_metric": state.get("best"),
            "select_by": select_by,
            "seconds_this_run": round(elapsed, 2),
            "tokens": tokens_this_run,  # non-padding tokens this run processed, all processes
            "tokens_per_s": round(tokens_this_run / elapsed, 1) if elapsed > 0 else None,
            "trainable_params": trainable,
            "total_params": total_params,
            "kind": kind,
            "base_model": base_ref,
        }
        write_manifest(
            out,
            "train",
            data={
                "train_sha256": sha256_file(cfg.train_data_dir / "train.jsonl"),
                "examples": len(train_items),
            },
            length_audit={"train": train_audit.to_dict(), "valid": valid_audit.to_dict()},
            runtime=runtime_info,
            summary=summary,
            config=config_to_dict(cfg),
        )
    best = "no best/ (no validation)"
    if state["best_step"] is not None:
        chosen = state.get("best") or {}
        by = f"valid pass@1 {chosen['pass@1']:.4f}, " if chosen.get("pass@1") is not None else ""
        best = f"best/ = step {state['best_step']} ({by}valid loss {state['best_valid_loss']:.4f})"
    console.print(f"  done: {state['step']} steps, final train loss {last_loss:.4f}; {best} -> {out}/final")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out


@dataclass
class _Run:
    """What validation and checkpointing need from a running `train`."""

    accelerator: Any
    model: Any  # as prepared by Accelerate
    tokenizer: Any
    kind: Kind
    cfg: Config
    out: Path
    model_meta: dict[str, Any]
    ckpt_meta: dict[str, Any]
    base_ref: str
    console: Console  # the main process's; quiet on the others


def _validate(
    run: _Run,
    state: dict[str, Any],
    valid_items: Sequence[Encoded],
    pad_id: int,
    select_by: str,
    exec_eval: Any,
    board: Any,
) -> bool:
    """Validation loss on every process; evaluation by execution on the main one; best/ and early
    stopping. Returns whether to stop early."""
    acc, t, step = run.accelerator, run.cfg.train, state["step"]
    vloss = validation_loss(run.model, valid_items, pad_id, run.kind, t.batch_size, acc)
    row: dict[str, Any] = {"step": step, "valid_loss": vloss}
    if exec_eval is not None:
        if acc.is_main_process:
            unwrapped = acc.unwrap_model(run.model)
            row.update(
                run_exec_eval(
                    exec_eval,
                    step,
                    unwrapped,
                    run.tokenizer,
                    run.kind,
                    run.cfg,
                    run.out,
                    export_model,
                    run.model_meta,
                    run.base_ref,
                )  # fmt: skip
            )
        row = _broadcast(acc, row)
    if acc.is_main_process:
        _append_metrics(run.out / "metrics.jsonl", row)
        if board is not None:
            names = (("valid_loss", "loss"), ("valid_pass@1", "pass@1"), ("valid_bleu", "bleu"))
            board.log({f"valid/{name}": row[key] for key, name in names if key in row}, step)
    shown = f"valid loss {vloss:.4f}"
    if "valid_pass@1" in row:
        shown += (
            f", pass@1 {row['valid_pass@1']:.3f} ({row['valid_passed']}/{row['valid_tasks']}), "
            f"BLEU {row['valid_bleu']:.2f} [{row['eval_s']:.0f} s]"
        )
    run.console.print(f"  step {step}: {shown}")
    candidate = {"valid_loss": vloss, "pass@1": row.get("valid_pass@1")}
    if better(candidate, state.get("best"), select_by):
        state.update(best_valid_loss=vloss, best_step=step, best=candidate, bad_evals=0)
        _export(acc, run.model, run.tokenizer, run.out / "best", run.model_meta)
        return False
    state["bad_evals"] += 1
    return bool(t.early_stopping_patience and state["bad_evals"] >= t.early_stopping_patience)


def _broadcast(accelerator: Any, row: dict[str, Any]) -> dict[str, Any]:
    """The main process's `row` on every process (they all decide on best/ and early stopping)."""
    if accelerator.num_processes == 1:
        return row
    from accelerate.utils import broadcast_object_list

    box = [row]
    broadcast_object_list(box, from_process=0)
    return dict(box[0])


def _checkpoint(run: _Run, optimizer: Any, scheduler: Any, state: dict[str, Any]) -> None:
    """Write `checkpoints/step-N` from the main process (under FSDP every process helps gather)."""
    acc = run.accelerator
    full = acc.get_state_dict(run.model) if _is_sharded(acc) else None
    weights = trainable_state(acc.unwrap_model(run.model), full)
    # DeepSpeed's ZeRO optimizer keeps its state in its own format: not saved (said at resume)
    optim = None if _is_deepspeed(acc) else optimizer_state(run.model, optimizer.optimizer)
    if acc.is_main_process:
        folder = run.out / "checkpoints" / f"step-{state['step']:06d}"
        save_checkpoint(
            folder,
            weights,
            optim,
            run.tokenizer,
            scheduler,
            {**state, "global_batch": _global(run)},
            run.ckpt_meta,
        )
        rotate_checkpoints(run.out, run.cfg.train.keep_checkpoints)
    acc.wait_for_everyone()


def _global(run: _Run) -> int:
    return run.cfg.train.batch_size * run.accelerator.num_processes


def _append_metrics(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    if not path.is_file():
        return
    rows = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
