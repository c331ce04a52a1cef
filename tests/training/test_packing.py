"""Packing: several examples share a row, none attends to another, and the loss and gradients are those
of the padded batch."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from codetune.config import Config
from codetune.data.format import IGNORE_INDEX, Encoded
from codetune.data.prepare import prepare
from codetune.data.records import read_split
from codetune.errors import CodetuneError
from codetune.manifest import read_jsonl
from codetune.models.loading import load_for_inference
from codetune.training.batches import (
    StepSampler,
    collate,
    collate_packed,
    encode_examples,
    pack_rows,
)
from codetune.training.loop import packing_leak, token_loss_sum, train


def test_pack_rows_makes_the_smallest_batch_shape_and_never_one_larger_than_padding() -> None:
    assert pack_rows([5, 3, 4, 2, 6], 8) == [[0, 3], [1, 2], [4]]  # 3 rows x 7 (5+2, 3+4, 6) beats 3 x 8
    assert pack_rows([9, 1], 8) == [[0], [1]]  # too long for a row: a row of its own
    assert pack_rows([79] * 8, 512) == [[i] for i in range(8)]  # 8 x 79: packing 6 + 2 would be 2 x 474
    lengths = [20, 400, 100, 300, 50, 250, 30, 380]
    rows = pack_rows(lengths, 512)
    assert sorted(i for row in rows for i in row) == list(range(8))
    assert len(rows) * max(sum(lengths[i] for i in row) for row in rows) == 4 * 400  # padded: 8 x 400
    assert pack_rows([], 8) == []


def test_collate_packed_restarts_positions_and_never_predicts_across_a_seam() -> None:
    a = Encoded("a", [10, 11, 12], [IGNORE_INDEX, 11, 12])
    b = Encoded("b", [20, 21], [20, 21])  # a first label that is not masked: still never a target
    batch = collate_packed([a, b], pad_id=0, capacity=8)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 20, 21]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 11, 12, IGNORE_INDEX, 21]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1]]
    two_rows = collate_packed([a, b], pad_id=0, capacity=4)  # 3 + 2 > 4
    assert two_rows["input_ids"].tolist() == [[10, 11, 12], [20, 21, 0]]
    assert two_rows["position_ids"].tolist() == [[0, 1, 2], [0, 1, 0]]  # the padding: its own segment
    assert two_rows["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert two_rows["labels"].tolist() == [[IGNORE_INDEX, 11, 12], [IGNORE_INDEX, 21, IGNORE_INDEX]]


def _cuts(items: list[Encoded]) -> list[tuple[Encoded, int]]:
    return [(e, max(len(e.input_ids) * (i + 1) // len(items), 30)) for i, e in enumerate(items)]


def _grads(model: Any, batch: dict[str, torch.Tensor]) -> tuple[float, int, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss, n = token_loss_sum(model, batch, "causal")
    (loss / n).backward()
    return (
        float(loss.detach()),
        n,
        {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None},
    )


def test_packed_and_padded_batches_give_the_same_loss_and_gradients(trained_run: Config) -> None:
    model, tok, kind, _ = load_for_inference(str(Path(trained_run.train.output_dir) / "final"))
    model.train()
    examples = read_split(trained_run.train_data_dir, "train")[:8]
    items = encode_examples(examples, trained_run, tok, kind)
    # uneven lengths, as real pairs have: the first i/8 of example i (answer tokens included)
    items = [replace(e, input_ids=e.input_ids[:k], labels=e.labels[:k]) for e, k in _cuts(items)]
    padded = collate(items, tok.pad_token_id, "causal")
    packed = collate_packed(items, tok.pad_token_id, 128)
    assert packed["input_ids"].shape[0] < len(items)  # it really packed
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    loss_a, n_a, grads_a = _grads(model, padded)
    loss_b, n_b, grads_b = _grads(model, packed)
    assert n_a == n_b
    assert abs(loss_a - loss_b) / n_a <= 1e-5
    assert grads_a.keys() == grads_b.keys() and len(grads_a) == len(list(model.parameters()))
    worst = max(float((grads_a[k] - grads_b[k]).abs().max()) for k in grads_a)
    assert worst <= 1e-5, f"gradients differ by up to {worst}"
    assert packing_leak(model, items, tok.pad_token_id) is None


class _IgnoresPositions(torch.nn.Module):
    """A model whose forward takes position ids but ignores them: packed examples see each other."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: Any, attention_mask: Any = None, position_ids: Any = None, **kw: Any) -> Any:
        kw.pop("use_cache", None)
        return self.inner(input_ids=input_ids, **kw)


