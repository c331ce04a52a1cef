"""The llama.cpp backend: decoding logic on a scripted fake `llama_cpp`, then the real model (slow)."""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from codetune.errors import CodetuneError
from codetune.models.backends.base import SamplingSettings

# --- a scripted stand-in for llama_cpp: token i is PIECES[i]; the "model" always says SCRIPT ---------

PIECES = [
    b"<|endoftext|>",
    b"def",
    b" f",
    b"():",
    b"\n",
    b"    return",
    b" 1",
    b"\xc3",
    b"\xa9",
    b"\n\ndef",
    b" g",
]
PIECES += [b"<|fim_prefix|>", b"<|fim_suffix|>", b"<|fim_middle|>", b"\xff"]
SCRIPT = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 3, 0]
SCRIPT_TEXT = "def f():\n    return 1\u00e9\n\ndef g():"


class FakeModel:
    vocab = object()

    def detokenize(self, tokens: list[int], special: bool = False) -> bytes:
        return b"".join(PIECES[t] for t in tokens)

    def token_get_text(self, i: int) -> str:
        return PIECES[i].decode("utf-8")

    def n_vocab(self) -> int:
        return len(PIECES)


class FakeLlama:
    instances: list[FakeLlama] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs, self.seeds, self.calls, self.tokenized = kwargs, list[int](), list[dict](), list[tuple]()
        self._model = FakeModel()
        FakeLlama.instances.append(self)

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        self.tokenized.append((text, add_bos, special))
        return [1] * len(text)

    def n_ctx(self) -> int:
        return int(self.kwargs["n_ctx"])

    def set_seed(self, seed: int) -> None:
        self.seeds.append(seed)

    def generate(self, tokens: list[int], **kwargs: Any) -> Iterator[int]:
        self.calls.append(kwargs)
        yield from SCRIPT


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Any, Path]:
    module = types.ModuleType("llama_cpp")
    module.Llama = FakeLlama  # type: ignore[attr-defined]
    module.llama_vocab_is_eog = lambda vocab, token: token == 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "llama_cpp", module)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    from codetune.models.backends.llamacpp import LlamaCppBackend

    return LlamaCppBackend, gguf


def test_missing_llama_cpp_says_what_to_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    from codetune.models.backends.llamacpp import LlamaCppBackend

    with pytest.raises(CodetuneError, match="run `make llamacpp`"):
        LlamaCppBackend(tmp_path / "m.gguf")


def test_the_lora_buft_notice_is_dropped_and_other_log_lines_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    forwarded: list[tuple[int, bytes]] = []
    installed: list[Any] = []
    module = types.ModuleType("llama_cpp")
    logger = types.ModuleType("llama_cpp._logger")
    logger.llama_log_callback = lambda level, text, data: forwarded.append((level, text))  # type: ignore[attr-defined]
    module._logger = logger  # type: ignore[attr-defined]
    module.llama_log_callback = lambda function: function  # type: ignore[attr-defined]
    module.llama_log_set = lambda callback, data: installed.append(callback)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "llama_cpp", module)
    monkeypatch.setitem(sys.modules, "llama_cpp._logger", logger)
    from codetune.models.backends import llamacpp

    monkeypatch.setattr(llamacpp, "_log_filter", [])
    llamacpp._import_llama_cpp()
    llamacpp._import_llama_cpp()  # installed once
    (callback,) = installed
    noise = b"llama_adapter_lora_init_impl: lora for 'blk.12.ffn_down.weight' cannot use buft 'CPU_REPACK', fallback to CPU\n"
    callback(3, noise, None)
    callback(3, b"llama_model_load: error loading model\n", None)
    assert forwarded == [(3, b"llama_model_load: error loading model\n")]


def test_missing_gguf(fake: tuple[Any, Path], tmp_path: Path) -> None:
    backend_cls, _ = fake
    with pytest.raises(CodetuneError, match="nope.gguf not found"):
        backend_cls(tmp_path / "nope.gguf")


