"""Device and precision options resolve as documented; impossible requests are one clear error."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from codetune.config import Config, load_config
from codetune.data.prepare import prepare
from codetune.devices import attention_implementation, resolve_runtime
from codetune.errors import CodetuneError
from codetune.manifest import read_jsonl
from codetune.training.loop import train

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")


@no_gpu
def test_auto_resolves_to_cpu_fp32_without_a_gpu() -> None:
    rt = resolve_runtime("auto", "auto", "train")
    assert (rt.device, rt.precision, rt.dtype, rt.mixed_precision) == ("cpu", "fp32", torch.float32, "no")
    assert rt.to_dict()["requested_device"] == "auto"
    assert attention_implementation("auto", rt) == "sdpa"
    assert attention_implementation("eager", rt) == "eager"


def test_bf16_on_cpu_is_allowed() -> None:
    rt = resolve_runtime("cpu", "bf16", "train")
    assert (rt.precision, rt.dtype, rt.mixed_precision) == ("bf16", torch.bfloat16, "bf16")


def test_fp16_on_cpu_is_one_error_naming_the_key() -> None:
    with pytest.raises(CodetuneError, match=r"train\.precision=fp16 needs a GPU"):
        resolve_runtime("cpu", "fp16", "train")
    with pytest.raises(CodetuneError, match=r"generate\.precision=fp16"):
        resolve_runtime("cpu", "fp16", "generate")


@no_gpu
def test_cuda_without_a_gpu_is_one_error_naming_the_key() -> None:
    with pytest.raises(CodetuneError, match=r"train\.device=cuda, but PyTorch sees no CUDA GPU"):
        resolve_runtime("cuda", "auto", "train")


def test_unknown_values_are_refused_by_the_config() -> None:
    with pytest.raises(CodetuneError, match=r"train\.precision: 'fp8' is not one of"):
        load_config(None, {"train": {"precision": "fp8"}})
    with pytest.raises(CodetuneError, match=r"generate\.device: 'tpu' is not one of"):
        load_config(None, {"generate": {"device": "tpu"}})


@no_gpu
def test_train_with_cuda_on_a_cpu_machine_stops_before_doing_anything(tiny_cfg: Config) -> None:
    cfg = replace(tiny_cfg, train=replace(tiny_cfg.train, device="cuda"))
    with pytest.raises(CodetuneError, match=r"train\.device=cuda"):
        train(cfg)
    assert not Path(cfg.train.output_dir).exists()


def _losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]


def test_bf16_autocast_on_cpu_trains_and_gradient_checkpointing_changes_nothing(tiny_cfg: Config) -> None:
    prepare(tiny_cfg)
    base = replace(tiny_cfg.train, max_steps=3, eval_every=0, save_every=0, tensorboard=False)
    runs = {
        "fp32": replace(base, output_dir=str(Path(base.output_dir) / "fp32")),
        "bf16": replace(base, output_dir=str(Path(base.output_dir) / "bf16"), precision="bf16"),
        "ckpt": replace(base, output_dir=str(Path(base.output_dir) / "ckpt"), gradient_checkpointing=True),
    }
    losses = {}
    for name, t in runs.items():
        out = train(replace(tiny_cfg, train=t))
        losses[name] = _losses(out)
        runtime = json.loads((out / "manifest.json").read_text())["runtime"]
        assert runtime["device"] == "cpu"
        assert runtime["precision"] == ("bf16" if name == "bf16" else "fp32")
        assert runtime["gradient_checkpointing"] is (name == "ckpt")
    assert all(len(v) == 3 for v in losses.values())
    # bf16 autocast really ran: close to fp32, but not the same arithmetic
    assert losses["bf16"] != losses["fp32"]
    assert max(abs(a - b) for a, b in zip(losses["bf16"], losses["fp32"], strict=True)) < 0.05
    # recomputing activations gives the same gradients
    assert max(abs(a - b) for a, b in zip(losses["ckpt"], losses["fp32"], strict=True)) <= 1e-5
