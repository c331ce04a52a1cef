"""The `train` stage: fine-tune on the prepared train split, validate, checkpoint, resume exactly."""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from codetune.config import Config, config_to_dict, save_config
from codetune.data.fim import FimEncoder
from codetune.data.format import (
    IGNORE_INDEX,
    Encoded,
    LengthAudit,
    audit_lengths,
    build_answer,
    build_prompt,
    encode_causal,
    encode_seq2seq,
)
from codetune.data.records import Example
from codetune.errors import CodetuneError
from codetune.manifest import read_jsonl, sha256_file, write_json, write_manifest
from codetune.models.loading import Kind, apply_lora, load_for_training, load_pretrained, meta_for, write_meta
from codetune.training.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    rotate_checkpoints,
    save_checkpoint,
)
from codetune.training.exec_eval import better, make_exec_eval, run_exec_eval

StepCallback = Callable[[int, float], None]


# --- data -------------------------------------------------------------------------------------


def read_split(data_dir: Path, split: str) -> list[Example]:
    path = data_dir / f"{split}.jsonl"
    if not path.is_file():
        raise CodetuneError(f"{path} not found: run `codetune prepare` first (or set train.data_dir)")
    return [Example.from_dict(d) for d in read_jsonl(path)]


def chat_renderer(tokenizer: Any) -> Callable[[list[dict[str, str]]], str] | None:
    if not getattr(tokenizer, "chat_template", None):
        return None

    def render(messages: list[dict[str, str]]) -> str:
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    return render


def encode_examples(examples: Sequence[Example], cfg: Config, tokenizer: Any, kind: Kind) -> list[Encoded]:
    render = chat_renderer(tokenizer)
    encode = encode_seq2seq if kind == "seq2seq" else encode_causal
    fim = FimEncoder(tokenizer)  # FIM samples (meta.fim): the model's infilling prompt, loss on the middle
    return [
        fim.encode(ex.id, ex.meta["fim"], kind)
        if "fim" in ex.meta
        else encode(
            ex.id, build_prompt(ex.nl, cfg.prompt, render), build_answer(ex.code, cfg.prompt), tokenizer
        )
        for ex in examples
    ]


