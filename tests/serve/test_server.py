"""The server on loopback, driven by the official `openai` client: a tiny trained model, its LoRA
adapter and a copy with a chat template; fake backends for FIM prompts, the queue, timeouts and
cancellation."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from codetune.config import Config, load_config
from codetune.generation import generate as cli_generate
from codetune.models.backends.base import Completion, FimTokens, SamplingSettings
from codetune.models.backends.hf import HFBackend
from codetune.serve import create_app, running_server
from codetune.serve.routes import playground_description

KEY = "sk-test-7c1d0e5b2a"
WRONG_KEY = "sk-wrong-93f8a1"
PROMPT = "### Instruction:\nReturn the sum of a and b.\n### Response:\n"
CHAT_TEMPLATE = (
    "{% for m in messages %}### {{ m['role'] }}:\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}### Response:\n{% endif %}"
)


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dirs(trained_run: Config, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The trained model, a LoRA adapter trained on top of it (2 steps), and a copy with a chat template."""
    from codetune.training.loop import train

    tmp = tmp_path_factory.mktemp("serve-models")
    final = Path(trained_run.train.output_dir) / "final"
    lora_cfg = dataclasses.replace(trained_run)
    lora_cfg.model = dataclasses.replace(trained_run.model, name=str(final))
    lora_cfg.train = dataclasses.replace(
        trained_run.train,
        output_dir=str(tmp / "lora"),
        data_dir=trained_run.data.output_dir,
        max_steps=2,
        lr=5e-2,
        eval_every=0,
        save_every=0,
        lora=dataclasses.replace(trained_run.train.lora, enabled=True, r=4, alpha=8),
    )
    lora = train(lora_cfg) / "final"
    chat = tmp / "chat"
    backend = HFBackend.from_path(str(final))
    backend.model.save_pretrained(chat)
    backend.tokenizer.chat_template = CHAT_TEMPLATE
    backend.tokenizer.save_pretrained(chat)
    (chat / "codetune.json").write_text((final / "codetune.json").read_text())
    return {"tiny": final, "tiny-lora": lora, "tiny-chat": chat}


@pytest.fixture(scope="module")
def server(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("serve")
    cfg = load_config(
        None,
        {
            "generate": {"max_new_tokens": 16},
            "serve": {
                "models": [f"{name}={path}" for name, path in model_dirs.items()],
                "api_keys": [KEY],
                "access_log": str(tmp / "access.jsonl"),
                "max_tokens_limit": 64,
                "max_prompt_tokens": 200,
            },
        },
    )
    with running_server(create_app(cfg)) as url:
        yield {"url": url, "cfg": cfg, "log": tmp / "access.jsonl"}


@pytest.fixture(scope="module")
def client(server: dict[str, Any]) -> openai.OpenAI:
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference(model_dirs: dict[str, Path]) -> dict[str, HFBackend]:
    """The same models loaded directly, to compare the server's answers with."""
    return {name: HFBackend.from_path(str(path)) for name, path in model_dirs.items()}


def greedy(backend: Any, prompt: str, max_tokens: int = 16) -> Completion:
    result: Completion = backend.generate([prompt], SamplingSettings(max_new_tokens=max_tokens))[0][0]
    return result


# -- OpenAI endpoints with the real client --------------------------------------------------------


def test_health_and_models(server: dict[str, Any], client: openai.OpenAI) -> None:
    health = httpx.get(server["url"] + "/health").json()  # no key needed
    assert health["status"] == "ok" and health["auth_required"] is True
    assert health["models"] == ["tiny", "tiny-lora", "tiny-chat"]
    assert [m.id for m in client.models.list().data] == ["tiny", "tiny-lora", "tiny-chat"]


def test_completion_is_the_backends_greedy_completion(
    client: openai.OpenAI, reference: dict[str, HFBackend]
) -> None:
    for name in ("tiny", "tiny-lora"):
        expected = greedy(reference[name], PROMPT)
        out = client.completions.create(model=name, prompt=PROMPT, max_tokens=16, temperature=0)
        assert out.object == "text_completion" and out.model == name
        assert out.choices[0].text == expected.text and len(expected.text) > 0
        assert out.choices[0].finish_reason == expected.finish_reason
        assert out.usage is not None
        assert out.usage.completion_tokens == expected.completion_tokens
        assert out.usage.prompt_tokens == expected.prompt_tokens > 0


def test_echo_n_and_stop(client: openai.OpenAI, reference: dict[str, HFBackend]) -> None:
    expected = greedy(reference["tiny"], PROMPT).text
    echoed = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=16, echo=True)
    assert echoed.choices[0].text == PROMPT + expected
    stop = expected[2:4]
    stopped = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=16, stop=[stop])
    assert stopped.choices[0].text == expected[: expected.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"
    sampled = client.completions.create(
        model="tiny", prompt=[PROMPT, PROMPT], max_tokens=8, temperature=1.0, n=2, seed=3
    )
    assert [c.index for c in sampled.choices] == [0, 1, 2, 3]
    again = client.completions.create(
        model="tiny", prompt=[PROMPT, PROMPT], max_tokens=8, temperature=1.0, n=2, seed=3
    )
    assert [c.text for c in again.choices] == [c.text for c in sampled.choices]


def test_streaming_concatenates_to_the_greedy_text(
    client: openai.OpenAI, reference: dict[str, HFBackend]
) -> None:
    expected = greedy(reference["tiny"], PROMPT).text
    chunks = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=16, stream=True))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len([t for t in texts if t]) >= 2  # really streamed, not one piece at the end
    assert "".join(texts) == expected
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    with_usage = list(
        client.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=16, stream=True, stream_options={"include_usage": True}
        )
    )
    assert with_usage[-1].choices == [] and with_usage[-1].usage is not None
    assert with_usage[-1].usage.completion_tokens > 0


