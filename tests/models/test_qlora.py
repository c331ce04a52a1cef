"""QLoRA (`train.lora.quantize: 4bit`): on a CPU, one clear error naming the key before any model loads.
The GPU path itself runs in benchmarks/gpu_check.py (section qlora)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from codetune.config import LoraSettings, load_config
from codetune.errors import CodetuneError
from codetune.models import loading
from tests.conftest import tiny_config


@pytest.fixture
def no_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was loaded before the QLoRA settings were checked")

    monkeypatch.setattr(loading, "load_pretrained", refuse)
    monkeypatch.setattr(loading, "build_tiny_model", refuse)


def test_qlora_on_cpu_stops_train_before_any_model_loads(
    tmp_path: Path, pairs_file: Path, no_model_loads: None
) -> None:
    from codetune.data.prepare import prepare
    from codetune.training.loop import train

    folder = tmp_path / "pretrained"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    cfg = tiny_config(
        tmp_path,
        pairs_file,
        model={"name": str(folder)},
        train={"lora": {"enabled": True, "quantize": "4bit"}, "device": "cpu"},
    )
    prepare(cfg)
    with pytest.raises(CodetuneError, match=r"train\.lora\.quantize=4bit needs a CUDA GPU .* on cpu"):
        train(cfg)


@pytest.mark.parametrize(
    ("lora", "name", "device", "message"),
    [
        (LoraSettings(enabled=True, quantize="4bit"), "tiny", "cuda:0", "needs a pretrained model"),
        (LoraSettings(enabled=True, quantize="4bit"), "some/model", "cpu", "needs a CUDA GPU"),
    ],
)
def test_qlora_settings_are_checked(
    lora: LoraSettings, name: str, device: str, message: str, no_model_loads: None
) -> None:
    cfg = load_config(None, [f"--model.name={name}"])
    with pytest.raises(CodetuneError, match=message):
        loading.load_for_training(cfg.model, ["x"], lora=lora, device=device)


def test_qlora_loads_nf4_with_double_quantization_on_the_process_device() -> None:
    options = loading.qlora_load_options(torch.bfloat16, "cuda:1")
    q = options["quantization_config"]
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    assert options["device_map"] == {"": "cuda:1"}


def test_quantize_key_takes_none_or_4bit_only() -> None:
    assert (
        load_config(None, ["--train.lora.quantize=4bit", "--train.lora.enabled=true"]).train.lora.quantize
        == "4bit"
    )
    with pytest.raises(CodetuneError, match=r"train\.lora\.quantize"):
        load_config(None, ["--train.lora.quantize=8bit"])
