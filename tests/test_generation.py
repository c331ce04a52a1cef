from pathlib import Path

import pytest

from codetune.config import Config, PromptConfig
from codetune.generation import answer_stops, extract_code, generate, generate_units, settings_from
from codetune.models.backends.base import Completion, SamplingSettings, cut_at_stop, stop_holdback
from codetune.models.backends.hf import HFBackend


def test_cut_at_stop_and_holdback() -> None:
    assert cut_at_stop("abc\ndef g", ["\ndef", "zz"]) == ("abc", True)
    assert cut_at_stop("abc", ["x"]) == ("abc", False)
    assert stop_holdback("return x\nde", ["\ndef"]) == 3
    assert stop_holdback("return x", ["\ndef"]) == 0


def test_extract_code_from_markdown() -> None:
    chat = PromptConfig(style="chat")
    assert (
        extract_code("Sure!\n```python\ndef f():\n    return 1\n```\nDone.", chat) == "def f():\n    return 1"
    )
    assert extract_code("def f(): pass", PromptConfig()) == "def f(): pass"


@pytest.fixture(scope="module")
def backend(trained_run: Config) -> HFBackend:
    return HFBackend.from_path(str(Path(trained_run.train.output_dir) / "final"), batch_size=3)


def test_a_fenced_answer_stops_at_its_closing_fence_not_at_an_opening_one_after_a_sentence() -> None:
    fenced = PromptConfig(style="chat", answer_template="```python\n{code}\n```")
    (stop,) = answer_stops(fenced)
    reply = "Sure, here it is.\n```python\ndef f():\n    return 1\n```\nIt returns 1."
    assert cut_at_stop(reply, (stop,)) == ("Sure, here it is.\n```python\ndef f():\n    return 1", True)
    # a closing text that does not also open the answer stops as it is
    assert answer_stops(PromptConfig(answer_template="{code}\n# end")) == ("\n# end",)
    assert answer_stops(PromptConfig(answer_template="{code}")) == ()


def test_greedy_is_deterministic_and_independent_of_batching(backend: HFBackend) -> None:
    prompts = [
        "### Instruction:\nReturn the sum of a and b.\n### Response:\n",
        "### Instruction:\nReturn x minus y.\n### Response:\n",
        "### Instruction:\nReturn the product of m and n.\n### Response:\n",
        "### Instruction:\nReturn p raised to the power q.\n### Response:\n",
    ]
    s = SamplingSettings(max_new_tokens=16)
    batched = [row[0].text for row in backend.generate(prompts, s)]
    single = [backend.generate([p], s)[0][0].text for p in prompts]
    assert batched == single
    assert batched == [row[0].text for row in backend.generate(prompts, s)]
    assert all(row[0].completion_tokens <= 16 for row in backend.generate(prompts, s))


def test_stop_sequences_and_stream_agree_with_generate(backend: HFBackend) -> None:
    prompt = "### Instruction:\nReturn the sum of a and b.\n### Response:\n"
    free = backend.generate([prompt], SamplingSettings(max_new_tokens=20))[0][0].text
    assert len(free) > 4
    stop = free[3:5]
    stopped = backend.generate([prompt], SamplingSettings(max_new_tokens=20, stop=(stop,)))[0][0]
    assert stopped.text == free[: free.index(stop)] and stopped.finish_reason == "stop"
    streamed = "".join(backend.stream(prompt, SamplingSettings(max_new_tokens=20, stop=(stop,))))
    assert streamed == stopped.text
    assert "".join(backend.stream(prompt, SamplingSettings(max_new_tokens=20))) == free


def test_sampling_is_seeded(backend: HFBackend) -> None:
    prompt = "### Instruction:\nReturn the sum of a and b.\n### Response:\n"
    s = SamplingSettings(max_new_tokens=12, temperature=1.0, n=3, seed=5)
    a = [c.text for c in backend.generate([prompt], s)[0]]
    b = [c.text for c in backend.generate([prompt], s)[0]]
    assert a == b and len(a) == 3


def test_generate_uses_the_models_own_prompt(trained_run: Config) -> None:
    cfg = Config()
    cfg.prompt.template = "WRONG {nl}"  # the model folder's codetune.json must win
    cfg.generate.max_new_tokens = 16
    model = str(Path(trained_run.train.output_dir) / "final")
    out = generate(["Return the sum of a and b."], cfg, model=model)
    backend = HFBackend.from_path(model)
    expected = backend.generate(
        ["### Instruction:\nReturn the sum of a and b.\n### Response:\n"], SamplingSettings(max_new_tokens=16)
    )[0][0].text
    assert out[0][0].text == expected


def test_sampling_gives_each_prompt_the_same_samples_however_the_prompts_are_split(
    backend: HFBackend,
) -> None:
    prompts = [
        "### Instruction:\nReturn the sum of a and b.\n### Response:\n",
        "### Instruction:\nReturn x minus y.\n### Response:\n",
        "### Instruction:\nReturn the sum of a and b.\n### Response:\n",
        "### Instruction:\nReturn p raised to the power q.\n### Response:\n",
        "### Instruction:\nReturn u modulo v.\n### Response:\n",
    ]
    s = SamplingSettings(max_new_tokens=12, temperature=1.0, n=2, seed=7)

    def texts(rows: list[list[Completion]]) -> list[list[str]]:
        return [[c.text for c in row] for row in rows]

    whole = texts(backend.generate(prompts, s))
    assert whole[0] != whole[2]  # the same prompt at another place gets other samples
    for size in (1, 2, 3):
        assert texts(generate_units(prompts, s, unit_size=size, backend=backend)) == whole, size
    split = backend.generate(prompts[:2], s) + backend.generate(prompts[2:], settings_from(s, 2))
    assert texts(split) == whole
    # a later call with the seed left as it was re-uses the first prompts' seeds: other samples
    assert texts(backend.generate(prompts[2:], s)) != whole[2:]