def test_chat_uses_the_models_template(client: openai.OpenAI, reference: dict[str, HFBackend]) -> None:
    messages: list[Any] = [{"role": "user", "content": "Return the sum of a and b."}]
    backend = reference["tiny-chat"]
    prompt = backend.chat_prompt(messages)
    assert prompt == "### user:\nReturn the sum of a and b.\n### Response:\n"
    expected = greedy(backend, prompt).text
    out = client.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=16)
    assert out.object == "chat.completion"
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == expected
    stream = client.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=16, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason is not None


def test_chat_without_a_template_is_a_clear_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 400
    assert "no chat template" in str(e.value)


def test_suffix_without_fim_tokens_is_a_clear_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="def f(", suffix=")\n", max_tokens=8)
    assert "fill-in-the-middle" in str(e.value) and "'tiny'" in str(e.value)


def test_limits_are_400_with_a_message(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt=PROMPT, max_tokens=65)
    assert "max_tokens is 65, over this server's limit of 64" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="def add(a, b): " * 100, max_tokens=8)
    assert "over this server's limit of 200 (serve.max_prompt_tokens)" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, n=2, stream=True)
    assert "n > 1 cannot be streamed" in str(e.value)
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="gpt-4", prompt=PROMPT, max_tokens=8)
    assert "served models: tiny, tiny-lora, tiny-chat" in str(missing.value)


