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


@pytest.mark.slow
def test_exported_lora_computes_in_llamacpp_what_peft_computes(tmp_path: Path) -> None:
    """The adapter GGUF on the Q4_K_M base in llama.cpp moves the logits as PEFT moves them on the
    dequantised base in transformers (what training saw): the same greedy tokens, the same direction.

    Checked on a real trained adapter (DataFrameBench run 5): 40/40 greedy tokens identical,
    correlation of the logit shifts 0.997. Here a random adapter stands in for a trained one."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (`make llamacpp`)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from codetune.models.pack import PACKS, default_cache_dir

    pack = PACKS["qwen2.5-coder-0.5b-instruct"]
    folder = default_cache_dir() / "models" / pack.name
    gguf_path, hf_path = folder / pack.gguf_name, folder / "hf"
    if not gguf_path.is_file() or not (hf_path / "config.json").is_file():
        pytest.skip(
            f"{pack.name} and its conversion are not in the cache (`codetune models fetch {pack.name}`)"
        )
    tok = AutoTokenizer.from_pretrained(hf_path)
    messages = [{"role": "user", "content": "Write a pandas function that returns the mean of column 'x'."}]
    ids = tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(hf_path, torch_dtype=torch.float32)
    peft_model = apply_lora(model, LoraSettings(enabled=True, r=8, alpha=16, top_layers=4), "causal")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # zero at init: give the adapter something to do
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    peft_model.eval()
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(str(adapter))
    lora_gguf = lora_to_gguf(adapter)

    def hf_run(steps: int) -> tuple[list[int], np.ndarray]:
        tokens, past = list(ids), None
        with torch.no_grad():
            out = peft_model(torch.tensor([tokens]), use_cache=True)
            first = out.logits[0, -1].numpy().copy()
            for _ in range(steps):
                tokens.append(int(out.logits[0, -1].argmax()))
                past = out.past_key_values
                out = peft_model(torch.tensor([tokens[-1:]]), past_key_values=past, use_cache=True)
        return tokens[len(ids) :], first

    with peft_model.disable_adapter():
        _, hf_base = hf_run(0)
    hf_tokens, hf_tuned = hf_run(16)

    def llama_run(lora: Path | None, steps: int) -> tuple[list[int], np.ndarray]:
        extra = {"lora_path": str(lora)} if lora else {}
        llm = llama_cpp.Llama(str(gguf_path), n_ctx=512, n_threads=2, logits_all=True, verbose=False, **extra)
        llm.eval(ids)
        first = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        tokens = []
        for _ in range(steps):
            tokens.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval(tokens[-1:])
        llm.close()
        return tokens, first

    _, cpp_base = llama_run(None, 0)
    cpp_tokens, cpp_tuned = llama_run(lora_gguf, 16)
    hf_shift, cpp_shift = hf_tuned - hf_base, cpp_tuned - cpp_base
    assert np.linalg.norm(hf_shift) > 0.1 * np.linalg.norm(hf_base - hf_base.mean())  # the adapter matters
    correlation = np.corrcoef(hf_shift, cpp_shift)[0, 1]
    scale = np.linalg.norm(cpp_shift) / np.linalg.norm(hf_shift)
    assert correlation > 0.95 and 0.8 < scale < 1.25, (correlation, scale)  # same direction and size
    assert cpp_tokens == hf_tokens