def test_greedy_settings_and_end_of_turn(fake: tuple[Any, Path]) -> None:
    backend_cls, gguf = fake
    backend = backend_cls(gguf, n_ctx=64, n_threads=2, seed=5)
    llm = FakeLlama.instances[-1]
    assert llm.kwargs["n_threads"] == 2 and llm.kwargs["seed"] == 5 and llm.kwargs["verbose"] is False
    [[c]] = backend.generate(["abc"], SamplingSettings(max_new_tokens=100))
    assert (c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens) == (SCRIPT_TEXT, "stop", 3, 11)
    assert llm.calls[-1] == {
        "top_k": 0,
        "top_p": 1.0,
        "min_p": 0.0,
        "typical_p": 1.0,
        "temp": 0.0,
        "repeat_penalty": 1.0,
    }
    assert llm.tokenized[-1] == (b"abc", True, True)


def test_stop_sequences_and_length(fake: tuple[Any, Path]) -> None:
    backend_cls, gguf = fake
    backend = backend_cls(gguf)
    [[c]] = backend.generate(["x"], SamplingSettings(max_new_tokens=100, stop=("\ndef", "zzz")))
    assert (c.text, c.finish_reason, c.completion_tokens) == ("def f():\n    return 1\u00e9\n", "stop", 9)
    [[c]] = backend.generate(["x"], SamplingSettings(max_new_tokens=3))
    assert (c.text, c.finish_reason, c.completion_tokens) == ("def f():", "length", 3)
    # A character split over two tokens is never emitted half; cut after its first byte it is U+FFFD.
    [[c]] = backend.generate(["x"], SamplingSettings(max_new_tokens=7))
    assert c.text == "def f():\n    return 1\ufffd"


def test_prompt_longer_than_context(fake: tuple[Any, Path]) -> None:
    backend_cls, gguf = fake
    backend = backend_cls(gguf, n_ctx=8)
    with pytest.raises(CodetuneError, match="prompt is 9 tokens, the context window is 8"):
        backend.generate(["123456789"], SamplingSettings())


@pytest.mark.parametrize("stop", [(), ("\ndef",), ("return 1\u00e9",), ("():",), ("nothing", " f(")])
def test_stream_equals_generate(fake: tuple[Any, Path], stop: tuple[str, ...]) -> None:
    backend_cls, gguf = fake
    backend = backend_cls(gguf)
    settings = SamplingSettings(max_new_tokens=50, stop=stop)
    pieces = list(backend.stream("x", settings))
    [[c]] = backend.generate(["x"], settings)
    assert "".join(pieces) == c.text
    assert all(pieces)


def test_sampling_seeds_per_sample(fake: tuple[Any, Path]) -> None:
    backend_cls, gguf = fake
    backend = backend_cls(gguf)
    out = backend.generate(["a", "b"], SamplingSettings(temperature=0.7, top_k=20, top_p=0.9, n=3, seed=10))
    assert [len(row) for row in out] == [3, 3]
    llm = FakeLlama.instances[-1]
    assert llm.seeds == [10, 11, 12, 13, 14, 15]
    assert llm.calls[-1] == {
        "top_k": 20,
        "top_p": 0.9,
        "min_p": 0.0,
        "typical_p": 1.0,
        "temp": 0.7,
        "repeat_penalty": 1.0,
    }


def test_tokens_and_fim(fake: tuple[Any, Path]) -> None:
    backend_cls, gguf = fake
    backend = backend_cls(gguf)
    assert backend.count_tokens("hello") == 5
    assert FakeLlama.instances[-1].tokenized[-1] == (b"hello", False, True)
    fim = backend.fim_tokens()
    assert fim is not None and (fim.prefix, fim.suffix, fim.middle) == (
        "<|fim_prefix|>",
        "<|fim_suffix|>",
        "<|fim_middle|>",
    )


