"""LoRA adapters exported as llama.cpp LoRA GGUFs (read back with gguf's own reader), and LoRA on the
top N blocks only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from codetune.config import LoraSettings
from codetune.errors import CodetuneError
from codetune.models.export import base_gguf_of, lora_to_gguf
from codetune.models.loading import apply_lora


def _tiny_llama(tmp_path: Path, layers: int = 3) -> tuple[torch.nn.Module, Path]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config)
    base = tmp_path / "base"
    model.save_pretrained(str(base))
    return LlamaForCausalLM.from_pretrained(str(base)), base


def test_lora_adapter_exports_to_a_llamacpp_lora_gguf(tmp_path: Path) -> None:
    import gguf

    model, base = _tiny_llama(tmp_path)
    peft_model = apply_lora(model, LoraSettings(enabled=True, r=4, alpha=8, top_layers=2), "causal")
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)  # non-zero B, so the export is checked on real values
    folder = tmp_path / "adapter"
    peft_model.save_pretrained(str(folder))
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["layers_to_transform"] == [1, 2]

    path = lora_to_gguf(folder)
    reader = gguf.GGUFReader(str(path))
    fields = {name: f for name, f in reader.fields.items()}
    assert bytes(fields["general.type"].parts[-1]).decode() == "adapter"
    assert bytes(fields["adapter.type"].parts[-1]).decode() == "lora"
    assert float(fields["adapter.lora.alpha"].parts[-1][0]) == 8.0
    assert bytes(fields["general.architecture"].parts[-1]).decode() == "llama"
    tensors = {t.name: t for t in reader.tensors}
    # top_layers=2 of 3: blocks 1 and 2 only, all seven linear layers, A and B each
    assert {n.split(".")[1] for n in tensors} == {"1", "2"}
    assert len(tensors) == 2 * 7 * 2
    weights = load_file(str(folder / "adapter_model.safetensors"))
    a = weights["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"]
    b = weights["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"]
    np.testing.assert_array_equal(np.asarray(tensors["blk.1.attn_q.weight.lora_a"].data), a)
    np.testing.assert_array_equal(np.asarray(tensors["blk.1.ffn_down.weight.lora_b"].data), b)
    assert a.shape == (4, 32) and b.shape == (32, 4)  # r x in, out x r (llama.cpp's ne is the reverse)


def test_export_refuses_what_llamacpp_would_compute_differently(tmp_path: Path) -> None:
    model, _ = _tiny_llama(tmp_path, layers=1)
    folder = tmp_path / "adapter"
    apply_lora(model, LoraSettings(enabled=True, r=2, alpha=4), "causal").save_pretrained(str(folder))
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "use_rslora": True}))
    with pytest.raises(CodetuneError, match="use_rslora"):
        lora_to_gguf(folder)
    with pytest.raises(CodetuneError, match="not a LoRA adapter folder"):
        lora_to_gguf(tmp_path)


def test_top_layers_adapts_only_the_last_blocks(tmp_path: Path) -> None:
    model, _ = _tiny_llama(tmp_path, layers=3)
    peft_model = apply_lora(model, LoraSettings(enabled=True, r=2, alpha=4, top_layers=1), "causal")
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all(".layers.2." in n for n in trainable)
    with pytest.raises(CodetuneError, match="top_layers=4"):
        apply_lora(
            _tiny_llama(tmp_path / "x", layers=3)[0], LoraSettings(enabled=True, top_layers=4), "causal"
        )


def test_base_gguf_is_found_only_for_model_pack_conversions(tmp_path: Path) -> None:
    hf = tmp_path / "pack" / "hf"
    hf.mkdir(parents=True)
    assert base_gguf_of({"base_model": str(hf)}) is None
    (hf / "codetune-conversion.json").write_text(json.dumps({"gguf": "m.gguf"}))
    assert base_gguf_of({"base_model": str(hf)}) is None  # the GGUF itself is missing
    (tmp_path / "pack" / "m.gguf").write_bytes(b"GGUF")
    assert base_gguf_of({"base_model": str(hf)}) == tmp_path / "pack" / "m.gguf"
