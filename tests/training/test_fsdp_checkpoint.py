"""A checkpoint's weights and optimizer state gathered from FSDP2-sharded processes (2 CPU ranks, gloo)
load into one unsharded process and continue exactly as an unsharded run. (Accelerate runs FSDP on GPUs
only, so this exercises codetune's checkpoint functions under torch's own `fully_shard`.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from codetune.training.checkpoint import load_optimizer_state, optimizer_state
from tests.training.test_distributed import _free_port

RUNNER = """
import sys, torch, torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from safetensors.torch import save_file
from codetune.training.checkpoint import optimizer_state, trainable_state
sys.path.insert(0, sys.argv[2])
from tests.training.test_fsdp_checkpoint import batch, model_and_optimizer, step
torch.set_num_threads(1)
dist.init_process_group("gloo")
rank = dist.get_rank()
model, optimizer = model_and_optimizer(fully_shard)
x, y = batch()
for _ in range(2):
    step(model, optimizer, x[rank::2], y[rank::2])  # each rank half the batch; FSDP averages gradients
full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
weights, optim = trainable_state(model, full), optimizer_state(model, optimizer)
if rank == 0:
    save_file(weights, sys.argv[1] + "/weights.safetensors")
    torch.save(optim, sys.argv[1] + "/optimizer.pt")
dist.destroy_process_group()
"""


def model_and_optimizer(shard=None):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    model[0].bias.requires_grad_(False)  # a frozen parameter, as under LoRA
    if shard is not None:
        shard(model[0])
        shard(model[2])
        shard(model)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(params, lr=1e-2)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)


def step(model, optimizer, x, y) -> None:  # type: ignore[no-untyped-def]
    torch.nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()
    optimizer.zero_grad()


def test_fsdp_sharded_checkpoint_resumes_unsharded(tmp_path: Path) -> None:
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER, encoding="utf-8")
    root = str(Path(__file__).resolve().parents[2])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1"]
    cmd += [f"--master_port={_free_port()}", str(runner), str(tmp_path), root]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": root}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]

    reference, ref_opt = model_and_optimizer()
    x, y = batch()
    for _ in range(2):
        step(reference, ref_opt, x, y)
    resumed, opt = model_and_optimizer()
    saved = load_file(str(tmp_path / "weights.safetensors"))
    assert sorted(saved) == ["0.weight", "2.bias", "2.weight"]  # trainable ones only, gathered in full
    with torch.no_grad():
        for name, p in resumed.named_parameters():
            if name in saved:
                p.copy_(saved[name])
    load_optimizer_state(tmp_path, resumed, opt)
    for model, optimizer in ((reference, ref_opt), (resumed, opt)):
        step(model, optimizer, x, y)
    ref_state = optimizer_state(reference, ref_opt)["state"]
    got_state = optimizer_state(resumed, opt)["state"]
    assert sorted(got_state) == sorted(ref_state) == ["0.weight", "2.bias", "2.weight"]
    for name, p in reference.named_parameters():
        q = dict(resumed.named_parameters())[name]
        assert torch.allclose(p, q, atol=1e-6), name
        if name in ref_state:
            assert torch.allclose(ref_state[name]["exp_avg_sq"], got_state[name]["exp_avg_sq"], atol=1e-9)
