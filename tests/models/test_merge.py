"""LoRA train -> merged export -> plain transformers: the same greedy output as the adapter model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from codetune.config import PromptConfig
from codetune.data.format import build_prompt
from codetune.errors import CodetuneError
from codetune.models.merge import merge_model, plain_chat_template
from tests.conftest import tiny_config

DESCRIPTIONS = ["Return the sum of a and b.", "Return x raised to the power y.", "Return m minus n."]


def _greedy(model: torch.nn.Module, ids: list[int], steps: int = 12) -> tuple[list[int], torch.Tensor]:
    """Greedy tokens by a plain argmax loop (no generate() settings involved) and the first logits."""
    tokens = list(ids)
    first = None
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([tokens])).logits[0, -1]
            first = logits if first is None else first
            tokens.append(int(logits.argmax()))
    assert first is not None
    return tokens[len(ids) :], first


def test_lora_run_merges_into_a_model_plain_transformers_loads(tmp_path: Path, pairs_file: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from codetune.data.prepare import prepare
    from codetune.training.loop import train

    cfg = tiny_config(
        tmp_path,
        pairs_file,
        train={"lora": {"enabled": True, "r": 4, "alpha": 8}, "lr": 1e-2, "max_steps": 6},
    )
    prepare(cfg)
    adapter = train(cfg) / "final"
    meta = json.loads((adapter / "codetune.json").read_text())
    assert meta["format"] == "lora"

    out = merge_model(adapter, tmp_path / "merged")
    assert not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()  # plain transformers, nothing else
    tok = AutoTokenizer.from_pretrained(str(out))
    base = AutoModelForCausalLM.from_pretrained(meta["base_model"]).eval()
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(meta["base_model"]), str(adapter)
    ).eval()  # the adapter model as trained: W x + B A x, not merged

    # the prompt travels: the merged tokenizer's chat template renders the training prompt
    for desc in DESCRIPTIONS:
        text = tok.apply_chat_template(
            [{"role": "user", "content": desc}], tokenize=False, add_generation_prompt=True
        )
        assert text == build_prompt(desc, cfg.prompt)
    moved = 0
    for desc in DESCRIPTIONS:
        ids = tok(build_prompt(desc, cfg.prompt))["input_ids"]
        want, want_logits = _greedy(peft_model, ids)
        got, got_logits = _greedy(merged, ids)
        assert got == want
        torch.testing.assert_close(got_logits, want_logits, rtol=0, atol=1e-4)
        _, base_logits = _greedy(base, ids, steps=1)
        moved += int((base_logits - want_logits).abs().max() > 1e-3)
    assert moved == len(DESCRIPTIONS)  # the adapter changed the model: merging it was not a no-op
    merged_meta = json.loads((out / "codetune.json").read_text())
    assert merged_meta["format"] == "full" and merged_meta["prompt"] == meta["prompt"]
    assert merged_meta["merged_from"]["format"] == "lora"
    assert "### Instruction:" in (out / "README.md").read_text()


def test_merged_folder_is_a_new_folder_and_dtype_is_checked(tmp_path: Path) -> None:
    with pytest.raises(CodetuneError, match="new folder"):
        merge_model(tmp_path, tmp_path)
    with pytest.raises(CodetuneError, match="--dtype"):
        merge_model(tmp_path, tmp_path / "out", dtype="int8")


def test_plain_chat_template_renders_the_plain_prompt_with_literal_braces() -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    prompt = PromptConfig(template="# {{task}} it's\\n:\n{nl}\n'''\n")
    rendered = render_jinja_template(
        conversations=[[{"role": "system", "content": "x"}, {"role": "user", "content": "Add a and b."}]],
        chat_template=plain_chat_template(prompt),
        add_generation_prompt=True,
    )[0]
    assert rendered[0] == build_prompt("Add a and b.", prompt)
    with pytest.raises(CodetuneError, match="no {nl}"):
        plain_chat_template(PromptConfig(template="no placeholder"))
