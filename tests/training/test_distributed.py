"""Two CPU processes (torchrun, gloo, Accelerate's MULTI_CPU) train like one process with the same global
batch: the same loss at every step, checkpoints that resume on either process count, and only rank 0
writing files."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from codetune.config import Config, save_config
from codetune.data.prepare import prepare
from codetune.manifest import read_jsonl
from codetune.training.loop import train
from tests.conftest import make_pairs, tiny_config, write_jsonl

# Runs `codetune train` under torchrun. Every process but rank 0 records each write it makes under the
# run's folder (open for writing, mkdir, rename, remove), through Python's audit hooks; rank 0 records
# them too, so that the test knows the hook sees the writes training makes.
RUNNER = """
import os, sys
root, log = os.environ["AUDIT_ROOT"], os.environ["AUDIT_LOG"] + "." + os.environ["RANK"]
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
def written(event, args):
    if event == "open":
        path, mode, flags = args
        if not ((mode and any(c in mode for c in "wax+")) or (mode is None and flags & WRITE_FLAGS)):
            return None
        return path
    if event in ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree", "os.rename", "os.replace"):
        return args[1] if event in ("os.rename", "os.replace") else args[0]
    return None
def hook(event, args):
    path = written(event, args)
    if isinstance(path, (str, bytes, os.PathLike)) and os.fsdecode(path).startswith(root):
        with open(log, "a") as f:  # the log itself lives outside root
            f.write(event + " " + os.fsdecode(path) + "\\n")
sys.addaudithook(hook)
import torch
torch.set_num_threads(1)
from codetune.cli import main
sys.argv = ["codetune", "train", sys.argv[1]]
main()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(cfg: Config, tmp: Path, name: str, nproc: int = 2) -> Path:
    """Run `codetune train` on `nproc` CPU processes; returns the audit log prefix."""
    config = tmp / f"{name}.yaml"
    save_config(cfg, config)
    runner = tmp / "runner.py"
    runner.write_text(RUNNER, encoding="utf-8")
    log = tmp / f"audit-{name}"
    env = {
        **os.environ,
        "AUDIT_ROOT": str(Path(cfg.train.output_dir).resolve()),
        "AUDIT_LOG": str(log),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    cmd += ["--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(runner), str(config)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return log


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r}


def _from_checkpoint(src: Path, dst: Path, step: int) -> None:
    """A copy of run `src` as it was when checkpoint `step` had just been written."""
    shutil.copytree(src, dst)
    for later in (dst / "checkpoints").glob("step-*"):
        if int(later.name.split("-")[1]) > step:
            shutil.rmtree(later)
    for folder in ("final", "best"):
        shutil.rmtree(dst / folder, ignore_errors=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Config]:
    tmp = tmp_path_factory.mktemp("ddp")
    source = write_jsonl(tmp / "pairs.jsonl", make_pairs())
    base = tiny_config(
        tmp, source, train={"max_steps": 6, "save_every": 3, "eval_every": 3, "tensorboard": False}
    )
    prepare(base)
    return tmp, base


def _cfg(base: Config, out: Path, batch_size: int, resume: bool = False) -> Config:
    return replace(base, train=replace(base.train, output_dir=str(out), batch_size=batch_size, resume=resume))


def test_two_processes_match_one_and_checkpoints_resume_on_either(runs: tuple[Path, Config]) -> None:
    tmp, base = runs
    one, two = tmp / "one", tmp / "two"
    train(_cfg(base, one, batch_size=4))  # 1 process x 4 examples
    audit = _torchrun(_cfg(base, two, batch_size=2), tmp, "two")  # 2 processes x 2 examples
    l1, l2 = _losses(one), _losses(two)
    assert sorted(l1) == sorted(l2) == list(range(1, 7))
    worst = max(abs(l1[s] - l2[s]) for s in l1)
    assert worst <= 1e-5, f"per-step losses differ by up to {worst}: {l1} vs {l2}"
    assert l1[6] < l1[1]
    v1 = [r["valid_loss"] for r in read_jsonl(one / "metrics.jsonl") if "valid_loss" in r]
    v2 = [r["valid_loss"] for r in read_jsonl(two / "metrics.jsonl") if "valid_loss" in r]
    assert len(v1) == len(v2) == 2 and max(abs(a - b) for a, b in zip(v1, v2, strict=True)) <= 1e-5
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["runtime"]["processes"] == 2 and "MULTI_CPU" in manifest["runtime"]["distributed_type"]
    assert manifest["runtime"]["device"] == "cpu" and manifest["runtime"]["precision"] == "fp32"

    # only rank 0 wrote files (and the hook did see rank 0's writes)
    rank0 = Path(f"{audit}.0").read_text().splitlines()
    assert any("metrics.jsonl" in line for line in rank0) and any("checkpoints" in line for line in rank0)
    assert not Path(f"{audit}.1").exists(), Path(f"{audit}.1").read_text()[:2000]

    # a checkpoint written by 2 processes resumes on 1, and one written by 1 resumes on 2
    two_to_one, one_to_two = tmp / "two-to-one", tmp / "one-to-two"
    _from_checkpoint(two, two_to_one, 3)
    _from_checkpoint(one, one_to_two, 3)
    train(_cfg(base, two_to_one, batch_size=4, resume=True))
    _torchrun(_cfg(base, one_to_two, batch_size=2, resume=True), tmp, "one-to-two")
    for resumed in (two_to_one, one_to_two):
        lr = _losses(resumed)
        assert sorted(lr) == list(range(1, 7))
        worst = max(abs(lr[s] - l1[s]) for s in (4, 5, 6))
        assert worst <= 1e-5, f"{resumed.name}: steps 4-6 differ from the uninterrupted run by {worst}"
