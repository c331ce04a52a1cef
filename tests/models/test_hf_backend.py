"""The transformers backend on a chosen device and precision (the CPU here; the GPU where there is one)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from codetune.config import Config
from codetune.errors import CodetuneError
from codetune.models.backends.base import Cancelled, SamplingSettings, generate_hooks
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


PROMPTS = [
    "### Instruction:\nReturn the sum of a and b.\n### Response:\n",
    "### Instruction:\nReturn x minus y.\n### Response:\n",
    "### Instruction:\nReturn the product of m and n.\n### Response:\n",
    "### Instruction:\nReturn p raised to the power q.\n### Response:\n",
    "### Instruction:\nReturn the remainder of u divided by v.\n### Response:\n",
]


class _Recorder:
    """Wraps a model's forward to record the batch size and length of every call."""

    def __init__(self, backend: HFBackend) -> None:
        self.calls: list[tuple[int, int]] = []
        inner = backend.model.forward

        def forward(*args, **kwargs):  # type: ignore[no-untyped-def]
            ids = kwargs["input_ids"]
            self.calls.append((int(ids.shape[0]), int(ids.shape[1])))
            return inner(*args, **kwargs)

        backend.model.forward = forward


def test_greedy_batched_equals_one_at_a_time_and_finished_rows_leave(model: str) -> None:
    backend = HFBackend.from_path(model, batch_size=8)
    s = SamplingSettings(max_new_tokens=24)
    single = [backend.generate([p], s)[0][0] for p in PROMPTS]
    recorder = _Recorder(backend)
    batched = [row[0] for row in backend.generate(PROMPTS, s)]
    assert batched == single
    # one prompt pass for all 5, then one token for each of the 5 rows per step
    assert recorder.calls[0][0] == 5 and recorder.calls[0][1] > 1
    assert recorder.calls[1:] == [(5, 1)] * 23


def test_a_call_whose_clients_left_stops_at_the_next_step(model: str) -> None:
    backend = HFBackend.from_path(model, batch_size=8)
    recorder = _Recorder(backend)
    made: list[int] = []
    cancelled = lambda: len(recorder.calls) >= 3  # noqa: E731
    with generate_hooks(cancelled=cancelled, on_step=made.append), pytest.raises(Cancelled):
        backend.generate(PROMPTS, SamplingSettings(max_new_tokens=24, temperature=0.8, n=2))
    assert len(recorder.calls) == 3  # the prompt pass and two steps, of 24
    assert made == [8, 8]  # a token for each live row (4 prompts a wave x 2 samples) per step taken
    assert backend.generate(PROMPTS[:1], SamplingSettings(max_new_tokens=4))  # outside it: as before


def test_stops_end_each_row_where_its_text_first_has_one(model: str) -> None:
    backend = HFBackend.from_path(model, batch_size=8)
    free = [row[0].text for row in backend.generate(PROMPTS, SamplingSettings(max_new_tokens=24))]
    # a stop that occurs in some answers but not all, and one that occurs in none
    pieces = [t[i : i + 3] for t in free for i in range(len(t) - 2)]
    stop = next(p for p in pieces if 0 < sum(p in t for t in free) < len(free))
    s = SamplingSettings(max_new_tokens=24, stop=(stop, "\x00never"))
    recorder = _Recorder(backend)
    stopped = [row[0] for row in backend.generate(PROMPTS, s)]
    # a row leaves the batch at its stop: the batch shrinks step by step, to the rows still going
    sizes = [b for b, _ in recorder.calls[1:]]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] == sum(stop not in t for t in free)
    hits = 0
    for text, got in zip(free, stopped, strict=True):
        if stop in text:
            hits += 1
            assert got.text == text[: text.index(stop)] and got.finish_reason == "stop"
        else:
            assert got.text == text
    assert hits >= 1


def test_n_samples_share_one_prompt_pass_and_do_not_depend_on_the_batch(model: str) -> None:
    s = SamplingSettings(max_new_tokens=12, temperature=1.0, n=4, seed=3)
    wide = HFBackend.from_path(model, batch_size=16)
    recorder = _Recorder(wide)
    many = wide.generate(PROMPTS[:3], s)
    assert recorder.calls[0][0] == 3  # three prompts encoded once each, not 12 rows
    assert recorder.calls[1][0] == 12
    narrow = HFBackend.from_path(model, batch_size=1)  # one prompt (its 4 samples) at a time
    assert narrow.generate(PROMPTS[:3], s) == many
    assert [len(row) for row in many] == [4, 4, 4]
    assert len({c.text for row in many for c in row}) > 3  # samples differ from one another
