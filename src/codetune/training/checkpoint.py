"""Checkpoints that resume exactly: trainable weights, optimizer, scheduler, RNG and step.

Weights and optimizer state are stored by parameter name, gathered from every process, so a checkpoint
written by N processes resumes on M. A checkpoint folder is also a loadable model (with `codetune.json`
naming its base), so `codetune generate --model runs/x/checkpoints/step-000100` works.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codetune.manifest import atomic_folder
from codetune.models.loading import TRAINABLE_FILE, load_trainable, write_meta

STATE_FILE = "state.json"


@dataclass
class RngState:
    """The random number generators' state at a checkpoint (the main process's), restored on resume."""

    saved: dict[str, Any]

    def restore(self) -> None:
        torch.set_rng_state(self.saved["torch"])
        random.setstate(self.saved["python"])
        np.random.set_state(self.saved["numpy"])
        if self.saved.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(self.saved["cuda"])


def trainable_state(model: Any, full_state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The trainable parameters by name. `full_state`: a gathered state dict (FSDP) to take them from."""
    names = [k for k, v in model.named_parameters() if v.requires_grad]
    if full_state is not None:
        return {k: full_state[k].detach().cpu().clone().contiguous() for k in names if k in full_state}
    params = dict(model.named_parameters())
    return {k: params[k].detach().cpu().clone().contiguous() for k in names}


def optimizer_state(model: Any, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's whole state keyed by parameter name, gathered onto the CPU (under FSDP every
    process must call this). Keyed by name, it loads on any number of processes."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return dict(get_optimizer_state_dict(model, optimizer, options=options))


def save_checkpoint(
    folder: Path,
    weights: dict[str, torch.Tensor],
    optim: dict[str, Any] | None,
    tokenizer: Any,
    scheduler: Any,
    state: dict[str, Any],
    meta: dict[str, Any],
) -> Path:
    """Write a checkpoint atomically (`atomic_folder`)."""
    from safetensors.torch import save_file

    with atomic_folder(folder) as tmp:
        save_file(weights, str(tmp / TRAINABLE_FILE))
        if optim is not None:
            torch.save(optim, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        rng = {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        }
        torch.save(rng, tmp / "rng.pt")
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        tokenizer.save_pretrained(str(tmp))
        write_meta(tmp, **meta)
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


def load_checkpoint(folder: Path, model: Any, scheduler: Any) -> tuple[dict[str, Any], RngState]:
    """Restore weights and scheduler from `folder` (before Accelerate wraps the model); return the
    training state and the RNG state to restore when the loop starts."""
    load_trainable(model, folder)
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))
    rng = RngState(torch.load(folder / "rng.pt", weights_only=False))
    return dict(json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))), rng


def load_optimizer_state(folder: Path, model: Any, optimizer: torch.optim.Optimizer) -> bool:
    """Restore the optimizer (after Accelerate prepared the model: under FSDP the state is sharded to
    match). Checkpoints from before name-keyed states load as they were saved. False when the checkpoint
    has no optimizer state (written under DeepSpeed)."""
    if not (folder / "optimizer.pt").is_file():
        return False
    saved = torch.load(folder / "optimizer.pt", weights_only=False)
    if all(isinstance(p, int) for g in saved["param_groups"] for p in g["params"]):  # index-keyed
        optimizer.load_state_dict(saved)
        return True
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, saved, options=StateDictOptions(full_state_dict=True))
    return True