def collate(items: Sequence[Encoded], pad_id: int, kind: Kind) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch. Labels are padded with IGNORE_INDEX."""
    width = max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    lwidth = width if kind == "causal" else max(len(e.labels) for e in items)
    labels = torch.full((len(items), lwidth), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(items):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        mask[i, : len(e.input_ids)] = 1
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def token_loss_sum(model: Any, batch: dict[str, torch.Tensor], kind: Kind) -> tuple[torch.Tensor, int]:
    """Sum of cross-entropy over the label tokens of a batch, and how many there are."""
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
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if _accepts_logits_to_keep(model):
            logits = model(**inputs, logits_to_keep=needed).logits  # (B, K, V)
        else:
            logits = model(**inputs).logits[:, needed]  # (B, K, V)
        target = labels[:, needed + 1]  # (B, K)
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        target.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return loss, int((target != IGNORE_INDEX).sum())


def _accepts_logits_to_keep(model: Any) -> bool:
    import inspect

    forward = model.get_base_model().forward if hasattr(model, "get_base_model") else model.forward
    return "logits_to_keep" in inspect.signature(forward).parameters


@torch.no_grad()
def validation_loss(model: Any, items: Sequence[Encoded], pad_id: int, kind: Kind, batch_size: int) -> float:
    """Mean per-token loss on `items`. Uses no random numbers (the RNG state is left untouched)."""
    if not items:
        return float("nan")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.random.fork_rng():
        for i in range(0, len(items), batch_size):
            loss, n = token_loss_sum(model, collate(items[i : i + batch_size], pad_id, kind), kind)
            total += float(loss)
            count += n
    model.train(was_training)
    return total / max(count, 1)


class MicroBatches:
    """A deterministic stream of micro-batches over epochs: epoch e uses a permutation seeded by
    (seed, e), so micro-batch m is the same whether or not the run was interrupted before it."""

    def __init__(self, items: Sequence[Encoded], batch_size: int, seed: int) -> None:
        self.items, self.batch_size, self.seed = items, batch_size, seed
        self.per_epoch = math.ceil(len(items) / batch_size)
        self._perm: tuple[int, list[int]] | None = None

    def get(self, m: int) -> list[Encoded]:
        epoch, pos = divmod(m, self.per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.items), generator=g).tolist())
        idx = self._perm[1][pos * self.batch_size : (pos + 1) * self.batch_size]
        return [self.items[i] for i in idx]


# --- model set-up -----------------------------------------------------------------------------


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
    return torch.optim.AdamW(groups, lr=cfg.train.lr)


def _prepare_model(
    cfg: Config, out: Path, train_ex: Sequence[Example], resuming: bool
) -> tuple[Any, Any, Kind, str]:
    """Load (or on resume, reload) the base model; presets are saved to `out/base` once."""
    base_dir = out / "base"
    fresh_base = cfg.model.name in ("tiny", "tiny-t5") or cfg.model.name.startswith("encoder-decoder:")
    if resuming and fresh_base and base_dir.is_dir():
        from codetune.models.loading import load_tokenizer, read_meta

        kind: Kind = read_meta(base_dir)["kind"]
        return load_pretrained(str(base_dir), kind), load_tokenizer(str(base_dir)), kind, str(base_dir)
    texts = [ex.nl for ex in train_ex] + [ex.code for ex in train_ex] + [cfg.prompt.template]
    model, tok, kind, base_ref = load_for_training(cfg.model, texts)
    if base_ref == "":  # a preset: keep the initial model so "before" can be evaluated and resume reloads it
        model.save_pretrained(str(base_dir))
        tok.save_pretrained(str(base_dir))
        write_meta(base_dir, **meta_for(kind, cfg.prompt, "full", "", None))
        base_ref = str(base_dir)
    return model, tok, kind, base_ref


def export_model(model: Any, tokenizer: Any, folder: Path, meta: dict[str, Any]) -> None:
    """A loadable model folder: full weights (or a LoRA adapter), tokenizer, codetune.json."""
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    write_meta(tmp, **meta)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


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
    console = console or Console(stderr=True)
    t = cfg.train
    out = Path(t.output_dir)
    existing = list_checkpoints(out)
    if existing and not t.resume:
        raise CodetuneError(
            f"{out} already has checkpoints (latest {existing[-1].name}); pass --train.resume=true to continue, "
            "or choose another train.output_dir (nothing is overwritten)"
        )
    ckpt = existing[-1] if (existing and t.resume) else None
    torch.manual_seed(t.seed)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")

    train_ex = read_split(cfg.train_data_dir, "train")
    valid_ex = (
        read_split(cfg.train_data_dir, "valid")[: t.max_valid_examples]
        if (cfg.train_data_dir / "valid.jsonl").is_file()
        else []
    )
    model, tok, kind, base_ref = _prepare_model(cfg, out, train_ex, resuming=ckpt is not None)
    train_items, train_audit = audit_lengths(
        encode_examples(train_ex, cfg, tok, kind), kind, t.max_length, t.max_target_length, t.length_policy
    )
    valid_items, valid_audit = audit_lengths(
        encode_examples(valid_ex, cfg, tok, kind), kind, t.max_length, t.max_target_length, t.length_policy
    )
    _report_audit(console, "train", train_audit)
    _report_audit(console, "valid", valid_audit)
    write_json(out / "length_audit.json", {"train": train_audit.to_dict(), "valid": valid_audit.to_dict()})
    if not train_items:
        raise CodetuneError(
            f"no training examples fit train.max_length={t.max_length}; see {out}/length_audit.json"
        )

    if t.lora.enabled:
        model = apply_lora(model, t.lora, kind)
    lora = t.lora if t.lora.enabled else None
    ckpt_meta = meta_for(kind, cfg.prompt, "checkpoint", base_ref, lora)
    model_meta = meta_for(kind, cfg.prompt, "lora" if lora else "full", base_ref, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total_params = sum(p.numel() for p in model.parameters())

    batches = MicroBatches(train_items, t.batch_size, t.seed)
    steps_per_epoch = math.ceil(batches.per_epoch / t.grad_accum)
    total_steps = t.max_steps if t.max_steps is not None else max(1, math.ceil(t.epochs * steps_per_epoch))
    optimizer = _optimizer(model, cfg)
    from transformers import get_cosine_schedule_with_warmup

    scheduler = get_cosine_schedule_with_warmup(optimizer, int(t.warmup_ratio * total_steps), total_steps)
    exec_eval = make_exec_eval(cfg)
    select_by = t.select_by if t.select_by != "auto" else ("pass@1" if exec_eval else "valid_loss")
    if select_by == "pass@1" and exec_eval is None:
        raise CodetuneError("train.select_by=pass@1 needs train.eval_benchmark (e.g. dataframebench/val)")
    state: dict[str, Any] = {
        "step": 0,
        "best_valid_loss": None,
        "best_step": None,
        "best": None,  # {"valid_loss", "pass@1"?} of best/
        "bad_evals": 0,
        "tokens": 0,
    }
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, optimizer, scheduler)
        if state.get("best") is None and state.get("best_valid_loss") is not None:
            state["best"] = {"valid_loss": state["best_valid_loss"], "pass@1": None}
        console.print(f"  resumed from {ckpt} (step {state['step']})")
    console.print(
        f"[bold]train[/bold]: {kind} model {cfg.model.name} ({trainable:,} trainable of {total_params:,} params"
        f"{', LoRA r=' + str(t.lora.r) if lora else ''}); {len(train_items)} examples, {total_steps} steps"
    )

    metrics_path = out / "metrics.jsonl"
    _truncate_metrics(metrics_path, state["step"])  # rows after the checkpoint belong to the lost tail
    board = _tensorboard(out, state["step"], console) if t.tensorboard else None
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model.train()
    started = time.perf_counter()
    tokens_this_run = 0
    last_loss = float("nan")
    with Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[tps]} tok/s"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("train", total=total_steps, completed=state["step"], loss="-", tps="-")
        while state["step"] < total_steps:
            # forward/backward over grad_accum micro-batches, loss normalised by the step's label tokens
            micro = [batches.get(state["step"] * t.grad_accum + j) for j in range(t.grad_accum)]
            micro = [m for m in micro if m]
            batch_list = [collate(m, pad_id, kind) for m in micro]
            n_label = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batch_list)
            step_loss = 0.0
            for b in batch_list:
                loss_sum, _ = token_loss_sum(model, b, kind)
                (loss_sum / max(n_label, 1)).backward()
                step_loss += float(loss_sum.detach()) / max(n_label, 1)
                tokens_this_run += int(b["attention_mask"].sum())
            # optimizer step
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.requires_grad], t.max_grad_norm
            )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            last_loss = step_loss
            elapsed = time.perf_counter() - started
            tps = tokens_this_run / elapsed if elapsed > 0 else 0.0
            _append_metrics(
                metrics_path,
                {
                    "step": state["step"],
                    "loss": step_loss,
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": float(grad_norm),
                    "tokens_per_s": tps,
                },
            )
            if board is not None:
                board.add_scalar("train/loss", step_loss, state["step"])
                board.add_scalar("train/lr", scheduler.get_last_lr()[0], state["step"])
                board.add_scalar("train/grad_norm", float(grad_norm), state["step"])
            progress.update(task, completed=state["step"], loss=f"{step_loss:.4f}", tps=f"{tps:,.0f}")
            if on_step is not None:
                on_step(state["step"], step_loss)
            # validation, best model, early stopping
            at_end = state["step"] == total_steps
            stop_early = False
            if valid_items and ((t.eval_every and state["step"] % t.eval_every == 0) or at_end):
                vloss = validation_loss(model, valid_items, pad_id, kind, t.batch_size)
                row: dict[str, Any] = {"step": state["step"], "valid_loss": vloss}
                if exec_eval is not None:
                    row.update(
                        run_exec_eval(
                            exec_eval,
                            state["step"],
                            model,
                            tok,
                            kind,
                            cfg,
                            out,
                            export_model,
                            model_meta,
                            base_ref,
                        )
                    )
                _append_metrics(metrics_path, row)
                if board is not None:
                    for key, name in (
                        ("valid_loss", "loss"),
                        ("valid_pass@1", "pass@1"),
                        ("valid_bleu", "bleu"),
                    ):
                        if key in row:
                            board.add_scalar(f"valid/{name}", row[key], state["step"])
                    board.flush()
                shown = f"valid loss {vloss:.4f}"
                if "valid_pass@1" in row:
                    shown += (
                        f", pass@1 {row['valid_pass@1']:.3f} ({row['valid_passed']}/{row['valid_tasks']}), "
                        f"BLEU {row['valid_bleu']:.2f} [{row['eval_s']:.0f} s]"
                    )
                progress.console.print(f"  step {state['step']}: {shown}")
                candidate = {"valid_loss": vloss, "pass@1": row.get("valid_pass@1")}
                if better(candidate, state.get("best"), select_by):
                    state.update(best_valid_loss=vloss, best_step=state["step"], best=candidate, bad_evals=0)
                    export_model(model, tok, out / "best", model_meta)
                else:
                    state["bad_evals"] += 1
                    stop_early = bool(
                        t.early_stopping_patience and state["bad_evals"] >= t.early_stopping_patience
                    )
            # checkpoint
            if (t.save_every and state["step"] % t.save_every == 0) or at_end or stop_early:
                save_checkpoint(
                    out / "checkpoints" / f"step-{state['step']:06d}",
                    model,
                    tok,
                    optimizer,
                    scheduler,
                    state,
                    ckpt_meta,
                )
                rotate_checkpoints(out, t.keep_checkpoints)
            if stop_early:
                progress.console.print(
                    f"  early stopping: {state['bad_evals']} evaluations without improvement"
                )
                break

    export_model(model, tok, out / "final", model_meta)
    if board is not None:
        board.close()
    if not valid_items:
        console.print("  [yellow]no valid split: best/ is not written; final/ is the last step[/yellow]")
    elapsed = time.perf_counter() - started
    summary = {
        "steps": state["step"],
        "total_steps": total_steps,
        "final_train_loss": last_loss,
        "best_valid_loss": state["best_valid_loss"],
        "best_step": state["best_step"],
        "best_metric": state.get("best"),
        "select_by": select_by,
        "seconds_this_run": round(elapsed, 2),
        "tokens_per_s": round(tokens_this_run / elapsed, 1) if elapsed > 0 else None,
        "trainable_params": trainable,
        "total_params": total_params,
        "kind": kind,
        "base_model": base_ref,
    }
    write_manifest(
        out,
        "train",
        data={"train_sha256": sha256_file(cfg.train_data_dir / "train.jsonl"), "examples": len(train_items)},
        length_audit={"train": train_audit.to_dict(), "valid": valid_audit.to_dict()},
        summary=summary,
        config=config_to_dict(cfg),
    )
    best = "no best/ (no validation)"
    if state["best_step"] is not None:
        chosen = state.get("best") or {}
        by = f"valid pass@1 {chosen['pass@1']:.4f}, " if chosen.get("pass@1") is not None else ""
        best = f"best/ = step {state['best_step']} ({by}valid loss {state['best_valid_loss']:.4f})"
    console.print(f"  done: {state['step']} steps, final train loss {last_loss:.4f}; {best} -> {out}/final")
    return out


def _tensorboard(out: Path, step: int, console: Console) -> Any:
    """A SummaryWriter on {out}/tensorboard that drops events after `step` (a resumed run's lost tail)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        console.print(
            "  [yellow]tensorboard is not installed: no TensorBoard events (metrics.jsonl has all)[/]"
        )
        return None
    return SummaryWriter(str(out / "tensorboard"), purge_step=step + 1 if step else None)


def _append_metrics(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    if not path.is_file():
        return
    rows = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