def test_wrong_or_missing_key_is_401_and_keys_are_never_logged(server: dict[str, Any]) -> None:
    wrong = openai.OpenAI(base_url=server["url"] + "/v1", api_key=WRONG_KEY, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        wrong.completions.create(model="tiny", prompt=PROMPT, max_tokens=4)
    assert e.value.status_code == 401 and "invalid API key" in str(e.value)
    missing = httpx.post(server["url"] + "/v1/completions", json={"model": "tiny", "prompt": "x"})
    assert missing.status_code == 401 and "missing API key" in missing.json()["error"]["message"]
    assert httpx.get(server["url"] + "/v1/models").status_code == 401
    good = httpx.get(server["url"] + "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert good.status_code == 200

    log_text = server["log"].read_text()
    assert WRONG_KEY not in log_text and KEY not in log_text
    records = [json.loads(line) for line in log_text.splitlines()]
    assert {r["status"] for r in records if r["path"] == "/v1/completions"} >= {200, 401}
    served = [r for r in records if r["path"] == "/v1/completions" and r["status"] == 200]
    assert served and all(r["latency_ms"] > 0 and r["completion_tokens"] > 0 for r in served)
    assert all({"time", "client", "method", "status"} <= set(r) for r in records)


def test_generate_endpoint_is_codetune_generate(server: dict[str, Any], model_dirs: dict[str, Path]) -> None:
    """The playground's description -> code goes through the same prompt and decoding as the CLI."""
    cfg = load_config(None, {"generate": {"max_new_tokens": 16}})
    expected = cli_generate(["Return the sum of a and b."], cfg, model=str(model_dirs["tiny"]))[0][0].text
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "tiny", "description": "Return the sum of a and b.", "max_tokens": 16}
    out = httpx.post(server["url"] + "/v1/generate", json=body, headers=headers, timeout=60).json()
    assert out["choices"][0]["text"] == expected
    with httpx.stream(
        "POST", server["url"] + "/v1/generate", json={**body, "stream": True}, headers=headers, timeout=60
    ) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == expected


def test_playground_description() -> None:
    assert playground_description("Return a.", "python", "complete", "") == "Return a."
    assert playground_description("Return a.", "rust", "complete", "") == "Return a. Write it in Rust."
    assert playground_description("", "go", "translate", "def f(): pass") == (
        "Translate this code to Go.\n\ndef f(): pass"
    )


# -- fake backends: FIM prompts, the queue, timeouts, cancellation --------------------------------


class RecordingBackend:
    """Wraps a real backend and records every prompt it is asked to complete."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name = inner, "recording"
        self.prompts: list[str] = []
        self.settings: list[SamplingSettings] = []

    def generate(self, prompts: Sequence[str], settings: SamplingSettings) -> list[list[Completion]]:
        self.prompts.extend(prompts)
        self.settings.append(settings)
        result: list[list[Completion]] = self.inner.generate(prompts, settings)
        return result

    def stream(self, prompt: str, settings: SamplingSettings) -> Iterator[str]:
        self.prompts.append(prompt)
        return self.inner.stream(prompt, settings)  # type: ignore[no-any-return]

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> str:
        return self.inner.chat_prompt(messages)  # type: ignore[no-any-return]

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)  # type: ignore[no-any-return]

    def fim_tokens(self) -> FimTokens | None:
        return self.inner.fim_tokens()  # type: ignore[no-any-return]


class FakeBackend:
    """Slow on purpose: `generate` waits for `gate`; `stream` yields a piece every `delay` seconds and
    records whether its iterator was closed early (the server cancelled it)."""

    name = "fake"

    def __init__(self, delay: float = 0.02, pieces: int = 500) -> None:
        self.delay, self.pieces = delay, pieces
        self.gate = threading.Event()
        self.started = threading.Event()
        self.closed_after: int | None = None
        self.closed = threading.Event()
        self.calls = 0

    def generate(self, prompts: Sequence[str], settings: SamplingSettings) -> list[list[Completion]]:
        self.calls += 1
        self.started.set()
        self.gate.wait(30)
        return [[Completion("pass", "stop", 1, 1)] for _ in prompts]

    def stream(self, prompt: str, settings: SamplingSettings) -> Iterator[str]:
        produced = 0
        try:
            for _ in range(self.pieces):
                time.sleep(self.delay)
                produced += 1
                yield "x"
        finally:
            self.closed_after = produced
            self.closed.set()

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> str:
        return "\n".join(m["content"] for m in messages)

    def count_tokens(self, text: str) -> int:
        return len(text)

    def fim_tokens(self) -> FimTokens | None:
        return None


def test_suffix_builds_the_models_own_fim_prompt(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    """A tiny model given Qwen-style FIM tokens (embeddings resized): the backend receives the FIM prompt."""
    backend = HFBackend.from_path(str(model_dirs["tiny"]))
    backend.tokenizer.add_tokens(["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"], special_tokens=True)
    backend.model.resize_token_embeddings(len(backend.tokenizer))
    recorder = RecordingBackend(backend)
    cfg = load_config(None, {"serve": {"access_log": str(tmp_path / "log.jsonl")}})
    with running_server(create_app(cfg, backends={"fim": recorder})) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        out = client.completions.create(
            model="fim", prompt="def add(a, b):\n    return ", suffix="\n\nprint(add(1, 2))\n", max_tokens=8
        )
        streamed = client.completions.create(
            model="fim", prompt="def add(a, b):\n    return ", suffix="\n", max_tokens=8, stream=True
        )
        streamed_text = "".join(c.choices[0].text for c in streamed if c.choices)
    fim = "<|fim_prefix|>def add(a, b):\n    return <|fim_suffix|>\n\nprint(add(1, 2))\n<|fim_middle|>"
    assert recorder.prompts[0] == fim
    assert recorder.prompts[1] == "<|fim_prefix|>def add(a, b):\n    return <|fim_suffix|>\n<|fim_middle|>"
    assert "<|endoftext|>" in recorder.settings[0].stop and "<|file_sep|>" in recorder.settings[0].stop
    assert out.choices[0].text == greedy(backend, fim, 8).text
    assert streamed_text == "".join(backend.stream(recorder.prompts[1], recorder.settings[0]))


def test_queue_full_is_429_with_retry_after(tmp_path: Path) -> None:
    fake = FakeBackend()
    cfg = load_config(
        None, {"serve": {"max_concurrent": 1, "max_queue": 1, "access_log": str(tmp_path / "log.jsonl")}}
    )
    with running_server(create_app(cfg, backends={"slow": fake})) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        results: list[str] = []

        def ask() -> None:
            results.append(client.completions.create(model="slow", prompt="x", max_tokens=4).choices[0].text)

        threads = [threading.Thread(target=ask) for _ in range(2)]
        for t in threads:
            t.start()
        assert fake.started.wait(10)
        deadline = time.monotonic() + 10
        while httpx.get(url + "/health").json()["waiting"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        health = httpx.get(url + "/health").json()
        assert (health["running"], health["waiting"]) == (1, 1)
        with pytest.raises(openai.RateLimitError) as e:
            client.completions.create(model="slow", prompt="x", max_tokens=4)
        assert e.value.status_code == 429
        assert int(e.value.response.headers["retry-after"]) >= 1
        assert "queue" in str(e.value)
        fake.gate.set()
        for t in threads:
            t.join(30)
        assert results == ["pass", "pass"]  # the admitted requests were served
        assert httpx.get(url + "/health").json()["running"] == 0


def test_a_client_that_leaves_the_queue_is_not_generated_for(tmp_path: Path) -> None:
    fake = FakeBackend()
    cfg = load_config(None, {"serve": {"access_log": str(tmp_path / "log.jsonl")}})
    with running_server(create_app(cfg, backends={"slow": fake})) as url:
        first = threading.Thread(
            target=lambda: httpx.post(url + "/v1/completions", json={"prompt": "x"}, timeout=30)
        )
        first.start()
        assert fake.started.wait(10)
        with pytest.raises(httpx.ReadTimeout):  # waits in the queue, then gives up
            httpx.post(url + "/v1/completions", json={"prompt": "y"}, timeout=0.5)
        deadline = time.monotonic() + 5
        while httpx.get(url + "/health").json()["waiting"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert httpx.get(url + "/health").json()["waiting"] == 0
        fake.gate.set()
        first.join(30)
        assert fake.calls == 1  # only the request whose client stayed was generated
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records if r["path"] == "/v1/completions"] == [499, 200]


def test_request_timeout_is_504(tmp_path: Path) -> None:
    fake = FakeBackend()
    cfg = load_config(None, {"serve": {"request_timeout_s": 0.5, "access_log": str(tmp_path / "log.jsonl")}})
    with running_server(create_app(cfg, backends={"slow": fake})) as url:
        r = httpx.post(url + "/v1/completions", json={"model": "slow", "prompt": "x"}, timeout=30)
        assert r.status_code == 504 and "0.5s" in r.json()["error"]["message"]
        fake.gate.set()


def test_client_disconnect_cancels_generation(tmp_path: Path) -> None:
    fake = FakeBackend(delay=0.02, pieces=500)  # 10 s if nobody stops it
    log = tmp_path / "log.jsonl"
    cfg = load_config(None, {"serve": {"access_log": str(log)}})
    with running_server(create_app(cfg, backends={"slow": fake})) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        stream = client.completions.create(model="slow", prompt="x", max_tokens=1000, stream=True)
        for received, _chunk in enumerate(stream, 1):
            if received == 5:
                break
        stream.close()  # the client goes away mid-stream
        assert fake.closed.wait(5), "the backend kept generating after the client left"
        assert fake.closed_after is not None and fake.closed_after < 100
        deadline = time.monotonic() + 5
        while httpx.get(url + "/health").json()["running"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert httpx.get(url + "/health").json()["running"] == 0  # the slot is free again
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(r["path"] == "/v1/completions" and r.get("cancelled") for r in records)


# -- the CLI command ------------------------------------------------------------------------------


def test_codetune_serve_command(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "serve.yaml"
    config.write_text("generate:\n  max_new_tokens: 8\n")
    keys = tmp_path / "keys.txt"
    keys.write_text("# one key per line\n" + KEY + "\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "codetune.cli", "serve", str(config), "--port", str(port),
         "--api-keys-file", str(keys), "-m", f"tiny={model_dirs['tiny']}",
         f"--serve.access_log={tmp_path / 'access.jsonl'}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, proc, seconds=90)
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        out = client.completions.create(model="tiny", prompt=PROMPT)
        assert out.usage is not None and 0 < out.usage.completion_tokens <= 8  # generate.max_new_tokens
        assert httpx.get(url + "/").text.startswith("<!doctype html>")
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert KEY not in output and KEY not in (tmp_path / "access.jsonl").read_text()


# -- the real llama.cpp backend on a GGUF (slow; needs the pack in the cache) ---------------------------


@pytest.mark.slow
def test_serving_a_gguf_on_llama_cpp(tmp_path: Path) -> None:
    """Qwen2.5-Coder GGUF on llama.cpp: completion, streaming, FIM with its own tokens, chat template."""
    import importlib.util

    from codetune.models.pack import PACKS, default_cache_dir

    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (`make llamacpp`)")
    pack = PACKS["qwen2.5-coder-0.5b-instruct"]
    gguf = default_cache_dir() / "models" / pack.name / pack.gguf_name
    if not gguf.is_file():
        pytest.skip(f"{pack.name} is not in the cache (`codetune models fetch {pack.name}`)")
    cfg = load_config(
        None,
        {
            "generate": {"threads": 2},
            "serve": {"models": [f"qwen={gguf}"], "access_log": str(tmp_path / "a")},
        },
    )
    app = create_app(cfg)
    assert app.state.codetune.models["qwen"].backend.name == "llamacpp"  # a .gguf runs on llama.cpp
    with running_server(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
        prompt = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'
        whole = client.completions.create(model="qwen", prompt=prompt, max_tokens=32).choices[0].text
        streamed = client.completions.create(model="qwen", prompt=prompt, max_tokens=32, stream=True)
        assert "".join(c.choices[0].text for c in streamed if c.choices) == whole
        assert "return" in whole
        middle = client.completions.create(
            model="qwen", prompt="def add(a, b):\n    return ", suffix="\n\nprint(add(1, 2))\n", max_tokens=16
        ).choices[0]
        assert "a + b" in middle.text or "a+b" in middle.text
        reply = client.chat.completions.create(
            model="qwen", messages=[{"role": "user", "content": "Say hi."}], max_tokens=16
        )
        assert reply.choices[0].message.content and "<|im_end|>" not in reply.choices[0].message.content


# -- hostile input: invalid text, oversized bodies ----------------------------------------------------


def test_a_lone_surrogate_is_a_400_in_openais_shape(server: dict[str, Any]) -> None:
    """JSON may carry "\\ud800"; the tokenizer can't take it. A 400 naming the field, not a 500."""
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    bodies = {
        "/v1/completions": '{"model": "tiny", "prompt": "def f(\\ud800", "max_tokens": 4}',
        "/v1/chat/completions": '{"model": "tiny-chat", "messages": [{"role": "user", "content": "\\ud800"}]}',
        "/v1/generate": '{"model": "tiny", "description": "x\\udfff y"}',
    }
    where = {
        "/v1/completions": "prompt",
        "/v1/chat/completions": "messages[0].content",
        "/v1/generate": "description",
    }
    for path, body in bodies.items():
        r = httpx.post(server["url"] + path, content=body, headers=headers, timeout=60)
        assert r.status_code == 400, (path, r.text)
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == where[path]
        assert "lone UTF-16 surrogate" in error["message"]
    assert httpx.get(server["url"] + "/health").status_code == 200  # the server is still there


SERVER_SCRIPT = """
import sys, time, uvicorn
from codetune.config import load_config
from codetune.serve import create_app


class SlowTokenizer:  # tokenizing takes time in proportion to the text, as a real tokenizer's does
    name = "slow"

    def count_tokens(self, text):
        time.sleep(0.3 + len(text) / 2_000_000)
        return len(text)

    def generate(self, prompts, settings):
        raise AssertionError("every prompt here is over serve.max_prompt_tokens")

    stream = chat_prompt = generate

    def fim_tokens(self):
        return None


cfg = load_config(None, {"serve": {"access_log": sys.argv[2], "max_body_bytes": 1_000_000}})
app = create_app(cfg, backends={"slow": SlowTokenizer()})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


def _rss_mib(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@contextlib.contextmanager
def _server_process(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """The server in a process of its own, as it runs for real: the client's threads don't share its GIL."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    paths = [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    log = tmp_path / "log.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, str(port), str(log)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, proc, seconds=60)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