def test_a_model_that_lets_packed_examples_see_each_other_is_detected(trained_run: Config) -> None:
    model, tok, kind, _ = load_for_inference(str(Path(trained_run.train.output_dir) / "final"))
    items = encode_examples(read_split(trained_run.train_data_dir, "train")[:2], trained_run, tok, kind)
    why = packing_leak(_IgnoresPositions(model), items, tok.pad_token_id)
    assert why is not None and "loss changes by" in why


def test_training_packs_by_default_and_matches_padded_training(tiny_cfg: Config) -> None:
    prepare(tiny_cfg)
    base = replace(tiny_cfg.train, max_steps=4, eval_every=2, save_every=0, tensorboard=False)
    losses, batching = {}, {}
    for mode in ("auto", "off"):
        out = train(
            replace(tiny_cfg, train=replace(base, output_dir=f"{base.output_dir}-{mode}", packing=mode))
        )
        losses[mode] = [r.get("loss", r.get("valid_loss")) for r in read_jsonl(out / "metrics.jsonl")]
        batching[mode] = json.loads((out / "manifest.json").read_text())["runtime"]["batching"]
    assert batching["auto"].startswith("packed into rows of up to 512 tokens")
    assert batching["off"] == "padded (train.packing=off)"
    assert len(losses["auto"]) == len(losses["off"]) == 6  # 4 steps + 2 validations
    assert max(abs(a - b) for a, b in zip(losses["auto"], losses["off"], strict=True)) <= 1e-5


def test_packing_on_for_seq2seq_is_one_clear_error(tiny_cfg: Config) -> None:
    cfg = replace(
        tiny_cfg,
        model=replace(tiny_cfg.model, name="tiny-t5"),
        train=replace(tiny_cfg.train, packing="on", max_steps=1),
    )
    prepare(cfg)
    with pytest.raises(CodetuneError, match=r"train\.packing=on, but packing is not exact here: a seq2seq"):
        train(cfg)


def test_length_grouping_keeps_every_example_and_resumes_mid_window() -> None:
    lengths = [(i * 37) % 101 + 1 for i in range(50)]
    plain = list(StepSampler(50, 4, seed=3, start=0, micro_batches=40))
    grouped = list(StepSampler(50, 4, seed=3, start=0, micro_batches=40, group_lengths=lengths))
    for w in (0, StepSampler.GROUP_WINDOW):  # each whole window: the same examples, regrouped
        window = slice(w, w + StepSampler.GROUP_WINDOW)
        assert sorted(i for b in grouped[window] for i in b) == sorted(i for b in plain[window] for i in b)

    def spread(batches: list[list[int]]) -> float:
        return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)

    assert spread(grouped) < spread(plain) / 3
    later = list(StepSampler(50, 4, seed=3, start=4 * 21, micro_batches=19, group_lengths=lengths))
    assert later == grouped[21:]  # a resumed run (mid-window) sees the same micro-batches


def test_seq2seq_trains_on_length_grouped_batches(tiny_cfg: Config) -> None:
    cfg = replace(
        tiny_cfg,
        model=replace(tiny_cfg.model, name="tiny-t5"),
        train=replace(tiny_cfg.train, max_steps=2, eval_every=0, save_every=0, tensorboard=False),
    )
    prepare(cfg)
    out = train(cfg)
    batching = json.loads((out / "manifest.json").read_text())["runtime"]["batching"]
    assert (
        batching
        == "padded (packing does not apply: a seq2seq model); grouped by length in windows of 16 micro-batches"
    )


def test_chunked_cross_entropy_equals_the_whole_one_with_its_gradient() -> None:
    from codetune.training.loop import CE_CHUNK, cross_entropy_sum

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(CE_CHUNK * 2 + 17, 50, generator=g, requires_grad=True)
    target = torch.randint(0, 50, (logits.size(0),), generator=g)
    target[::7] = IGNORE_INDEX
    whole = torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")
    (expected,) = torch.autograd.grad(whole, logits)
    chunked = cross_entropy_sum(logits, target)
    (got,) = torch.autograd.grad(chunked, logits)
    assert abs(float(chunked.detach()) - float(whole.detach())) <= 1e-3
    assert torch.allclose(got, expected, atol=1e-6)
