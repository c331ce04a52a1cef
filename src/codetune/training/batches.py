"""Training data as batches: read a split, encode it, and a deterministic stream of micro-batches.

The stream is a function of (seed, position): example position p of the run is item `perm_e[p % N]`
with e = p // N and perm_e a permutation seeded by (seed, e). A micro-batch is the next `global_batch`
positions, so the data a step sees depends neither on how many processes share it nor on whether the
run was interrupted before it: that is what lets a checkpoint resume exactly, on any number of processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from codetune.config import Config
from codetune.data.fim import FimEncoder
from codetune.data.format import (
    IGNORE_INDEX,
    Encoded,
    build_answer,
    build_example_prompt,
    chat_renderer,
    encode_causal,
    encode_seq2seq,
)
from codetune.data.records import Example
from codetune.models.loading import Kind


def encode_examples(examples: Sequence[Example], cfg: Config, tokenizer: Any, kind: Kind) -> list[Encoded]:
    render = chat_renderer(tokenizer)
    encode = encode_seq2seq if kind == "seq2seq" else encode_causal
    fim = FimEncoder(tokenizer)  # FIM samples (meta.fim): the model's infilling prompt, loss on the middle
    return [
        fim.encode(ex.id, ex.meta["fim"], kind)
        if "fim" in ex.meta
        else encode(
            ex.id,
            build_example_prompt(ex.nl, ex.meta, kind, cfg.prompt, render),
            build_answer(ex.code, cfg.prompt),
            tokenizer,
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


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of examples grouped into rows of at most `capacity` tokens (an example longer than that
    gets a row of its own), so that rows x the fullest row (the batch's shape) is smallest: never more
    than padding every example to the longest, which is the one-example-per-row case. Rows come in the
    order of their first example; within a row, examples keep their order."""
    if not lengths:
        return []
    longest, total = max(lengths), sum(lengths)
    widths = sorted(
        {min(max(longest, -(-total // r)), max(capacity, longest)) for r in range(1, len(lengths) + 1)}
    )
    best: list[list[int]] = []
    best_cost = None
    for width in widths:
        rows = _first_fit_decreasing(lengths, width)
        cost = (len(rows) * max(sum(lengths[i] for i in row) for row in rows), width)
        if best_cost is None or cost < best_cost:
            best, best_cost = rows, cost
    return sorted(sorted(r) for r in best)


def _first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        row = next((r for r, left in enumerate(room) if left >= lengths[i]), None)
        if row is None:
            rows.append([i])
            room.append(capacity - lengths[i])
        else:
            rows[row].append(i)
            room[row] -= lengths[i]
    return rows


def collate_packed(items: Sequence[Encoded], pad_id: int, capacity: int) -> dict[str, torch.Tensor]:
    """Causal examples packed into rows of up to `capacity` tokens. Position ids restart at every
    example, which is how transformers builds a block-diagonal causal mask (no example attends to
    another) when no attention mask is given; `attention_mask` marks the real tokens, for counting only.
    An example's first label is never a target (as unpacked), so nothing is predicted across a seam."""
    rows = pack_rows([len(e.input_ids) for e in items], capacity)
    width = max(sum(len(items[i].input_ids) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            e, n = items[i], len(items[i].input_ids)
            ids[r, at : at + n] = torch.tensor(e.input_ids)
            labels[r, at + 1 : at + n] = torch.tensor(e.labels[1:n])
            positions[r, at : at + n] = torch.arange(n)
            mask[r, at : at + n] = 1
            at += n
        positions[r, at:] = torch.arange(width - at)  # the padding: a segment of its own, no labels
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "position_ids": positions}


class StepSampler:
    """Index lists of `global_batch` examples, one per micro-batch, from example position `start` on.

    Every list is full (a micro-batch may span the end of one epoch and the start of the next), so
    Accelerate's `split_batches` gives each of the processes an equal slice of it."""

    GROUP_WINDOW = 16  # micro-batches whose examples are grouped by length together

    def __init__(
        self,
        n_items: int,
        global_batch: int,
        seed: int,
        start: int,
        micro_batches: int,
        group_lengths: Sequence[int] | None = None,
    ) -> None:
        """`group_lengths`: the items' lengths, to group by length (padded batches that packing can't
        replace): the examples of every window of GROUP_WINDOW micro-batches are sorted by length and cut
        into micro-batches, taken in a seeded order, so a micro-batch holds examples of similar length
        while the stream stays a function of (seed, position)."""
        if n_items < 1:
            raise ValueError("StepSampler needs at least one item")
        self.n_items, self.batch_size, self.seed = n_items, global_batch, seed
        self.start, self.micro_batches = start, micro_batches
        self.lengths = group_lengths
        self.drop_last = False  # read by Accelerate's BatchSamplerShard
        self._perm: tuple[int, list[int]] = (-1, [])
        self._window: tuple[int, list[list[int]]] = (-1, [])

    def _item(self, position: int) -> int:
        epoch, i = divmod(position, self.n_items)
        if self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm = (epoch, torch.randperm(self.n_items, generator=g).tolist())
        return self._perm[1][i]

    def __len__(self) -> int:
        return self.micro_batches

    def __iter__(self) -> Iterator[list[int]]:
        for m in range(self.micro_batches):
            first = self.start + m * self.batch_size
            if self.lengths is None:
                yield [self._item(p) for p in range(first, first + self.batch_size)]
            else:
                yield self._grouped(first)

    def _grouped(self, first: int) -> list[int]:
        """The micro-batch at example position `first`, from its window's examples grouped by length."""
        span = self.GROUP_WINDOW * self.batch_size
        window, offset = divmod(first, span)
        if self._window[0] != window:
            items = [self._item(p) for p in range(window * span, (window + 1) * span)]
            assert self.lengths is not None
            ordered = sorted(items, key=lambda i: self.lengths[i])  # type: ignore[index]
            batches = [ordered[b : b + self.batch_size] for b in range(0, span, self.batch_size)]
            g = torch.Generator().manual_seed(self.seed * 100_003 + 7919 * window + 1)
            self._window = (window, [batches[k] for k in torch.randperm(len(batches), generator=g).tolist()])
        return self._window[1][offset // self.batch_size]


def collator(
    pad_id: int, kind: Kind, pack_capacity: int | None = None
) -> Callable[[Sequence[Encoded]], dict[str, torch.Tensor]]:
    """Padded micro-batches, or packed rows of `pack_capacity` tokens (causal models)."""
    if pack_capacity is not None:
        return lambda items: collate_packed(items, pad_id, pack_capacity)
    return lambda items: collate(items, pad_id, kind)


def label_tokens(batch: dict[str, Any], kind: Kind) -> int:
    """The loss's targets in a batch: causal labels from the second position on (the first token of a
    sequence is never predicted), every seq2seq label."""
    labels = batch["labels"][:, 1:] if kind == "causal" else batch["labels"]
    return int((labels != IGNORE_INDEX).sum())
