"""The transformers backend on a chosen device and precision (the CPU here; the GPU where there is one)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from codetune.config import Config
from codetune.errors import CodetuneError
from codetune.models.backends.base import SamplingSettings
from codetune.models.backends.hf import HFBackend

PROMPT = "### Instruction:\nReturn the sum of a and b.\n### Response:\n"


@pytest.fixture(scope="module")
def model(trained_run: Config) -> str:
    return str(Path(trained_run.train.output_dir) / "final")


def test_bf16_on_the_cpu_generates_with_bf16_weights(model: str) -> None:
    backend = HFBackend.from_path(model, device="cpu", precision="bf16")
    assert backend.runtime is not None and backend.runtime.to_dict()["precision"] == "bf16"
    assert {p.dtype for p in backend.model.parameters()} == {torch.bfloat16}
    assert backend.device == torch.device("cpu")
    [[greedy]] = backend.generate([PROMPT], SamplingSettings(max_new_tokens=12))
    assert greedy.completion_tokens > 0 and greedy.prompt_tokens > 0
    assert backend.generate([PROMPT], SamplingSettings(max_new_tokens=12))[0][0] == greedy
    sampled = backend.generate([PROMPT, PROMPT], SamplingSettings(max_new_tokens=12, temperature=1.0, n=2))
    assert [len(row) for row in sampled] == [2, 2]


def test_auto_on_a_machine_without_a_gpu_is_the_cpu_in_fp32(model: str) -> None:
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has a GPU")
    backend = HFBackend.from_path(model)
    assert backend.runtime is not None
    assert (backend.runtime.device, backend.runtime.precision) == ("cpu", "fp32")
    assert next(backend.model.parameters()).dtype == torch.float32


def test_an_in_memory_model_stays_on_its_own_device(model: str) -> None:
    loaded = HFBackend.from_path(model, device="cpu")
    backend = HFBackend(loaded.model, loaded.tokenizer, loaded.kind)
    assert backend.runtime is None and backend.device == torch.device("cpu")
    settings = SamplingSettings(max_new_tokens=8)
    assert backend.generate([PROMPT], settings) == loaded.generate([PROMPT], settings)


def test_cuda_without_a_gpu_is_an_error_naming_generate_device(model: str) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(CodetuneError, match=r"generate\.device=cuda"):
        HFBackend.from_path(model, device="cuda")


def test_fp16_on_the_cpu_is_an_error_naming_generate_precision(model: str) -> None:
    with pytest.raises(CodetuneError, match=r"generate\.precision=fp16"):
        HFBackend.from_path(model, device="cpu", precision="fp16")