def _health_latencies(url: str, busy: Callable[[], bool], calls: int) -> list[float]:
    """Seconds each GET /health took, asked every 10 ms while `busy()`, and at least `calls` times."""
    latencies: list[float] = []
    with httpx.Client(base_url=url) as client:
        while busy() or len(latencies) < calls:
            started = time.perf_counter()
            assert client.get("/health").status_code == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.01)
    return latencies


def test_oversized_prompts_get_413_and_health_stays_responsive(tmp_path: Path) -> None:
    """Three 5 MB prompts (over serve.max_body_bytes: 413 before they are read, one sent in chunks) and
    three 0.2 MB ones (under it, but over serve.max_prompt_tokens: tokenized in a worker thread, then 400),
    all at once: /health answers within 100 ms all along, and the server's memory stays flat."""
    huge = json.dumps({"model": "slow", "prompt": "x" * 5_000_000}).encode()
    long = json.dumps({"model": "slow", "prompt": "y" * 200_000}).encode()
    with _server_process(tmp_path) as (url, pid):
        quiet = _health_latencies(url, lambda: False, calls=25)  # this machine's own noise, for scale
        rss_before = _rss_mib(pid)
        answers: list[httpx.Response] = []

        attacker = httpx.Client(base_url=url, timeout=60)  # made now: a client's TLS set-up holds the GIL

        def post(body: bytes | Iterator[bytes]) -> None:
            headers = {"Content-Type": "application/json"}
            answers.append(attacker.post("/v1/completions", content=body, headers=headers))

        def chunked() -> Iterator[bytes]:  # no Content-Length: the limit counts the bytes as they come
            yield from (huge[i : i + 65536] for i in range(0, len(huge), 65536))

        bodies = (huge, long, long, long, huge, chunked())
        threads = [threading.Thread(target=post, args=(b,)) for b in bodies]
        for t in threads:
            t.start()
        latencies = _health_latencies(url, lambda: any(t.is_alive() for t in threads), calls=10)
        for t in threads:
            t.join(30)
        attacker.close()
        quiet += _health_latencies(url, lambda: False, calls=25)
        rss_after = _rss_mib(pid)
    assert sorted(r.status_code for r in answers) == [400, 400, 400, 413, 413, 413]
    too_large = [r.json()["error"] for r in answers if r.status_code == 413]
    assert all(e["code"] == "request_too_large" and "serve.max_body_bytes" in e["message"] for e in too_large)
    too_long = [r.json()["error"] for r in answers if r.status_code == 400]
    assert all(e["code"] == "context_length_exceeded" for e in too_long)
    slowest, noise = max(latencies) * 1000, max(quiet) * 1000
    print(
        f"/health: {len(latencies)} calls under attack, slowest {slowest:.1f} ms (with no load: {noise:.1f} ms); "
        f"server RSS {rss_before:.0f} -> {rss_after:.0f} MiB"
    )
    # within 100 ms, beyond what a loaded test machine adds to a server doing nothing (a few ms on CI)
    assert slowest < 100 + noise, f"/health took {slowest:.0f} ms while the prompts were handled"
    assert rss_after - rss_before < 32, f"the server grew from {rss_before:.0f} to {rss_after:.0f} MiB"
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    statuses = sorted(r["status"] for r in records if r["path"] == "/v1/completions")
    assert statuses == [400, 400, 400, 413, 413, 413]


def wait_until_healthy(url: str, proc: subprocess.Popen[Any], seconds: float) -> None:
    """Until the server process answers /health with 200; fails if it exits or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(url + "/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.1)