# --- the real model ---------------------------------------------------------------------------------

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None


@pytest.fixture(scope="module")
def qwen() -> Any:
    if not HAS_LLAMA_CPP:
        pytest.skip("llama-cpp-python is not installed (`make llamacpp`)")
    from codetune.models.backends.llamacpp import LlamaCppBackend
    from codetune.models.pack import PACKS, default_cache_dir

    pack = PACKS["qwen2.5-coder-0.5b-instruct"]
    gguf = default_cache_dir() / "models" / pack.name / pack.gguf_name
    if not gguf.is_file():
        pytest.skip(f"{pack.name} is not in the cache (`codetune models fetch {pack.name}`)")
    backend = LlamaCppBackend(gguf, n_ctx=2048, n_threads=2)
    yield backend
    backend.close()


PROMPT = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'


@pytest.mark.slow
def test_real_greedy_is_deterministic(qwen: Any) -> None:
    settings = SamplingSettings(max_new_tokens=48)
    first = qwen.generate([PROMPT], settings)[0][0]
    again = qwen.generate(["def unrelated():\n    pass\n", PROMPT], settings)[1][0]
    assert first == again
    assert first.completion_tokens > 5 and first.prompt_tokens == qwen.count_tokens(PROMPT)
    assert "return" in first.text


@pytest.mark.slow
def test_real_stops_and_stream(qwen: Any) -> None:
    free = qwen.generate([PROMPT], SamplingSettings(max_new_tokens=64))[0][0]
    stop = "return"
    assert stop in free.text
    settings = SamplingSettings(max_new_tokens=64, stop=(stop,))
    cut = qwen.generate([PROMPT], settings)[0][0]
    assert cut.text == free.text[: free.text.index(stop)] and cut.finish_reason == "stop"
    assert "".join(qwen.stream(PROMPT, settings)) == cut.text
    assert "".join(qwen.stream(PROMPT, SamplingSettings(max_new_tokens=64))) == free.text


@pytest.mark.slow
def test_real_chat_template_and_fim(qwen: Any) -> None:
    prompt = qwen.chat_prompt([{"role": "user", "content": "Hi"}])
    assert prompt.startswith("<|im_start|>system\nYou are Qwen")
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    reply = qwen.generate([prompt], SamplingSettings(max_new_tokens=32))[0][0]
    assert reply.text and "<|im_end|>" not in reply.text
    fim = qwen.fim_tokens()
    assert fim is not None and fim.prefix == "<|fim_prefix|>" and fim.middle == "<|fim_middle|>"
    assert qwen.count_tokens("<|fim_prefix|>") == 1


@pytest.mark.slow
def test_real_chat_prompt_matches_transformers(qwen: Any) -> None:
    hf = Path(qwen.gguf_path).parent / "hf"
    if not (hf / "tokenizer.json").is_file():
        pytest.skip("the pack has not been converted for transformers")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Sort a list.\n```\nx\n```"},
    ]
    assert qwen.chat_prompt(messages) == tok.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    text = qwen.chat_prompt(messages) + "def f():\n    return [1, 2]\n"
    assert qwen.count_tokens(text) == len(tok(text, add_special_tokens=False)["input_ids"])


def test_generation_units_seed_each_sample_by_its_place_in_the_whole_list(fake: tuple[Any, Path]) -> None:
    from codetune.generation import generate_units

    backend_cls, gguf = fake
    backend = backend_cls(gguf)
    settings = SamplingSettings(temperature=0.7, n=2, seed=10)
    generate_units(["a", "b", "c"], settings, unit_size=1, backend=backend)
    generate_units(["a", "b", "c"], settings, unit_size=2, backend=backend)
    backend.generate(["a", "b", "c"], settings)
    seeds = FakeLlama.instances[-1].seeds
    assert seeds == [10, 11, 12, 13, 14, 15] * 3
