"""A training process killed with SIGKILL mid-epoch, then resumed, ends with the same adapter weights as
an uninterrupted run (tiny model, LoRA with dropout so that the RNG state matters)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from codetune.config import save_config
from codetune.data.prepare import prepare
from codetune.manifest import read_jsonl
from codetune.training.checkpoint import list_checkpoints
from tests.conftest import tiny_config

# Runs train() in a fresh interpreter and SIGKILLs itself right after the optimizer step KILL_AT:
# no exception handler, atexit hook or finally block runs, as when the OOM killer or a scheduler strikes.
RUNNER = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from codetune.config import load_config
from codetune.training.loop import train
cfg = load_config(sys.argv[1])
kill_at = int(sys.argv[2])
def on_step(step, loss):
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
train(cfg, on_step=on_step)
"""


def _run(config: Path, kill_at: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run(
        [sys.executable, "-c", RUNNER, str(config), str(kill_at)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def test_sigkill_mid_epoch_then_resume_gives_the_same_adapter(tmp_path: Path, pairs_file: Path) -> None:
    common = {
        "max_steps": 8,
        "batch_size": 2,
        "save_every": 2,
        "eval_every": 0,
        "keep_checkpoints": 2,
        "lr": 5e-3,
        "warmup_ratio": 0.25,
        "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.1},
        "tensorboard": False,
    }
    full = tiny_config(
        tmp_path / "a", pairs_file, train={**common, "output_dir": str(tmp_path / "a" / "train")}
    )
    prepare(full)
    killed = tiny_config(
        tmp_path / "b", pairs_file, train={**common, "output_dir": str(tmp_path / "b" / "train")}
    )
    killed.data.output_dir = full.data.output_dir
    train_rows = len(read_jsonl(Path(full.data.output_dir) / "train.jsonl"))
    assert train_rows // common["batch_size"] > 8, "the kill must land mid-epoch"

    full_yaml, killed_yaml = tmp_path / "full.yaml", tmp_path / "killed.yaml"
    save_config(full, full_yaml)
    save_config(killed, killed_yaml)
    done = _run(full_yaml, kill_at=-1)
    assert done.returncode == 0, done.stderr[-2000:]

    died = _run(killed_yaml, kill_at=5)
    assert died.returncode == -signal.SIGKILL
    out = Path(killed.train.output_dir)
    assert [p.name for p in list_checkpoints(out)] == ["step-000002", "step-000004"]
    assert not (out / "final").exists()

    killed.train.resume = True
    save_config(killed, killed_yaml)
    resumed = _run(killed_yaml, kill_at=-1)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr + resumed.stdout

    steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, 9))  # step 5 (logged before the kill) was truncated and redone once
    a = load_file(str(Path(full.train.output_dir) / "final" / "adapter_model.safetensors"))
    b = load_file(str(out / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, f"adapter weights differ by up to {worst}"
    assert all(torch.equal(a[k], b[k]) for k in a), "expected bit-identical weights on one machine"
