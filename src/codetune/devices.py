"""Which device and precision a stage runs in: resolved once from `auto | cpu | cuda | mps` and
`auto | fp32 | bf16 | fp16`, printed, and recorded in the manifest.

An impossible request (fp16 on a CPU, cuda without a GPU) is a CodetuneError naming the config key.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from codetune.errors import CodetuneError

Device = Literal["cpu", "cuda", "mps"]
Precision = Literal["fp32", "bf16", "fp16"]
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """A resolved device and precision, with what was asked for and why (for the log and manifest)."""

    device: Device
    precision: Precision
    requested_device: str
    requested_precision: str
    device_name: str  # "cpu", or the GPU's name

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    @property
    def mixed_precision(self) -> str:
        """Accelerate's name for the precision: no | bf16 | fp16."""
        return "no" if self.precision == "fp32" else self.precision

    def describe(self) -> str:
        chosen = f"{self.device} ({self.device_name}), {self.precision}"
        return f"{chosen}; asked {self.requested_device}/{self.requested_precision}"  # no [..]: rich markup

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "torch": torch.__version__, "cuda": torch.version.cuda}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(requested: str, key: str) -> Device:
    """`auto` picks cuda, else mps, else cpu; an explicit device must be present."""
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if _mps_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise CodetuneError(
            f"{key}=cuda, but PyTorch sees no CUDA GPU (torch {torch.__version__}, CUDA build: "
            f"{torch.version.cuda or 'no'}); set {key}=auto or cpu, or install a CUDA build of PyTorch "
            "(README: From a laptop to a cluster)"
        )
    if requested == "mps" and not _mps_available():
        raise CodetuneError(f"{key}=mps, but this machine has no Apple MPS device; set {key}=auto or cpu")
    if requested not in ("cpu", "cuda", "mps"):
        raise CodetuneError(f"{key}={requested!r} is not one of auto, cpu, cuda, mps")
    return requested  # type: ignore[return-value]


def resolve_precision(requested: str, device: Device, key: str) -> Precision:
    """`auto`: bf16 on GPUs that support it, fp16 (with loss scaling) on older ones, fp32 on CPU/MPS.

    bf16 runs on a CPU (autocast) but is slow on most; fp16 on a CPU is refused."""
    if requested == "auto":
        if device == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if requested not in DTYPES:
        raise CodetuneError(f"{key}={requested!r} is not one of auto, fp32, bf16, fp16")
    if requested == "fp16" and device == "cpu":
        raise CodetuneError(
            f"{key}=fp16 needs a GPU (fp16 autocast and loss scaling are not available on CPU); "
            f"use {key}=bf16 or fp32 on a CPU"
        )
    if requested == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise CodetuneError(
            f"{key}=bf16: this GPU ({torch.cuda.get_device_name()}) has no bf16 support; use {key}=fp16"
        )
    return requested  # type: ignore[return-value]


def resolve_runtime(device: str, precision: str, section: str) -> Runtime:
    """Resolve `{section}.device` and `{section}.precision` together (e.g. section="train")."""
    dev = resolve_device(device, f"{section}.device")
    prec = resolve_precision(precision, dev, f"{section}.precision")
    name = torch.cuda.get_device_name() if dev == "cuda" else dev
    return Runtime(dev, prec, device, precision, name)


def attention_implementation(requested: str, runtime: Runtime) -> str:
    """`auto`: flash attention 2 on a CUDA GPU in a 16-bit type where the flash-attn package is
    installed, else PyTorch's scaled-dot-product attention (transformers falls back to eager for a
    model without an SDPA path, see `models.loading.load_pretrained`)."""
    if requested != "auto":
        return requested
    if runtime.device == "cuda" and runtime.precision != "fp32":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
    return "sdpa"


def world() -> tuple[int, int]:
    """(rank, world size) of a run started by `accelerate launch` or `torchrun`; (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
