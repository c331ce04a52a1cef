"""Checkpoints that resume exactly: trainable weights, optimizer, scheduler, RNG and step.

A checkpoint folder is also a loadable model (with `codetune.json` naming its base), so
`codetune generate --model runs/x/checkpoints/step-000100` works.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codetune.models.loading import TRAINABLE_FILE, load_trainable, write_meta

STATE_FILE = "state.json"


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.named_parameters() if v.requires_grad}


def save_checkpoint(
    folder: Path,
    model: Any,
    tokenizer: Any,
    optimizer: Any,
    scheduler: Any,
    state: dict[str, Any],
    meta: dict[str, Any],
) -> Path:
    """Write a checkpoint atomically: into `folder.tmp`, then rename."""
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), str(tmp / TRAINABLE_FILE))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    torch.save(rng, tmp / "rng.pt")
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(str(tmp))
    write_meta(tmp, **meta)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root/checkpoints`, oldest first."""
    base = root / "checkpoints"
    if not base.is_dir():
        return []
    done = [
        p
        for p in base.glob("step-*")
        if p.is_dir() and not p.name.endswith(".tmp") and (p / STATE_FILE).is_file()
    ]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def rotate_checkpoints(root: Path, keep: int) -> None:
    if keep <= 0:
        return
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old)


def load_checkpoint(folder: Path, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG from `folder`; return its training state."""
    load_trainable(model, folder)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))
    rng = torch.load(folder / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    return dict(json.loads((folder / STATE_FILE).read_text(encoding="utf-8")))
